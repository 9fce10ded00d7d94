"""A bank over transactions: the workload and its checker, for tests that break things meanwhile.

``Bank`` keeps ``len(keys)`` accounts (decimal balances under the given keys,
which the caller spreads over every group). Its clients talk to routers over
raw gRPC (``RouterStub``), each with its own ``Session``, and fail over
between routers:

- a **transfer** reads two balances (``GetMany``), then runs one ``Txn``:
  compares both values and both mod_revisions with what it read, moves a
  random amount (never more than the source holds) on success, and reads
  both keys on failure. An answer it could not get (UNAVAILABLE,
  DEADLINE_EXCEEDED: the router died, a group lost its leader) is retried
  with the SAME session through the next router, for a bounded time, so an
  in-doubt transfer finds its outcome instead of applying twice;
- a **read** runs one ``Txn`` of gets of every account (no compares).

What must hold, checked as it runs and at the end (``BankReport.violations``):
every read sums to the total and no balance is negative; a transfer whose
compares failed saw a change in what it compared; a committed transfer's
puts saw exactly the revisions it compared; and the final balances are the
initial ones moved by every committed transfer plus some subset of the
transfers whose outcome stayed unknown (``explain_final``).

The caller owns the processes: it starts routers and nodes, kills them while
``Bank.run`` goes on, and calls ``Bank.final_balances`` afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

from shardkv.v1 import kv_pb2, router_pb2, router_pb2_grpc

__all__ = [
    "IN_DOUBT",
    "MAX_SUBSET_SEARCH",
    "Bank",
    "BankReport",
    "SessionCounter",
    "Transfer",
    "check_balances",
    "explain_final",
    "get_op",
    "put_op",
]

# Codes after which a transaction's outcome is unknown: retry it with the same session.
IN_DOUBT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
ATTEMPT_TIMEOUT = 5.0
# How long a client keeps retrying one in-doubt transaction before calling it unknown.
RESOLVE_BUDGET = 20.0
_RETRY_PAUSE = 0.1
# A transfer client's pause between transfers, at most: reads lock every
# account and, younger than the transfers they meet, give up first
# (wait-die); without gaps between transfers few of them would get through.
_THINK = 0.05
# A reader's pause after it was aborted, at most, for the same reason.
_READ_BACKOFF = 0.1
MAX_SUBSET_SEARCH = 14


def put_op(key: bytes, value: bytes) -> kv_pb2.Operation:
    return kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))


def get_op(key: bytes) -> kv_pb2.Operation:
    return kv_pb2.Operation(get=kv_pb2.Get(key=key))


class SessionCounter:
    """One client's session numbers: it sends one request at a time, so it acks each it finishes."""

    def __init__(self, client_id: int | None = None) -> None:
        self.client_id = client_id or (random.getrandbits(62) | 1)
        self._seqs = itertools.count(1)
        self.acked_seq = 0

    def begin(self) -> router_pb2.Session:
        return router_pb2.Session(
            client_id=self.client_id, seq=next(self._seqs), acked_seq=self.acked_seq
        )

    def finish(self, session: router_pb2.Session) -> None:
        """The client will not retry ``session`` again (its outcome is known, or given up)."""
        self.acked_seq = max(self.acked_seq, session.seq)


@dataclass(frozen=True, slots=True)
class Transfer:
    source: bytes
    target: bytes
    amount: int


@dataclass(slots=True)
class BankReport:
    committed: list[Transfer] = field(default_factory=list)
    unknown: list[Transfer] = field(default_factory=list)
    # The compares failed: another transfer got there first (nothing applied).
    rejected: int = 0
    # ABORTED: conflicted with another transaction (nothing applied).
    aborted: int = 0
    # Answered only after a retry with the same session.
    settled_by_retry: int = 0
    reads_checked: int = 0
    reads_aborted: int = 0
    reads_unanswered: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"transfers: {len(self.committed)} committed, {self.rejected} rejected by their "
            f"compares, {self.aborted} aborted, {len(self.unknown)} unknown "
            f"({self.settled_by_retry} settled by a retry with the same session); reads: "
            f"{self.reads_checked} checked, {self.reads_aborted} aborted, "
            f"{self.reads_unanswered} unanswered"
        )


def check_balances(balances: dict[bytes, int], total: int) -> list[str]:
    """What is wrong with one consistent view of every balance."""
    problems = [f"{key!r} is negative: {value}" for key, value in balances.items() if value < 0]
    if sum(balances.values()) != total:
        problems.append(f"balances sum to {sum(balances.values())}, not {total}: {balances}")
    return problems


