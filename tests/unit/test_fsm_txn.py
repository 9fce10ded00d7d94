"""One group's side of a cross-group transaction (``shardkv.fsm.txn``), applied directly.

Every step is a committed ``Command`` applied to a ``KeyValueStateMachine``
(no processes, no network): compares, prepare (locks, results against the
state before the transaction), the refusals a lock causes, decide at the
primary (the commit point, first record wins), finish, forget, one phase,
and what survives a restart and a snapshot. Everything runs on
``MemoryEngine`` and RocksDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import pytest

from shardkv.errors import InvalidArgument
from shardkv.fsm.kv import KeyValueStateMachine, Record
from shardkv.fsm.snapshot import build_snapshot_data, stage_install_snapshot_data
from shardkv.fsm.txn import compare_holds
from shardkv.limits import check_command, check_txn
from shardkv.storage import ColumnFamily, MemoryEngine, StorageEngine, keys
from shardkv.txn_protocol import decide_command, forget_command, step_keys
from shardkv.v1 import kv_pb2
from tests.unit.engines import engine_opener, replayed
from tests.unit.test_fsm_kv import cas, command, delete, put
from tests.unit.test_fsm_kv import engine as engine  # the fixture: both engines

GROUP = 1
DEADLINE_MS = 1_700_000_000_000
_Compare = kv_pb2.Compare
Target: TypeAlias = kv_pb2.Compare.Target
Operator: TypeAlias = kv_pb2.Compare.Operator
VALUE, VERSION = _Compare.VALUE, _Compare.VERSION
CREATE, MOD = _Compare.CREATE_REVISION, _Compare.MOD_REVISION
LEASE = _Compare.LEASE
EQUAL, NOT_EQUAL, GREATER, LESS = (
    _Compare.EQUAL,
    _Compare.NOT_EQUAL,
    _Compare.GREATER,
    _Compare.LESS,
)


# -- helpers ---------------------------------------------------------------------


def get(key: bytes) -> kv_pb2.Operation:
    return kv_pb2.Operation(get=kv_pb2.Get(key=key))


def compare(
    key: bytes, target: Target, operator: Operator, value: bytes = b"", number: int = 0
) -> kv_pb2.Compare:
    return kv_pb2.Compare(key=key, target=target, operator=operator, value=value, number=number)


def ref(client_id: int, seq: int) -> kv_pb2.TxnRef:
    return kv_pb2.TxnRef(client_id=client_id, seq=seq)


def prepare(
    client_id: int,
    seq: int,
    *,
    compares: Sequence[kv_pb2.Compare] = (),
    then: Sequence[kv_pb2.Operation] = (),
    otherwise: Sequence[kv_pb2.Operation] = (),
    primary_key: bytes = b"",
    participant_keys: Sequence[bytes] = (),
    one_phase: bool = False,
    acked_seq: int = 0,
) -> kv_pb2.Command:
    """A prepare command, as the router sends it (checked against the limits first)."""
    step = kv_pb2.TxnPrepare(
        compares=compares,
        then_ops=then,
        else_ops=otherwise,
        deadline_ms=DEADLINE_MS,
        one_phase=one_phase,
        participant_keys=participant_keys,
    )
    step.primary_key = primary_key or step_keys(step)[0]
    made = kv_pb2.Command(
        client_id=client_id, seq=seq, acked_seq=acked_seq, txn=kv_pb2.TxnStep(prepare=step)
    )
    check_command(made)
    return made


def decide(txn: kv_pb2.TxnRef, commit: bool, then_branch: bool = True) -> kv_pb2.Command:
    return decide_command(txn, commit, then_branch, b"")


def finish(txn: kv_pb2.TxnRef, commit: bool, then_branch: bool = True) -> kv_pb2.Command:
    return kv_pb2.Command(
        txn=kv_pb2.TxnStep(finish=kv_pb2.TxnFinish(txn=txn, commit=commit, then_branch=then_branch))
    )


def forget(txn: kv_pb2.TxnRef) -> kv_pb2.Command:
    return forget_command(txn)


def run(machine: KeyValueStateMachine, *commands: kv_pb2.Command) -> list[kv_pb2.CommandResult]:
    """Apply ``commands`` in one round: one batch, written once."""
    batch = machine.engine.new_batch()
    results = [machine.apply(batch, each) for each in commands]
    machine.engine.write(batch, sync=False)
    return results


def run_one(machine: KeyValueStateMachine, each: kv_pb2.Command) -> kv_pb2.CommandResult:
    [result] = run(machine, each)
    return result


def writes_nothing(machine: KeyValueStateMachine, each: kv_pb2.Command) -> kv_pb2.CommandResult:
    """Apply ``each`` and check that it staged no write at all."""
    batch = machine.engine.new_batch()
    result = machine.apply(batch, each)
    assert len(batch) == 0, f"{each} wrote {len(batch)} records"
    batch.discard()
    return result


def value_of(machine: KeyValueStateMachine, key: bytes) -> bytes | None:
    found = machine.get(key)
    return found.value if found is not None else None


def metadata(machine: KeyValueStateMachine, key: bytes) -> tuple[bytes, int, int, int]:
    found = machine.get(key)
    assert found is not None, f"{key!r} is absent"
    return found.value, found.version, found.create_revision, found.mod_revision


def state(engine: StorageEngine, group_id: int = GROUP) -> tuple[object, ...]:
    """Every record of the group's state machine: data and meta."""
    start, end = keys.group_range(group_id)
    return (
        list(engine.scan(ColumnFamily.DATA, start, end)),
        list(engine.scan(ColumnFamily.META, *keys.state_machine_meta_range(group_id))),
    )


