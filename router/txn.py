"""The router as a transaction's coordinator, and as anyone who meets a lock.

A transaction (``TxnRequest``: compares, then ``success`` or ``failure``
operations) is split by the ring into one ``TxnPrepare`` per group.

- **One group**: one command with ``one_phase``: the group checks, chooses
  and applies in one Raft entry.
- **Several groups** (two-phase commit; ``shardkv.fsm.txn`` is the
  participant, ``shardkv.txn_protocol`` the recovery):

  1. prepare every group in parallel, under the request's session, so the
     transaction is named ``(client_id, seq)`` everywhere, and a retry of the
     request (the client's, through any router) finds it again: each group
     answers a repeated prepare from its dedup table;
  2. decide at the primary (the group of the transaction's first key):
     COMMITTED (with the branch all compares chose) or, when a prepare
     failed, ABORTED; the record is the commit point. A transaction whose
     branch writes nothing decides too: the record's "commit" proves no
     resolver broke a lock before every group was read;
  3. finish the other groups in parallel, then mark the record forgettable.

  The answer goes back once the record is COMMITTED (step 3 runs in the
  background: a reader or writer that meets a lock first finishes it from
  the record, and the resolvers finish what a dying router left). An abort
  is finished before the answer, so a retry finds the keys free.

Locks met while preparing: an expired one is settled (``settle_lock``);
otherwise wait-die, by age (``started_ms``: when the client first tried the
transaction, kept across its retries, so a transaction that keeps losing
grows older until it wins): a transaction
older than the holder waits up to ``_OLDER_WAITS`` (1 s) for it, a younger
one ``_YOUNGER_WAITS`` (0.2 s), then gives up (ABORTED: nothing applied,
retry with a new seq; the client's ``txn`` does). Two transactions each holding what the
other wants cannot both wait long, so there is no deadlock.

Plain writes that meet a lock look once at its primary (a transaction
already decided is finished at once), then wait for the lock to go (settling
it once expired) and retry the same seq. Reads that meet one ask the
primary: committed or aborted, it is finished here and read again; running
(no record was ever written), the value under the lock stands: it is the
one before the transaction, and was current when the primary answered.

Isolation: transactions are serializable (every key they compare, read or
write is locked from prepare to finish, and the commit decision is one
record); single-key operations stay linearizable.

Metrics (``router.metrics``): every transaction ``run`` ends is counted by
outcome, and every lock met by the kind of request that met it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from router.groups import (
    Conflict,
    DeadlineExceeded,
    GroupBatcher,
    GroupChannel,
    GroupUnavailable,
    Locked,
    Missing,
    Refused,
    Reroute,
    RouteError,
    SessionReused,
    backoff,
)
from router.metrics import RouterMetrics
from router.topology import Topology
from shardkv.failpoints import failpoint
from shardkv.limits import check_txn
from shardkv.txn_protocol import (
    Settled,
    decide_command,
    expired,
    finish_command,
    finish_everywhere,
    now_ms,
    operation_key,
    settle_lock,
    step_keys,
    txn_name,
)
from shardkv.v1 import kv_pb2, node_pb2, node_pb2_grpc, router_pb2

__all__ = ["TXN_TTL", "Coordinator", "ReadLocked"]

_log = logging.getLogger(__name__)

# How long a transaction's locks stand before anyone may abort it.
TXN_TTL = 5.0
_OLDER_WAITS = 1.0
_YOUNGER_WAITS = 0.2
_MAX_LOCK_WAIT = 0.05
# How long finishing a committed transaction in the background may take.
_FINISH_TIME = 10.0

Writer = Callable[[int], GroupBatcher[kv_pb2.Command, kv_pb2.CommandResult]]


class ReadLocked(Exception):
    """A key read is locked: ``kv`` is its value before the transaction."""

    def __init__(self, lock: kv_pb2.LockInfo, kv: kv_pb2.KeyValue | None) -> None:
        super().__init__(f"key {lock.key!r} is locked by transaction {txn_name(lock.txn)}")
        self.lock = lock
        self.kv = kv


@dataclass(slots=True)
class _Plan:
    """A transaction split by group: each group's prepare, and where each result comes from."""

    epoch: int
    prepares: dict[int, kv_pb2.TxnPrepare] = field(default_factory=dict)
    then_at: list[tuple[int, int]] = field(default_factory=list)
    else_at: list[tuple[int, int]] = field(default_factory=list)
    first_key: bytes = b""
    # The group of the first key: it keeps the record.
    primary: int = 0

    def part(self, group_id: int, key: bytes) -> kv_pb2.TxnPrepare:
        if not self.first_key:
            self.first_key = key
        prepare = self.prepares.get(group_id)
        if prepare is None:
            prepare = self.prepares[group_id] = kv_pb2.TxnPrepare()
        return prepare