def explain_final(
    initial: dict[bytes, int],
    final: dict[bytes, int],
    committed: Sequence[Transfer],
    unknown: Sequence[Transfer],
) -> str | None:
    """None if ``final`` is ``initial`` moved by every committed transfer and some unknown ones.

    With more unknown transfers than a subset search can afford, only the
    committed ones' effect modulo the unknown accounts is checked.
    """
    expected = dict(initial)
    for transfer in committed:
        expected[transfer.source] -= transfer.amount
        expected[transfer.target] += transfer.amount
    difference = {key: final[key] - expected[key] for key in initial if final[key] != expected[key]}
    if not difference:
        return None
    if len(unknown) > MAX_SUBSET_SEARCH:
        touched = {key for transfer in unknown for key in (transfer.source, transfer.target)}
        stray = {key: value for key, value in difference.items() if key not in touched}
        return f"accounts no unknown transfer touched moved: {stray}" if stray else None
    for size in range(1, len(unknown) + 1):
        for subset in itertools.combinations(unknown, size):
            moved: dict[bytes, int] = {}
            for transfer in subset:
                moved[transfer.source] = moved.get(transfer.source, 0) - transfer.amount
                moved[transfer.target] = moved.get(transfer.target, 0) + transfer.amount
            if {key: value for key, value in moved.items() if value} == difference:
                return None
    return (
        f"final balances differ from the committed transfers' effect by {difference}, "
        f"which no subset of the {len(unknown)} unknown transfers explains"
    )