def recorded(engine: StorageEngine, client_id: int, seq: int) -> bool:
    """Whether the session holds a result for ``(client_id, seq)``."""
    return engine.get(ColumnFamily.META, keys.result_key(GROUP, client_id, seq)) is not None


def locked_keys(machine: KeyValueStateMachine) -> dict[bytes, tuple[int, int]]:
    return {key: (lock.txn.client_id, lock.txn.seq) for key, lock in machine.txns.locks.items()}


def stored_locks(engine: StorageEngine) -> list[bytes]:
    low, high = keys.lock_range(GROUP)
    return [key[len(low) :] for key, _ in engine.scan(ColumnFamily.META, low, high)]


def seeded(engine: StorageEngine) -> KeyValueStateMachine:
    """A group with ``a`` = 1 (version 2, created at revision 1, written at 2) and ``b`` = 2."""
    machine = KeyValueStateMachine(engine, GROUP)
    run(machine, command(put(b"a", b"0")))
    run(machine, command(put(b"a", b"1"), put(b"b", b"2")))
    assert metadata(machine, b"a") == (b"1", 2, 1, 2)
    assert metadata(machine, b"b") == (b"2", 1, 2, 2)
    return machine


# -- compares ----------------------------------------------------------------------

# The key as stored: value "m", version 3, created at revision 4, written at 9.
STORED = Record(b"m", version=3, create_revision=4, mod_revision=9)


@pytest.mark.parametrize(
    ("target", "operand", "equal", "greater", "less"),
    [
        # Values compare as bytes: "m" against "m", "l" (below) and "n" (above).
        (VALUE, b"m", True, False, False),
        (VALUE, b"l", False, True, False),
        (VALUE, b"n", False, False, True),
        (VALUE, b"mm", False, False, True),
        (VERSION, 3, True, False, False),
        (VERSION, 2, False, True, False),
        (VERSION, 4, False, False, True),
        (CREATE, 4, True, False, False),
        (CREATE, 3, False, True, False),
        (CREATE, 5, False, False, True),
        (MOD, 9, True, False, False),
        (MOD, 8, False, True, False),
        (MOD, 10, False, False, True),
    ],
)
def test_each_target_under_each_operator(
    target: Target, operand: bytes | int, equal: bool, greater: bool, less: bool
) -> None:
    expected = {EQUAL: equal, NOT_EQUAL: not equal, GREATER: greater, LESS: less}
    for operator, holds in expected.items():
        if isinstance(operand, bytes):
            made = compare(b"k", target, operator, value=operand)
        else:
            made = compare(b"k", target, operator, number=operand)
        assert compare_holds(made, STORED) is holds, (target, operator, operand)


def test_a_version_compare_reads_number_and_a_value_compare_reads_value() -> None:
    # The field of the other kind is ignored.
    assert compare_holds(compare(b"k", VERSION, EQUAL, value=b"x", number=3), STORED)
    assert compare_holds(compare(b"k", VALUE, EQUAL, value=b"m", number=99), STORED)


def test_a_lease_compare_reads_the_keys_lease() -> None:
    leased = Record(b"m", version=3, create_revision=4, mod_revision=9, lease=12)
    assert compare_holds(compare(b"k", LEASE, EQUAL, number=12), leased)
    assert compare_holds(compare(b"k", LEASE, GREATER, number=11), leased)
    assert compare_holds(compare(b"k", LEASE, EQUAL, number=0), STORED)  # no lease


@pytest.mark.parametrize("operator", [EQUAL, NOT_EQUAL, GREATER, LESS])
def test_an_absent_key_has_no_value_and_version_and_revisions_zero(operator: Operator) -> None:
    for operand in (b"", b"x"):
        assert not compare_holds(compare(b"k", VALUE, operator, value=operand), None)
    for target in (VERSION, CREATE, MOD, LEASE):
        zero = {EQUAL: True, NOT_EQUAL: False, GREATER: False, LESS: False}[operator]
        assert compare_holds(compare(b"k", target, operator, number=0), None) is zero
        one = {EQUAL: False, NOT_EQUAL: True, GREATER: False, LESS: True}[operator]
        assert compare_holds(compare(b"k", target, operator, number=1), None) is one


def test_compares_are_evaluated_against_the_group_state(engine: StorageEngine) -> None:
    machine = seeded(engine)
    holding = [
        compare(b"a", VALUE, EQUAL, value=b"1"),
        compare(b"a", VERSION, GREATER, number=1),
        compare(b"a", CREATE, EQUAL, number=1),
        compare(b"b", MOD, EQUAL, number=2),
        compare(b"absent", VERSION, EQUAL, number=0),
    ]
    failing = [*holding, compare(b"nothing", VALUE, NOT_EQUAL, value=b"1")]
    held = run_one(machine, prepare(1, 1, compares=holding, then=[put(b"c", b"1")]))
    assert held.txn.succeeded and not held.HasField("locked")
    failed = run_one(machine, prepare(2, 1, compares=failing[-1:], then=[put(b"d", b"1")]))
    assert not failed.HasField("locked")
    assert failed.HasField("txn") and not failed.txn.succeeded
    all_but_one = run_one(machine, prepare(3, 1, compares=failing, then=[put(b"e", b"1")]))
    assert all_but_one.HasField("locked"), "the keys of the first two are locked"
    run(machine, finish(ref(1, 1), False), finish(ref(2, 1), False))
    retried = run_one(machine, prepare(3, 1, compares=failing, then=[put(b"e", b"1")]))
    assert retried.HasField("txn") and not retried.txn.succeeded
    assert list(retried.txn.then_results) == [kv_pb2.OperationResult(succeeded=True)]


