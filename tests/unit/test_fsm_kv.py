"""The data group state machine: per-key metadata, revisions, dedup, scans, limits."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardkv.errors import InvalidArgument
from shardkv.fsm.kv import RESULT_WINDOW, STALE, KeyValueStateMachine
from shardkv.limits import MAX_KEY_BYTES, MAX_VALUE_BYTES, check_command
from shardkv.ring import KeyRing, ring_of
from shardkv.storage import keys
from shardkv.storage.engine import ColumnFamily, Engine, MemoryEngine, StorageEngine
from shardkv.v1 import kv_pb2
from tests.unit.engines import replayed


@pytest.fixture(params=["memory", "rocksdb"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageEngine]:
    store: StorageEngine = MemoryEngine() if request.param == "memory" else Engine(tmp_path / "db")
    yield store
    store.close()


def put(key: bytes, value: bytes) -> kv_pb2.Operation:
    return kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))


def delete(key: bytes) -> kv_pb2.Operation:
    return kv_pb2.Operation(delete=kv_pb2.Delete(key=key))


def cas(key: bytes, expected: bytes | None, value: bytes) -> kv_pb2.Operation:
    operation = kv_pb2.CompareAndSet(key=key, value=value)
    if expected is not None:
        operation.expected = expected
    return kv_pb2.Operation(compare_and_set=operation)


def command(
    *operations: kv_pb2.Operation, client_id: int = 0, seq: int = 0, acked_seq: int = 0
) -> kv_pb2.Command:
    return kv_pb2.Command(
        client_id=client_id, seq=seq, acked_seq=acked_seq, operations=list(operations)
    )


def apply(
    engine: StorageEngine, machine: KeyValueStateMachine, *commands: kv_pb2.Command
) -> list[kv_pb2.CommandResult]:
    """Apply ``commands`` in one round: one batch, written once."""
    batch = engine.new_batch()
    results = [machine.apply(batch, each) for each in commands]
    engine.write(batch, sync=False)
    return results


def test_versions_and_revisions_follow_writes(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    apply(engine, machine, command(put(b"a", b"1")))
    apply(engine, machine, command(put(b"b", b"x")))
    apply(engine, machine, command(put(b"a", b"2")))
    a = machine.get(b"a")
    assert a is not None
    assert (a.value, a.version, a.create_revision, a.mod_revision) == (b"2", 2, 1, 3)
    assert machine.revision == 3


def test_delete_then_recreate_starts_a_new_life(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    apply(engine, machine, command(put(b"k", b"1")), command(put(b"k", b"2")))
    [deleted] = apply(engine, machine, command(delete(b"k")))
    assert deleted.results[0].succeeded
    assert deleted.results[0].previous.value == b"2"
    assert machine.get(b"k") is None
    [again] = apply(engine, machine, command(delete(b"k")))
    assert not again.results[0].succeeded
    assert again.revision == 3, "a delete of nothing writes nothing"
    apply(engine, machine, command(put(b"k", b"3")))
    k = machine.get(b"k")
    assert k is not None
    assert (k.version, k.create_revision, k.mod_revision) == (1, 4, 4)


def test_compare_and_set(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    [created, refused, swapped, absent_refused] = apply(
        engine,
        machine,
        command(cas(b"k", None, b"1")),
        command(cas(b"k", b"0", b"2")),
        command(cas(b"k", b"1", b"2")),
        command(cas(b"k", None, b"3")),
    )
    assert created.results[0].succeeded
    assert not refused.results[0].succeeded
    assert refused.results[0].previous.value == b"1"
    assert swapped.results[0].succeeded
    assert not absent_refused.results[0].succeeded
    k = machine.get(b"k")
    assert k is not None
    assert (k.value, k.version) == (b"2", 2)
    assert machine.revision == 2, "refused compare-and-sets do not bump the revision"


def test_later_commands_of_a_round_see_earlier_ones(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    batch = engine.new_batch()
    machine.apply(batch, command(put(b"k", b"1")))
    second = machine.apply(batch, command(cas(b"k", b"1", b"2")))
    assert second.results[0].succeeded
    assert machine.get(b"k") is None, "reads see only what was written"
    engine.write(batch, sync=True)
    k = machine.get(b"k")
    assert k is not None
    assert (k.value, k.version) == (b"2", 2)


def test_one_command_is_atomic_and_ordered(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    [result] = apply(engine, machine, command(put(b"a", b"1"), put(b"a", b"2"), delete(b"b")))
    assert [r.succeeded for r in result.results] == [True, True, False]
    a = machine.get(b"a")
    assert a is not None
    assert (a.value, a.version, a.mod_revision) == (b"2", 2, 1), "one command, one revision"


def test_a_retry_is_answered_from_the_session_without_writing(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    first = command(cas(b"k", None, b"1"), client_id=7, seq=1)
    [original] = apply(engine, machine, first)
    apply(engine, machine, command(put(b"k", b"other"), client_id=8, seq=1))
    [retried] = apply(engine, machine, first)
    assert retried == replayed(original), "the recorded result, not a fresh (failing) cas"
    k = machine.get(b"k")
    assert k is not None
    assert k.value == b"other"
    [next_one] = apply(engine, machine, command(put(b"k", b"2"), client_id=7, seq=2, acked_seq=1))
    [stale] = apply(engine, machine, first)
    assert stale == STALE and stale.stale
    assert next_one.revision == machine.revision == 3


def test_many_commands_of_a_client_in_flight_each_exactly_once(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    # seq 3 arrives before 1 and 2: all three apply, each once.
    third = command(put(b"c", b"3"), client_id=7, seq=3)
    first = command(put(b"a", b"1"), client_id=7, seq=1)
    second = command(put(b"b", b"2"), client_id=7, seq=2)
    results = apply(engine, machine, third, first, second)
    assert [result.revision for result in results] == [1, 2, 3]
    answers = apply(engine, machine, third, first, second)
    assert answers == [replayed(result) for result in results], "retries are answered"
    assert machine.revision == 3
    # Acking 2 forgets 1 and 2, not 3.
    apply(engine, machine, command(put(b"d", b"4"), client_id=7, seq=4, acked_seq=2))
    assert apply(engine, machine, first, second) == [STALE, STALE]
    assert apply(engine, machine, third) == [replayed(results[0])]
    assert engine.get(ColumnFamily.META, keys.result_key(1, 7, 1)) is None
    assert engine.get(ColumnFamily.META, keys.result_key(1, 7, 3)) is not None


def test_a_large_ack_forgets_results_with_one_range_delete(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    commands = [command(put(b"k%d" % seq, b"v"), client_id=9, seq=seq) for seq in range(1, 601)]
    apply(engine, machine, *commands)
    apply(engine, machine, command(put(b"z", b"v"), client_id=9, seq=700, acked_seq=599))
    remaining = [
        key for key, _ in engine.scan(ColumnFamily.META, *keys.result_range(1, 9, 0, 1 << 63))
    ]
    assert remaining == [keys.result_key(1, 9, 600), keys.result_key(1, 9, 700)]
    assert apply(engine, machine, commands[0], commands[598]) == [STALE, STALE]
    assert apply(engine, machine, commands[599])[0].revision == 600


def test_a_client_that_never_acks_keeps_a_bounded_window(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    apply(engine, machine, command(put(b"a", b"1"), client_id=5, seq=1))
    apply(engine, machine, command(put(b"b", b"1"), client_id=5, seq=RESULT_WINDOW + 2))
    assert apply(engine, machine, command(put(b"a", b"1"), client_id=5, seq=1)) == [STALE]


def test_a_ring_refuses_keys_of_other_groups_and_only_moves_forward(
    engine: StorageEngine,
) -> None:
    machine = KeyValueStateMachine(engine, group_id=2)
    assert machine.epoch == 0 and machine.wrong_group(b"anything") is None
    ring = KeyRing(1, {1: 1, 2: 1, 3: 1})
    mine = next(k for k in (b"k%d" % n for n in range(100)) if ring.group_for(k) == 2)
    theirs = next(k for k in (b"k%d" % n for n in range(100)) if ring.group_for(k) != 2)
    # Routed with a ring this group has not applied yet: refused, and not
    # recorded, so the same seq applies once the group has the ring.
    early = command(put(mine, b"1"), client_id=9, seq=1)
    early.epoch = 1
    [refused_early] = apply(engine, machine, early)
    assert refused_early.wrong_group == kv_pb2.WrongGroup(group_id=2, epoch=0)
    apply(engine, machine, kv_pb2.Command(ring=ring_of(1, {1: 1, 2: 1, 3: 1})))
    assert machine.epoch == 1
    [applied_early] = apply(engine, machine, early)
    assert applied_early.results[0].succeeded, "the refusal was not recorded"
    apply(engine, machine, command(delete(mine)))
    [refused] = apply(engine, machine, command(put(mine, b"1"), put(theirs, b"1")))
    assert refused.wrong_group == kv_pb2.WrongGroup(group_id=2, epoch=1, key=theirs)
    assert machine.get(mine) is None, "refused whole"
    [accepted] = apply(engine, machine, command(put(mine, b"1")))
    assert accepted.results[0].succeeded and not accepted.HasField("wrong_group")
    # Routed with the group's own ring (epoch 1): keys are not checked one by one.
    trusted = command(put(theirs, b"routed"))
    trusted.epoch = 1
    [taken] = apply(engine, machine, trusted)
    assert taken.results[0].succeeded
    stale = command(put(theirs, b"stale router"))
    stale.epoch = 7
    [checked] = apply(engine, machine, stale)
    assert checked.wrong_group.key == theirs, "another epoch: every key is checked"
    # An older ring is ignored; the ring survives a reopen.
    apply(engine, machine, kv_pb2.Command(ring=ring_of(0, {2: 1})))
    assert KeyValueStateMachine(engine, group_id=2).epoch == 1
    # A ring without the group: it owns nothing.
    apply(engine, machine, kv_pb2.Command(ring=ring_of(2, {1: 1})))
    assert machine.wrong_group(mine) == kv_pb2.WrongGroup(group_id=2, epoch=2, key=mine)


def test_sessions_and_revision_survive_a_restart(tmp_path: Path) -> None:
    with Engine(tmp_path / "db") as engine:
        machine = KeyValueStateMachine(engine, group_id=3)
        apply(engine, machine, command(put(b"k", b"1"), client_id=5, seq=9))
    with Engine(tmp_path / "db") as engine:
        machine = KeyValueStateMachine(engine, group_id=3)
        assert machine.revision == 1
        [retried] = apply(engine, machine, command(put(b"k", b"1"), client_id=5, seq=9))
        assert machine.revision == 1, "the retry was recognised after the restart"
        assert retried.revision == 1


def test_key_count_follows_creates_and_deletes_and_survives_a_restart(tmp_path: Path) -> None:
    with Engine(tmp_path / "db") as engine:
        machine = KeyValueStateMachine(engine, group_id=2)
        assert machine.key_count == 0
        apply(
            engine,
            machine,
            command(put(b"a", b"1"), put(b"b", b"1"), put(b"a", b"2")),
            command(cas(b"c", None, b"1"), cas(b"d", b"absent", b"1")),
            command(delete(b"b"), delete(b"nothing")),
            # A retry of an applied command changes nothing, the count included.
            command(put(b"e", b"1"), client_id=4, seq=1),
            command(put(b"e", b"1"), client_id=4, seq=1),
        )
        assert machine.key_count == 3 == len(list(machine.scan()))
        other = KeyValueStateMachine(engine, group_id=3)
        assert other.key_count == 0, "counts are per group"
    with Engine(tmp_path / "db") as engine:
        machine = KeyValueStateMachine(engine, group_id=2)
        assert machine.key_count == 3
        apply(engine, machine, command(delete(b"a"), delete(b"c"), delete(b"e")))
        assert machine.key_count == 0


def test_scan_by_prefix_range_and_limit_stays_in_its_group(engine: StorageEngine) -> None:
    left = KeyValueStateMachine(engine, group_id=1)
    right = KeyValueStateMachine(engine, group_id=2)
    batch = engine.new_batch()
    for key in (b"a", b"ab", b"abc", b"b", b"\xff\xff"):
        left.apply(batch, command(put(key, b"L" + key)))
        right.apply(batch, command(put(key, b"R" + key)))
    engine.write(batch, sync=False)
    assert [kv.key for kv in left.scan(prefix=b"ab")] == [b"ab", b"abc"]
    assert [kv.key for kv in left.scan(b"ab", b"b")] == [b"ab", b"abc"]
    assert [kv.key for kv in left.scan(b"b")] == [b"b", b"\xff\xff"]
    assert [kv.key for kv in left.scan(limit=2)] == [b"a", b"ab"]
    assert [kv.value for kv in right.scan(prefix=b"\xff")] == [b"R\xff\xff"]
    assert len(list(left.scan())) == 5


def test_replicas_applying_the_same_log_agree(tmp_path: Path) -> None:
    """Determinism: two replicas fed the same commands hold the same bytes."""
    rng = random.Random(11)
    log: list[kv_pb2.Command] = []
    for seq in range(1, 400):
        key = b"k%d" % rng.randrange(8)
        roll = rng.random()
        if roll < 0.5:
            operation = put(key, b"v%d" % seq)
        elif roll < 0.7:
            operation = delete(key)
        else:
            expected = None if rng.random() < 0.3 else b"v%d" % rng.randrange(seq)
            operation = cas(key, expected, b"v%d" % seq)
        client = rng.randrange(1, 4)
        log.append(command(operation, client_id=client, seq=seq))
        if rng.random() < 0.1:
            log.append(log[rng.randrange(len(log))])  # a retry, possibly stale
    replicas = [MemoryEngine(), Engine(tmp_path / "db")]
    dumps = []
    for replica in replicas:
        machine = KeyValueStateMachine(replica, group_id=1)
        results = []
        position = 0
        while position < len(log):
            size = rng.randint(1, 20)
            results.extend(apply(replica, machine, *log[position : position + size]))
            position += size
        dumps.append(
            (
                [r.SerializeToString() for r in results],
                list(replica.scan(ColumnFamily.DATA, b"")),
                list(replica.scan(ColumnFamily.META, b"")),
            )
        )
        replica.close()
    assert dumps[0] == dumps[1]


def test_limits_name_the_rule_broken() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        check_command(command(put(b"", b"v")))
    with pytest.raises(InvalidArgument, match=f"at most {MAX_KEY_BYTES} bytes"):
        check_command(command(delete(b"k" * (MAX_KEY_BYTES + 1))))
    with pytest.raises(InvalidArgument, match="split it over several keys"):
        check_command(command(cas(b"k", None, b"v" * (MAX_VALUE_BYTES + 1))))
    with pytest.raises(InvalidArgument, match="no operations"):
        check_command(command())
    with pytest.raises(InvalidArgument, match="names no kind"):
        check_command(command(kv_pb2.Operation()))
    check_command(command(put(b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES)))


def test_puts_write_like_put_operations_and_are_only_counted(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    apply(engine, machine, command(put(b"a", b"old")))
    bulk = kv_pb2.Command(
        client_id=3,
        seq=1,
        operations=[put(b"first", b"1")],
        puts=[kv_pb2.KeyValue(key=b"a", value=b"new"), kv_pb2.KeyValue(key=b"b", value=b"2")],
    )
    [result] = apply(engine, machine, bulk)
    assert (len(result.results), result.puts_written, result.revision) == (1, 2, 2)
    a, b = machine.get(b"a"), machine.get(b"b")
    assert a is not None and (a.value, a.version, a.create_revision, a.mod_revision) == (
        b"new",
        2,
        1,
        2,
    )
    assert b is not None and (b.value, b.version) == (b"2", 1)
    assert machine.key_count == 3
    assert apply(engine, machine, bulk) == [replayed(result)], "a retry is answered, not applied"
    assert machine.get(b"a").version == 2  # type: ignore[union-attr]
    # Puts are checked against the ring like operations.
    ring = KeyRing(1, {1: 1, 2: 1})
    theirs = next(k for k in (b"k%d" % n for n in range(100)) if ring.group_for(k) == 2)
    apply(engine, machine, kv_pb2.Command(ring=ring_of(1, {1: 1, 2: 1})))
    [refused] = apply(engine, machine, kv_pb2.Command(puts=[kv_pb2.KeyValue(key=theirs)]))
    assert refused.wrong_group.key == theirs
    with pytest.raises(InvalidArgument, match="empty"):
        check_command(kv_pb2.Command(puts=[kv_pb2.KeyValue(key=b"", value=b"v")]))


def test_a_put_keeps_its_lease_until_a_put_without_one(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    leased = kv_pb2.Operation(put=kv_pb2.Put(key=b"a", value=b"1", lease=77))
    apply(engine, machine, command(leased, put(b"b", b"x")))
    a, b = machine.get(b"a"), machine.get(b"b")
    assert a is not None and b is not None
    assert (a.value, a.version, a.lease) == (b"1", 1, 77)
    assert b.lease == 0
    # A key without a lease keeps the record layout from before leases.
    stored = engine.get(ColumnFamily.DATA, keys.data_key(1, b"b"))
    assert stored is not None and stored[0] == 1
    [result] = apply(engine, machine, command(put(b"a", b"2")))
    assert result.results[0].previous.lease == 77  # what it replaced
    a = machine.get(b"a")
    assert a is not None and (a.value, a.version, a.lease) == (b"2", 2, 0)
    assert [kv.lease for kv in machine.scan(b"")] == [0, 0]


def test_a_leased_record_survives_a_restart_and_an_import(tmp_path: Path) -> None:
    store = Engine(tmp_path / "db")
    machine = KeyValueStateMachine(store, group_id=1)
    leased = kv_pb2.Operation(put=kv_pb2.Put(key=b"k", value=b"v", lease=(1 << 63) + 5))
    apply(store, machine, command(leased))
    stored = store.get(ColumnFamily.DATA, keys.data_key(1, b"k"))
    store.close()
    store = Engine(tmp_path / "db")
    found = KeyValueStateMachine(store, group_id=1).get(b"k")
    assert found is not None and found.lease == (1 << 63) + 5
    other = KeyValueStateMachine(MemoryEngine(), group_id=2)
    assert stored is not None
    batch = other.engine.new_batch()
    other.import_records(batch, [b"k"], [stored])
    other.finish_import(batch)
    other.engine.write(batch, sync=False)
    moved = other.get(b"k")
    assert moved is not None and (moved.lease, moved.mod_revision) == (
        found.lease,
        found.mod_revision,
    )
    store.close()


def test_every_change_is_logged_in_order_and_moves_log_nothing(engine: StorageEngine) -> None:
    machine = KeyValueStateMachine(engine, group_id=1)
    apply(engine, machine, command(put(b"a", b"1"), put(b"b", b"2")))
    apply(engine, machine, command(delete(b"a"), delete(b"missing")))
    apply(engine, machine, command(cas(b"b", b"2", b"3")))
    events = machine.events(0, 100)
    assert [(kv.key, kv.value, kv.version) for _, kv in events] == [
        (b"a", b"1", 1),
        (b"b", b"2", 1),
        (b"a", b"", 0),  # deleted: version 0
        (b"b", b"3", 2),
    ]
    revisions = [revision for revision, _ in events]
    assert revisions == [kv.mod_revision for _, kv in events] == sorted(revisions)
    assert machine.events(revisions[2], 100) == events[2:]
    # A key copied in by a migration, or dropped after one, is not a change.
    batch = engine.new_batch()
    copied = engine.get(ColumnFamily.DATA, keys.data_key(1, b"b"))
    assert copied is not None
    machine.import_records(batch, [b"moved"], [copied])
    machine.drop_keys(batch, [b"b"])
    engine.write(batch, sync=False)
    assert machine.events(0, 100) == events


def test_the_event_log_keeps_its_size_by_dropping_whole_old_revisions(
    engine: StorageEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shardkv.fsm.kv.EVENT_LOG_BYTES", 2_000)
    machine = KeyValueStateMachine(engine, group_id=1)
    for n in range(40):
        apply(engine, machine, command(put(b"k%d" % n, b"v" * 50), put(b"j%d" % n, b"w" * 50)))
    events = machine.events(0, 1000)
    assert machine.event_bytes <= 2_000 + 200 and machine.event_floor > 1
    assert events[0][0] >= machine.event_floor, "nothing below the floor"
    assert events[0][1].key.startswith(b"k"), "a revision's changes go together"
    assert events[-1][1].key == b"j39"
    reopened = KeyValueStateMachine(engine, group_id=1)
    assert (reopened.event_floor, reopened.event_bytes) == (
        machine.event_floor,
        machine.event_bytes,
    )


def test_replicas_trim_the_event_log_alike_however_their_rounds_are_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shardkv.fsm.kv.EVENT_LOG_BYTES", 2_000)
    history = [command(put(b"k%d" % n, b"v" * 900)) for n in range(7)]

    def event_log(rounds: list[list[kv_pb2.Command]]) -> list[tuple[bytes, bytes]]:
        engine = MemoryEngine()
        machine = KeyValueStateMachine(engine, group_id=1)
        for commands in rounds:
            apply(engine, machine, *commands)
        low, _ = keys.event_range(1)
        return list(engine.scan(ColumnFamily.META, low, keys.event_log_key(1) + b"\x00"))

    one_by_one = event_log([[each] for each in history])
    assert event_log([history[:3], history[3:5], history[5:]]) == one_by_one
    assert event_log([history]) == one_by_one


def test_an_import_records_the_event_logs_floor(tmp_path: Path) -> None:
    source = KeyValueStateMachine(MemoryEngine(), group_id=1)
    apply(source.engine, source, command(put(b"k", b"v")))
    stored = source.engine.get(ColumnFamily.DATA, keys.data_key(1, b"k"))
    assert stored is not None
    store = Engine(tmp_path / "db")
    target = KeyValueStateMachine(store, group_id=2)
    batch = store.new_batch()
    target.import_records(batch, [b"k"], [stored])
    target.finish_import(batch)
    store.write(batch, sync=False)
    floor = target.event_floor
    store.close()
    store = Engine(tmp_path / "db")
    assert KeyValueStateMachine(store, group_id=2).event_floor == floor, "the same after a restart"
    store.close()
