"""shardkv beside etcd, in one run, on this machine: ``make bench-compare``.

Starts a 3-member etcd cluster (Debian's etcd-server, fsync on every commit,
``--max-txn-ops`` raised so that it can batch its best) and a shardkv
cluster of 3 nodes with ``--groups`` data groups and one router (the
processes ``shardkv up`` starts), both on 127.0.0.1 with fresh data dirs,
both running throughout. Then, cell by cell, the same load from this one
Python process against each (``bench.load``):

- single-key puts and gets at 1, 16 and 64 concurrent clients: keys/s, p50
  and p99 of one call (etcd: to its leader; shardkv: through the router with
  ``router.AsyncClient``, reads linearizable on both);
- bulk load: etcd with its best batching, one Txn of many puts (several txn
  sizes and writer counts, the best kept); shardkv through
  ``AsyncClient.put_many`` (several batch sizes, the best kept).

It prints one table with shardkv/etcd ratios and the targets the project
aims at. Both stores share the machine's cores with each other and with the
load generator, so the figures are for this machine only; the load average
is printed before and after.

    .venv/bin/python -m bench.compare [--seconds 5] [--groups 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.etcd.client import EtcdClient
from bench.etcd.cluster import EtcdCluster
from bench.etcd.errors import EtcdError
from bench.load import (
    KVTarget,
    Result,
    ShardKVTarget,
    measure_bulk,
    measure_gets,
    measure_puts,
    preload,
)
from bench.node import stop_all
from router import AsyncClient, ClientError
from router.launcher import Layout, child_specs
from tests.ports import free_port_run

CLIENTS = (1, 16, 64)


@contextmanager
def shardkv_cluster(folder: Path, groups: int) -> Iterator[str]:
    """3 nodes and a router as child processes; yields the router's address."""
    base = free_port_run(4)
    layout = Layout(nodes=3, groups=groups, port=base)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for spec in child_specs(layout, folder):
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            with spec.log_path.open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        spec.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={k: v for k, v in os.environ.items() if not k.startswith("SHARDKV_")},
                    )
                )
        yield layout.router_address
    finally:
        stop_all(processes)