# -- prepare ----------------------------------------------------------------------


def test_prepare_locks_every_key_of_the_compares_and_both_branches(
    engine: StorageEngine,
) -> None:
    machine = seeded(engine)
    before = machine.revision, machine.key_count, list(machine.scan())
    made = prepare(
        4,
        9,
        compares=[compare(b"c", VERSION, EQUAL, number=0), compare(b"a", VALUE, EQUAL, value=b"1")],
        then=[put(b"a", b"new"), get(b"g")],
        otherwise=[delete(b"d"), get(b"a")],
        primary_key=b"p",
        participant_keys=[b"p", b"other group"],
    )
    result = run_one(machine, made)
    assert not result.HasField("locked")
    assert result.txn.succeeded
    assert result.revision == before[0]
    assert (machine.revision, machine.key_count, list(machine.scan())) == before, (
        "a prepare writes no data"
    )
    txn = ref(4, 9)
    expected = {
        key: kv_pb2.LockInfo(key=key, txn=txn, primary_key=b"p", deadline_ms=DEADLINE_MS)
        for key in (b"c", b"a", b"g", b"d")
    }
    assert machine.txns.locks == expected
    assert stored_locks(engine) == sorted(expected)
    [prepared] = machine.txns.prepared()
    assert prepared == kv_pb2.PreparedTxn(txn=txn, prepare=made.txn.prepare, outcome=result.txn)
    assert machine.txns.find(txn) == (prepared, None), "a prepare writes no record"
    assert machine.txns.records() == []
    assert recorded(engine, 4, 9), "a prepare is recorded in the session"


def test_results_of_both_branches_see_the_state_before_the_transaction(
    engine: StorageEngine,
) -> None:
    machine = seeded(engine)
    result = run_one(
        machine,
        prepare(
            1,
            1,
            compares=[compare(b"a", VALUE, EQUAL, value=b"1")],
            then=[
                put(b"a", b"new"),
                get(b"a"),  # after a put of the same key: still the old value
                put(b"c", b"created"),
                get(b"b"),
                delete(b"b"),
                get(b"c"),  # created by this branch: absent before it
                delete(b"nothing"),
            ],
            otherwise=[get(b"b"), put(b"b", b"else"), get(b"a")],
        ),
    )
    a_before = kv_pb2.KeyValue(key=b"a", value=b"1", version=2, create_revision=1, mod_revision=2)
    b_before = kv_pb2.KeyValue(key=b"b", value=b"2", version=1, create_revision=2, mod_revision=2)
    a_metadata_only = kv_pb2.KeyValue(key=b"a", version=2, create_revision=1, mod_revision=2)
    b_metadata_only = kv_pb2.KeyValue(key=b"b", version=1, create_revision=2, mod_revision=2)
    assert result.txn.succeeded
    assert list(result.txn.then_results) == [
        kv_pb2.OperationResult(succeeded=True, previous=a_metadata_only),
        kv_pb2.OperationResult(succeeded=True, previous=a_before),
        kv_pb2.OperationResult(succeeded=True),
        kv_pb2.OperationResult(succeeded=True, previous=b_before),
        kv_pb2.OperationResult(succeeded=True, previous=b_before),
        kv_pb2.OperationResult(succeeded=False),
        kv_pb2.OperationResult(succeeded=False),
    ]
    assert list(result.txn.else_results) == [
        kv_pb2.OperationResult(succeeded=True, previous=b_before),
        kv_pb2.OperationResult(succeeded=True, previous=b_metadata_only),
        kv_pb2.OperationResult(succeeded=True, previous=a_before),
    ]
    # Finishing produces exactly what the results promised.
    run(machine, finish(ref(1, 1), True, then_branch=True))
    assert metadata(machine, b"a") == (b"new", 3, 1, 3)
    assert metadata(machine, b"c") == (b"created", 1, 3, 3)
    assert machine.get(b"b") is None
    assert machine.key_count == 2


def test_a_conflicting_prepare_is_refused_and_not_recorded(engine: StorageEngine) -> None:
    machine = seeded(engine)
    first = run_one(machine, prepare(1, 1, compares=[compare(b"x", VERSION, EQUAL)]))
    assert first.txn.succeeded
    lock = machine.txns.locks[b"x"]
    # The lock is on a compared key only; a write, a read or a compare of it conflicts.
    conflicting = [
        prepare(2, 1, then=[put(b"b", b"2"), put(b"x", b"2")]),
        prepare(2, 2, otherwise=[get(b"x")]),
        prepare(2, 3, compares=[compare(b"x", VALUE, EQUAL, value=b"")], then=[put(b"y", b"")]),
        prepare(2, 4, then=[delete(b"x")], one_phase=True),
    ]
    before = state(engine)
    for each in conflicting:
        refused = run_one(machine, each)
        assert refused == kv_pb2.CommandResult(locked=lock, revision=machine.revision)
    assert state(engine) == before, "refused prepares lock and record nothing"
    assert not any(recorded(engine, 2, seq) for seq in range(1, 5))
    assert locked_keys(machine) == {b"x": (1, 1)}
    # Once the lock is gone, the same seqs apply.
    run(machine, finish(ref(1, 1), False))
    assert machine.txns.locks == {}
    applied = run_one(machine, conflicting[0])
    assert applied.txn.succeeded and not applied.HasField("locked")
    assert locked_keys(machine) == {b"b": (2, 1), b"x": (2, 1)}
    assert recorded(engine, 2, 1)


