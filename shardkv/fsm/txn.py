"""One group's side of a cross-group transaction (two-phase commit, truth in the log).

A transaction is named by the ``(client_id, seq)`` of its prepare commands
(``TxnRef``): the same in every participant, and the same when a client
retries it through another router, so a retry finds the transaction rather
than running it twice. Every step below is a committed ``Command`` carrying a
``TxnStep``; applying it is deterministic (no clock is read here: deadlines
are numbers in the log that only resolvers, outside, compare with a clock).

- **prepare** (``TxnPrepare``): refused whole with ``locked`` when a key of it
  (compared, read or written, in either branch) is locked by another
  transaction; otherwise the group's compares are evaluated, both branches'
  results are computed as they will be (reads see the state before the
  transaction), every key is locked, and the prepare is kept (``PreparedTxn``)
  until finished. At the primary a prepare is refused once the transaction
  has a record (a resolver aborted it first).
- **one phase**: a prepare with ``one_phase`` (the group is the only
  participant) checks the locks and the compares and applies the chosen
  branch at once, in one entry.
- **decide** (``TxnDecide``, at the primary): the commit point. If the
  transaction has a record, it is the answer. Otherwise ``commit`` writes
  COMMITTED only while the primary's own prepare is still here (a resolver
  that aborted it took it away), and applies the primary's branch in the
  same entry; anything else writes ABORTED and drops the primary's prepare.
  Records are written "if absent" only, so whoever writes first wins.
- **finish** (``TxnFinish``): applies (commit) or drops the staged branch and
  releases the locks. A transaction not prepared here is a no-op: finishing
  is idempotent.
- **forget** (``TxnForget``, at the primary): every participant finished;
  the record goes once the client acked the transaction's seq (the client
  may still retry until then, and must find the outcome), otherwise when
  the session floor passes it (``forget_records``).

A branch writes a key at most once (checked by the router), and its reads
see the state before the transaction whatever their position, so results
computed at prepare are exactly what finish produces.

Writes of plain commands to a locked key are refused by the state machine
with ``locked`` (not recorded in the session, so the same seq applies once the
lock is gone); reads report the locks they met (the node's Read and Scan).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from shardkv.storage import keys
from shardkv.storage.engine import Batch, ColumnFamily
from shardkv.txn_protocol import operation_key, step_keys
from shardkv.v1 import kv_pb2

if TYPE_CHECKING:
    from shardkv.fsm.kv import KeyValueStateMachine, Record

__all__ = ["Transactions", "compare_holds"]

_Compare = kv_pb2.Compare


def compare_holds(compare: kv_pb2.Compare, record: Record | None) -> bool:
    """Whether ``compare`` holds for the key as ``record`` (None: absent) stores it."""
    if compare.target == _Compare.VALUE:
        if record is None:
            return False
        return _holds(compare.operator, record.value, compare.value)
    if record is None:
        actual = 0
    elif compare.target == _Compare.VERSION:
        actual = record.version
    elif compare.target == _Compare.CREATE_REVISION:
        actual = record.create_revision
    elif compare.target == _Compare.LEASE:
        actual = record.lease
    else:
        actual = record.mod_revision
    return _holds(compare.operator, actual, compare.number)


def _holds(operator: int, actual: bytes | int, expected: bytes | int) -> bool:
    if operator == _Compare.EQUAL:
        return actual == expected
    if operator == _Compare.NOT_EQUAL:
        return actual != expected
    if operator == _Compare.GREATER:
        return actual > expected  # type: ignore[operator]
    return actual < expected  # type: ignore[operator]


class Transactions:
    """The transactions of one group: its locks, prepares and records."""

    def __init__(self, machine: KeyValueStateMachine) -> None:
        self.machine = machine
        self.group_id = machine.group_id
        # key -> the lock on it, in memory for every write to check cheaply;
        # the log and meta hold the truth (loaded here, kept equal by apply).
        self.locks: dict[bytes, kv_pb2.LockInfo] = {}
        low, high = keys.lock_range(self.group_id)
        for engine_key, stored in machine.engine.scan(ColumnFamily.META, low, high):
            self.locks[engine_key[len(low) :]] = kv_pb2.LockInfo.FromString(stored)
        # Records this group keeps as a primary whose participants are not
        # all finished yet, for the resolver (finished ones stay on disk
        # until their client acks, and are not looked at again).
        self.open_records: dict[tuple[int, int], kv_pb2.TxnRecord] = {}
        # client id -> seqs of every record kept here (open or finished), so
        # that a client's ack (nearly every command) finds the records it
        # lets go without reading the engine. Kept equal by apply, as locks.
        self._record_seqs: dict[int, set[int]] = {}
        for record in self.records():
            self._record_seqs.setdefault(record.txn.client_id, set()).add(record.txn.seq)
            if not record.finished:
                self.open_records[(record.txn.client_id, record.txn.seq)] = record

    # -- what other commands ask ---------------------------------------------------

    def lock_on(self, user_keys: Iterable[bytes]) -> kv_pb2.LockInfo | None:
        """The first lock among ``user_keys``, if any."""
        if not self.locks:
            return None
        for key in user_keys:
            lock = self.locks.get(key)
            if lock is not None:
                return lock
        return None

    def prepared(self) -> list[kv_pb2.PreparedTxn]:
        low, high = keys.prepared_range(self.group_id)
        return [
            kv_pb2.PreparedTxn.FromString(stored)
            for _, stored in self.machine.engine.scan(ColumnFamily.META, low, high)
        ]

    def records(self) -> list[kv_pb2.TxnRecord]:
        low, high = keys.txn_record_range(self.group_id)
        return [
            kv_pb2.TxnRecord.FromString(stored)
            for _, stored in self.machine.engine.scan(ColumnFamily.META, low, high)
        ]

    def find(self, ref: kv_pb2.TxnRef) -> tuple[kv_pb2.PreparedTxn | None, kv_pb2.TxnRecord | None]:
        """The transaction's prepare and record in this group (applied state)."""
        engine = self.machine.engine
        prepared = engine.get(ColumnFamily.META, self._prepared_key(ref))
        record = engine.get(ColumnFamily.META, self._record_key(ref))
        return (
            kv_pb2.PreparedTxn.FromString(prepared) if prepared is not None else None,
            kv_pb2.TxnRecord.FromString(record) if record is not None else None,
        )

    # -- applying a step -------------------------------------------------------------------

    def apply(self, batch: Batch, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        step = command.txn
        kind = step.WhichOneof("kind")
        ref = kv_pb2.TxnRef(client_id=command.client_id, seq=command.seq)
        if kind == "prepare":
            if step.prepare.one_phase:
                return self._one_phase(batch, step.prepare)
            return self._prepare(batch, ref, step.prepare)
        if kind == "decide":
            return self._decide(batch, step.decide)
        if kind == "finish":
            self._finish(batch, step.finish.txn, step.finish.commit, step.finish.then_branch)
            return kv_pb2.CommandResult(revision=self.machine.revision)
        if kind == "forget":
            self._forget_record(batch, step.forget.txn)
            return kv_pb2.CommandResult(revision=self.machine.revision)
        raise ValueError(f"a committed transaction step has no kind: {command!r}")

    def conflict(
        self, prepare: kv_pb2.TxnPrepare, ref: kv_pb2.TxnRef | None
    ) -> kv_pb2.LockInfo | None:
        """The first lock on a key of ``prepare`` held by another transaction than ``ref``."""
        if not self.locks:
            return None
        for key in step_keys(prepare):
            lock = self.locks.get(key)
            if lock is not None and (ref is None or lock.txn != ref):
                return lock
        return None

    def _evaluate(self, prepare: kv_pb2.TxnPrepare) -> kv_pb2.TxnOutcome:
        machine = self.machine
        outcome = kv_pb2.TxnOutcome(
            succeeded=all(
                compare_holds(compare, machine.staged_record(compare.key))
                for compare in prepare.compares
            )
        )
        outcome.then_results.extend(self._preview(prepare.then_ops))
        outcome.else_results.extend(self._preview(prepare.else_ops))
        return outcome

    def _preview(self, operations: Sequence[kv_pb2.Operation]) -> list[kv_pb2.OperationResult]:
        """The results ``operations`` will have: each against the state before them."""
        results = []
        for operation in operations:
            key = operation_key(operation)
            record = self.machine.staged_record(key)
            result = kv_pb2.OperationResult(
                succeeded=record is not None or operation.HasField("put")
            )
            if record is not None:
                result.previous.CopyFrom(record.key_value(key))
                if operation.HasField("put"):
                    result.previous.value = b""  # metadata only, as a plain put
            results.append(result)
        return results

    def _one_phase(self, batch: Batch, prepare: kv_pb2.TxnPrepare) -> kv_pb2.CommandResult:
        lock = self.conflict(prepare, None)
        if lock is not None:
            return kv_pb2.CommandResult(locked=lock, revision=self.machine.revision)
        evaluated = self._evaluate(prepare)
        branch = prepare.then_ops if evaluated.succeeded else prepare.else_ops
        outcome = kv_pb2.TxnOutcome(
            succeeded=evaluated.succeeded,
            then_results=evaluated.then_results if evaluated.succeeded else evaluated.else_results,
            one_phase=True,
        )
        self.machine.write_operations(batch, _writes(branch))
        return kv_pb2.CommandResult(txn=outcome, revision=self.machine.revision)

    def _prepare(
        self, batch: Batch, ref: kv_pb2.TxnRef, prepare: kv_pb2.TxnPrepare
    ) -> kv_pb2.CommandResult:
        # (A repeated prepare never gets here: the session answers it.)
        machine = self.machine
        record = machine.read_meta(self._record_key(ref))
        if record is not None:
            # Decided before this prepare arrived (a resolver aborted it).
            decided = kv_pb2.TxnRecord.FromString(record)
            return kv_pb2.CommandResult(
                txn=kv_pb2.TxnOutcome(record=decided), revision=machine.revision
            )
        lock = self.conflict(prepare, ref)
        if lock is not None:
            return kv_pb2.CommandResult(locked=lock, revision=machine.revision)
        outcome = self._evaluate(prepare)
        for key in step_keys(prepare):
            info = kv_pb2.LockInfo(
                key=key,
                txn=ref,
                primary_key=prepare.primary_key,
                deadline_ms=prepare.deadline_ms,
                started_ms=prepare.started_ms,
            )
            machine.write_meta(batch, keys.lock_key(self.group_id, key), info.SerializeToString())
            self.locks[key] = info
        prepared = kv_pb2.PreparedTxn(txn=ref, prepare=prepare, outcome=outcome)
        machine.write_meta(batch, self._prepared_key(ref), prepared.SerializeToString())
        return kv_pb2.CommandResult(txn=outcome, revision=machine.revision)

    def _decide(self, batch: Batch, decide: kv_pb2.TxnDecide) -> kv_pb2.CommandResult:
        machine = self.machine
        ref = decide.txn
        stored = machine.read_meta(self._record_key(ref))
        if stored is not None:
            record = kv_pb2.TxnRecord.FromString(stored)
            return kv_pb2.CommandResult(
                txn=kv_pb2.TxnOutcome(
                    succeeded=record.state == kv_pb2.TXN_COMMITTED, record=record
                ),
                revision=machine.revision,
            )
        prepared_stored = machine.read_meta(self._prepared_key(ref))
        prepared = (
            kv_pb2.PreparedTxn.FromString(prepared_stored) if prepared_stored is not None else None
        )
        commit = decide.commit and prepared is not None
        record = kv_pb2.TxnRecord(
            txn=ref,
            state=kv_pb2.TXN_COMMITTED if commit else kv_pb2.TXN_ABORTED,
            then_branch=decide.then_branch,
            primary_key=decide.primary_key,
        )
        if prepared is not None:
            record.participant_keys.extend(prepared.prepare.participant_keys)
            record.deadline_ms = prepared.prepare.deadline_ms
            record.primary_key = prepared.prepare.primary_key
        self._write_record(batch, ref, record)
        self.open_records[(ref.client_id, ref.seq)] = record
        self._finish(batch, ref, commit, decide.then_branch)
        return kv_pb2.CommandResult(
            txn=kv_pb2.TxnOutcome(succeeded=commit, record=record), revision=machine.revision
        )

    def _finish(self, batch: Batch, ref: kv_pb2.TxnRef, commit: bool, then_branch: bool) -> None:
        machine = self.machine
        stored = machine.read_meta(self._prepared_key(ref))
        if stored is None:
            return  # not prepared here, or finished already
        prepared = kv_pb2.PreparedTxn.FromString(stored)
        for key in step_keys(prepared.prepare):
            lock = self.locks.get(key)
            if lock is not None and lock.txn == ref:
                del self.locks[key]
                machine.write_meta(batch, keys.lock_key(self.group_id, key), None)
        machine.write_meta(batch, self._prepared_key(ref), None)
        if commit:
            branch = prepared.prepare.then_ops if then_branch else prepared.prepare.else_ops
            machine.write_operations(batch, _writes(branch))

    def _forget_record(self, batch: Batch, ref: kv_pb2.TxnRef) -> None:
        machine = self.machine
        stored = machine.read_meta(self._record_key(ref))
        if stored is None:
            return
        self.open_records.pop((ref.client_id, ref.seq), None)
        if machine.session_floor(ref.client_id) >= ref.seq:
            self._delete_record(batch, ref.client_id, ref.seq)
            return
        record = kv_pb2.TxnRecord.FromString(stored)
        if not record.finished:
            record.finished = True
            self._write_record(batch, ref, record)

    def forget_records(self, batch: Batch, client_id: int, floor: int, new_floor: int) -> None:
        """The client acked seqs in ``(floor, new_floor]``: drop their finished records.

        Records staged earlier in this round count too (a decide and a
        forget may share the round with the ack): replicas that apply the
        same entries in other rounds must end the same. The in-memory index
        holds both.
        """
        seqs = self._record_seqs.get(client_id)
        if not seqs:
            return
        for seq in sorted(seq for seq in seqs if floor < seq <= new_floor):
            stored = self.machine.read_meta(keys.txn_record_key(self.group_id, client_id, seq))
            if stored is not None and kv_pb2.TxnRecord.FromString(stored).finished:
                self._delete_record(batch, client_id, seq)

    def import_record(self, batch: Batch, record: kv_pb2.TxnRecord) -> None:
        """Keep a record copied from the group its primary key moved from (if none is here)."""
        if self.machine.read_meta(self._record_key(record.txn)) is not None:
            return
        self._write_record(batch, record.txn, record)
        if not record.finished:
            self.open_records[(record.txn.client_id, record.txn.seq)] = record

    def drop_record(self, batch: Batch, ref: kv_pb2.TxnRef) -> None:
        """Let go of a record whose primary key moved away (its copy is at the target)."""
        self.open_records.pop((ref.client_id, ref.seq), None)
        self._delete_record(batch, ref.client_id, ref.seq)

    def _write_record(self, batch: Batch, ref: kv_pb2.TxnRef, record: kv_pb2.TxnRecord) -> None:
        self.machine.write_meta(batch, self._record_key(ref), record.SerializeToString())
        self._record_seqs.setdefault(ref.client_id, set()).add(ref.seq)

    def _delete_record(self, batch: Batch, client_id: int, seq: int) -> None:
        self.machine.write_meta(batch, keys.txn_record_key(self.group_id, client_id, seq), None)
        seqs = self._record_seqs.get(client_id)
        if seqs is not None:
            seqs.discard(seq)
            if not seqs:
                del self._record_seqs[client_id]

    def _prepared_key(self, ref: kv_pb2.TxnRef) -> bytes:
        return keys.prepared_key(self.group_id, ref.client_id, ref.seq)

    def _record_key(self, ref: kv_pb2.TxnRef) -> bytes:
        return keys.txn_record_key(self.group_id, ref.client_id, ref.seq)


def _writes(operations: Sequence[kv_pb2.Operation]) -> list[kv_pb2.Operation]:
    return [operation for operation in operations if not operation.HasField("get")]
