"""Transactions across groups, run at random against a model (hypothesis).

Three groups' state machines share one engine. Random transactions (compares
that hold or fail, puts, deletes and gets over six keys, two per group) are
split by group as the router splits them, and their steps interleave at
random with plain writes, retried prepares, clients acking the seqs they have
answers for, restarts of a group's state machine, and resolvers that settle a
lock they meet (every deadline has passed, so they may abort a live
transaction). A coordinator that meets a lock retries or gives up (aborts).
Coordinators crash at random points; afterwards recovery follows
``shardkv.txn_protocol``: every lock is settled (decide abort-if-absent at the
primary, then finish as the record says), every unfinished record is
finished everywhere, and the clients ack their seqs.

Checked:

- after every step, every group equals a model of the participant written
  from the documented rules (``shardkv.fsm.txn``): data and metadata,
  revision, key count, locks, prepared transactions, records, and every
  command's exact result, so a conflicting prepare or plain write is refused
  exactly while a lock is held;
- every transaction is all or nothing across its groups;
- serializability: applying the committed transactions (and plain writes)
  one at a time in the order of their commit point (the decide that wrote
  COMMITTED; a one-phase apply) gives the final state, each one's branch is
  the one its compares choose in that order, and each result is what that
  order gives;
- nothing is left at the end: no lock, no prepared transaction, no record;
- the same log applied in other rounds (batches) gives the same results and
  the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from hypothesis import given, settings
from hypothesis import strategies as st

from shardkv.fsm.kv import KeyValueStateMachine, command_shape
from shardkv.limits import check_command
from shardkv.storage import ColumnFamily, MemoryEngine, StorageEngine, keys
from shardkv.txn_protocol import decide_command, finish_command, forget_command
from shardkv.v1 import kv_pb2
from tests.unit.engines import replayed

GROUPS = (1, 2, 3)
KEYS = (b"a", b"b", b"c", b"d", b"e", b"f")
VALUES = (b"", b"v1", b"v2")
DEADLINE_MS = 1_700_000_000_000
PLAIN_CLIENT = 100
MAX_ACTIONS = 70
# A coordinator that meets a lock this many times gives up (aborts): two
# transactions waiting for each other cannot wait forever (the router's wait-die).
MAX_LOCKED = 3

TxnKey: TypeAlias = tuple[int, int]
Target: TypeAlias = kv_pb2.Compare.Target
Operator: TypeAlias = kv_pb2.Compare.Operator
_Compare = kv_pb2.Compare

PROPERTIES = settings(max_examples=120, deadline=None, derandomize=True, database=None)


def group_of(key: bytes) -> int:
    return GROUPS[KEYS.index(key) % len(GROUPS)]


def key_of(operation: kv_pb2.Operation) -> bytes:
    kind = operation.WhichOneof("kind")
    assert kind is not None
    key: bytes = getattr(operation, kind).key
    return key


def prepare_keys(prepare: kv_pb2.TxnPrepare) -> list[bytes]:
    """Every key of the compares and both branches, once each, in order."""
    found = [compare.key for compare in prepare.compares]
    found += [key_of(operation) for operation in (*prepare.then_ops, *prepare.else_ops)]
    return list(dict.fromkeys(found))


def name(txn: kv_pb2.TxnRef) -> TxnKey:
    return txn.client_id, txn.seq


# -- the model of one group --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    value: bytes
    version: int
    create_revision: int
    mod_revision: int

    def key_value(self, key: bytes) -> kv_pb2.KeyValue:
        return kv_pb2.KeyValue(
            key=key,
            value=self.value,
            version=self.version,
            create_revision=self.create_revision,
            mod_revision=self.mod_revision,
        )


def _sign(actual: bytes | int, expected: bytes | int) -> int:
    if isinstance(actual, bytes) and isinstance(expected, bytes):
        return (actual > expected) - (actual < expected)
    assert isinstance(actual, int) and isinstance(expected, int)
    return (actual > expected) - (actual < expected)


def holds(compare: kv_pb2.Compare, stored: Stored | None) -> bool:
    """etcd's compare: an absent key has no value (false) and version, revisions 0."""
    actual: bytes | int
    expected: bytes | int
    if compare.target == _Compare.VALUE:
        if stored is None:
            return False
        actual, expected = stored.value, compare.value
    else:
        if stored is None:
            actual = 0
        elif compare.target == _Compare.VERSION:
            actual = stored.version
        elif compare.target == _Compare.CREATE_REVISION:
            actual = stored.create_revision
        else:
            actual = stored.mod_revision
        expected = compare.number
    sign = _sign(actual, expected)
    return {
        _Compare.EQUAL: sign == 0,
        _Compare.NOT_EQUAL: sign != 0,
        _Compare.GREATER: sign > 0,
        _Compare.LESS: sign < 0,
    }[compare.operator]