class Bank:
    def __init__(self, keys: Sequence[bytes], initial: int) -> None:
        self.keys = list(keys)
        self.initial = initial
        self.total = initial * len(self.keys)

    def setup(self, stub: router_pb2_grpc.RouterStub) -> None:
        """Write every initial balance (in one transaction: it is all or nothing)."""
        request = router_pb2.TxnRequest(
            success=[put_op(key, b"%d" % self.initial) for key in self.keys],
            session=SessionCounter().begin(),
        )
        response = stub.Txn(request, timeout=ATTEMPT_TIMEOUT * 2)
        assert response.succeeded

    async def run(
        self, addresses: Sequence[str], transferers: int, readers: int, seconds: float, seed: int
    ) -> BankReport:
        """Run the clients for ``seconds`` through ``addresses``; each finishes what it began."""
        report = BankReport()
        channels = [grpc.aio.insecure_channel(address) for address in addresses]
        stubs = [router_pb2_grpc.RouterStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
        stop_at = time.monotonic() + seconds
        try:
            await asyncio.gather(
                *(
                    self._transferer(
                        _Client(stubs, number), random.Random(seed + number), stop_at, report
                    )
                    for number in range(transferers)
                ),
                *(
                    self._reader(
                        _Client(stubs, transferers + number),
                        random.Random(seed + transferers + number),
                        stop_at,
                        report,
                    )
                    for number in range(readers)
                ),
            )
        finally:
            for channel in channels:
                await channel.close(None)
        return report

    def problems(self, report: BankReport, final: dict[bytes, int]) -> list[str]:
        """Everything wrong with a run: wrong answers during it, and final balances that
        break the invariants or that the committed transfers (plus some unknown ones) do
        not explain. Beyond ``MAX_SUBSET_SEARCH`` unknown transfers the explanation
        could only be checked in part: that is a problem too, the check must stay whole."""
        problems = [*report.violations, *check_balances(final, self.total)]
        if len(report.unknown) > MAX_SUBSET_SEARCH:
            problems.append(
                f"{len(report.unknown)} transfers of unknown outcome, more than the "
                f"{MAX_SUBSET_SEARCH} the final check can explain whole"
            )
        initial = dict.fromkeys(self.keys, self.initial)
        problem = explain_final(initial, final, report.committed, report.unknown)
        if problem is not None:
            problems.append(problem)
        return problems

    def final_balances(
        self, stub: router_pb2_grpc.RouterStub, timeout: float = 20.0
    ) -> dict[bytes, int]:
        """Every balance, read in one transaction (retried while a group or lock is in the way)."""
        deadline = time.monotonic() + timeout
        sessions = SessionCounter()
        problem = "no attempt"
        for _ in range(200):
            if time.monotonic() > deadline:
                break
            request = router_pb2.TxnRequest(
                success=[get_op(key) for key in self.keys], session=sessions.begin()
            )
            try:
                response = stub.Txn(request, timeout=ATTEMPT_TIMEOUT)
            except grpc.RpcError as error:
                problem = f"{error.code().name}: {error.details()}"
                time.sleep(_RETRY_PAUSE)
                continue
            finally:
                sessions.finish(request.session)
            return self._balances(response)
        raise AssertionError(f"could not read every balance in {timeout} s: {problem}")

    # -- clients ---------------------------------------------------------------------------

    def _balances(self, response: router_pb2.TxnResponse) -> dict[bytes, int]:
        assert response.succeeded and len(response.results) == len(self.keys), response
        return {
            key: int(result.previous.value)
            for key, result in zip(self.keys, response.results, strict=True)
        }

    async def _transferer(
        self, client: _Client, rng: random.Random, stop_at: float, report: BankReport
    ) -> None:
        for _ in range(100_000):
            if time.monotonic() >= stop_at:
                return
            await asyncio.sleep(rng.uniform(0, _THINK))
            source, target = rng.sample(self.keys, 2)
            try:
                read = await client.stub().GetMany(
                    router_pb2.GetManyRequest(keys=[source, target]), timeout=ATTEMPT_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                client.fail_over()
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            seen = {kv.key: kv for kv in read.kvs}
            if len(seen) != 2:
                report.violations.append(f"an account is missing: read {list(seen)}")
                return
            balance = int(seen[source].value)
            if balance <= 0:
                continue
            transfer = Transfer(source, target, rng.randint(1, balance))
            await self._transfer(client, transfer, seen[source], seen[target], report)

    async def _transfer(
        self,
        client: _Client,
        transfer: Transfer,
        source: kv_pb2.KeyValue,
        target: kv_pb2.KeyValue,
        report: BankReport,
    ) -> None:
        compares = [
            compare
            for kv in (source, target)
            for compare in (
                kv_pb2.Compare(key=kv.key, target=kv_pb2.Compare.VALUE, value=kv.value),
                kv_pb2.Compare(
                    key=kv.key, target=kv_pb2.Compare.MOD_REVISION, number=kv.mod_revision
                ),
            )
        ]
        request = router_pb2.TxnRequest(
            compares=compares,
            success=[
                put_op(source.key, b"%d" % (int(source.value) - transfer.amount)),
                put_op(target.key, b"%d" % (int(target.value) + transfer.amount)),
            ],
            failure=[get_op(source.key), get_op(target.key)],
            session=client.sessions.begin(),
        )
        try:
            outcome = await client.call_until_known(request)
        finally:
            client.sessions.finish(request.session)
        if outcome.retried and not outcome.unknown:
            report.settled_by_retry += 1
        if outcome.unknown:
            report.unknown.append(transfer)
            return
        if outcome.code == grpc.StatusCode.ABORTED:
            report.aborted += 1
            return
        if outcome.code is not None:
            report.violations.append(f"transfer {transfer}: {outcome.code.name} {outcome.details}")
            return
        response = outcome.response
        assert response is not None
        if response.succeeded:
            report.committed.append(transfer)
            if response.results_unknown and outcome.retried:
                return  # committed by an earlier attempt planned before a ring change
            if len(response.results) != 2:
                report.violations.append(
                    f"transfer {transfer} committed with {len(response.results)} results, "
                    f"not one per put (retried: {outcome.retried}): {response}"
                )
                return
            for result, kv in zip(response.results, (source, target), strict=True):
                if result.previous.mod_revision != kv.mod_revision:
                    report.violations.append(
                        f"transfer {transfer} committed over {kv.key!r} at mod_revision "
                        f"{result.previous.mod_revision}, compared {kv.mod_revision}"
                    )
            return
        report.rejected += 1
        now = [(result.previous.value, result.previous.mod_revision) for result in response.results]
        if now == [(source.value, source.mod_revision), (target.value, target.mod_revision)]:
            report.violations.append(
                f"transfer {transfer} took its failure branch, yet read what it compared: {now}"
            )
        if any(int(value) < 0 for value, _ in now):
            report.violations.append(f"transfer {transfer} read a negative balance: {now}")

    async def _reader(
        self, client: _Client, rng: random.Random, stop_at: float, report: BankReport
    ) -> None:
        for _ in range(100_000):
            if time.monotonic() >= stop_at:
                return
            request = router_pb2.TxnRequest(
                success=[get_op(key) for key in self.keys], session=client.sessions.begin()
            )
            try:
                response = await client.stub().Txn(request, timeout=ATTEMPT_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.ABORTED:
                    report.reads_aborted += 1
                    await asyncio.sleep(rng.uniform(0, _READ_BACKOFF))
                else:
                    report.reads_unanswered += 1
                    client.fail_over()
                    await asyncio.sleep(_RETRY_PAUSE)
                continue
            finally:
                client.sessions.finish(request.session)
            report.reads_checked += 1
            problems = check_balances(self._balances(response), self.total)
            report.violations.extend(f"a read: {problem}" for problem in problems)


@dataclass(slots=True)
class _Outcome:
    response: router_pb2.TxnResponse | None = None
    code: grpc.StatusCode | None = None
    details: str = ""
    unknown: bool = False
    retried: bool = False


class _Client:
    """One client: its session, and the router it prefers until that one fails."""

    def __init__(self, stubs: Sequence[router_pb2_grpc.RouterStub], number: int) -> None:
        self._stubs = stubs
        self._current = number % len(stubs)
        self.sessions = SessionCounter()

    def stub(self) -> router_pb2_grpc.RouterStub:
        return self._stubs[self._current]

    def fail_over(self) -> None:
        self._current = (self._current + 1) % len(self._stubs)

    async def call_until_known(self, request: router_pb2.TxnRequest) -> _Outcome:
        """The request's outcome, retrying it unchanged (same session) while it is in doubt."""
        give_up_at = time.monotonic() + RESOLVE_BUDGET
        outcome = _Outcome()
        for attempt in range(1000):
            if attempt and time.monotonic() > give_up_at:
                break
            outcome.retried = attempt > 0
            try:
                outcome.response = await self.stub().Txn(request, timeout=ATTEMPT_TIMEOUT)
                return outcome
            except grpc.aio.AioRpcError as error:
                if error.code() not in IN_DOUBT:
                    outcome.code, outcome.details = error.code(), error.details() or ""
                    return outcome
            self.fail_over()
            await asyncio.sleep(_RETRY_PAUSE)
        outcome.unknown = True
        return outcome
