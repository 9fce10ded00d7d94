"""Transactions per second on a fresh local cluster: ``make bench-txn``.

Starts 3 nodes with ``--groups`` data groups and one router on 127.0.0.1
(the processes ``shardkv up`` starts, as ``bench.compare`` does), picks
account keys per group from the cluster's ring, writes every account's
opening balance, then runs each case for a warm-up (not counted) and for
``--seconds``:

1. ``transfer, 2 groups``: each transfer moves 1 between two accounts of two
   different groups (two-phase commit), at each of ``--clients``;
2. ``transfer, 1 group``: both accounts in one group (one phase);
3. ``hot set``: ``--hot-clients`` clients over ``--hot-accounts`` accounts
   spread over 2 groups, any two of them (one or two groups), to see aborts.

A transfer reads both accounts (GetMany: balance and mod_revision), then
sends a Txn whose compares require each mod_revision to be the one seen,
whose success branch puts both new balances and whose failure branch gets
both accounts, so that the next attempt compares with what that answer
carried instead of reading again. Each Txn call ends one way:

- committed: every compare held, the puts applied;
- failed compare: another transfer wrote an account since it was seen;
- aborted (gRPC ABORTED): it met another transaction's locks and gave way
  (wait-die); nothing applied, it is sent again with a new seq after the
  router client's backoff (``RetryPolicy``, growing with each abort of the
  same transfer), as a client retrying a transaction would.

UNAVAILABLE and DEADLINE_EXCEEDED leave the outcome unknown: the same call
is sent again, after the same backoff, with the same session, which finds
its outcome (counted apart). A transfer stops at its first commit or after
``--attempts`` calls.

Each client sends one call at a time with its own session: a random 63-bit
client_id and seq 1, 2, ...; it has every earlier answer, so acked_seq is
seq - 1. Every loop stops at whichever comes first, the case's time or
``--max-txns`` Txn calls; a call in flight then finishes.

Reported per case: committed transfers per second (over the case's wall
time, reads included), p50 and p99 latency of one Txn call whatever its
outcome (its retries of an unknown outcome included), and the share of Txn
calls aborted and failing a compare. After each case the balances are
summed: transfers move money and never make it, so another total fails the
run. The load comes from this one Python process on the cluster's machine,
so the figures are a floor.

    make bench-txn      (or: .venv/bin/python -m bench.txn --seconds 5 --warmup 1)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.compare import shardkv_cluster, wait_ready
from bench.load import _percentile
from router import AsyncClient, ClientError, RetryPolicy
from shardkv.ring import KeyRing, build_ring
from shardkv.v1 import kv_pb2, router_pb2, router_pb2_grpc

OPENING_BALANCE = 1000
# A call whose outcome is unknown is sent again this many times at most.
UNKNOWN_RETRIES = 20
CALL_TIMEOUT = 10.0
# The router client's backoff, between a call and its retry.
RETRY = RetryPolicy()
# Sums of balances are read this many keys per GetMany.
READ_BATCH = 1000

Pair = tuple[bytes, bytes]
PickPair = Callable[[random.Random], Pair]


@dataclass
class Tally:
    """What one case's Txn calls came to."""

    committed: int = 0
    failed_compare: int = 0
    aborted: int = 0
    # Calls sent again after UNAVAILABLE or DEADLINE_EXCEEDED.
    unknown: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return self.committed + self.failed_compare + self.aborted


@dataclass(frozen=True)
class Result:
    case: str
    clients: int
    tally: Tally
    seconds: float

    @property
    def committed_per_s(self) -> float:
        return self.tally.committed / self.seconds if self.seconds > 0 else 0.0

    def share(self, count: int) -> float:
        return 100.0 * count / self.tally.calls if self.tally.calls else 0.0


