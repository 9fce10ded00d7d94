"""The nemesis runs' workloads, each with the checker that judges its history.

Every workload talks to the routers through the public client
(``router.AsyncClient``, failing over between routers) and records what it
asked and what it was told. An answer it could not get (DeadlineExceeded,
Unavailable: a router died, a group lost its leader) is recorded as of
unknown outcome, never guessed. After the nemesis heals the cluster,
``final`` reads what the checker needs, and ``check`` gives the verdict.

- ``register``: put, get, cas and delete on a few keys at a time, checked
  for linearizability (``tests.checkers.linearizability``). Keys rotate: a
  key is retired once it has collected ``MAX_UNKNOWN`` writes of unknown
  outcome or ``MAX_OPS`` operations, so the checker's search stays small.
- ``set``: unique inserts (one key each); every acknowledged insert must be
  in the final scan (``tests.checkers.sets``).
- ``bank``: transfers between accounts over every group in transactions
  (``tests.integration.bank``): the total is conserved, no balance goes
  negative, the final balances are explained by the committed transfers.
- ``list-append``: transactions of reads and appends over lists kept under
  a few keys, checked for serializability cycles (``tests.checkers.list_append``).
  A transaction reads its keys in one read-only ``Txn``, then commits in a
  second ``Txn`` whose compares require every key's mod_revision unchanged
  (optimistic concurrency): if it commits, what it read was current at its
  commit, which its gets in the same ``Txn`` confirm. The final read must
  hold every acknowledged append (no read need have seen one before).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from router import AsyncClient, ClientError, DeadlineExceeded, TransactionConflict, Unavailable
from router.transactions import get, mod_revision, put
from shardkv.v1 import router_pb2_grpc
from tests.checkers.linearizability import Operation, check_history
from tests.checkers.list_append import MicroOp, Transaction, check_list_append
from tests.checkers.sets import SetAdd, check_set
from tests.integration.bank import Bank, BankReport

__all__ = ["WORKLOADS", "Workload", "WorkloadResult", "make_workload"]

# The client's deadline for one operation (its retries included).
OP_TIMEOUT = 3.0
# The final reads, after healing, give up after this long (a cluster that
# did not recover is an anomaly of its own; the run must still end).
FINAL_SECONDS = 60.0
UNKNOWN = (DeadlineExceeded, Unavailable)


class FinalReadFailed(Exception):
    """The final read found no working cluster within ``FINAL_SECONDS``."""


@dataclass(slots=True)
class WorkloadResult:
    name: str
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    anomalies: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def operations(self) -> int:
        return self.ok + self.failed + self.unknown


class Workload(Protocol):
    name: str

    async def setup(self, addresses: Sequence[str]) -> None: ...

    async def run(self, addresses: Sequence[str], seconds: float, seed: int) -> None: ...

    async def final(self, addresses: Sequence[str]) -> None: ...

    def check(self) -> WorkloadResult: ...


def _deadline(seconds: float) -> float:
    return time.monotonic() + seconds


class _Clients:
    """Concurrent clients, each a loop of ``step`` calls until the run's time is up."""

    name: str

    def __init__(self, clients: int) -> None:
        self.clients = clients

    async def setup(self, addresses: Sequence[str]) -> None:
        return None

    async def final(self, addresses: Sequence[str]) -> None:
        return None

    async def run(self, addresses: Sequence[str], seconds: float, seed: int) -> None:
        stop_at = _deadline(seconds)
        await asyncio.gather(
            *(self._client(number, addresses, stop_at, seed) for number in range(self.clients))
        )

    async def _client(
        self, number: int, addresses: Sequence[str], stop_at: float, seed: int
    ) -> None:
        rng = random.Random(seed * 1000 + number)
        # Each client starts at another router (and fails over to the rest).
        first = number % len(addresses)
        mine = [*addresses[first:], *addresses[:first]]
        async with AsyncClient(mine, timeout=OP_TIMEOUT) as client:
            for step in range(100_000):
                if time.monotonic() >= stop_at:
                    return
                if not await self.step(client, number, step, rng):
                    await asyncio.sleep(0.05)  # no answer: do not spin while the cluster heals

    async def step(self, client: AsyncClient, number: int, step: int, rng: random.Random) -> bool:
        """One operation of client ``number``; False if it failed or its outcome is unknown."""
        raise NotImplementedError