async def wait_ready(client: AsyncClient, groups: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = await client.status(timeout=2.0)
        except ClientError:
            await asyncio.sleep(0.2)
            continue
        led = {
            group.group_id
            for node in status.nodes
            for group in node.status.groups
            if group.role == "leader" and group.epoch == status.map.ring.epoch > 0
        }
        if set(range(1, groups + 1)) <= led:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the shardkv cluster was not ready within {timeout:.0f}s")


@dataclass
class Row:
    case: str
    etcd: Result
    shardkv: Result
    etcd_note: str = ""
    shardkv_note: str = ""


def _cell(result: Result) -> str:
    return f"{result.ops_per_s:>9,.0f} {result.p50_ms:>7.2f} {result.p99_ms:>8.2f}"


def print_table(rows: list[Row]) -> None:
    print()
    print(
        f"{'case':<22} | {'etcd k/s':>9} {'p50 ms':>7} {'p99 ms':>8} | "
        f"{'shardkv k/s':>9} {'p50 ms':>7} {'p99 ms':>8} | {'x thru':>6} {'x p50':>6}"
    )
    print("-" * 100)
    for row in rows:
        ratio = row.shardkv.ops_per_s / row.etcd.ops_per_s if row.etcd.ops_per_s else 0.0
        latency = row.shardkv.p50_ms / row.etcd.p50_ms if row.etcd.p50_ms else 0.0
        print(
            f"{row.case:<22} | {_cell(row.etcd)} | {_cell(row.shardkv)} | "
            f"{ratio:>6.2f} {latency:>6.2f}"
        )
    for row in rows:
        if row.etcd_note or row.shardkv_note:
            print(f"  {row.case}: etcd {row.etcd_note}; shardkv {row.shardkv_note}")


async def run(arguments: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    value_size = arguments.value_size
    seconds = arguments.seconds
    with tempfile.TemporaryDirectory(prefix="shardkv-compare-") as folder:
        root = Path(folder)
        async with EtcdCluster(root / "etcd") as etcd_cluster:
            with shardkv_cluster(root / "shardkv", arguments.groups) as router_address:
                leader = await etcd_cluster.leader_endpoint()
                async with (
                    EtcdClient(leader) as etcd,
                    AsyncClient(router_address, timeout=30.0) as client,
                ):
                    await wait_ready(client, arguments.groups)
                    shardkv = ShardKVTarget(client)
                    status = await etcd.status()
                    print(
                        f"etcd {status.version} (3 members, --max-txn-ops "
                        f"{etcd_cluster.max_txn_ops}) and shardkv (3 nodes, "
                        f"{arguments.groups} groups, 1 router) on 127.0.0.1; "
                        f"{value_size}-byte values; {seconds:g}s per cell; load average "
                        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                        flush=True,
                    )
                    targets: tuple[tuple[str, KVTarget], ...] = (
                        ("etcd", etcd),
                        ("shardkv", shardkv),
                    )
                    for clients in arguments.clients:
                        results = {}
                        for name, target in targets:
                            results[name] = await measure_puts(
                                target,
                                clients,
                                seconds,
                                value_size,
                                prefix=b"bench/put/c%d/" % clients,
                            )
                            print(
                                f"  put {clients:>2} clients {name:<8} {_cell(results[name])}",
                                flush=True,
                            )
                        rows.append(
                            Row(f"put, {clients} clients", results["etcd"], results["shardkv"])
                        )
                    loaded = {}
                    for name, target in targets:
                        loaded[name] = await preload(
                            target, arguments.get_keys, value_size=value_size
                        )
                    for clients in arguments.clients:
                        results = {}
                        for name, target in targets:
                            results[name] = await measure_gets(
                                target, clients, seconds, loaded[name]
                            )
                            print(
                                f"  get {clients:>2} clients {name:<8} {_cell(results[name])}",
                                flush=True,
                            )
                        rows.append(
                            Row(f"get, {clients} clients", results["etcd"], results["shardkv"])
                        )
                    best_etcd: tuple[Result, str] | None = None
                    for writers in (1, 4):
                        for batch in arguments.etcd_batches:
                            result = await measure_bulk(
                                etcd,
                                arguments.bulk_keys,
                                batch,
                                value_size=value_size,
                                clients=writers,
                                seconds=seconds,
                                prefix=b"bench/bulk/w%d/b%d/" % (writers, batch),
                            )
                            note = f"{batch} puts/txn x {writers} writers"
                            print(f"  bulk etcd    {note:<28} {_cell(result)}", flush=True)
                            if best_etcd is None or result.ops_per_s > best_etcd[0].ops_per_s:
                                best_etcd = (result, note)
                    best_shardkv: tuple[Result, str] | None = None
                    for batch, concurrency in arguments.shardkv_bulk:
                        target = ShardKVTarget(client, batch, concurrency)
                        # One put_many of the whole load per cell, as a user would call it.
                        result = await measure_bulk(
                            target,
                            arguments.bulk_keys,
                            arguments.bulk_keys,
                            value_size=value_size,
                            clients=1,
                            seconds=seconds,
                            prefix=b"bench/bulk/s%d/c%d/" % (batch, concurrency),
                        )
                        note = f"put_many, {batch}/call x {concurrency} calls"
                        print(f"  bulk shardkv {note:<28} {_cell(result)}", flush=True)
                        if best_shardkv is None or result.ops_per_s > best_shardkv[0].ops_per_s:
                            best_shardkv = (result, note)
                    assert best_etcd is not None and best_shardkv is not None
                    rows.append(
                        Row(
                            "bulk load (best)",
                            best_etcd[0],
                            best_shardkv[0],
                            best_etcd[1],
                            best_shardkv[1],
                        )
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell")
    parser.add_argument("--groups", type=int, default=4, help="shardkv data groups")
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--get-keys", type=int, default=10_000)
    parser.add_argument("--bulk-keys", type=int, default=200_000, help="keys per bulk cell (max)")
    parser.add_argument("--etcd-batches", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument(
        "--shardkv-bulk",
        type=lambda text: tuple(int(part) for part in text.split("x")),
        nargs="+",
        default=[(1000, 4), (2000, 8)],
        help="put_many batch sizes and concurrencies, as BATCHxCALLS",
    )
    arguments = parser.parse_args(argv)
    started = time.monotonic()
    try:
        rows = asyncio.run(run(arguments))
    except (EtcdError, ClientError) as exc:
        print(f"bench-compare: {exc}", file=sys.stderr)
        return 1
    print_table(rows)
    put64 = next((row for row in rows if row.case == "put, 64 clients"), None)
    put1 = next((row for row in rows if row.case == "put, 1 clients"), None)
    bulk = rows[-1]
    etcd_best_put = max(
        (row.etcd.ops_per_s for row in rows if row.case.startswith("put")), default=0.0
    )
    print()
    print("targets:")
    if etcd_best_put:
        print(
            f"  bulk load >= 10x etcd's best single-key put rate ({etcd_best_put:,.0f}/s): "
            f"{bulk.shardkv.ops_per_s / etcd_best_put:.1f}x"
        )
    print(
        f"  bulk load vs etcd's best batched load: "
        f"{bulk.shardkv.ops_per_s / bulk.etcd.ops_per_s:.2f}x"
    )
    if put64 is not None:
        ratio = put64.shardkv.ops_per_s / put64.etcd.ops_per_s
        print(f"  puts at 64 clients >= 1.0x etcd: {ratio:.2f}x")
    if put1 is not None:
        print(f"  p50 put latency <= 1.5x etcd: {put1.shardkv.p50_ms / put1.etcd.p50_ms:.2f}x")
    print(
        f"took {time.monotonic() - started:.0f}s; load average now {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