def preview(
    operations: list[kv_pb2.Operation], data: dict[bytes, Stored]
) -> list[kv_pb2.OperationResult]:
    """Each operation's result against ``data`` as it is (a put reports metadata only)."""
    results = []
    for operation in operations:
        key = key_of(operation)
        stored = data.get(key)
        put = operation.HasField("put")
        result = kv_pb2.OperationResult(succeeded=stored is not None or put)
        if stored is not None:
            result.previous.CopyFrom(stored.key_value(key))
            if put:
                result.previous.value = b""
        results.append(result)
    return results


def write(data: dict[bytes, Stored], operations: list[kv_pb2.Operation], revision: int) -> bool:
    """Apply the puts and deletes of ``operations`` at ``revision``; whether any wrote."""
    wrote = False
    for operation in operations:
        key = key_of(operation)
        previous = data.get(key)
        if operation.HasField("put"):
            value = operation.put.value
            if previous is None:
                data[key] = Stored(value, 1, revision, revision)
            else:
                data[key] = Stored(value, previous.version + 1, previous.create_revision, revision)
            wrote = True
        elif operation.HasField("delete") and previous is not None:
            del data[key]
            wrote = True
    return wrote


@dataclass(frozen=True, slots=True)
class PlainWrite:
    operations: list[kv_pb2.Operation]
    revision: int


@dataclass(frozen=True, slots=True)
class Commit:
    txn: TxnKey
    then_branch: bool