# -- register ----------------------------------------------------------------------------


class _KeyPool:
    """The keys in play; a key is swapped for a fresh one once it has done enough."""

    def __init__(self, prefix: bytes, width: int, max_unknown: int = 0, max_ops: int = 0) -> None:
        self.prefix = prefix
        self.max_unknown = max_unknown
        self.max_ops = max_ops
        self._issued = 0
        self.active = [self._fresh() for _ in range(width)]
        self.unknown: dict[bytes, int] = {}
        self.ops: dict[bytes, int] = {}

    def _fresh(self) -> bytes:
        self._issued += 1
        return b"%s%d" % (self.prefix, self._issued - 1)

    def retire(self, key: bytes) -> None:
        """Swap ``key`` for a fresh one, if it is still in play."""
        if key in self.active:
            self.active[self.active.index(key)] = self._fresh()

    def used(self) -> list[bytes]:
        """Every key ever put in play."""
        return [b"%s%d" % (self.prefix, number) for number in range(self._issued)]

    def record(self, key: bytes, unknown: bool) -> None:
        self.ops[key] = self.ops.get(key, 0) + 1
        if unknown:
            self.unknown[key] = self.unknown.get(key, 0) + 1
        if self.unknown.get(key, 0) >= self.max_unknown or self.ops[key] >= self.max_ops:
            self.retire(key)


class RegisterWorkload(_Clients):
    name = "register"
    MAX_UNKNOWN = 20
    MAX_OPS = 300

    def __init__(self, clients: int = 6, width: int = 4) -> None:
        super().__init__(clients)
        self.pool = _KeyPool(b"reg/", width, self.MAX_UNKNOWN, self.MAX_OPS)
        self.history: list[Operation] = []
        self.errors: list[str] = []

    async def step(self, client: AsyncClient, number: int, step: int, rng: random.Random) -> bool:
        key = rng.choice(self.pool.active)
        kind = rng.choice(("put", "get", "get", "cas", "delete"))
        value = b"%d-%d" % (number, step)
        recent = [op.value for op in self.history[-20:] if op.key == key and op.value]
        expected = rng.choice([None, *recent]) if recent else None
        call = time.monotonic()
        try:
            output = await register_call(client, kind, key, value, expected)
        except ClientError as error:
            if not isinstance(error, UNKNOWN):
                # Not a verdict on consistency, but reported: the store should not say it.
                self.errors.append(f"{kind} {key!r}: {type(error).__name__}: {error}")
            self.pool.record(key, unknown=kind != "get")
            if kind != "get":
                self.history.append(
                    register_operation(number, kind, key, value, expected, None, call, None)
                )
            return False
        self.pool.record(key, unknown=False)
        self.history.append(
            register_operation(number, kind, key, value, expected, output, call, time.monotonic())
        )
        return True

    def check(self) -> WorkloadResult:
        answered = sum(1 for op in self.history if op.ret is not None)
        result = WorkloadResult(self.name, ok=answered, unknown=len(self.history) - answered)
        verdict = check_history(self.history)
        if not verdict.ok:
            what = "timed out (unknown)" if verdict.timed_out else "not linearizable"
            result.anomalies.append(f"register history {what}: {verdict.explanation}")
        result.anomalies.extend(f"unexpected error: {error}" for error in self.errors[:5])
        result.detail = f"{len(self.pool.ops)} keys, {len(self.errors)} unexpected errors"
        return result


async def register_call(
    client: AsyncClient, kind: str, key: bytes, value: bytes, expected: bytes | None
) -> object:
    """Run one register operation; its output as ``Operation.output`` wants it."""
    if kind == "put":
        await client.put(key, value)
        return None
    if kind == "get":
        return await client.get(key)
    if kind == "cas":
        return await client.cas(key, expected, value)
    return await client.delete(key)


