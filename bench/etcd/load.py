"""An etcd-only run of the load in ``bench.load``.

    .venv/bin/python -m bench.etcd.load --seconds 5

starts a 3-member etcd cluster (``EtcdCluster``) in a temporary folder,
connects to its leader and prints puts and gets at 1, 16 and 64 clients,
then bulk loads at several txn sizes from 1 and 4 writers and names the
fastest. The load comes from this one Python process, so the figures are a
floor for what etcd can take.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from bench.etcd.client import EtcdClient
from bench.etcd.cluster import EtcdCluster
from bench.etcd.errors import EtcdError
from bench.load import HEADER, measure_bulk, measure_gets, measure_puts, preload, row


async def _run_etcd(arguments: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="etcd-bench-") as folder:
        async with EtcdCluster(Path(folder)) as cluster:
            leader = await cluster.leader_endpoint()
            async with EtcdClient(leader) as client:
                status = await client.status()
                print(
                    f"etcd {status.version}: 3 members on 127.0.0.1 (fsync per commit; "
                    f"--max-txn-ops {cluster.max_txn_ops}), load to the leader, "
                    f"{arguments.value_size}-byte values, {arguments.seconds:g}s per cell"
                )
                print(
                    f"1-minute load average before: {os.getloadavg()[0]:.1f} "
                    f"on {os.cpu_count()} cores (other processes skew every figure)"
                )
                print(HEADER)
                for clients in arguments.clients:
                    result = await measure_puts(
                        client,
                        clients,
                        arguments.seconds,
                        arguments.value_size,
                        prefix=b"bench/put/c%d/" % clients,
                    )
                    print(row(f"put, {clients} client(s)", result), flush=True)
                keys = await preload(client, arguments.get_keys, value_size=arguments.value_size)
                for clients in arguments.clients:
                    result = await measure_gets(client, clients, arguments.seconds, keys)
                    print(row(f"get, {clients} client(s)", result), flush=True)
                best = (0.0, 0, 0)
                for writers in arguments.bulk_clients:
                    for batch in arguments.batches:
                        result = await measure_bulk(
                            client,
                            arguments.bulk_keys,
                            batch,
                            value_size=arguments.value_size,
                            clients=writers,
                            seconds=arguments.seconds,
                            prefix=b"bench/bulk/w%d/b%d/" % (writers, batch),
                        )
                        label = f"bulk, {batch} puts/txn, {writers} writer(s)"
                        print(row(label, result), flush=True)
                        best = max(best, (result.ops_per_s, batch, writers))
                print(
                    f"best bulk: {best[1]} puts/txn from {best[2]} writer(s), "
                    f"{best[0]:,.0f} keys/s; 1-minute load average now "
                    f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell")
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--get-keys", type=int, default=10_000, help="keys loaded for gets")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[128, 512, 1024, 2048, 4096],
        help="puts per txn (etcd's default cap is 128; the cluster here allows 4096)",
    )
    parser.add_argument(
        "--bulk-clients", type=int, nargs="+", default=[1, 4], help="concurrent txn writers"
    )
    parser.add_argument(
        "--bulk-keys", type=int, default=1_000_000, help="count bound of one bulk cell"
    )
    arguments = parser.parse_args(argv)
    try:
        asyncio.run(_run_etcd(arguments))
    except EtcdError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