@dataclass
class GroupModel:
    """What one group should hold, by the rules the participant documents."""

    group_id: int
    world: World
    data: dict[bytes, Stored] = field(default_factory=dict)
    revision: int = 0
    locks: dict[bytes, kv_pb2.LockInfo] = field(default_factory=dict)
    prepared: dict[TxnKey, kv_pb2.PreparedTxn] = field(default_factory=dict)
    records: dict[TxnKey, kv_pb2.TxnRecord] = field(default_factory=dict)
    results: dict[TxnKey, kv_pb2.CommandResult] = field(default_factory=dict)
    floors: dict[int, int] = field(default_factory=dict)

    def apply(self, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        if not command.client_id:
            return self._execute(command)
        client_id, seq = command.client_id, command.seq
        floor = self.floors.get(client_id, 0)
        if seq <= floor:
            return kv_pb2.CommandResult(stale=True)
        if (client_id, seq) in self.results:
            return replayed(self.results[(client_id, seq)])
        result = self._execute(command)
        if result.HasField("locked"):
            return result
        result.shape = command_shape(command)
        self.results[(client_id, seq)] = result
        new_floor = max(floor, min(command.acked_seq, seq - 1))
        if new_floor > floor:
            for txn in [txn for txn in self.results if txn[0] == client_id and txn[1] <= new_floor]:
                del self.results[txn]
            for txn, record in list(self.records.items()):
                if txn[0] == client_id and floor < txn[1] <= new_floor and record.finished:
                    del self.records[txn]
            self.floors[client_id] = new_floor
        return result

    def _locked(self, user_keys: list[bytes], txn: TxnKey | None) -> kv_pb2.CommandResult | None:
        for key in user_keys:
            lock = self.locks.get(key)
            if lock is not None and name(lock.txn) != txn:
                return kv_pb2.CommandResult(locked=lock, revision=self.revision)
        return None

    def _write(self, operations: list[kv_pb2.Operation]) -> int | None:
        """The new revision, if ``operations`` wrote anything."""
        if write(self.data, operations, self.revision + 1):
            self.revision += 1
            return self.revision
        return None

    def _execute(self, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        kind = command.txn.WhichOneof("kind")
        if kind is None:
            return self._plain(command)
        step = command.txn
        if kind == "prepare":
            return self._prepare(
                kv_pb2.TxnRef(client_id=command.client_id, seq=command.seq), step.prepare
            )
        if kind == "decide":
            return self._decide(step.decide)
        if kind == "finish":
            self._finish(step.finish.txn, step.finish.commit, step.finish.then_branch)
        else:
            self._forget(step.forget.txn)
        return kv_pb2.CommandResult(revision=self.revision)

    def _plain(self, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        operations = list(command.operations)
        locked = self._locked([key_of(operation) for operation in operations], None)
        if locked is not None:
            return locked
        results = preview(operations, self.data)
        revision = self._write(operations)
        if revision is not None:
            self.world.commits.append(PlainWrite(operations, revision))
        return kv_pb2.CommandResult(results=results, revision=self.revision)

    def _evaluate(self, prepare: kv_pb2.TxnPrepare) -> kv_pb2.TxnOutcome:
        return kv_pb2.TxnOutcome(
            succeeded=all(holds(each, self.data.get(each.key)) for each in prepare.compares),
            then_results=preview(list(prepare.then_ops), self.data),
            else_results=preview(list(prepare.else_ops), self.data),
        )

    def _prepare(self, txn: kv_pb2.TxnRef, prepare: kv_pb2.TxnPrepare) -> kv_pb2.CommandResult:
        if prepare.one_phase:
            locked = self._locked(prepare_keys(prepare), None)
            if locked is not None:
                return locked
            evaluated = self._evaluate(prepare)
            branch = prepare.then_ops if evaluated.succeeded else prepare.else_ops
            self._commit(name(txn), list(branch))
            self.world.commits.append(Commit(name(txn), evaluated.succeeded))
            chosen = evaluated.then_results if evaluated.succeeded else evaluated.else_results
            return kv_pb2.CommandResult(
                txn=kv_pb2.TxnOutcome(
                    succeeded=evaluated.succeeded, then_results=chosen, one_phase=True
                ),
                revision=self.revision,
            )
        if name(txn) in self.prepared:
            return kv_pb2.CommandResult(
                txn=self.prepared[name(txn)].outcome, revision=self.revision
            )
        if name(txn) in self.records:
            return kv_pb2.CommandResult(
                txn=kv_pb2.TxnOutcome(record=self.records[name(txn)]), revision=self.revision
            )
        locked = self._locked(prepare_keys(prepare), name(txn))
        if locked is not None:
            return locked
        outcome = self._evaluate(prepare)
        for key in prepare_keys(prepare):
            self.locks[key] = kv_pb2.LockInfo(
                key=key, txn=txn, primary_key=prepare.primary_key, deadline_ms=prepare.deadline_ms
            )
        self.prepared[name(txn)] = kv_pb2.PreparedTxn(txn=txn, prepare=prepare, outcome=outcome)
        return kv_pb2.CommandResult(txn=outcome, revision=self.revision)

    def _decide(self, decide: kv_pb2.TxnDecide) -> kv_pb2.CommandResult:
        txn = name(decide.txn)
        if txn in self.records:
            record = self.records[txn]
            return kv_pb2.CommandResult(
                txn=kv_pb2.TxnOutcome(
                    succeeded=record.state == kv_pb2.TXN_COMMITTED, record=record
                ),
                revision=self.revision,
            )
        prepared = self.prepared.get(txn)
        commit = decide.commit and prepared is not None
        record = kv_pb2.TxnRecord(
            txn=decide.txn,
            state=kv_pb2.TXN_COMMITTED if commit else kv_pb2.TXN_ABORTED,
            then_branch=decide.then_branch,
            primary_key=decide.primary_key,
        )
        if prepared is not None:
            record.participant_keys.extend(prepared.prepare.participant_keys)
            record.deadline_ms = prepared.prepare.deadline_ms
            record.primary_key = prepared.prepare.primary_key
        self.records[txn] = record
        self.world.decided.setdefault(txn, commit)
        if commit:
            self.world.commits.append(Commit(txn, decide.then_branch))
        self._finish(decide.txn, commit, decide.then_branch)
        return kv_pb2.CommandResult(
            txn=kv_pb2.TxnOutcome(succeeded=commit, record=record), revision=self.revision
        )

    def _finish(self, txn_ref: kv_pb2.TxnRef, commit: bool, then_branch: bool) -> None:
        txn = name(txn_ref)
        prepared = self.prepared.pop(txn, None)
        if prepared is None:
            return
        for key in prepare_keys(prepared.prepare):
            if key in self.locks and name(self.locks[key].txn) == txn:
                del self.locks[key]
        if commit:
            branch = prepared.prepare.then_ops if then_branch else prepared.prepare.else_ops
            self._commit(txn, list(branch))

    def _commit(self, txn: TxnKey, branch: list[kv_pb2.Operation]) -> None:
        """The transaction's branch applies here: one revision, if it writes."""
        revision = self._write(branch)
        if revision is not None:
            self.world.txn_revisions[(txn, self.group_id)] = revision
        self.world.applied.setdefault(txn, set()).add(self.group_id)

    def _forget(self, txn_ref: kv_pb2.TxnRef) -> None:
        txn = name(txn_ref)
        record = self.records.get(txn)
        if record is None:
            return
        if self.floors.get(txn_ref.client_id, 0) >= txn_ref.seq:
            del self.records[txn]
            return
        record.finished = True


# -- transactions and their coordinators ---------------------------------------------------

PREPARE, DECIDE, ABORT, FINISH, FORGET, DONE, CRASHED = (
    "prepare",
    "decide",
    "abort",
    "finish",
    "forget",
    "done",
    "crashed",
)


@dataclass(frozen=True, slots=True)
class CompareSpec:
    """A compare whose operand is fixed when its transaction starts.

    Anchored to what the key holds then (``anchor`` 0: the same, 1: one
    below, 2: one above; 3: ``value`` or ``number`` as drawn), so that
    compares hold about as often as they fail.
    """

    key: bytes
    target: Target
    operator: Operator
    anchor: int
    value: bytes
    number: int

    def resolve(self, stored: Stored | None) -> kv_pb2.Compare:
        compare = kv_pb2.Compare(key=self.key, target=self.target, operator=self.operator)
        if self.target == _Compare.VALUE:
            anchored = self.anchor == 0 and stored is not None
            compare.value = stored.value if anchored and stored is not None else self.value
            return compare
        if stored is None:
            actual = 0
        elif self.target == _Compare.VERSION:
            actual = stored.version
        elif self.target == _Compare.CREATE_REVISION:
            actual = stored.create_revision
        else:
            actual = stored.mod_revision
        compare.number = (
            max(0, actual + (0, -1, 1)[self.anchor]) if self.anchor < 3 else self.number
        )
        return compare


OperationSpec: TypeAlias = tuple[str, bytes, bytes]
Spec: TypeAlias = tuple[list[CompareSpec], list[OperationSpec], list[OperationSpec]]


@dataclass
class Txn:
    """A transaction, split by group when it starts, and its coordinator's state."""

    ref: kv_pb2.TxnRef
    spec: Spec
    crash_after: int | None
    prepares: dict[int, kv_pb2.TxnPrepare] = field(default_factory=dict)
    primary: int = 0
    phase: str = PREPARE
    pending: list[int] = field(default_factory=list)
    outcomes: dict[int, kv_pb2.TxnOutcome] = field(default_factory=dict)
    one_phase_result: kv_pb2.CommandResult | None = None
    record: kv_pb2.TxnRecord | None = None
    to_finish: list[int] = field(default_factory=list)
    actions: int = 0
    locked: int = 0

    @property
    def one_phase(self) -> bool:
        return len(self.prepares) == 1

    def command(self, group_id: int) -> kv_pb2.Command:
        made = kv_pb2.Command(
            client_id=self.ref.client_id,
            seq=self.ref.seq,
            txn=kv_pb2.TxnStep(prepare=self.prepares[group_id]),
        )
        check_command(made)
        return made

    def plan(self, data: dict[bytes, Stored]) -> None:
        """Split by group as the router does; the group of the first key is the primary."""
        compares, then_spec, else_spec = self.spec
        order: list[bytes] = []

        def part(key: bytes) -> kv_pb2.TxnPrepare:
            order.append(key)
            return self.prepares.setdefault(group_of(key), kv_pb2.TxnPrepare())

        for compare in compares:
            part(compare.key).compares.append(compare.resolve(data.get(compare.key)))
        for branch_spec, then in ((then_spec, True), (else_spec, False)):
            written: set[bytes] = set()
            for kind, key, value in branch_spec:
                if kind != "get" and key in written:
                    continue  # a branch writes a key at most once
                if kind == "put":
                    operation = kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))
                    written.add(key)
                elif kind == "delete":
                    operation = kv_pb2.Operation(delete=kv_pb2.Delete(key=key))
                    written.add(key)
                else:
                    operation = kv_pb2.Operation(get=kv_pb2.Get(key=key))
                prepare = part(key)
                (prepare.then_ops if then else prepare.else_ops).append(operation)
        self.primary = group_of(order[0])
        for group_id, prepare in self.prepares.items():
            prepare.primary_key = order[0]
            prepare.deadline_ms = DEADLINE_MS
            if len(self.prepares) == 1:
                prepare.one_phase = True
            elif group_id == self.primary:
                prepare.participant_keys.extend(
                    prepare_keys(each)[0] for each in self.prepares.values()
                )
        self.pending = sorted(self.prepares)


compare_specs = st.builds(
    CompareSpec,
    key=st.sampled_from(KEYS),
    target=st.sampled_from(
        [_Compare.VALUE, _Compare.VERSION, _Compare.CREATE_REVISION, _Compare.MOD_REVISION]
    ),
    operator=st.sampled_from([_Compare.EQUAL, _Compare.NOT_EQUAL, _Compare.GREATER, _Compare.LESS]),
    anchor=st.integers(0, 3),
    value=st.sampled_from(VALUES),
    number=st.integers(0, 6),
)
operation_specs = st.tuples(
    st.sampled_from(["put", "put", "delete", "get"]), st.sampled_from(KEYS), st.sampled_from(VALUES)
)
txn_specs: st.SearchStrategy[Spec] = st.tuples(
    st.lists(compare_specs, max_size=3),
    st.lists(operation_specs, max_size=4),
    st.lists(operation_specs, max_size=3),
).filter(lambda spec: any(spec))


# -- the world: machines, models, and what happened --------------------------------------


class World:
    def __init__(self) -> None:
        self.engine = MemoryEngine()
        self.machines = {g: KeyValueStateMachine(self.engine, g) for g in GROUPS}
        self.models = {g: GroupModel(g, self) for g in GROUPS}
        self.txns: dict[TxnKey, Txn] = {}
        # Every command applied, with its group and result, in order.
        self.log: list[tuple[int, kv_pb2.Command, kv_pb2.CommandResult]] = []
        # Plain writes and commit points, in the order they happened.
        self.commits: list[PlainWrite | Commit] = []
        # The revision a transaction's branch wrote in a group.
        self.txn_revisions: dict[tuple[TxnKey, int], int] = {}
        # The groups where a transaction's branch applied.
        self.applied: dict[TxnKey, set[int]] = {}
        # Whether a transaction's first record said COMMITTED.
        self.decided: dict[TxnKey, bool] = {}
        self.plain_seq = 0
        # The seqs of clients' commands that ack (above every transaction's seq).
        self.ack_seq = 1000

    def step(self, group_id: int, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        """Apply ``command`` in its own round; check the result and the group against the model."""
        batch = self.engine.new_batch()
        result = self.machines[group_id].apply(batch, command)
        self.engine.write(batch, sync=False)
        self.log.append((group_id, command, result))
        expected = self.models[group_id].apply(command)
        assert result == expected, f"group {group_id} answered {command} with {result}"
        self.check(group_id)
        return result

    def keys(self) -> dict[bytes, Stored]:
        """Every group's keys (the models, equal to the machines after every step)."""
        return {key: stored for model in self.models.values() for key, stored in model.data.items()}

    def check(self, group_id: int) -> None:
        machine, model = self.machines[group_id], self.models[group_id]
        assert list(machine.scan()) == [
            model.data[key].key_value(key) for key in sorted(model.data)
        ]
        assert (machine.revision, machine.key_count) == (model.revision, len(model.data))
        assert machine.txns.locks == model.locks
        assert {name(p.txn): p for p in machine.txns.prepared()} == model.prepared
        assert {name(r.txn): r for r in machine.txns.records()} == model.records
        assert machine.txns.open_records == {
            txn: record for txn, record in model.records.items() if not record.finished
        }

    # -- actors ----------------------------------------------------------------------

    def coordinate(self, txn: Txn, data: st.DataObject) -> None:
        """One step of ``txn``'s coordinator (the router's ``Coordinator``)."""
        txn.actions += 1
        if txn.crash_after is not None and txn.actions > txn.crash_after:
            txn.phase = CRASHED
            return
        if not txn.prepares:
            txn.plan(self.keys())  # it starts now, reading the groups as they are
        if txn.phase == PREPARE:
            group_id = data.draw(st.sampled_from(txn.pending), label="prepare at")
            result = self.step(group_id, txn.command(group_id))
            if result.HasField("locked"):
                txn.locked += 1
                if txn.locked >= MAX_LOCKED or data.draw(st.booleans(), label="give up"):
                    txn.phase = DONE if txn.one_phase else ABORT
                return
            if txn.one_phase:
                txn.one_phase_result = result
                txn.phase = DONE
                return
            if result.txn.HasField("record"):
                txn.phase = ABORT  # a resolver aborted it before the primary prepared
                return
            txn.outcomes[group_id] = result.txn
            txn.pending.remove(group_id)
            if not txn.pending:
                txn.phase = DECIDE
        elif txn.phase in (DECIDE, ABORT):
            commit = txn.phase == DECIDE
            then_branch = commit and all(outcome.succeeded for outcome in txn.outcomes.values())
            decided = self.step(txn.primary, decide_command(txn.ref, commit, then_branch, b""))
            txn.record = decided.txn.record
            txn.to_finish = sorted(set(txn.prepares) - {txn.primary})
            txn.phase = FINISH
        elif txn.phase == FINISH:
            assert txn.record is not None
            if txn.to_finish:
                self.step(txn.to_finish.pop(0), finish_command(txn.record))
            else:
                self.step(txn.primary, forget_command(txn.ref))
                txn.phase = DONE

    def settle(self, group_id: int, lock: kv_pb2.LockInfo) -> None:
        """``txn_protocol.settle_lock`` for a lock whose deadline has passed."""
        primary = group_of(lock.primary_key)
        _, record = self.machines[primary].txns.find(lock.txn)
        if record is None:
            record = self.step(primary, decide_command(lock.txn, False, False, b"")).txn.record
        if group_id != primary:
            self.step(group_id, finish_command(record))

    def plain(self, key: bytes, value: bytes | None) -> None:
        self.plain_seq += 1
        if value is None:
            operation = kv_pb2.Operation(delete=kv_pb2.Delete(key=key))
        else:
            operation = kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))
        self.step(
            group_of(key),
            kv_pb2.Command(client_id=PLAIN_CLIENT, seq=self.plain_seq, operations=[operation]),
        )

    def retry(self, index: int) -> None:
        """Resend an answered prepare: the session answers it (or, once acked, calls it stale)."""
        group_id, command, original = self.answered()[index]
        batch = self.engine.new_batch()
        again = self.machines[group_id].apply(batch, command)
        assert len(batch) == 0, "a retry wrote"
        batch.discard()
        assert again == self.models[group_id].apply(command)
        assert again.stale or again == replayed(original)

    def answered(self) -> list[tuple[int, kv_pb2.Command, kv_pb2.CommandResult]]:
        return [
            (group_id, command, result)
            for group_id, command, result in self.log
            if command.txn.HasField("prepare") and not result.HasField("locked")
        ]

    def restart(self, group_id: int) -> None:
        """A new state machine on the same engine: what it loads must be what was there."""
        self.machines[group_id] = KeyValueStateMachine(self.engine, group_id)
        self.check(group_id)

    def recover(self) -> None:
        """Every coordinator gone: settle every lock, then finish every unfinished record."""
        for _ in range(100):
            found = [
                (group_id, lock)
                for group_id in GROUPS
                for _, lock in sorted(self.machines[group_id].txns.locks.items())
            ]
            if not found:
                break
            self.settle(*found[0])
        else:
            raise AssertionError("settling locks does not release them")
        for primary in GROUPS:
            for record in self.machines[primary].txns.records():
                if record.finished:
                    continue
                others = {group_of(key) for key in record.participant_keys} - {primary}
                for group_id in sorted(others):
                    self.step(group_id, finish_command(record))
                self.step(primary, forget_command(record.txn))

    def ack(self, client_id: int, group_id: int, acked_seq: int) -> None:
        """The client's next command in the group: a write of nothing, acking ``acked_seq``."""
        self.ack_seq += 1
        nothing = kv_pb2.Operation(delete=kv_pb2.Delete(key=b"ack"))
        self.step(
            group_id,
            kv_pb2.Command(
                client_id=client_id, seq=self.ack_seq, acked_seq=acked_seq, operations=[nothing]
            ),
        )

    def answered_seqs(self, client_id: int) -> int:
        """The client's seqs it has its answer for: up to the first still running."""
        acked = 0
        for seq in range(1, len(self.txns) + 1):
            txn = self.txns.get((client_id, seq))
            if txn is None or txn.phase not in (DONE, CRASHED):
                break
            acked = seq
        return acked

    def ack_everything(self) -> None:
        """Each client's next command in every group acks all its seqs."""
        for client_id in sorted({client_id for client_id, _ in self.txns}):
            for group_id in GROUPS:
                self.ack(client_id, group_id, self.answered_seqs(client_id))