class TxnClient:
    """One sequential client of the router's Txn: its session, numbered call by call."""

    def __init__(self, stub: router_pb2_grpc.RouterStub, tally: Tally) -> None:
        self.stub = stub
        self.tally = tally
        self.client_id = random.getrandbits(63) or 1
        self.seq = 0
        self.rng = random.Random()

    async def read(self, pair: Pair) -> dict[bytes, kv_pb2.KeyValue]:
        response: router_pb2.GetManyResponse = await self.stub.GetMany(
            router_pb2.GetManyRequest(keys=pair), timeout=CALL_TIMEOUT
        )
        seen = {kv.key: kv for kv in response.kvs}
        if len(seen) != len(pair):
            raise SystemExit(f"accounts {pair!r} were written but read as missing")
        return seen

    async def txn(self, request: router_pb2.TxnRequest) -> router_pb2.TxnResponse | None:
        """Send ``request`` under a new seq: its answer, or None when it was aborted."""
        self.seq += 1
        # Calls are sequential: every earlier seq has its answer.
        request.session.CopyFrom(
            router_pb2.Session(client_id=self.client_id, seq=self.seq, acked_seq=self.seq - 1)
        )
        started = time.perf_counter()
        for attempt in range(UNKNOWN_RETRIES):
            try:
                response: router_pb2.TxnResponse = await self.stub.Txn(
                    request, timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.ABORTED:
                    self.tally.latencies.append(time.perf_counter() - started)
                    self.tally.aborted += 1
                    return None
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                # Unknown outcome: the same session finds it rather than applying twice.
                self.tally.unknown += 1
                await asyncio.sleep(RETRY.backoff(attempt, self.rng))
                continue
            self.tally.latencies.append(time.perf_counter() - started)
            if response.succeeded:
                self.tally.committed += 1
            else:
                self.tally.failed_compare += 1
            return response
        raise SystemExit(
            f"Txn seq {self.seq} of client {self.client_id} had no answer "
            f"in {UNKNOWN_RETRIES} attempts"
        )


def transfer_request(
    source: kv_pb2.KeyValue, target: kv_pb2.KeyValue, amount: int
) -> router_pb2.TxnRequest:
    """Move ``amount`` from ``source`` to ``target`` if neither changed since it was read."""
    return router_pb2.TxnRequest(
        compares=[
            kv_pb2.Compare(
                key=kv.key,
                target=kv_pb2.Compare.MOD_REVISION,
                operator=kv_pb2.Compare.EQUAL,
                number=kv.mod_revision,
            )
            for kv in (source, target)
        ],
        success=[
            kv_pb2.Operation(put=kv_pb2.Put(key=kv.key, value=b"%d" % (int(kv.value) + change)))
            for kv, change in ((source, -amount), (target, amount))
        ],
        failure=[kv_pb2.Operation(get=kv_pb2.Get(key=kv.key)) for kv in (source, target)],
    )


async def transfer(
    client: TxnClient, pair: Pair, attempts: int, keep_going: Callable[[], bool]
) -> None:
    """Move 1 from ``pair[0]`` to ``pair[1]``: read, then Txn until it commits."""
    seen = await client.read(pair)
    aborts = 0
    # The transfer's age, kept across its attempts (wait-die: the oldest wins).
    started_ms = int(time.time() * 1000)
    for _ in range(attempts):
        if not keep_going():
            return
        request = transfer_request(seen[pair[0]], seen[pair[1]], 1)
        request.started_ms = started_ms
        response = await client.txn(request)
        if response is None:
            # Aborted: nothing applied, what was seen still stands.
            await asyncio.sleep(RETRY.backoff(aborts, client.rng))
            aborts += 1
            continue
        if response.succeeded:
            return
        for result in response.results:
            if not result.HasField("previous"):
                raise SystemExit(f"an account of {pair!r} read as missing in a failure branch")
            seen[result.previous.key] = result.previous


async def run_case(
    stub: router_pb2_grpc.RouterStub,
    clients: int,
    pick: PickPair,
    seconds: float,
    max_txns: int,
    attempts: int,
) -> tuple[Tally, float]:
    """``clients`` concurrent clients transferring between pairs ``pick`` gives."""
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds

    def keep_going() -> bool:
        return time.monotonic() < deadline and tally.calls < max_txns

    async def client() -> None:
        rng = random.Random()
        txn_client = TxnClient(stub, tally)
        while keep_going():
            await transfer(txn_client, pick(rng), attempts, keep_going)

    # A TaskGroup, so that one failed client stops the others; its first failure is the case's.
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(clients):
                group.create_task(client())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from failed
    return tally, time.monotonic() - started


def accounts_by_group(ring: KeyRing, prefix: bytes, per_group: int) -> dict[int, list[bytes]]:
    """``per_group`` keys under ``prefix`` for each group of ``ring``, by the ring's say."""
    accounts: dict[int, list[bytes]] = {group_id: [] for group_id in ring.groups}
    # A group of share s needs about per_group / s tries; this bound is far above that.
    for number in range(per_group * len(accounts) * 100):
        key = prefix + b"%08d" % number
        pool = accounts[ring.group_for(key)]
        if len(pool) < per_group:
            pool.append(key)
        if all(len(pool) == per_group for pool in accounts.values()):
            return accounts
    raise SystemExit(f"the ring gave some group fewer than {per_group} of the keys tried")


def two_group_pairs(accounts: dict[int, list[bytes]]) -> PickPair:
    pools = list(accounts.values())

    def pick(rng: random.Random) -> Pair:
        source, target = rng.sample(pools, 2)
        return rng.choice(source), rng.choice(target)

    return pick


def one_group_pairs(accounts: dict[int, list[bytes]]) -> PickPair:
    pools = list(accounts.values())

    def pick(rng: random.Random) -> Pair:
        source, target = rng.sample(rng.choice(pools), 2)
        return source, target

    return pick


def any_pairs(keys: Sequence[bytes]) -> PickPair:
    def pick(rng: random.Random) -> Pair:
        source, target = rng.sample(keys, 2)
        return source, target

    return pick


async def total_balance(stub: router_pb2_grpc.RouterStub, keys: Sequence[bytes]) -> int:
    total = 0
    for first in range(0, len(keys), READ_BATCH):
        batch = keys[first : first + READ_BATCH]
        response: router_pb2.GetManyResponse = await stub.GetMany(
            router_pb2.GetManyRequest(keys=batch), timeout=CALL_TIMEOUT
        )
        if len(response.kvs) != len(batch):
            raise SystemExit(f"{len(batch) - len(response.kvs)} accounts read as missing")
        total += sum(int(kv.value) for kv in response.kvs)
    return total


def row(result: Result) -> str:
    tally = result.tally
    latencies = sorted(tally.latencies)
    return (
        f"{result.case:<30} {result.clients:>7} {result.committed_per_s:>11,.0f} "
        f"{_percentile(latencies, 0.50) * 1000:>8.2f} {_percentile(latencies, 0.99) * 1000:>8.2f} "
        f"{result.share(tally.aborted):>9.1f} {result.share(tally.failed_compare):>16.1f} "
        f"{tally.calls:>9,}"
    )


HEADER = (
    f"{'case':<30} {'clients':>7} {'committed/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'aborted %':>9} {'failed-compare %':>16} {'txn calls':>9}"
)


async def run(arguments: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="shardkv-bench-txn-") as folder,
        shardkv_cluster(Path(folder), arguments.groups) as router_address,
    ):
        async with AsyncClient(router_address, timeout=30.0) as client:
            await wait_ready(client, arguments.groups)
            ring = build_ring((await client.status()).map.ring)
            if len(ring.groups) < 2:
                raise SystemExit(f"the ring has {len(ring.groups)} group(s); transfers need 2")
            channel = grpc.aio.insecure_channel(router_address)
            try:
                # The generated stub is untyped; its methods are typed by the .pyi.
                stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
                spread = accounts_by_group(ring, b"bench/txn/acct/", arguments.accounts)
                # The hot set: its accounts taken in turn from the ring's first two groups.
                hot_groups = ring.groups[:2]
                hot = accounts_by_group(ring, b"bench/txn/hot/", arguments.hot_accounts)
                hot_keys = [
                    key for keys in zip(*(hot[g] for g in hot_groups), strict=True) for key in keys
                ][: arguments.hot_accounts]
                every_key = [key for keys in spread.values() for key in keys] + hot_keys
                opening = b"%d" % OPENING_BALANCE
                await client.put_many([(key, opening) for key in every_key])
                expected_total = OPENING_BALANCE * len(every_key)
                print(
                    f"shardkv, 3 nodes, {len(ring.groups)} groups, 1 router on 127.0.0.1; "
                    f"{arguments.accounts} accounts per group, hot set {len(hot_keys)} accounts "
                    f"in groups {list(hot_groups)}; {arguments.warmup:g}s warm-up + "
                    f"{arguments.seconds:g}s per case; load average "
                    f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                    flush=True,
                )
                print(HEADER)
                cases: list[tuple[str, int, PickPair]] = [
                    ("transfer, 2 groups", clients, two_group_pairs(spread))
                    for clients in arguments.clients
                ]
                cases += [
                    ("transfer, 1 group", clients, one_group_pairs(spread))
                    for clients in arguments.clients
                ]
                cases.append(
                    (
                        f"hot set, {len(hot_keys)} accts/{len(hot_groups)} groups",
                        arguments.hot_clients,
                        any_pairs(hot_keys),
                    )
                )
                for case, clients, pick in cases:
                    await run_case(
                        stub,
                        clients,
                        pick,
                        arguments.warmup,
                        arguments.max_txns,
                        arguments.attempts,
                    )
                    tally, elapsed = await run_case(
                        stub,
                        clients,
                        pick,
                        arguments.seconds,
                        arguments.max_txns,
                        arguments.attempts,
                    )
                    result = Result(case, clients, tally, elapsed)
                    results.append(result)
                    print(row(result), flush=True)
                    total = await total_balance(stub, every_key)
                    if total != expected_total:
                        raise SystemExit(
                            f"after {case!r} the balances sum to {total}, not {expected_total}"
                        )
            finally:
                await channel.close(None)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per case")
    parser.add_argument("--warmup", type=float, default=1.0, help="per case, not counted")
    parser.add_argument("--groups", type=int, default=4, help="shardkv data groups")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--accounts", type=int, default=1000, help="accounts per group")
    parser.add_argument("--hot-clients", type=int, default=16)
    parser.add_argument("--hot-accounts", type=int, default=4, help="over 2 groups")
    parser.add_argument("--attempts", type=int, default=20, help="Txn calls per transfer, at most")
    parser.add_argument(
        "--max-txns", type=int, default=1_000_000, help="Txn calls per case, at most"
    )
    arguments = parser.parse_args(argv)
    if arguments.accounts < 2 or arguments.hot_accounts < 2:
        parser.error("a transfer needs two accounts: give --accounts and --hot-accounts >= 2")
    started = time.monotonic()
    try:
        results = asyncio.run(run(arguments))
    except (ClientError, grpc.aio.AioRpcError) as exc:
        print(f"bench-txn: {exc}", file=sys.stderr)
        return 1
    unknown = sum(result.tally.unknown for result in results)
    if unknown:
        print(f"{unknown} Txn call(s) had an unknown outcome and were sent again")
    print(
        f"balances summed after every case: unchanged; took {time.monotonic() - started:.0f}s; "
        f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