class _Calls:
    """``GroupCalls`` for the recovery protocol, through the router's batchers and channels."""

    def __init__(self, coordinator: Coordinator, deadline: float) -> None:
        self._coordinator = coordinator
        self._deadline = deadline

    def group_for(self, key: bytes) -> int:
        return self._coordinator.topology.current_ring().group_for(key)

    async def propose(self, group_id: int, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        return await self._coordinator.writer(group_id).call(command, self._deadline)

    async def find(
        self, group_id: int, txn: kv_pb2.TxnRef, key: bytes = b""
    ) -> node_pb2.ListTxnsResponse:
        return await self._coordinator.list_group(group_id, self._deadline, txn, key)


class Coordinator:
    def __init__(
        self,
        topology: Topology,
        groups: GroupChannel,
        writer: Writer,
        after_reroute: Callable[[Reroute, int], Awaitable[None]],
        *,
        ttl: float = TXN_TTL,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.topology = topology
        self.groups = groups
        self.writer = writer
        self._after_reroute = after_reroute
        self.ttl = ttl
        self.metrics = metrics if metrics is not None else RouterMetrics()
        self._finishing: set[asyncio.Future[None]] = set()

    # -- running a transaction -----------------------------------------------------

    async def run(
        self, request: router_pb2.TxnRequest, session: router_pb2.Session, deadline: float
    ) -> router_pb2.TxnResponse:
        """Run the transaction; its outcome is counted (see ``router.metrics``)."""
        try:
            response = await self._run(request, session, deadline)
        except BaseException as error:
            self.metrics.txns.labels(_failed_outcome(error)).inc()
            raise
        self.metrics.txns.labels("committed" if response.succeeded else "compare_failed").inc()
        return response

    async def _run(
        self, request: router_pb2.TxnRequest, session: router_pb2.Session, deadline: float
    ) -> router_pb2.TxnResponse:
        check_txn(request.compares, request.success, request.failure)
        for attempt in range(1000):
            plan = self._plan(request)
            if not plan.prepares:
                return router_pb2.TxnResponse(succeeded=True)  # nothing to compare or do
            try:
                if len(plan.prepares) == 1:
                    return await self._one_phase(plan, session, deadline)
                return await self._two_phase(plan, session, deadline)
            except Reroute as reroute:
                # Only a one-phase command comes back this way (nothing was
                # recorded); a prepare that reroutes aborts the transaction.
                await self._after_reroute(reroute, attempt)
        raise AssertionError("the ring kept moving")

    def _plan(self, request: router_pb2.TxnRequest) -> _Plan:
        ring = self.topology.current_ring()
        plan = _Plan(ring.epoch)
        for compare in request.compares:
            plan.part(ring.group_for(compare.key), compare.key).compares.append(compare)
        for operations, positions, then in (
            (request.success, plan.then_at, True),
            (request.failure, plan.else_at, False),
        ):
            for operation in operations:
                key = operation_key(operation)
                group_id = ring.group_for(key)
                prepare = plan.part(group_id, key)
                branch = prepare.then_ops if then else prepare.else_ops
                positions.append((group_id, len(branch)))
                branch.append(operation)
        plan.primary = primary = ring.group_for(plan.first_key) if plan.first_key else 0
        now = now_ms()
        deadline_ms = now + int(self.ttl * 1000)
        started_ms = min(request.started_ms or now, now)
        for group_id, prepare in plan.prepares.items():
            prepare.primary_key = plan.first_key
            prepare.deadline_ms = deadline_ms
            prepare.started_ms = started_ms
            if group_id == primary and len(plan.prepares) > 1:
                prepare.participant_keys.extend(_first_key(part) for part in plan.prepares.values())
        return plan

    async def _one_phase(
        self, plan: _Plan, session: router_pb2.Session, deadline: float
    ) -> router_pb2.TxnResponse:
        ((group_id, prepare),) = plan.prepares.items()
        prepare.one_phase = True
        command = _command(session, kv_pb2.TxnStep(prepare=prepare), plan.epoch)
        loop = asyncio.get_running_loop()
        waiting_since: float | None = None
        for attempt in range(10_000):
            try:
                result = await self.writer(group_id).call(command, deadline)
            except SessionReused as reused:
                ref = kv_pb2.TxnRef(client_id=session.client_id, seq=session.seq)
                return await self._reused(plan, ref, reused.kept, set(), deadline)
            except Locked as locked:
                # It holds no lock itself, so it cannot deadlock; but it waits
                # no longer than an older transaction would (then ABORTED).
                self.metrics.lock_waits.labels("txn").inc()
                if waiting_since is None:
                    waiting_since = loop.time()
                elif loop.time() - waiting_since > _OLDER_WAITS:
                    raise Conflict(
                        f"key {locked.lock.key!r} stayed locked by other transactions: "
                        "retry the transaction"
                    ) from None
                await self._wait_for_lock(group_id, locked.lock, attempt, deadline)
                continue
            _check_fresh(result)
            return router_pb2.TxnResponse(
                succeeded=result.txn.succeeded,
                results=result.txn.then_results,
                revision=result.revision,
            )
        raise AssertionError("unreachable")

    async def _two_phase(
        self, plan: _Plan, session: router_pb2.Session, deadline: float
    ) -> router_pb2.TxnResponse:
        ref = kv_pb2.TxnRef(client_id=session.client_id, seq=session.seq)
        primary = plan.primary
        calls = _Calls(self, deadline)
        outcomes: dict[int, kv_pb2.TxnOutcome] = {}
        # Groups that prepared in this attempt (not answered from the session).
        fresh: set[int] = set()

        async def prepare_group(group_id: int, prepare: kv_pb2.TxnPrepare) -> None:
            command = _command(session, kv_pb2.TxnStep(prepare=prepare), plan.epoch)
            result = await self._prepare(group_id, command, prepare.started_ms, deadline)
            if not outcomes:
                failpoint("txn.after_prepare")
            outcomes[group_id] = result.txn
            if not result.replayed:
                fresh.add(group_id)

        answers = await asyncio.gather(
            *(prepare_group(g, prepare) for g, prepare in plan.prepares.items()),
            return_exceptions=True,
        )
        reused = next((answer for answer in answers if isinstance(answer, SessionReused)), None)
        if reused is not None:
            return await self._reused(plan, ref, reused.kept, fresh, deadline)
        failure: BaseException | None = next(
            (answer for answer in answers if isinstance(answer, BaseException)), None
        )
        if failure is None:
            aborted = [g for g, outcome in outcomes.items() if outcome.HasField("record")]
            if aborted:
                failure = Conflict(
                    f"transaction {txn_name(ref)} was aborted before group {aborted[0]} "
                    "prepared (its locks had expired): retry it"
                )
        if failure is not None:
            await self._abort(calls, ref, primary, plan.first_key, plan.prepares, failure)
        succeeded = all(outcome.succeeded for outcome in outcomes.values())
        decided = await calls.propose(primary, decide_command(ref, True, succeeded, plan.first_key))
        failpoint("txn.after_record")
        record = decided.txn.record
        if record.state != kv_pb2.TXN_COMMITTED:
            await _finish(calls, record, plan.primary, plan.prepares)
            raise Conflict(
                f"transaction {txn_name(ref)} was aborted before it could commit "
                "(its locks had expired and another party resolved it): retry it"
            )
        # Committed: the answer need not wait for the other groups (readers
        # that meet a lock before its finish lands finish it themselves).
        self._finish_later(record, primary, plan.prepares)
        positions = plan.then_at if succeeded else plan.else_at
        results = [
            (outcomes[g].then_results if succeeded else outcomes[g].else_results)[index]
            for g, index in positions
        ]
        return router_pb2.TxnResponse(
            succeeded=succeeded, results=results, revision=decided.revision
        )

    async def _prepare(
        self, group_id: int, command: kv_pb2.Command, started_ms: int, deadline: float
    ) -> kv_pb2.CommandResult:
        """Prepare one group, waiting (wait-die, by age) for locks other transactions hold."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        age = (started_ms, command.client_id, command.seq)
        asked: set[bytes] = set()
        for attempt in range(10_000):
            try:
                result = await self.writer(group_id).call(command, deadline)
            except Locked as locked:
                self.metrics.lock_waits.labels("txn").inc()
                lock = locked.lock
                holder = lock.txn.SerializeToString()
                if expired(lock) or holder not in asked:
                    # The holder may be decided already (its coordinator died
                    # after the record): finish it here rather than wait.
                    asked.add(holder)
                    settled = await self._settle(group_id, lock, attempt, deadline)
                    if settled in (Settled.COMMITTED, Settled.ABORTED):
                        continue
                older = age < (lock.started_ms, lock.txn.client_id, lock.txn.seq)
                if loop.time() - started > (_OLDER_WAITS if older else _YOUNGER_WAITS):
                    raise Conflict(
                        f"key {lock.key!r} is held by transaction {txn_name(lock.txn)}: "
                        "retry the transaction"
                    ) from None
                await asyncio.sleep(min(_MAX_LOCK_WAIT, backoff(attempt)))
                continue
            _check_fresh(result)
            return result
        raise AssertionError("unreachable")

    async def _reused(
        self,
        plan: _Plan,
        ref: kv_pb2.TxnRef,
        kept: kv_pb2.CommandResult,
        fresh: set[int],
        deadline: float,
    ) -> router_pb2.TxnResponse:
        """A group kept another attempt's result under this session: the transaction ran
        before, planned over other groups (the ring moved its keys since). Its outcome is
        that attempt's; this attempt's own prepares (``fresh``: not answered from a
        session, where the earlier attempt's prepare may still wait for its finish) are
        dropped, never committed.

        An earlier one-phase attempt applied whole: its kept outcome is the answer. An
        earlier two-phase one is decided by its record at the primary (the first key's
        group; the record moved with the key), written ABORTED first if absent: COMMITTED
        answers its branch without per-operation results (the parts' results stayed
        with the old plan), ABORTED is a conflict (nothing applied: run it anew).
        """
        calls = _Calls(self, deadline)
        record: kv_pb2.TxnRecord | None = None
        if not kept.txn.one_phase:
            primary = calls.group_for(plan.first_key)
            decided = await calls.propose(
                primary, decide_command(ref, False, False, plan.first_key)
            )
            record = decided.txn.record
        dropped = finish_command(kv_pb2.TxnRecord(txn=ref, state=kv_pb2.TXN_ABORTED))
        for group_id in sorted(fresh):
            try:
                await calls.propose(group_id, dropped)
            except (RouteError, Reroute) as error:  # resolvers end it after its deadline
                _log.info("dropping transaction %s in group %d: %s", txn_name(ref), group_id, error)
        if record is None:
            return router_pb2.TxnResponse(
                succeeded=kept.txn.succeeded, results=kept.txn.then_results, revision=kept.revision
            )
        if record.state == kv_pb2.TXN_COMMITTED:
            return router_pb2.TxnResponse(succeeded=record.then_branch, results_unknown=True)
        raise Conflict(
            f"transaction {txn_name(ref)} ran before the ring moved its keys and was aborted: "
            "retry it"
        )

    async def _abort(
        self,
        calls: _Calls,
        ref: kv_pb2.TxnRef,
        primary: int,
        primary_key: bytes,
        prepares: dict[int, kv_pb2.TxnPrepare],
        failure: BaseException,
    ) -> None:
        """Decide ABORTED at the primary, finish every group, raise what made it fail.

        The record decides. Only an ABORTED record lets the failure stand (a
        conflict says: nothing applied, run it anew). If another coordinator
        of the same transaction (a client's retry through another router)
        committed it first, or the primary could not be asked, the outcome
        is UNAVAILABLE: the client retries with the same session and finds it.
        """
        try:
            decided = await calls.propose(primary, decide_command(ref, False, False, primary_key))
        except (RouteError, Reroute) as error:
            raise GroupUnavailable(
                f"transaction {txn_name(ref)} failed ({failure}) and could not be aborted at "
                f"its primary (group {primary}: {error}); its outcome is unknown: retry with "
                "the same session to find it"
            ) from error
        record = decided.txn.record
        try:
            await _finish(calls, record, primary, prepares)
        except (RouteError, Reroute) as error:
            _log.info("finishing transaction %s: %s (resolvers finish it)", txn_name(ref), error)
        if record.state == kv_pb2.TXN_COMMITTED:
            # Another coordinator of the same transaction (the client's retry
            # through another router) committed it first.
            raise GroupUnavailable(
                f"transaction {txn_name(ref)} was committed by another attempt: retry with the "
                "same session for its results"
            )
        if isinstance(failure, Reroute):
            raise Conflict(
                f"the ring changed during transaction {txn_name(ref)}; it was aborted: retry it"
            )
        raise failure

    async def close(self, grace: float = 2.0) -> None:
        """Give the committed transactions still being finished a moment to end."""
        if self._finishing:
            await asyncio.wait(list(self._finishing), timeout=grace)

    def _finish_later(self, record: kv_pb2.TxnRecord, primary: int, groups: Iterable[int]) -> None:
        calls = _Calls(self, asyncio.get_running_loop().time() + _FINISH_TIME)
        groups = list(groups)

        async def finish() -> None:
            try:
                await _finish(calls, record, primary, groups)
            except Exception as error:  # committed all the same: resolvers finish it
                _log.warning(
                    "transaction %s committed; finishing it failed: %s (resolvers finish it)",
                    txn_name(record.txn),
                    error,
                )

        task = asyncio.ensure_future(finish())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    # -- locks met by others --------------------------------------------------------------

    async def settle(
        self, group_id: int, lock: kv_pb2.LockInfo, attempt: int, deadline: float
    ) -> Settled:
        """A read met ``lock``: what its transaction is now (finished here if decided).

        UNDECIDED (look again) comes back after a moment's wait, as a
        writer's wait for a lock does.
        """
        self.metrics.lock_waits.labels("read").inc()
        settled = await self._settle(group_id, lock, attempt, deadline)
        if settled is Settled.UNDECIDED:
            await asyncio.sleep(min(_MAX_LOCK_WAIT, backoff(attempt)))
        return settled

    async def _settle(
        self, group_id: int, lock: kv_pb2.LockInfo, attempt: int, deadline: float
    ) -> Settled:
        """``settle_lock``; UNDECIDED when a group it asks no longer keeps the key (a move):
        the caller looks again, with the next map."""
        try:
            return await settle_lock(_Calls(self, deadline), group_id, lock)
        except Reroute as reroute:
            await self._after_reroute(reroute, attempt)
            return Settled.UNDECIDED

    async def wait_for_lock(
        self, group_id: int, lock: kv_pb2.LockInfo, attempt: int, deadline: float
    ) -> None:
        """A write met ``lock``: settle it if it expired or is met first, else give it a moment.

        The first look finishes a transaction already decided (its
        coordinator died after the record) without waiting for the deadline.
        """
        self.metrics.lock_waits.labels("write").inc()
        await self._wait_for_lock(group_id, lock, attempt, deadline)

    async def _wait_for_lock(
        self, group_id: int, lock: kv_pb2.LockInfo, attempt: int, deadline: float
    ) -> None:
        if expired(lock) or attempt == 0:
            settled = await self._settle(group_id, lock, attempt, deadline)
            if settled in (Settled.COMMITTED, Settled.ABORTED):
                return
        await asyncio.sleep(min(_MAX_LOCK_WAIT, backoff(attempt)))

    # -- admin ------------------------------------------------------------------------------

    async def list_group(
        self, group_id: int, deadline: float, txn: kv_pb2.TxnRef | None = None, key: bytes = b""
    ) -> node_pb2.ListTxnsResponse:
        request = node_pb2.ListTxnsRequest(group_id=group_id, key=key)
        if txn is not None:
            request.txn.CopyFrom(txn)

        async def invoke(stub: node_pb2_grpc.NodeStub, timeout: float) -> node_pb2.ListTxnsResponse:
            response: node_pb2.ListTxnsResponse = await stub.ListTxns(request, timeout=timeout)
            return response

        return await self.groups.call(
            group_id, invoke, lambda r: r.error if r.HasField("error") else None, deadline
        )

    async def _gather(
        self, deadline: float, txn: kv_pb2.TxnRef | None = None
    ) -> dict[int, node_pb2.ListTxnsResponse]:
        groups = self.topology.current_ring().groups
        answers = await asyncio.gather(*(self.list_group(g, deadline, txn) for g in groups))
        return dict(zip(groups, answers, strict=True))

    async def list(self, deadline: float) -> list[router_pb2.TxnSummary]:
        """Transactions not finished: prepared somewhere, or recorded and not finished."""
        summaries: dict[tuple[int, int], router_pb2.TxnSummary] = {}
        ring = self.topology.current_ring()

        def summary(txn: kv_pb2.TxnRef) -> router_pb2.TxnSummary:
            found = summaries.get((txn.client_id, txn.seq))
            if found is None:
                found = summaries[(txn.client_id, txn.seq)] = router_pb2.TxnSummary(
                    txn=txn, state=kv_pb2.TXN_PREPARED
                )
            return found

        for group_id, answer in (await self._gather(deadline)).items():
            for prepared in answer.prepared:
                entry = summary(prepared.txn)
                entry.prepared_groups.append(group_id)
                entry.primary_key = prepared.prepare.primary_key
                entry.primary_group = ring.group_for(prepared.prepare.primary_key)
                entry.deadline_ms = prepared.prepare.deadline_ms
                keys = step_keys(prepared.prepare)
                entry.locked_keys.extend(keys[:4])
            for record in answer.records:
                if record.finished:
                    continue
                entry = summary(record.txn)
                entry.state = record.state
                entry.primary_group = group_id
                entry.deadline_ms = entry.deadline_ms or record.deadline_ms
        return sorted(summaries.values(), key=lambda s: (s.deadline_ms, s.txn.client_id, s.txn.seq))

    async def show(self, txn: kv_pb2.TxnRef, deadline: float) -> router_pb2.ShowTxnResponse:
        response = router_pb2.ShowTxnResponse()
        summary = response.txn
        summary.txn.CopyFrom(txn)
        ring = self.topology.current_ring()
        for group_id, answer in (await self._gather(deadline, txn)).items():
            for prepared in answer.prepared:
                response.prepared.append(prepared)
                summary.prepared_groups.append(group_id)
                summary.primary_key = prepared.prepare.primary_key
                summary.primary_group = ring.group_for(prepared.prepare.primary_key)
                summary.deadline_ms = prepared.prepare.deadline_ms
                summary.locked_keys.extend(step_keys(prepared.prepare)[:4])
            for record in answer.records:
                response.record.CopyFrom(record)
                summary.primary_group = group_id
                summary.state = record.state
                summary.deadline_ms = summary.deadline_ms or record.deadline_ms
        if not response.prepared and not response.HasField("record"):
            raise Missing(f"no group knows transaction {txn_name(txn)}")
        if not response.HasField("record"):
            summary.state = kv_pb2.TXN_PREPARED
        return response

    async def resolve(
        self, txn: kv_pb2.TxnRef, commit: bool, deadline: float
    ) -> router_pb2.ResolveTxnResponse:
        """Finish ``txn`` as the operator says, unless its record or its prepares forbid it."""
        shown = await self.show(txn, deadline)
        calls = _Calls(self, deadline)
        prepared_at = {g for g in shown.txn.prepared_groups}
        primary = shown.txn.primary_group
        record = shown.record if shown.HasField("record") else None
        if record is None:
            primary_prepare = next((p for p in shown.prepared if p.prepare.participant_keys), None)
            if commit:
                if primary_prepare is None or primary not in prepared_at:
                    raise Refused(
                        f"transaction {txn_name(txn)} is not prepared at its primary "
                        f"(group {primary}): it cannot commit; resolve it with --abort"
                    )
                needed = {calls.group_for(k) for k in primary_prepare.prepare.participant_keys}
                missing = sorted(needed - prepared_at)
                if missing:
                    raise Refused(
                        f"transaction {txn_name(txn)} is not prepared in groups {missing}: "
                        "it cannot commit; resolve it with --abort"
                    )
            then_branch = all(p.outcome.succeeded for p in shown.prepared)
            primary_key = b"" if primary_prepare is None else primary_prepare.prepare.primary_key
            decided = await calls.propose(
                primary, decide_command(txn, commit, then_branch, primary_key)
            )
            record = decided.txn.record
        committed = record.state == kv_pb2.TXN_COMMITTED
        if committed != commit:
            raise Refused(
                f"transaction {txn_name(txn)} is {'committed' if committed else 'aborted'} "
                "by its record; it cannot be resolved otherwise"
            )
        await _finish(calls, record, primary, prepared_at)
        return router_pb2.ResolveTxnResponse(record=record)


def _failed_outcome(error: BaseException) -> str:
    """The outcome a transaction that ended in ``error`` is counted under."""
    if isinstance(error, Conflict):
        return "aborted"
    if isinstance(
        error, GroupUnavailable | DeadlineExceeded | TimeoutError | asyncio.CancelledError
    ):
        return "in_doubt"
    return "rejected"


def _first_key(prepare: kv_pb2.TxnPrepare) -> bytes:
    return step_keys(prepare)[0]


def _command(session: router_pb2.Session, step: kv_pb2.TxnStep, epoch: int) -> kv_pb2.Command:
    return kv_pb2.Command(
        client_id=session.client_id,
        seq=session.seq,
        acked_seq=session.acked_seq,
        txn=step,
        epoch=epoch,
    )


def _check_fresh(result: kv_pb2.CommandResult) -> None:
    if result.stale:
        raise Refused(
            "the session says this transaction's seq is finished (acked): its outcome is no "
            "longer known; use a new seq"
        )


async def _finish(
    calls: _Calls, record: kv_pb2.TxnRecord, primary: int, groups: Iterable[int]
) -> None:
    """Finish the groups the coordinator knows, as the record says (``finish_everywhere``)."""
    await finish_everywhere(
        calls, record, primary, groups, after_first=lambda: failpoint("txn.between_commits")
    )
