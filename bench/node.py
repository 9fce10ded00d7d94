"""Committed writes per second on a real 3-node cluster, and what they cost in fsyncs.

Starts three ``shardkv-node`` processes on 127.0.0.1 (fresh data dirs in a
temporary folder), each hosting every group, then for each case drives
writes from this process through gRPC straight to each group's leader:

- 1 group and 16 groups;
- 1 and 64 concurrent writers (each sends one Write, waits, sends the next);
- batched: 64 writers, 100 puts per Write (one Raft entry each).

For each case: committed writes per second (puts, for batched), p50 and p99
latency of one Write, and the leaders' synced writes (fsyncs) per second from
the nodes' own counters: group commit shows as fewer fsyncs than writes.

    make bench-node      (or: .venv/bin/python bench/node.py --seconds 5)

The load comes from one Python process, which tops out near the rate one
core can drive gRPC; the figures are a floor for what the nodes can take.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from shardkv.node.config import format_groups, format_initial_cluster
from shardkv.ring import KeyRing
from shardkv.v1 import kv_pb2, node_pb2, node_pb2_grpc

NODES = (1, 2, 3)
VALUE = b"v" * 100


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def cluster(groups: int, tick_ms: int) -> Iterator[dict[int, str]]:
    """Three node processes hosting ``groups`` data groups on every node."""
    addresses = {node_id: f"127.0.0.1:{_free_port()}" for node_id in NODES}
    initial = format_initial_cluster(addresses)
    # Group 0 is the meta group every cluster has; the load goes to 1..groups.
    layout = format_groups({group_id: NODES for group_id in range(groups + 1)})
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="shardkv-bench-") as folder:
        try:
            for node_id, address in addresses.items():
                log = open(Path(folder) / f"node-{node_id}.log", "wb")  # noqa: SIM115
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "shardkv.node.main",
                            "--node-id",
                            str(node_id),
                            "--listen",
                            address,
                            "--data-dir",
                            str(Path(folder) / f"node-{node_id}"),
                            "--initial-cluster",
                            initial,
                            "--groups",
                            layout,
                            "--tick-interval-ms",
                            str(tick_ms),
                            "--log-level",
                            "WARNING",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
            time.sleep(0.5)
            for node_id, process in zip(addresses, processes, strict=True):
                if process.poll() is not None:
                    log_text = (Path(folder) / f"node-{node_id}.log").read_text()
                    raise SystemExit(f"node {node_id} exited at start:\n{log_text}")
            try:
                yield addresses
            except BaseException:
                for node_id, process in zip(addresses, processes, strict=True):
                    if process.poll() is not None:
                        log_text = (Path(folder) / f"node-{node_id}.log").read_text()
                        print(
                            f"node {node_id} exited with {process.returncode}:\n{log_text[-3000:]}"
                        )
                raise
        finally:
            stop_all(processes)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process, then SIGKILL whichever has not exited 10 s later."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Result:
    case: str
    writes_per_second: float
    p50_ms: float
    p99_ms: float
    fsyncs_per_second: float


class Bench:
    def __init__(self, addresses: dict[int, str]) -> None:
        self.channels = {n: grpc.aio.insecure_channel(a) for n, a in addresses.items()}
        # The generated stub is untyped; its methods are typed by the .pyi.
        self.stubs = {
            n: node_pb2_grpc.NodeStub(c)  # type: ignore[no-untyped-call]
            for n, c in self.channels.items()
        }
        self.leaders: dict[int, int] = {}
        self.client_ids = itertools.count(1)
        # Keys each group owns in the cluster's first ring (every group, weight 1):
        # a Write goes straight to a group, so its keys must be the group's.
        self.keys: dict[int, list[bytes]] = {}

    def make_keys(self, groups: int, per_group: int = 5000) -> None:
        ring = KeyRing(1, dict.fromkeys(range(1, groups + 1), 1))
        self.keys = {group_id: [] for group_id in range(1, groups + 1)}
        for number in itertools.count():
            key = b"key-%08d" % number
            pool = self.keys[ring.group_for(key)]
            if len(pool) < per_group:
                pool.append(key)
            if all(len(pool) >= per_group for pool in self.keys.values()):
                return

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(None)

    async def wait_for_leaders(self, groups: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A deposed leader may still claim a group: the newest term wins.
            claims: dict[int, tuple[int, int]] = {}
            for stub in self.stubs.values():
                try:
                    status = await stub.Status(node_pb2.StatusRequest(), timeout=1)
                except grpc.aio.AioRpcError:
                    continue
                for group in status.groups:
                    known = claims.get(group.group_id)
                    if group.role == "leader" and (known is None or group.term > known[0]):
                        claims[group.group_id] = (group.term, status.node_id)
            leaders = {group_id: node_id for group_id, (_, node_id) in claims.items()}
            if all(group_id in leaders for group_id in range(1, groups + 1)):
                self.leaders = leaders
                return
            await asyncio.sleep(0.1)
        raise SystemExit(f"not every group elected a leader within {timeout:.0f}s")

    async def wait_for_ring(self, groups: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            epochs = {}
            for stub in self.stubs.values():
                with contextlib.suppress(grpc.aio.AioRpcError):
                    status = await stub.Status(node_pb2.StatusRequest(), timeout=1)
                    for group in status.groups:
                        if group.role == "leader":
                            epochs[group.group_id] = group.epoch
            if all(epochs.get(group_id) == 1 for group_id in range(1, groups + 1)):
                return
            await asyncio.sleep(0.1)
        raise SystemExit(f"the groups did not apply the ring within {timeout:.0f}s")

    async def fsyncs(self) -> int:
        total = 0
        for stub in self.stubs.values():
            status = await stub.Status(node_pb2.StatusRequest(), timeout=5)
            total += status.counters.synced_writes
        return total

    async def writer(self, groups: int, batch: int, deadline: float, latencies: list[float]) -> int:
        client_id = next(self.client_ids)
        written = 0
        for seq in itertools.count(1):
            if time.monotonic() >= deadline:
                return written
            group_id = (client_id + seq) % groups + 1
            pool = self.keys[group_id]
            start = (client_id * 7919 + seq * batch) % len(pool)
            operations = [
                kv_pb2.Operation(put=kv_pb2.Put(key=pool[(start + i) % len(pool)], value=VALUE))
                for i in range(batch)
            ]
            request = node_pb2.WriteRequest(
                group_id=group_id,
                command=kv_pb2.Command(client_id=client_id, seq=seq, operations=operations),
            )
            started = time.perf_counter()
            for _ in range(100):
                response = await self.stubs[self.leaders[group_id]].Write(request, timeout=10)
                hint = response.error.not_leader.leader_id if response.HasField("error") else 0
                if not hint:
                    break
                # The lead moved (nodes spread their leaders): follow it, same seq.
                self.leaders[group_id] = hint
            if response.HasField("error"):
                raise SystemExit(f"no leader to write to: {response.error}")
            if response.result.HasField("wrong_group"):
                raise SystemExit(f"a key went to the wrong group: {response.result.wrong_group}")
            latencies.append(time.perf_counter() - started)
            written += batch
        raise AssertionError("unreachable")

    async def run_case(
        self, case: str, groups: int, writers: int, batch: int, seconds: float
    ) -> Result:
        latencies: list[float] = []
        fsyncs_before = await self.fsyncs()
        started = time.monotonic()
        deadline = started + seconds
        counts = await asyncio.gather(
            *(self.writer(groups, batch, deadline, latencies) for _ in range(writers))
        )
        elapsed = time.monotonic() - started
        fsyncs = await self.fsyncs() - fsyncs_before
        latencies.sort()
        return Result(
            case=case,
            writes_per_second=sum(counts) / elapsed,
            p50_ms=statistics.median(latencies) * 1000,
            p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            fsyncs_per_second=fsyncs / elapsed,
        )


async def measure(groups: int, seconds: float, tick_ms: int) -> list[Result]:
    with cluster(groups, tick_ms) as addresses:
        bench = Bench(addresses)
        try:
            await bench.wait_for_leaders(groups)
            bench.make_keys(groups)
            # The nodes put their groups on the ring once they lead them.
            await bench.wait_for_ring(groups)
            results = []
            for writers, batch in ((1, 1), (64, 1), (64, 100)):
                label = f"{groups} group(s), {writers} writer(s)"
                if batch > 1:
                    label += f", {batch} puts/write"
                results.append(await bench.run_case(label, groups, writers, batch, seconds))
            return results
        finally:
            await bench.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per case")
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 16], help="cluster layouts")
    arguments = parser.parse_args(argv)
    print(
        f"3 shardkv-node processes on 127.0.0.1, 100-byte values, {arguments.seconds:.0f}s per case"
    )
    print(f"{'case':<40} {'writes/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'fsyncs/s':>9}")
    for groups in arguments.groups:
        for result in asyncio.run(measure(groups, arguments.seconds, arguments.tick_ms)):
            print(
                f"{result.case:<40} {result.writes_per_second:>10,.0f} {result.p50_ms:>8.2f} "
                f"{result.p99_ms:>8.2f} {result.fsyncs_per_second:>9,.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