def run_world(data: st.DataObject) -> World:
    """Random transactions, interleaved with crashes, resolvers and plain writes, then recovery."""
    world = World()
    # Keys written before, some several times (so that versions and revisions differ).
    for key in KEYS:
        for _ in range(data.draw(st.integers(0, 2), label="writes before")):
            world.plain(key, data.draw(st.sampled_from(VALUES), label="value before"))
    specs = data.draw(st.lists(txn_specs, min_size=2, max_size=6), label="transactions")
    seqs: dict[int, int] = {}
    for index, spec in enumerate(specs):
        client_id = 1 + index % 3
        seqs[client_id] = seqs.get(client_id, 0) + 1
        ref = kv_pb2.TxnRef(client_id=client_id, seq=seqs[client_id])
        crash_after = data.draw(st.none() | st.integers(0, 8), label="crash after")
        world.txns[name(ref)] = Txn(ref, spec, crash_after)
    actions = ["coordinate"] * 6 + ["settle", "retry", "plain", "restart", "ack"]
    for _ in range(MAX_ACTIONS):
        live = [txn for txn in world.txns.values() if txn.phase not in (DONE, CRASHED)]
        if not live:
            break
        action = data.draw(st.sampled_from(actions), label="action")
        locks = [
            (group_id, lock)
            for group_id in GROUPS
            for _, lock in sorted(world.machines[group_id].txns.locks.items())
        ]
        if action == "settle" and locks:
            world.settle(*data.draw(st.sampled_from(locks), label="lock"))
        elif action == "retry" and world.answered():
            world.retry(data.draw(st.integers(0, len(world.answered()) - 1), label="retry"))
        elif action == "plain":
            key = data.draw(st.sampled_from(KEYS), label="plain key")
            world.plain(key, data.draw(st.none() | st.sampled_from(VALUES), label="plain value"))
        elif action == "restart":
            world.restart(data.draw(st.sampled_from(GROUPS), label="restart"))
        elif action == "ack":
            client_id = data.draw(st.sampled_from(sorted({c for c, _ in world.txns})), label="ack")
            group_id = data.draw(st.sampled_from(GROUPS), label="ack at")
            world.ack(client_id, group_id, world.answered_seqs(client_id))
        else:
            world.coordinate(data.draw(st.sampled_from(live), label="coordinator"), data)
    for txn in world.txns.values():
        if txn.phase != DONE:
            txn.phase = CRASHED
    world.recover()
    return world