def register_operation(
    client: int,
    kind: str,
    key: bytes,
    value: bytes,
    expected: bytes | None,
    output: object,
    call: float,
    ret: float | None,
) -> Operation:
    return Operation(
        client_id=client,
        kind=kind,
        key=key,
        value=value if kind in ("put", "cas") else None,
        expected=expected if kind == "cas" else None,
        output=output,
        call=call,
        ret=ret,
    )


# -- set ---------------------------------------------------------------------------------


class SetWorkload(_Clients):
    name = "set"
    PREFIX = b"set/"

    def __init__(self, clients: int = 6) -> None:
        super().__init__(clients)
        self.adds: list[SetAdd] = []
        self.final_reads: list[frozenset[int]] = []
        self.final_problem = ""
        self.errors: list[str] = []
        self._elements = itertools.count()

    async def step(self, client: AsyncClient, number: int, step: int, rng: random.Random) -> bool:
        element = next(self._elements)
        call = time.monotonic()
        try:
            await client.put(b"%s%08d" % (self.PREFIX, element), b"%d" % element)
        except ClientError as error:
            # Unknown to the checker, whatever the error; one that is no timeout is reported.
            if not isinstance(error, UNKNOWN):
                self.errors.append(f"put {element}: {type(error).__name__}: {error}")
            self.adds.append(SetAdd(element, "info", call, None))
            return False
        self.adds.append(SetAdd(element, "ok", call, time.monotonic()))
        return True

    async def final(self, addresses: Sequence[str]) -> None:
        for address in addresses:
            try:
                self.final_reads.append(await _scan_elements(address, self.PREFIX))
            except FinalReadFailed as error:
                self.final_problem = str(error)

    def check(self) -> WorkloadResult:
        ok = sum(1 for add in self.adds if add.status == "ok")
        result = WorkloadResult(self.name, ok=ok, unknown=len(self.adds) - ok)
        verdict = check_set(self.adds, self.final_reads)
        if self.final_problem:
            result.anomalies.append(f"set: no final read: {self.final_problem}")
        if verdict.lost:
            result.anomalies.append(f"set: lost {len(verdict.lost)} acknowledged adds")
        if not verdict.ok:
            result.anomalies.append(f"set: {verdict.explanation}")
        result.anomalies.extend(f"unexpected error: {error}" for error in self.errors[:5])
        result.detail = verdict.explanation
        return result


async def _scan_elements(address: str, prefix: bytes) -> frozenset[int]:
    """Every element under ``prefix``, read through one router (retried whole while it fails)."""
    problem = "no attempt"
    deadline = _deadline(FINAL_SECONDS)
    for _ in range(100):
        if time.monotonic() > deadline:
            break
        try:
            async with AsyncClient(address, timeout=10.0) as client:
                return frozenset(
                    [int(value) async for _, value in client.scan(prefix=prefix, page_size=2000)]
                )
        except ClientError as error:
            problem = f"{type(error).__name__}: {error}"
            await asyncio.sleep(0.5)
    raise FinalReadFailed(f"could not scan {prefix!r} through {address}: {problem}")


# -- bank --------------------------------------------------------------------------------


class BankWorkload:
    name = "bank"

    def __init__(self, accounts: int = 12, initial: int = 100) -> None:
        self.bank = Bank([b"bank/%d" % number for number in range(accounts)], initial)
        self.report: BankReport | None = None
        self.final_balances: dict[bytes, int] | None = None
        self.final_problem = ""

    async def setup(self, addresses: Sequence[str]) -> None:
        """The initial balances, through the next router while one fails (a failpoint may
        crash a router in this very transaction; writing the same balances twice is
        harmless before any transfer)."""
        problem = "no attempt"
        for attempt in range(20):
            address = addresses[attempt % len(addresses)]
            with grpc.insecure_channel(address) as channel:
                stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
                try:
                    await asyncio.to_thread(self.bank.setup, stub)
                    return
                except grpc.RpcError as error:
                    problem = f"{address}: {error}"
            await asyncio.sleep(1.0)
        raise AssertionError(f"could not write the initial balances: {problem}")

    async def run(self, addresses: Sequence[str], seconds: float, seed: int) -> None:
        self.report = await self.bank.run(
            addresses, transferers=4, readers=2, seconds=seconds, seed=seed
        )

    async def final(self, addresses: Sequence[str]) -> None:
        with grpc.insecure_channel(addresses[0]) as channel:
            stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            try:
                self.final_balances = await asyncio.to_thread(
                    self.bank.final_balances, stub, FINAL_SECONDS
                )
            except AssertionError as error:
                self.final_problem = str(error)

    def check(self) -> WorkloadResult:
        report = self.report
        assert report is not None
        result = WorkloadResult(
            self.name,
            ok=len(report.committed) + report.rejected + report.reads_checked,
            failed=report.aborted + report.reads_aborted,
            unknown=len(report.unknown) + report.reads_unanswered,
            detail=report.summary(),
        )
        if self.final_balances is None:
            result.anomalies.append(f"bank: no final read: {self.final_problem}")
            result.anomalies.extend(f"bank: {violation}" for violation in report.violations)
            return result
        result.anomalies.extend(
            f"bank: {problem}" for problem in self.bank.problems(report, self.final_balances)
        )
        return result