def test_a_prepare_of_disjoint_keys_is_not_refused(engine: StorageEngine) -> None:
    machine = seeded(engine)
    run(machine, prepare(1, 1, then=[put(b"a", b"one")]))
    second = run_one(machine, prepare(2, 1, then=[put(b"b", b"two")]))
    assert not second.HasField("locked")
    assert locked_keys(machine) == {b"a": (1, 1), b"b": (2, 1)}
    assert len(machine.txns.prepared()) == 2


def test_a_prepare_whose_compares_fail_still_locks(engine: StorageEngine) -> None:
    machine = seeded(engine)
    result = run_one(
        machine,
        prepare(
            1,
            1,
            compares=[compare(b"a", VALUE, EQUAL, value=b"not 1")],
            then=[put(b"c", b"then")],
            otherwise=[put(b"d", b"else")],
        ),
    )
    assert not result.txn.succeeded
    assert set(machine.txns.locks) == {b"a", b"c", b"d"}


@pytest.mark.parametrize(
    "write",
    [
        command(put(b"k", b"2"), client_id=8, seq=1),
        command(delete(b"k"), client_id=8, seq=1),
        command(cas(b"k", b"1", b"2"), client_id=8, seq=1),
        command(put(b"free", b"1"), cas(b"k", b"1", b"2"), client_id=8, seq=1),
        kv_pb2.Command(client_id=8, seq=1, puts=[kv_pb2.KeyValue(key=b"k", value=b"2")]),
        kv_pb2.Command(
            client_id=8,
            seq=1,
            operations=[put(b"free", b"1")],
            puts=[kv_pb2.KeyValue(key=b"k", value=b"2")],
        ),
    ],
    ids=["put", "delete", "cas", "cas-after-free-put", "bulk", "bulk-after-free-put"],
)
def test_plain_writes_to_a_locked_key_are_refused_and_not_recorded(
    engine: StorageEngine, write: kv_pb2.Command
) -> None:
    machine = KeyValueStateMachine(engine, GROUP)
    run(machine, command(put(b"k", b"1")))
    run(machine, prepare(1, 1, compares=[compare(b"k", VALUE, EQUAL, value=b"1")]))
    lock = machine.txns.locks[b"k"]
    before = state(engine)
    refused = writes_nothing(machine, write)
    assert refused == kv_pb2.CommandResult(locked=lock, revision=1)
    assert state(engine) == before
    assert not recorded(engine, 8, 1)
    # Other keys stay writable meanwhile.
    assert not run_one(machine, command(put(b"other", b"1"))).HasField("locked")
    # The same seq applies once the transaction is finished.
    run(machine, finish(ref(1, 1), True))
    applied = run_one(machine, write)
    assert not applied.HasField("locked")
    assert recorded(engine, 8, 1)
    assert value_of(machine, b"k") in (b"2", None)


def test_a_retried_prepare_is_answered_from_the_session_without_relocking(
    engine: StorageEngine,
) -> None:
    machine = seeded(engine)
    made = prepare(1, 1, then=[put(b"a", b"2")], acked_seq=0)
    original = run_one(machine, made)
    # While prepared: the same answer, nothing written.
    assert writes_nothing(machine, made) == replayed(original)
    # Finished: the same answer still, and the key stays unlocked.
    run(machine, finish(ref(1, 1), False))
    assert writes_nothing(machine, made) == replayed(original)
    assert machine.txns.locks == {}
    assert machine.txns.prepared() == []
    # Even while another transaction holds the key (the answer is the old one).
    run(machine, prepare(2, 1, then=[put(b"a", b"3")]))
    assert writes_nothing(machine, made) == replayed(original)
    assert locked_keys(machine) == {b"a": (2, 1)}


# -- decide ------------------------------------------------------------------------


@pytest.mark.parametrize("then_branch", [True, False])
def test_decide_commit_applies_the_primary_branch_and_records_it(
    engine: StorageEngine, then_branch: bool
) -> None:
    machine = seeded(engine)
    txn = ref(3, 7)
    run(
        machine,
        prepare(
            3,
            7,
            compares=[compare(b"a", VALUE, EQUAL, value=b"1")],
            then=[put(b"a", b"then"), put(b"c", b"then")],
            otherwise=[delete(b"a"), get(b"b")],
            participant_keys=[b"a", b"elsewhere"],
        ),
    )
    decided = run_one(machine, decide(txn, True, then_branch))
    record = kv_pb2.TxnRecord(
        txn=txn,
        state=kv_pb2.TXN_COMMITTED,
        then_branch=then_branch,
        participant_keys=[b"a", b"elsewhere"],
        deadline_ms=DEADLINE_MS,
        primary_key=b"a",
    )
    assert decided.txn == kv_pb2.TxnOutcome(succeeded=True, record=record)
    assert machine.revision == decided.revision == 3, "one new revision, in the decide's apply"
    if then_branch:
        assert metadata(machine, b"a") == (b"then", 3, 1, 3)
        assert metadata(machine, b"c") == (b"then", 1, 3, 3)
        assert machine.key_count == 3
    else:
        assert machine.get(b"a") is None and machine.get(b"c") is None
        assert machine.key_count == 1
    assert machine.txns.locks == {} and stored_locks(engine) == []
    assert machine.txns.find(txn) == (None, record)
    assert machine.txns.records() == [record]
    assert machine.txns.open_records == {(3, 7): record}, "open until forgotten"


