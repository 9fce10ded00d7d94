"""Closed-loop load against any key-value store, and shardkv's load generator.

The measurements take a ``KVTarget``: anything with async ``put``, ``get`` and
``put_many`` (one batch). ``ShardKVTarget`` (the router client) is one;
``bench.etcd.client.EtcdClient`` is another, so ``bench.compare`` drives both
stores through the same code.

- ``measure_puts``: ``clients`` concurrent writers, each putting a new key,
  waiting for the answer, putting the next.
- ``measure_gets``: the same with gets over keys loaded first (``preload``);
  a missing key fails the run.
- ``measure_bulk``: ``clients`` concurrent writers of ``batch``-key batches
  until ``keys`` keys are written.

Every loop stops at whichever comes first, its time (``seconds``) or its count
(``max_ops`` calls, or ``keys``); a call that is in flight then finishes,
within the target's own deadline. Each returns a ``Result``: keys per second,
the p50 and p99 latency of one call, and the keys written or read.

    .venv/bin/python -m bench.load --router 127.0.0.1:7000 [--seconds 5]

runs puts and gets at 1, 16 and 64 clients and a bulk load against a running
shardkv cluster (``shardkv up``) and prints a table. The load comes from
this one Python process, so the figures are a floor for what the cluster
can take.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from router import AsyncClient, ClientError

__all__ = [
    "KVTarget",
    "Result",
    "ShardKVTarget",
    "measure_bulk",
    "measure_gets",
    "measure_puts",
    "preload",
    "row",
]

DEFAULT_MAX_OPS = 1_000_000


class KVTarget(Protocol):
    """What a store must offer to be measured."""

    async def put(self, key: bytes, value: bytes) -> None: ...

    async def get(self, key: bytes) -> bytes | None: ...

    async def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None: ...


@dataclass(frozen=True)
class Result:
    """One measured cell: ``ops`` keys in ``seconds``, and one call's latency."""

    ops: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


async def _closed_loop(
    clients: int, seconds: float, max_calls: int, call: Callable[[int], Awaitable[int]]
) -> Result:
    """Run ``call(n)`` for n = 0, 1, … from ``clients`` tasks until time or count runs out.

    ``call`` returns how many keys it wrote or read; each n goes to one task only.
    """
    numbers = itertools.count()
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + seconds

    async def client() -> int:
        done = 0
        while time.monotonic() < deadline:
            number = next(numbers)
            if number >= max_calls:
                break
            call_started = time.perf_counter()
            done += await call(number)
            latencies.append(time.perf_counter() - call_started)
        return done

    # A TaskGroup, so that one failed call stops the other clients too; the
    # first failure is the cell's (the others are usually the same one).
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(client()) for _ in range(clients)]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from failed
    elapsed = time.monotonic() - started
    counts = [task.result() for task in tasks]
    latencies.sort()
    return Result(
        ops=sum(counts),
        seconds=elapsed,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
    )


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted samples; 0 for none."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def measure_puts(
    target: KVTarget,
    clients: int,
    seconds: float,
    value_size: int,
    *,
    prefix: bytes = b"bench/put/",
    max_ops: int = DEFAULT_MAX_OPS,
) -> Result:
    """Single-key puts, each to a new key, from ``clients`` concurrent writers."""
    value = b"v" * value_size

    async def put(number: int) -> int:
        await target.put(prefix + b"%d" % number, value)
        return 1

    return await _closed_loop(clients, seconds, max_ops, put)


async def measure_gets(
    target: KVTarget,
    clients: int,
    seconds: float,
    keys: Sequence[bytes],
    *,
    max_ops: int = DEFAULT_MAX_OPS,
) -> Result:
    """Single-key gets over ``keys`` (loaded beforehand), from ``clients`` readers."""
    if not keys:
        raise ValueError("measure_gets needs keys to read: load some with preload()")

    async def get(number: int) -> int:
        key = keys[number % len(keys)]
        if await target.get(key) is None:
            raise LookupError(f"{key!r} was loaded but reads as missing")
        return 1

    return await _closed_loop(clients, seconds, max_ops, get)


def bulk_key(prefix: bytes, index: int) -> bytes:
    """The key ``measure_bulk`` writes as its ``index``-th."""
    return prefix + b"%08d" % index