# -- list-append ------------------------------------------------------------------------


def _decode_list(value: bytes | None) -> tuple[int, ...]:
    if not value:
        return ()
    return tuple(int(element) for element in value.split(b","))


def _encode_list(elements: Sequence[int]) -> bytes:
    return b",".join(b"%d" % element for element in elements)


class ListAppendWorkload(_Clients):
    name = "list-append"
    MAX_LENGTH = 80

    def __init__(self, clients: int = 5, width: int = 6) -> None:
        super().__init__(clients)
        self.width = width
        self.history: list[Transaction] = []
        self.mismatches: list[str] = []
        self._elements = itertools.count(1)
        self.pool = _KeyPool(b"la/", width)
        self.lengths: dict[bytes, int] = {}
        self.final_problem = ""
        self.final_lists: dict[bytes, object] = {}
        self.errors: list[str] = []

    async def step(self, client: AsyncClient, number: int, step: int, rng: random.Random) -> bool:
        kinds = ("r", "append")
        plan = [(rng.choice(kinds), rng.choice(self.pool.active)) for _ in range(rng.randint(1, 4))]
        return await self._transaction(client, number, plan)

    async def _transaction(
        self, client: AsyncClient, number: int, plan: list[tuple[str, bytes]]
    ) -> bool:
        """Run one transaction of ``plan``; False if it failed or its outcome is unknown."""
        keys = sorted({key for _, key in plan})
        call = time.monotonic()
        try:
            read = await client.txn([], [get(key) for key in keys], conflict_retries=0)
        except ClientError as error:
            self._error("read", number, error)
            return False
        if not read.succeeded or read.results_unknown:
            return False
        seen: dict[bytes, tuple[bytes | None, int]] = {}
        for key, op_result in zip(keys, read.results, strict=True):
            kv = getattr(op_result, "kv", None)
            seen[key] = (None, 0) if kv is None else (kv.value, kv.mod_revision)
        lists = {key: list(_decode_list(seen[key][0])) for key in keys}
        ops: list[MicroOp] = []
        appended: list[bytes] = []
        for kind, key in plan:
            if kind == "r":
                ops.append(MicroOp("r", key, tuple(lists[key])))
            else:
                element = next(self._elements)
                lists[key].append(element)
                ops.append(MicroOp("append", key, element))
                if key not in appended:
                    appended.append(key)
        if not appended:
            self.history.append(Transaction(number, tuple(ops), "ok", call, time.monotonic()))
            return True
        for key in appended:
            self.lengths[key] = len(lists[key])
            if len(lists[key]) >= self.MAX_LENGTH:
                self.pool.retire(key)
        compares = [mod_revision(key) == seen[key][1] for key in keys]
        then = [put(key, _encode_list(lists[key])) for key in appended]
        then += [get(key) for key in keys]
        try:
            result = await client.txn(compares, then, conflict_retries=0)
        except TransactionConflict:
            self.history.append(Transaction(number, tuple(ops), "fail", call, time.monotonic()))
            return False
        except ClientError as error:
            self._error("commit", number, error)
            unknown = tuple(MicroOp(op.kind, op.key, None) if op.kind == "r" else op for op in ops)
            self.history.append(Transaction(number, unknown, "info", call, None))
            return False
        ret = time.monotonic()
        if not result.succeeded:
            self.history.append(Transaction(number, tuple(ops), "fail", call, ret))
            return False
        if result.results_unknown:
            ops = [MicroOp(op.kind, op.key, None) if op.kind == "r" else op for op in ops]
        else:
            for key, op_result in zip(keys, result.results[len(appended) :], strict=True):
                kv = getattr(op_result, "kv", None)
                revision = 0 if kv is None else kv.mod_revision
                if revision != seen[key][1]:
                    self.mismatches.append(
                        f"client {number}: committed with mod_revision({key!r}) == "
                        f"{seen[key][1]} but its get saw {revision}"
                    )
        self.history.append(Transaction(number, tuple(ops), "ok", call, ret))
        return True

    def _error(self, step: str, number: int, error: ClientError) -> None:
        """Report an error that is neither a timeout nor a conflict (both are expected)."""
        if not isinstance(error, (*UNKNOWN, TransactionConflict)):
            self.errors.append(f"client {number} {step}: {type(error).__name__}: {error}")

    async def final(self, addresses: Sequence[str]) -> None:
        """One last read of every key ever used: late appends get a place in the order, and
        every acknowledged append must be in it."""
        keys = self.pool.used()
        deadline = _deadline(FINAL_SECONDS)
        async with AsyncClient(list(addresses), timeout=10.0) as client:
            for _ in range(int(FINAL_SECONDS / 0.5)):
                if time.monotonic() > deadline:
                    break
                try:
                    read = await client.txn([], [get(key) for key in keys], conflict_retries=5)
                except ClientError:
                    await asyncio.sleep(0.5)
                    continue
                if not read.succeeded or read.results_unknown:
                    await asyncio.sleep(0.5)
                    continue
                ops = tuple(
                    MicroOp("r", key, _decode_list(getattr(r, "value", None)))
                    for key, r in zip(keys, read.results, strict=True)
                )
                now = time.monotonic()
                self.history.append(Transaction(-1, ops, "ok", now, now))
                self.final_lists = {op.key: op.value for op in ops}
                return
        self.final_problem = f"no final read of the lists in {FINAL_SECONDS:g} s"

    def check(self) -> WorkloadResult:
        counts = {status: 0 for status in ("ok", "fail", "info")}
        for transaction in self.history:
            counts[transaction.status] += 1
        result = WorkloadResult(
            self.name, ok=counts["ok"], failed=counts["fail"], unknown=counts["info"]
        )
        verdict = check_list_append(self.history)
        if self.final_problem:
            result.anomalies.append(f"list-append: {self.final_problem}")
        elif lost := self._lost_appends():
            result.anomalies.append(
                f"list-append: {len(lost)} acknowledged appends are not in the final read: "
                + ", ".join(f"{element} to {key!r}" for key, element in lost[:10])
            )
        result.anomalies.extend(f"unexpected error: {error}" for error in self.errors[:5])
        if not verdict.ok:
            result.anomalies.append(f"list-append: {verdict.explanation}")
        result.anomalies.extend(self.mismatches[:5])
        result.detail = f"{len(self.lengths)} keys appended to"
        return result

    def _lost_appends(self) -> list[tuple[bytes, int]]:
        """Appends of committed transactions missing from the final read (which came after
        them all): the cycle checker alone cannot see an append that no read observed."""
        lost: list[tuple[bytes, int]] = []
        for transaction in self.history:
            if transaction.status != "ok":
                continue
            for op in transaction.ops:
                final = self.final_lists.get(op.key, ())
                if op.kind == "append" and isinstance(final, tuple) and op.value not in final:
                    assert isinstance(op.value, int)
                    lost.append((op.key, op.value))
        return lost


WORKLOADS = ("register", "set", "bank", "list-append")


def make_workload(name: str) -> Workload:
    if name == "register":
        return RegisterWorkload()
    if name == "set":
        return SetWorkload()
    if name == "bank":
        return BankWorkload()
    if name == "list-append":
        return ListAppendWorkload()
    raise ValueError(f"no workload {name!r}: one of {', '.join(WORKLOADS)}")