def test_the_first_record_wins(engine: StorageEngine) -> None:
    machine = seeded(engine)
    aborted_first, committed_first = ref(1, 1), ref(2, 1)
    run(machine, prepare(1, 1, then=[put(b"a", b"x")]), prepare(2, 1, then=[put(b"b", b"y")]))

    abort = run_one(machine, decide(aborted_first, False))
    assert abort.txn.record.state == kv_pb2.TXN_ABORTED and not abort.txn.succeeded
    late_commit = writes_nothing(machine, decide(aborted_first, True))
    assert late_commit.txn == kv_pb2.TxnOutcome(succeeded=False, record=abort.txn.record)
    assert value_of(machine, b"a") == b"1"

    commit = run_one(machine, decide(committed_first, True))
    assert commit.txn.record.state == kv_pb2.TXN_COMMITTED
    before = state(engine)
    late_abort = writes_nothing(machine, decide(committed_first, False))
    assert late_abort.txn == kv_pb2.TxnOutcome(succeeded=True, record=commit.txn.record)
    assert state(engine) == before
    assert value_of(machine, b"b") == b"y"
    assert machine.txns.locks == {}


def test_decide_commit_without_the_primary_prepare_writes_aborted(
    engine: StorageEngine,
) -> None:
    machine = seeded(engine)
    txn = ref(5, 5)
    decided = run_one(machine, decide(txn, True))
    record = kv_pb2.TxnRecord(txn=txn, state=kv_pb2.TXN_ABORTED, then_branch=True)
    assert decided.txn == kv_pb2.TxnOutcome(succeeded=False, record=record)
    assert machine.txns.find(txn) == (None, record)
    assert machine.txns.open_records == {(5, 5): record}
    assert machine.revision == 2


def test_decide_abort_drops_the_primary_prepare_and_its_locks(engine: StorageEngine) -> None:
    machine = seeded(engine)
    txn = ref(1, 1)
    run(machine, prepare(1, 1, then=[put(b"a", b"x")], otherwise=[delete(b"b")]))
    decided = run_one(machine, decide(txn, False))
    assert decided.txn.record.state == kv_pb2.TXN_ABORTED
    assert machine.txns.locks == {} and machine.txns.prepared() == []
    assert (value_of(machine, b"a"), value_of(machine, b"b"), machine.revision) == (b"1", b"2", 2)


def test_a_prepare_after_an_aborted_record_is_refused_with_it(engine: StorageEngine) -> None:
    """A resolver aborted the transaction before its prepare reached the primary."""
    machine = seeded(engine)
    txn = ref(6, 2)
    aborted = run_one(machine, decide(txn, False)).txn.record
    late = run_one(machine, prepare(6, 2, then=[put(b"a", b"late")], participant_keys=[b"a"]))
    assert late.txn == kv_pb2.TxnOutcome(record=aborted)
    assert not late.txn.succeeded
    assert machine.txns.locks == {} and stored_locks(engine) == []
    assert machine.txns.find(txn) == (None, aborted)
    # The coordinator's decide then finds the record, and nothing applies.
    assert run_one(machine, decide(txn, True)).txn.record == aborted
    assert value_of(machine, b"a") == b"1"


# -- finish ------------------------------------------------------------------------


@pytest.mark.parametrize("then_branch", [True, False])
def test_finish_commit_applies_the_chosen_branch_in_one_revision(
    engine: StorageEngine, then_branch: bool
) -> None:
    machine = seeded(engine)
    txn = ref(2, 3)
    run(
        machine,
        prepare(
            2,
            3,
            then=[put(b"a", b"then"), put(b"c", b"then"), put(b"d", b"then"), get(b"b")],
            otherwise=[delete(b"a"), delete(b"b"), put(b"e", b"else"), delete(b"absent")],
            primary_key=b"elsewhere",
        ),
    )
    result = run_one(machine, finish(txn, True, then_branch))
    assert result.revision == machine.revision == 3
    if then_branch:
        assert metadata(machine, b"a") == (b"then", 3, 1, 3)
        assert metadata(machine, b"c") == (b"then", 1, 3, 3)
        assert metadata(machine, b"d") == (b"then", 1, 3, 3)
        assert metadata(machine, b"b") == (b"2", 1, 2, 2), "a get writes nothing"
        assert machine.key_count == 4
    else:
        assert machine.get(b"a") is None and machine.get(b"b") is None
        assert metadata(machine, b"e") == (b"else", 1, 3, 3)
        assert machine.key_count == 1
    assert machine.key_count == len(list(machine.scan()))
    assert machine.txns.locks == {} and stored_locks(engine) == []
    assert machine.txns.prepared() == []
    assert machine.txns.records() == [], "finish writes no record"
    assert KeyValueStateMachine(engine, GROUP).key_count == machine.key_count