async def measure_bulk(
    target: KVTarget,
    keys: int,
    batch: int,
    *,
    value_size: int = 100,
    clients: int = 1,
    seconds: float = 60.0,
    prefix: bytes = b"bench/bulk/",
) -> Result:
    """Write keys 0..keys-1 (``bulk_key``) in ``put_many`` batches of ``batch``.

    ``ops`` is the keys written, short of ``keys`` when ``seconds`` ran out;
    the latencies are of one batch.
    """
    value = b"v" * value_size

    async def write_batch(number: int) -> int:
        first = number * batch
        indexes = range(first, min(first + batch, keys))
        await target.put_many([(bulk_key(prefix, index), value) for index in indexes])
        return len(indexes)

    return await _closed_loop(clients, seconds, math.ceil(keys / batch), write_batch)


async def preload(
    target: KVTarget,
    keys: int,
    *,
    value_size: int = 100,
    batch: int = 100,
    seconds: float = 60.0,
    prefix: bytes = b"bench/get/",
) -> list[bytes]:
    """Write ``keys`` keys for ``measure_gets`` and return them; raises if time ran out."""
    result = await measure_bulk(
        target, keys, batch, value_size=value_size, clients=4, seconds=seconds, prefix=prefix
    )
    if result.ops != keys:
        raise TimeoutError(f"preloaded only {result.ops} of {keys} keys in {seconds:.0f}s")
    return [bulk_key(prefix, index) for index in range(keys)]


class ShardKVTarget:
    """``KVTarget`` over the router client; ``put_many`` is ``AsyncClient.put_many``."""

    def __init__(self, client: AsyncClient, batch_size: int = 1000, concurrency: int = 4) -> None:
        self.client = client
        self.batch_size = batch_size
        self.concurrency = concurrency

    async def put(self, key: bytes, value: bytes) -> None:
        await self.client.put(key, value)

    async def get(self, key: bytes) -> bytes | None:
        return await self.client.get(key)

    async def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        await self.client.put_many(items, batch_size=self.batch_size, concurrency=self.concurrency)


def row(case: str, result: Result) -> str:
    return (
        f"{case:<34} {result.ops_per_s:>10,.0f} {result.p50_ms:>8.2f} "
        f"{result.p99_ms:>8.2f} {result.ops:>9,}"
    )


HEADER = f"{'case':<34} {'keys/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'keys':>9}"


async def _run_shardkv(arguments: argparse.Namespace) -> None:
    async with AsyncClient(arguments.router, timeout=30.0) as client:
        target = ShardKVTarget(client, arguments.batch_size, arguments.concurrency)
        run = b"%d/" % time.time_ns()
        print(
            f"shardkv through the router at {arguments.router}, "
            f"{arguments.value_size}-byte values, {arguments.seconds:g}s per cell; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        print(HEADER)
        for clients in arguments.clients:
            result = await measure_puts(
                target,
                clients,
                arguments.seconds,
                arguments.value_size,
                prefix=b"bench/put/" + run + b"c%d/" % clients,
            )
            print(row(f"put, {clients} client(s)", result), flush=True)
        keys = await preload(
            target, arguments.get_keys, value_size=arguments.value_size, prefix=b"bench/get/" + run
        )
        for clients in arguments.clients:
            result = await measure_gets(target, clients, arguments.seconds, keys)
            print(row(f"get, {clients} client(s)", result), flush=True)
        result = await measure_bulk(
            target,
            arguments.bulk_keys,
            arguments.bulk_keys,
            value_size=arguments.value_size,
            seconds=max(arguments.seconds, 60.0),
            prefix=b"bench/bulk/" + run,
        )
        label = f"bulk, put_many {arguments.batch_size}/call x {arguments.concurrency}"
        print(row(label, result), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--router", default=os.environ.get("SHARDKV_ROUTER") or "127.0.0.1:7000")
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell")
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--get-keys", type=int, default=10_000, help="keys loaded for gets")
    parser.add_argument("--bulk-keys", type=int, default=100_000, help="keys of the bulk load")
    parser.add_argument("--batch-size", type=int, default=1000, help="put_many keys per call")
    parser.add_argument("--concurrency", type=int, default=4, help="put_many calls at once")
    arguments = parser.parse_args(argv)
    try:
        asyncio.run(_run_shardkv(arguments))
    except ClientError as exc:
        print(f"bench.load: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