# -- the properties ---------------------------------------------------------------------


def assert_all_or_nothing(world: World) -> None:
    for txn_key, txn in world.txns.items():
        applied = world.applied.get(txn_key, set())
        if txn.one_phase:
            assert applied == (set(txn.prepares) if txn.one_phase_result is not None else set())
        elif world.decided.get(txn_key, False):
            assert applied == set(txn.prepares), f"{txn_key} committed in {applied} only"
        else:
            assert applied == set(), f"{txn_key} not committed, yet applied in {applied}"


def assert_serializable(world: World) -> None:
    """The commit points, one at a time, explain every branch, result and final key."""
    serial: dict[bytes, Stored] = {}
    for event in world.commits:
        if isinstance(event, PlainWrite):
            write(serial, event.operations, event.revision)
            continue
        txn = world.txns[event.txn]
        chosen = all(
            holds(compare, serial.get(compare.key))
            for prepare in txn.prepares.values()
            for compare in prepare.compares
        )
        assert chosen == event.then_branch, f"{event.txn} took the wrong branch in commit order"
        branches = {
            group_id: list(prepare.then_ops if chosen else prepare.else_ops)
            for group_id, prepare in txn.prepares.items()
        }
        for group_id, branch in branches.items():
            if txn.one_phase:
                assert txn.one_phase_result is not None
                answered = list(txn.one_phase_result.txn.then_results)
            else:
                outcome = txn.outcomes[group_id]
                answered = list(outcome.then_results if chosen else outcome.else_results)
            assert answered == preview(branch, serial), f"{event.txn}'s results in group {group_id}"
        for group_id, branch in branches.items():
            revision = world.txn_revisions.get((event.txn, group_id), 0)
            assert write(serial, branch, revision) == bool(revision)
    assert serial == world.keys()