def test_finish_of_a_branch_that_writes_nothing_keeps_the_revision(engine: StorageEngine) -> None:
    machine = seeded(engine)
    run(machine, prepare(2, 3, then=[get(b"a"), delete(b"absent")]))
    assert run_one(machine, finish(ref(2, 3), True)).revision == 2
    assert machine.txns.locks == {}


def test_finish_abort_drops_the_staged_branch(engine: StorageEngine) -> None:
    machine = seeded(engine)
    run(machine, prepare(2, 3, then=[put(b"a", b"x")], otherwise=[delete(b"b")]))
    before = (list(machine.scan()), machine.revision, machine.key_count)
    run(machine, finish(ref(2, 3), False, then_branch=True))
    assert (list(machine.scan()), machine.revision, machine.key_count) == before
    assert machine.txns.locks == {} and machine.txns.prepared() == []


def test_finish_of_an_unknown_txn_does_nothing(engine: StorageEngine) -> None:
    machine = seeded(engine)
    run(machine, prepare(1, 1, then=[put(b"a", b"x")]))
    for commit in (True, False):
        result = writes_nothing(machine, finish(ref(9, 9), commit))
        assert result == kv_pb2.CommandResult(revision=2)
    assert locked_keys(machine) == {b"a": (1, 1)}


def test_finishing_twice_is_finishing_once(engine: StorageEngine) -> None:
    machine = seeded(engine)
    txn = ref(1, 1)
    run(machine, prepare(1, 1, then=[put(b"a", b"x"), put(b"z", b"new")]))
    run(machine, finish(txn, True))
    after = state(engine)
    assert writes_nothing(machine, finish(txn, True)).revision == 3
    assert writes_nothing(machine, finish(txn, False)).revision == 3
    assert state(engine) == after
    assert metadata(machine, b"a") == (b"x", 3, 1, 3)
    # A later transaction on the keys is not touched by a repeated finish of this one.
    run(machine, prepare(2, 1, then=[put(b"a", b"y")]))
    run(machine, finish(txn, False))
    assert locked_keys(machine) == {b"a": (2, 1)}


def test_steps_later_in_the_same_round_see_earlier_ones(engine: StorageEngine) -> None:
    machine = seeded(engine)
    txn = ref(1, 1)
    results = run(
        machine,
        prepare(1, 1, then=[put(b"a", b"x")], participant_keys=[b"a", b"z"]),
        command(put(b"a", b"plain"), client_id=2, seq=1),
        prepare(3, 1, then=[put(b"a", b"other")]),
        decide(txn, True),
        command(put(b"a", b"plain"), client_id=2, seq=1),
        command(put(b"new", b"1"), client_id=2, seq=2),
        prepare(
            3,
            1,
            compares=[
                compare(b"a", VALUE, EQUAL, value=b"plain"),
                compare(b"new", VERSION, EQUAL, number=1),
            ],
            then=[get(b"new")],
        ),
    )
    assert results[1].HasField("locked") and results[2].HasField("locked")
    assert results[3].txn.succeeded
    assert not results[4].HasField("locked")
    assert results[6].txn.succeeded, "the compares saw the plain puts of this round"
    assert results[6].txn.then_results[0].previous.value == b"1"
    assert locked_keys(machine) == {b"a": (3, 1), b"new": (3, 1)}
    assert metadata(machine, b"a") == (b"plain", 4, 1, 4)


# -- forget ------------------------------------------------------------------------


def committed(machine: KeyValueStateMachine, client_id: int, seq: int) -> kv_pb2.TxnRef:
    """A transaction of ``client_id`` committed at this group, its primary."""
    run(machine, prepare(client_id, seq, then=[put(b"t%d" % seq, b"1")], participant_keys=[b"x"]))
    run(machine, decide(ref(client_id, seq), True))
    return ref(client_id, seq)


def ack(machine: KeyValueStateMachine, client_id: int, seq: int, acked_seq: int) -> None:
    """A later command of the client, acking everything up to ``acked_seq``."""
    run(machine, command(delete(b"nothing"), client_id=client_id, seq=seq, acked_seq=acked_seq))


def test_forget_deletes_the_record_once_the_client_acked_its_seq(engine: StorageEngine) -> None:
    machine = seeded(engine)
    txn = committed(machine, 5, 1)
    ack(machine, 5, 2, acked_seq=1)
    assert machine.txns.find(txn)[1] is not None, "not finished yet: the record stays"
    run(machine, forget(txn))
    assert machine.txns.find(txn) == (None, None)
    assert machine.txns.records() == []
    assert machine.txns.open_records == {}


def test_a_forgotten_record_goes_when_the_floor_passes_its_seq(engine: StorageEngine) -> None:
    machine = seeded(engine)
    txn = committed(machine, 5, 3)
    assert set(machine.txns.open_records) == {(5, 3)}
    run(machine, forget(txn))
    record = machine.txns.find(txn)[1]
    assert record is not None and record.finished, "the client may retry: kept, finished"
    assert record.state == kv_pb2.TXN_COMMITTED
    assert machine.txns.open_records == {}, "finished: the resolver has nothing to do"
    assert KeyValueStateMachine(engine, GROUP).txns.open_records == {}
    # Forgetting again changes nothing.
    assert writes_nothing(machine, forget(txn)).revision == machine.revision
    # An ack below the seq keeps it; an ack of it deletes it.
    ack(machine, 5, 4, acked_seq=2)
    assert machine.txns.find(txn)[1] == record
    ack(machine, 5, 5, acked_seq=3)
    assert machine.txns.find(txn) == (None, None)
    # Another client's acks never touch a record.
    other = committed(machine, 6, 1)
    run(machine, forget(other))
    ack(machine, 5, 9, acked_seq=8)
    assert machine.txns.find(other)[1] is not None