def assert_nothing_left(world: World) -> None:
    for group_id, machine in world.machines.items():
        assert machine.txns.locks == {}, f"locks left in group {group_id}"
        assert machine.txns.prepared() == [], f"prepared transactions left in group {group_id}"
        assert machine.txns.records() == [], f"records left in group {group_id}"
        reloaded = KeyValueStateMachine(world.engine, group_id)
        assert reloaded.txns.locks == {} and reloaded.key_count == machine.key_count


@PROPERTIES
@given(st.data())
def test_transactions_are_atomic_serializable_and_leave_nothing(data: st.DataObject) -> None:
    world = run_world(data)
    assert_all_or_nothing(world)
    assert_serializable(world)
    world.ack_everything()
    assert_nothing_left(world)


def dump(engine: StorageEngine) -> tuple[list[tuple[bytes, bytes]], ...]:
    return tuple(
        list(engine.scan(cf, *keys.group_range(group_id)))
        for cf in (ColumnFamily.DATA, ColumnFamily.META)
        for group_id in GROUPS
    )


@PROPERTIES
@given(st.data())
def test_the_same_log_in_other_rounds_gives_the_same_state(data: st.DataObject) -> None:
    """Determinism across round boundaries, the way a lagging follower applies the log."""
    world = run_world(data)
    world.ack_everything()
    replica = MemoryEngine()
    machines = {g: KeyValueStateMachine(replica, g) for g in GROUPS}
    rounds: list[list[tuple[int, kv_pb2.Command, kv_pb2.CommandResult]]] = []
    limit = 0
    for entry in world.log:
        if not rounds or len(rounds[-1]) >= limit:
            rounds.append([])
            limit = data.draw(st.integers(1, 30), label="round size")
        rounds[-1].append(entry)
    for each in rounds:
        batch = replica.new_batch()
        for group_id, command, result in each:
            assert machines[group_id].apply(batch, command) == result
        replica.write(batch, sync=False)
    assert dump(replica) == dump(world.engine)
    for group_id, machine in machines.items():
        assert machine.txns.locks == world.machines[group_id].txns.locks
        assert machine.txns.open_records == world.machines[group_id].txns.open_records