def test_a_floor_passing_an_unfinished_record_keeps_it(engine: StorageEngine) -> None:
    machine = seeded(engine)
    txn = committed(machine, 5, 1)
    ack(machine, 5, 2, acked_seq=1)
    record = machine.txns.find(txn)[1]
    assert record is not None and not record.finished
    assert machine.txns.open_records == {(5, 1): record}
    run(machine, forget(txn))
    assert machine.txns.find(txn) == (None, None)
    assert machine.txns.open_records == {}


def test_forgetting_an_unknown_record_does_nothing(engine: StorageEngine) -> None:
    machine = seeded(engine)
    assert writes_nothing(machine, forget(ref(7, 7))) == kv_pb2.CommandResult(revision=2)


def test_a_large_ack_deletes_finished_records_too(engine: StorageEngine) -> None:
    """An ack of more than the point-delete limit takes the range-delete path."""
    machine = seeded(engine)
    txn = committed(machine, 5, 3)
    run(machine, forget(txn))
    ack(machine, 5, 1000, acked_seq=999)
    assert machine.txns.find(txn) == (None, None)


def test_a_record_decided_forgotten_and_acked_in_one_round_goes_as_in_three(
    engine: StorageEngine,
) -> None:
    """Round boundaries are the node's business: the state must not depend on them.

    A lagging follower (or a node replaying its log after a restart) applies
    the decide, the forget and the client's next command in one round, where
    the leader applied them in three.
    """
    machine = seeded(engine)
    run(machine, prepare(5, 1, then=[put(b"a", b"x")], participant_keys=[b"a", b"z"]))
    txn = ref(5, 1)
    run(
        machine,
        decide(txn, True),
        forget(txn),
        command(delete(b"nothing"), client_id=5, seq=2, acked_seq=1),
    )
    assert machine.txns.find(txn) == (None, None), "the record outlived its client's ack"


# -- one phase -----------------------------------------------------------------------


@pytest.mark.parametrize("holds", [True, False])
def test_one_phase_applies_the_chosen_branch_at_once(engine: StorageEngine, holds: bool) -> None:
    machine = seeded(engine)
    result = run_one(
        machine,
        prepare(
            1,
            1,
            compares=[compare(b"a", VALUE, EQUAL, value=b"1" if holds else b"0")],
            then=[put(b"a", b"then"), get(b"a")],
            otherwise=[delete(b"b"), put(b"c", b"else"), get(b"b")],
            one_phase=True,
        ),
    )
    a_before = kv_pb2.KeyValue(key=b"a", value=b"1", version=2, create_revision=1, mod_revision=2)
    b_before = kv_pb2.KeyValue(key=b"b", value=b"2", version=1, create_revision=2, mod_revision=2)
    assert result.txn.succeeded is holds
    assert not result.txn.else_results, "the chosen branch's results are in then_results"
    assert result.revision == machine.revision == 3
    if holds:
        assert list(result.txn.then_results) == [
            kv_pb2.OperationResult(
                succeeded=True,
                previous=kv_pb2.KeyValue(key=b"a", version=2, create_revision=1, mod_revision=2),
            ),
            kv_pb2.OperationResult(succeeded=True, previous=a_before),
        ]
        assert metadata(machine, b"a") == (b"then", 3, 1, 3)
        assert machine.key_count == 2
    else:
        assert list(result.txn.then_results) == [
            kv_pb2.OperationResult(succeeded=True, previous=b_before),
            kv_pb2.OperationResult(succeeded=True),
            kv_pb2.OperationResult(succeeded=True, previous=b_before),
        ]
        assert machine.get(b"b") is None
        assert metadata(machine, b"c") == (b"else", 1, 3, 3)
        assert machine.key_count == 2
    assert machine.txns.locks == {} and stored_locks(engine) == []
    assert machine.txns.prepared() == [] and machine.txns.records() == []
    assert recorded(engine, 1, 1)
    # The same seq with other keys: the kept result, marked as another command's.
    reused = writes_nothing(machine, prepare(1, 1, one_phase=True, then=[put(b"a", b"?")]))
    assert reused.reused and not result.reused
    reused.reused = False
    assert reused == replayed(result)


# -- what survives ---------------------------------------------------------------------


def prepared_pair(machine: KeyValueStateMachine) -> None:
    """Two transactions prepared in the group: one at its primary, one elsewhere."""
    run(
        machine,
        prepare(
            1,
            1,
            compares=[compare(b"a", VALUE, EQUAL, value=b"1")],
            then=[put(b"a", b"one")],
            otherwise=[get(b"q")],
            participant_keys=[b"a", b"elsewhere"],
        ),
        prepare(2, 1, then=[delete(b"b"), put(b"c", b"two")], primary_key=b"elsewhere"),
    )


def finish_pair(machine: KeyValueStateMachine) -> list[kv_pb2.CommandResult]:
    return run(machine, decide(ref(1, 1), True), finish(ref(2, 1), True))


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_locks_and_prepares_survive_a_restart(kind: str, tmp_path: Path) -> None:
    with engine_opener(kind, tmp_path / "db") as open_engine:
        first = open_engine()
        machine = seeded(first)
        prepared_pair(machine)
        locks, prepared = dict(machine.txns.locks), machine.txns.prepared()
        first.close()

        second = open_engine()
        machine = KeyValueStateMachine(second, GROUP)
        assert machine.txns.locks == locks
        assert set(locks) == {b"a", b"q", b"b", b"c"}
        assert machine.txns.prepared() == prepared
        assert run_one(machine, command(put(b"q", b"w"), client_id=9, seq=1)).locked == locks[b"q"]
        assert run_one(machine, prepare(3, 1, then=[put(b"c", b"")])).locked == locks[b"c"]
        finish_pair(machine)
        assert machine.txns.locks == {}
        [record] = machine.txns.records()
        assert machine.txns.open_records == {(1, 1): record}
        assert (value_of(machine, b"a"), value_of(machine, b"b"), value_of(machine, b"c")) == (
            b"one",
            None,
            b"two",
        )
        second.close()

        third = open_engine()
        reopened = KeyValueStateMachine(third, GROUP)
        assert reopened.txns.locks == {}
        assert reopened.txns.open_records == {(1, 1): record}, "open records are reloaded"


def install(engine: StorageEngine, data: bytes) -> None:
    batch = engine.new_batch()
    stage_install_snapshot_data(engine, batch, GROUP, data)
    engine.write(batch, sync=False)


def test_locks_and_prepares_survive_a_snapshot(engine: StorageEngine) -> None:
    source = MemoryEngine()
    machine = seeded(source)
    prepared_pair(machine)
    record = run_one(machine, decide(ref(4, 4), False)).txn.record
    # The target had its own past, with a lock the image does not have.
    stale = KeyValueStateMachine(engine, GROUP)
    run(stale, prepare(8, 8, then=[put(b"stale", b"lock")]))

    install(engine, build_snapshot_data(source, GROUP))
    restored = KeyValueStateMachine(engine, GROUP)
    assert restored.txns.locks == machine.txns.locks
    assert restored.txns.prepared() == machine.txns.prepared()
    assert restored.txns.records() == [record]
    assert restored.txns.open_records == machine.txns.open_records == {(4, 4): record}
    assert run_one(restored, command(put(b"b", b"w"), client_id=9, seq=1)).HasField("locked")
    assert not run_one(restored, command(put(b"stale", b"w"), client_id=9, seq=2)).HasField(
        "locked"
    )
    run(machine, command(put(b"stale", b"w"), client_id=9, seq=2))
    assert finish_pair(restored) == finish_pair(machine)
    assert state(engine) == state(source)
    source.close()


# -- limits ---------------------------------------------------------------------------


def test_limits_of_a_transaction() -> None:
    with pytest.raises(InvalidArgument, match="writes b'k' twice"):
        check_txn([], [put(b"k", b"1"), delete(b"k")], [])
    check_txn([], [put(b"k", b"1"), get(b"k")], [put(b"k", b"2")])  # a read and another branch
    with pytest.raises(InvalidArgument, match="put, delete and get"):
        check_txn([], [], [cas(b"k", None, b"1")])
    with pytest.raises(InvalidArgument, match="empty"):
        check_txn([compare(b"", VERSION, EQUAL)], [], [])
    with pytest.raises(InvalidArgument, match="empty"):
        check_txn([], [get(b"")], [])
    with pytest.raises(InvalidArgument, match="needs a session"):
        check_command(kv_pb2.Command(txn=kv_pb2.TxnStep(prepare=kv_pb2.TxnPrepare())))
    with pytest.raises(InvalidArgument, match="no other operations"):
        check_command(
            kv_pb2.Command(
                client_id=1, seq=1, operations=[put(b"k", b"1")], txn=decide(ref(1, 1), True).txn
            )
        )
    with pytest.raises(InvalidArgument, match="only"):
        check_command(command(get(b"k")))


def test_the_leader_hint_answers_locked_only_where_apply_would(engine: StorageEngine) -> None:
    """``lock_against`` (the node's shortcut past the log) agrees with ``apply``."""
    machine = KeyValueStateMachine(engine, GROUP)
    one_phase = prepare(7, 5, then=[put(b"k", b"1")], one_phase=True)
    run(machine, one_phase)  # applied and recorded; say its answer was lost
    run(machine, prepare(1, 1, then=[put(b"k", b"2")]))
    lock = machine.txns.locks[b"k"]
    # The retry is answered from the session, not refused for the lock...
    assert machine.lock_against(one_phase) is None
    assert not run_one(machine, one_phase).HasField("locked")
    # ... and so is a seq at or below the client's floor (stale).
    run(machine, command(put(b"elsewhere", b"x"), client_id=7, seq=9, acked_seq=8))
    assert machine.lock_against(command(put(b"k", b"3"), client_id=7, seq=8)) is None
    # A new command on the key, and another transaction's prepare, are refused.
    fresh = command(put(b"k", b"3"), client_id=7, seq=10, acked_seq=9)
    assert machine.lock_against(fresh) == lock
    assert run_one(machine, fresh).locked == lock
    other = prepare(2, 1, then=[put(b"k", b"4")])
    assert machine.lock_against(other) == lock
    # The holder's own prepare, and decide, finish and forget, never wait.
    assert machine.lock_against(prepare(1, 1, then=[put(b"k", b"2")])) is None
    assert machine.lock_against(finish(ref(1, 1), True)) is None
