"""Bulk migration: the engine's ``get_many``, the ring's ``moving_keys``, and the
state machine's ``import_records``/``drop_keys`` (chunks of thousands of keys,
their presence read in one call or not at all) with the bulk pass and the
counted-out release (``released_keys``).

The move is the one of ``test_fsm_migration`` (group 5 added: 1 -> 5), with
thousands of keys in chunks of ``CHUNK``. Everything runs on ``MemoryEngine``
and RocksDB.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardkv.fsm.kv import KeyValueStateMachine, Record
from shardkv.node import export
from shardkv.node.export import PAUSE_KEYS, export_chunks, export_steps
from shardkv.ring import KeyRing, build_ring, moving_keys
from shardkv.storage import ColumnFamily, Engine, StorageEngine, keys
from shardkv.v1 import kv_pb2, node_pb2
from tests.unit.engines import Opener, engine_opener
from tests.unit.test_fsm_kv import delete, put
from tests.unit.test_fsm_kv import engine as engine  # the fixture: both engines
from tests.unit.test_fsm_migration import (
    NEW_RING,
    OLD_RING,
    SOURCE,
    TARGET,
    Groups,
    new_groups,
    step,
)
from tests.unit.test_fsm_txn import state

DATA, META = ColumnFamily.DATA, ColumnFamily.META
ALL, CHANGES, KEYS = node_pb2.EXPORT_ALL, node_pb2.EXPORT_CHANGES, node_pb2.EXPORT_KEYS
CHUNK = 1000  # keys per copy/collect chunk, with a smaller last one


@pytest.fixture(params=["memory", "rocksdb"])
def open_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    with engine_opener(request.param, tmp_path / "db") as opener:
        yield opener


# -- the engine's get_many ---------------------------------------------------------------


def data(engine: StorageEngine) -> dict[bytes, bytes]:
    return dict(engine.scan(DATA, b""))


def test_get_many_equals_get_for_each(open_engine: Opener) -> None:
    engine = open_engine()
    batch = engine.new_batch()
    for number in range(0, 300, 2):
        batch.put(DATA, b"g%03d" % number, b"v%d" % number)
        batch.put(META, b"g%03d" % (number + 1), b"m")
    engine.write(batch, sync=False)
    batch = engine.new_batch()
    for number in range(0, 300, 10):
        batch.delete(DATA, b"g%03d" % number)
    engine.write(batch, sync=False)
    asked = [b"g%03d" % n for n in random.Random(3).sample(range(300), 200)] + [b"", b"zz", b"g000"]
    for cf in (DATA, META):
        assert engine.get_many(cf, asked) == [engine.get(cf, key) for key in asked]
    assert engine.get_many(DATA, []) == []
    assert engine.get_many(DATA, [b"g002"]) == [b"v2"]
    assert engine.get_many(DATA, [b"g010"]) == [None]


# -- the ring's moving_keys --------------------------------------------------------------


def _random_keys(count: int) -> list[bytes]:
    rng = random.Random(7)
    made = []
    for number in range(count):
        kind = number % 4
        if kind == 0:
            made.append(b"key-%d" % rng.randrange(10**9))
        elif kind == 1:
            made.append(rng.randbytes(rng.randint(0, 24)))  # any byte, invalid UTF-8 too
        elif kind == 2:
            made.append(f"ключ-{rng.randrange(10**6)}-é".encode())
        else:
            made.append(bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 8))))
    return made


RING_KEYS = _random_keys(20_000)

RING_CHANGES = {
    "add": ({1: 1, 2: 1, 3: 1, 4: 1}, {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}),
    "add-two": ({1: 1, 2: 1}, {1: 1, 2: 1, 7: 2, 8: 1}),
    "remove": ({1: 1, 2: 1, 3: 1, 4: 1}, {1: 1, 2: 1, 4: 1}),
    "weights": ({1: 1, 2: 1, 3: 1}, {1: 3, 2: 1, 3: 2}),
    "weight-down": ({1: 4, 2: 2, 3: 1}, {1: 1, 2: 2, 3: 3}),
    "replace": ({1: 1, 2: 1}, {2: 1, 3: 1}),
}


@pytest.mark.parametrize("change", sorted(RING_CHANGES))
def test_moving_keys_agrees_with_both_rings(change: str) -> None:
    old_weights, new_weights = RING_CHANGES[change]
    old, new = KeyRing(1, old_weights), KeyRing(2, new_weights)
    owners = [(old.group_for(key), new.group_for(key)) for key in RING_KEYS]
    groups = sorted(set(old_weights) | set(new_weights))
    moved_pairs = 0
    for source, target in itertools.product(groups, repeat=2):
        expected = [
            key for key, pair in zip(RING_KEYS, owners, strict=True) if pair == (source, target)
        ]
        assert moving_keys(old, new, source, target)(RING_KEYS) == expected, (source, target)
        prefixed = moving_keys(old, new, source, target, skip=4)
        engine_keys = [b"\x00\x00\x00\x05" + key for key in RING_KEYS]
        assert prefixed(engine_keys) == [b"\x00\x00\x00\x05" + key for key in expected]
        moved_pairs += source != target and bool(expected)
    assert moved_pairs, "some keys move in every change"


def test_moving_keys_at_the_points_of_both_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Positions exactly at (and around) a point of either ring, through ring_digest
    (the keys are not ASCII, so that it hashes them)."""
    old, new = KeyRing(1, {1: 1, 2: 1, 3: 1}), KeyRing(2, {1: 1, 2: 1, 3: 1, 4: 1})
    import shardkv.ring as ring_module

    positions = sorted(set(old.points()[0]) | set(new.points()[0]))
    probes = [0, (1 << 128) - 1]
    for point in positions[:: max(1, len(positions) // 300)]:
        probes += [point - 1, point, point + 1]
    keyed = {b"\xffp%d" % n: position for n, position in enumerate(probes)}
    monkeypatch.setattr(ring_module, "ring_digest", lambda key: keyed[key].to_bytes(16, "big"))
    for source, target in itertools.product((1, 2, 3, 4), repeat=2):
        expected = [
            key
            for key, position in keyed.items()
            if old.owner_at(position) == source and new.owner_at(position) == target
        ]
        assert moving_keys(old, new, source, target)(keyed) == expected, (source, target)


# -- the state machine: a bulk move ---------------------------------------------------


def _classify() -> tuple[list[bytes], list[bytes]]:
    old, new = build_ring(OLD_RING), build_ring(NEW_RING)
    moving: list[bytes] = []
    staying: list[bytes] = []
    for number in range(1_000_000):
        for key in (b"bulk-%06d" % number, f"ключ-{number:05d}".encode()):
            if old.group_for(key) != SOURCE:
                continue
            if new.group_for(key) == TARGET:
                moving.append(key)
            else:
                staying.append(key)
        if len(moving) >= 2_600 and len(staying) >= 800:
            return sorted(moving), sorted(staying)
    raise AssertionError(f"the rings move too few keys: {len(moving)} moving")


BULK_MOVING, BULK_STAYING = _classify()
SEEDED = BULK_MOVING[:2_300]  # written before the move
NEW_MOVING = BULK_MOVING[2_300:2_400]  # written while copying
STAYING = BULK_STAYING[:800]


def bulk_put(groups: Groups, machine: KeyValueStateMachine, items: list[bytes], tag: bytes) -> None:
    for start in range(0, len(items), 700):
        puts = [kv_pb2.KeyValue(key=key, value=tag + key) for key in items[start : start + 700]]
        groups.apply(machine, kv_pb2.Command(puts=puts))


def stored_data(engine: StorageEngine, group_id: int) -> dict[bytes, bytes]:
    low, high = keys.data_range(group_id)
    skip = keys.GROUP_KEY_SIZE
    return {key[skip:]: value for key, value in engine.scan(DATA, low, high)}


def counted(engine: StorageEngine, group_id: int) -> int:
    return len(stored_data(engine, group_id))


def stored_count(engine: StorageEngine, group_id: int) -> int | None:
    found = engine.get(META, keys.key_count_key(group_id))
    return int.from_bytes(found, "big") if found is not None else None


def moving_of(groups: Groups) -> dict[bytes, bytes]:
    stored = stored_data(groups.engine, SOURCE)
    return {key: stored[key] for key in groups.source.migration.moving_keys(TARGET)(stored)}


def copy_bulk(
    groups: Groups, kind: node_pb2.ExportKind, since: int = 0, bulk_pass: int | None = None
) -> int:
    """Copy in chunks of CHUNK keys; the revision read at. A copy of everything is bulk
    pass 7 unless ``bulk_pass`` says otherwise, as the driver sends it."""
    revision = groups.source.revision
    if bulk_pass is None:
        bulk_pass = 7 if kind == ALL else 0
    for chunk in groups.export(kind, since, chunk_keys=CHUNK):
        chunk.bulk_pass = bulk_pass
        groups.applies(groups.target, step(copy=chunk))
    return revision


def copy_and_switch(groups: Groups) -> None:
    """Begin, copy everything, freeze, seal and activate: the keys ready to release."""
    groups.begin()
    copy_bulk(groups, ALL)
    groups.applies(groups.source, step(freeze=True))
    groups.applies(groups.source, step(seal=True))
    groups.applies(groups.target, step(activate=True))


def switched(engine: StorageEngine, moving: int, staying: int) -> Groups:
    """Groups whose source held ``moving`` keys that move and ``staying`` that
    stay, copied, frozen, sealed and activated: the keys ready to release."""
    groups = new_groups(engine)
    bulk_put(groups, groups.source, SEEDED[:moving], b"v-")
    bulk_put(groups, groups.source, STAYING[:staying], b"s-")
    copy_and_switch(groups)
    return groups


def release(groups: Groups, released_keys: int | None) -> None:
    made = step(release=True)
    if released_keys is not None:
        made.migrate.released_keys = released_keys
    groups.applies(groups.source, made)


def collect_bulk(groups: Groups) -> int:
    """Collect in chunks of CHUNK keys; how many chunks."""
    chunks = groups.export(KEYS, chunk_keys=CHUNK)
    for chunk in chunks:
        groups.applies(groups.source, step(collect=kv_pb2.MigrateCollect(keys=chunk.keys)))
    groups.applies(groups.source, step(collect=kv_pb2.MigrateCollect(last=True)))
    return len(chunks)


def bulk_move(groups: Groups, released: bool) -> dict[bytes, bytes]:
    """The whole move with a catch-up of changes (writes, deletions, new keys);
    the moving keys as the source held them at the release."""
    source, target = groups.source, groups.target
    bulk_put(groups, source, SEEDED, b"v1-")
    bulk_put(groups, source, STAYING, b"s-")
    groups.apply(source, kv_pb2.Command(puts=[kv_pb2.KeyValue(key=SEEDED[0], value=b"v2")]))
    groups.begin()
    watermark = copy_bulk(groups, ALL)
    assert target.key_count == len(SEEDED) == counted(groups.engine, TARGET)
    # Changes while copying: 700 deleted, 600 rewritten, 100 new, a staying key.
    deleted, rewritten = SEEDED[100:800], SEEDED[800:1400]
    for start in range(0, len(deleted), 100):
        groups.write(source, *(delete(key) for key in deleted[start : start + 100]))
    bulk_put(groups, source, rewritten, b"v2-")
    bulk_put(groups, source, NEW_MOVING, b"new-")
    groups.write(source, put(STAYING[0], b"s2"))
    watermark = copy_bulk(groups, CHANGES, watermark)
    expected = moving_of(groups)
    assert stored_data(groups.engine, TARGET) == expected
    assert target.key_count == len(expected) == counted(groups.engine, TARGET)
    # A last change after the freeze's catch-up, then seal, copy, activate.
    groups.applies(source, step(freeze=True))
    groups.applies(source, step(seal=True))
    copy_bulk(groups, CHANGES, watermark)
    groups.applies(target, step(activate=True))
    held = moving_of(groups)
    assert len(held) == len(SEEDED) - len(deleted) + len(NEW_MOVING)
    release(groups, len(held) if released else None)
    if released:
        assert source.key_count == len(STAYING), "counted out at the release"
    assert collect_bulk(groups) >= 2, "the collect goes in chunks"
    return held


@pytest.mark.parametrize("released", [True, False], ids=["counted-out", "by-presence"])
def test_a_bulk_move_carries_every_key_and_counts_exactly(
    engine: StorageEngine, released: bool
) -> None:
    groups = new_groups(engine)
    source, target = groups.source, groups.target
    held = bulk_move(groups, released)
    assert stored_data(engine, TARGET) == held, "exactly the moving keys, records identical"
    assert stored_data(engine, SOURCE).keys() == set(STAYING)
    assert moving_of(groups) == {}
    assert source.key_count == len(STAYING) == counted(engine, SOURCE)
    assert target.key_count == len(held) == counted(engine, TARGET)
    assert stored_count(engine, SOURCE) == source.key_count
    assert stored_count(engine, TARGET) == target.key_count
    for group_id, machine in ((SOURCE, source), (TARGET, target)):
        assert KeyValueStateMachine(engine, group_id).key_count == machine.key_count
    # The target's revision is above every imported one: a new write goes above them.
    newest = max(Record.revisions(record)[1] for record in held.values())
    assert target.revision >= newest
    groups.write(target, put(SEEDED[0], b"after"))
    after = target.get(SEEDED[0])
    assert after is not None and after.mod_revision > newest
    assert after.version == 3, "the version carried over from the source"
    groups.write(target, put(b"brand-new-" + SEEDED[0], b"x"))
    groups.end()


def test_newest_revision_reads_both_record_formats() -> None:
    records = [
        Record(b"a", 1, 3, 9).encode(),
        Record(b"b", 2, 1, 300, lease=7).encode(),
        Record(b"c", 1, 2, 2**40 + 5).encode(),
        Record(b"d", 1, 2, 256, lease=2**50).encode(),
    ]
    assert Record.newest_revision(records) == 2**40 + 5
    assert Record.newest_revision(records[:2]) == 300
    assert Record.newest_revision(records[1:2]) == 300
    assert Record.newest_revision([records[3], records[0]]) == 256
    assert Record.newest_revision([]) == 0


def test_a_release_counts_out_once(engine: StorageEngine) -> None:
    groups = switched(engine, 600, 50)
    source = groups.source
    release(groups, 600)
    assert source.key_count == 50
    release(groups, 600)  # repeated: released already, counted once
    assert source.key_count == 50
    state_ = source.migration.state
    assert state_ is not None and list(state_.counted_out) == [TARGET]
    assert KeyValueStateMachine(engine, SOURCE).key_count == 50
    collect_bulk(groups)
    collect_bulk(groups)  # a repeated collect counts nothing
    assert source.key_count == 50 == counted(engine, SOURCE)


# -- a bulk pass counts its keys in without reading them ----------------------------------


@pytest.fixture
def data_reads(monkeypatch: pytest.MonkeyPatch, engine: StorageEngine) -> list[int]:
    """How many keys each ``get_many`` of the target's data read (to count them in;
    the export's reads of the source's records are not counted)."""
    reads: list[int] = []
    get_many = engine.get_many
    target = keys.group_prefix(TARGET)

    def counting(cf: ColumnFamily, wanted: list[bytes]) -> list[bytes | None]:
        if cf is DATA and any(key.startswith(target) for key in wanted):
            reads.append(len(wanted))
        return get_many(cf, wanted)

    monkeypatch.setattr(engine, "get_many", counting)
    return reads


def bulk_imports(groups: Groups) -> dict[int, tuple[int, bytes]]:
    found = groups.target.migration.state
    assert found is not None
    return {source: (seen.bulk_pass, seen.last_key) for source, seen in found.bulk_imports.items()}


def test_a_bulk_pass_counts_its_keys_in_without_reading_them(
    engine: StorageEngine, data_reads: list[int]
) -> None:
    groups = new_groups(engine)
    bulk_put(groups, groups.source, SEEDED, b"v1-")
    bulk_put(groups, groups.source, STAYING, b"s-")
    groups.begin()
    copy_bulk(groups, ALL)
    assert data_reads == [], "no key of the pass was read to count it"
    assert groups.target.key_count == len(SEEDED) == counted(engine, TARGET)
    assert bulk_imports(groups) == {SOURCE: (7, max(SEEDED))}
    assert KeyValueStateMachine(engine, TARGET).key_count == len(SEEDED)


def _apply_chunks(groups: Groups, chunks: list[kv_pb2.MigrateImport]) -> None:
    for chunk in chunks:
        groups.applies(groups.target, step(copy=chunk))


def _pass_chunks(groups: Groups, bulk_pass: int) -> list[kv_pb2.MigrateImport]:
    chunks = groups.export(ALL, chunk_keys=CHUNK)
    for chunk in chunks:
        chunk.bulk_pass = bulk_pass
    return chunks


@pytest.mark.parametrize(
    "story", ["pass-again", "chunk-repeated", "out-of-order", "catch-up-first", "deletion"]
)
def test_copies_outside_one_pass_read_their_keys_and_count_exactly(
    engine: StorageEngine, data_reads: list[int], story: str
) -> None:
    """Whatever else came from the source first (another pass after a driver
    restart, a catch-up, a deletion), later chunks' keys are read; a chunk of the
    pass applied twice or out of order has its own keys read; the count stays
    exact."""
    groups = new_groups(engine)
    source, target = groups.source, groups.target
    bulk_put(groups, source, SEEDED, b"v1-")
    groups.begin()
    chunks = _pass_chunks(groups, 7)
    assert len(chunks) >= 3
    if story == "pass-again":
        _apply_chunks(groups, chunks[:2])
        _apply_chunks(groups, _pass_chunks(groups, 8))
    elif story == "chunk-repeated":
        _apply_chunks(groups, chunks[:2])
        _apply_chunks(groups, chunks[1:])  # the driver repeats a step it had no answer for
    elif story == "out-of-order":
        _apply_chunks(groups, [chunks[1], chunks[0], *chunks[2:]])
    elif story == "catch-up-first":
        groups.write(source, put(SEEDED[0], b"changed"))
        copy_bulk(groups, CHANGES, 0)
        _apply_chunks(groups, _pass_chunks(groups, 7))
    else:
        groups.write(source, delete(SEEDED[5]))
        copy_bulk(groups, CHANGES, 0)  # the deletion of a key the target never had
        _apply_chunks(groups, _pass_chunks(groups, 7))
    assert data_reads, "keys were read to count them"
    if story in ("chunk-repeated", "out-of-order"):
        # Only the chunk at or below what the pass brought was read; the pass goes on.
        assert bulk_imports(groups)[SOURCE] == (7, max(SEEDED))
        assert len(data_reads) == 1 and data_reads[0] == len(
            chunks[0 if story == "out-of-order" else 1].keys
        )
    else:
        assert bulk_imports(groups)[SOURCE] == (0, b""), "the source's copies are read from now on"
    assert stored_data(engine, TARGET) == moving_of(groups)
    assert target.key_count == len(moving_of(groups)) == counted(engine, TARGET)
    assert KeyValueStateMachine(engine, TARGET).key_count == target.key_count


def test_a_pass_is_remembered_across_a_restart(
    engine: StorageEngine, data_reads: list[int]
) -> None:
    """``bulk_imports`` is stored with the round: a restarted replica (whose count
    was stored) goes on with the pass, reading only a chunk it had already."""
    groups = new_groups(engine)
    bulk_put(groups, groups.source, SEEDED, b"v1-")
    groups.begin()
    chunks = _pass_chunks(groups, 7)
    _apply_chunks(groups, chunks[:2])
    restarted = KeyValueStateMachine(engine, TARGET)
    assert restarted.migration.state == groups.target.migration.state
    groups.target = restarted
    data_reads.clear()
    _apply_chunks(groups, chunks[1:])  # the driver repeats the step it had no answer for
    assert data_reads == [len(chunks[1].keys)], "only the repeated chunk was read"
    assert restarted.key_count == len(moving_of(groups)) == counted(engine, TARGET)


# -- replicas agree ------------------------------------------------------------------


@pytest.mark.parametrize("released", [True, False], ids=["counted-out", "by-presence"])
def test_replicas_grouping_bulk_steps_in_other_rounds_agree(
    engine: StorageEngine, released: bool
) -> None:
    groups = new_groups(engine)
    bulk_move(groups, released)
    whole = state(engine, SOURCE), state(engine, TARGET)
    expected = [result.SerializeToString() for result in groups.results]
    originals = {SOURCE: groups.source, TARGET: groups.target}
    for seed_, sizes in ((0, (1, 1)), (1, (2, 6)), (2, (5, 40)), (3, (len(groups.log),) * 2)):
        replica, machines, results = groups.replay(seed_, sizes)
        assert [result.SerializeToString() for result in results] == expected, seed_
        assert (state(replica, SOURCE), state(replica, TARGET)) == whole, seed_
        for group_id, machine in machines.items():
            original = originals[group_id]
            assert machine.key_count == original.key_count
            assert machine.revision == original.revision
            assert machine.migration.state == original.migration.state
            reopened = KeyValueStateMachine(replica, group_id)
            assert reopened.key_count == original.key_count
        replica.close()


# -- a crash before the round's batch --------------------------------------------------


def records_for(moved: list[bytes], tag: bytes, revision: int = 50) -> list[bytes]:
    return [Record(tag + key, 1, revision, revision + n).encode() for n, key in enumerate(moved)]


@pytest.mark.parametrize("bulk_pass", [0, 7], ids=["catch-up", "bulk-pass"])
def test_a_crash_before_the_batch_loses_the_whole_copy(open_engine: Opener, bulk_pass: int) -> None:
    """A chunk's keys go into the round's batch with the count and the applied state:
    lost together, and the entry applied again after the restart counts exactly."""
    engine = open_engine()
    groups = new_groups(engine)
    groups.begin()
    if bulk_pass:
        # The pass's first chunk: its 700 keys are new (not read to count them).
        chunk_keys = SEEDED[:700]
        first = []
    else:
        first = SEEDED[:300]
        groups.applies(
            groups.target,
            step(copy=kv_pb2.MigrateImport(keys=first, records=records_for(first, b"a"))),
        )
        # A chunk of 700, 200 of them known already.
        chunk_keys = SEEDED[100:800]
    made = step(
        copy=kv_pb2.MigrateImport(
            keys=chunk_keys, records=records_for(chunk_keys, b"b"), bulk_pass=bulk_pass
        )
    )
    total = len(set(first) | set(chunk_keys))
    batch = engine.new_batch()
    assert groups.target.apply(batch, made).migrate.applied
    assert groups.target.key_count == total
    assert counted(engine, TARGET) == len(first), "nothing of the chunk is written before it"
    # The node goes down here: the batch is lost.
    del batch
    engine.close()
    engine = open_engine()
    restarted = KeyValueStateMachine(engine, TARGET)
    assert restarted.key_count == len(first)
    batch = engine.new_batch()
    assert restarted.apply(batch, made).migrate.applied
    engine.write(batch, sync=False)
    assert restarted.key_count == total == counted(engine, TARGET)
    assert stored_count(engine, TARGET) == total
    found = restarted.get(chunk_keys[-1])
    assert found is not None and found.value == b"b" + chunk_keys[-1]


def test_keys_an_earlier_version_ingested_before_its_crash_are_counted_once(
    open_engine: Opener,
) -> None:
    """A version that ingested a bulk chunk as a table dropped the stored count first;
    a crash before the round's batch left the keys in and no count. The restarted
    replica counts its keys, and reads a bulk pass's keys to count them: the entry
    applied again counts none twice."""
    engine = open_engine()
    groups = new_groups(engine)
    groups.begin()
    chunk_keys = SEEDED[:700]
    records = records_for(chunk_keys, b"b")
    made = step(copy=kv_pb2.MigrateImport(keys=chunk_keys, records=records, bulk_pass=7))
    left = engine.new_batch()
    for key, record in zip(chunk_keys, records, strict=True):
        left.put(DATA, keys.data_key(TARGET, key), record)
    left.delete(META, keys.key_count_key(TARGET))
    engine.write(left, sync=True)
    engine.close()
    engine = open_engine()
    restarted = KeyValueStateMachine(engine, TARGET)
    assert restarted.key_count == 700
    batch = engine.new_batch()
    assert restarted.apply(batch, made).migrate.applied
    engine.write(batch, sync=False)
    assert restarted.key_count == 700 == counted(engine, TARGET) == stored_count(engine, TARGET)


def test_a_crash_before_the_batch_loses_the_whole_collect(open_engine: Opener) -> None:
    engine = open_engine()
    groups = switched(engine, 1200, 100)
    source = groups.source
    release(groups, None)  # not counted out: collects count by presence
    assert source.key_count == 1300
    made = step(collect=kv_pb2.MigrateCollect(keys=SEEDED[:700] + STAYING[:5]))
    batch = engine.new_batch()
    assert source.apply(batch, made).migrate.applied
    assert source.key_count == 600
    assert counted(engine, SOURCE) == 1300, "nothing of the collect is written before it"
    del batch
    engine.close()
    engine = open_engine()
    restarted = KeyValueStateMachine(engine, SOURCE)
    assert restarted.key_count == 1300 == counted(engine, SOURCE)
    batch = engine.new_batch()
    assert restarted.apply(batch, made).migrate.applied
    engine.write(batch, sync=False)
    assert restarted.key_count == 600 == counted(engine, SOURCE)
    assert stored_data(engine, SOURCE).keys() >= set(STAYING[:100]), "staying keys are kept"


def test_a_recount_after_a_counted_out_release_skips_moved_keys(open_engine: Opener) -> None:
    engine = open_engine()
    groups = switched(engine, 1500, 120)
    source = groups.source
    release(groups, 1500)
    assert source.key_count == 120

    def drop_stored_count() -> None:
        batch = engine.new_batch()
        batch.delete(META, keys.key_count_key(SOURCE))
        engine.write(batch, sync=True)

    drop_stored_count()
    assert KeyValueStateMachine(engine, SOURCE).key_count == 120, "none collected yet"
    # A collect of 600 (not counted: the keys were counted out) whose batch is
    # lost, and a restart without a stored count.
    made = step(collect=kv_pb2.MigrateCollect(keys=SEEDED[:600]))
    batch = engine.new_batch()
    assert source.apply(batch, made).migrate.applied
    assert source.key_count == 120
    del batch
    engine.close()
    engine = open_engine()
    drop_stored_count()
    restarted = KeyValueStateMachine(engine, SOURCE)
    assert restarted.key_count == 120, "the 1500 moved keys not collected yet are not counted"
    batch = engine.new_batch()
    assert restarted.apply(batch, made).migrate.applied
    engine.write(batch, sync=False)
    assert restarted.key_count == 120
    assert counted(engine, SOURCE) == 120 + 900
    groups = Groups(engine, restarted, KeyValueStateMachine(engine, TARGET))
    collect_bulk(groups)
    assert restarted.key_count == 120 == counted(engine, SOURCE)
    drop_stored_count()
    assert KeyValueStateMachine(engine, SOURCE).key_count == 120


# -- a chunk with a key staged in the same round -------------------------------------------


def test_a_chunk_with_a_key_staged_earlier_in_the_round_counts_it_once(
    engine: StorageEngine,
) -> None:
    groups = new_groups(engine)
    target = groups.target
    groups.begin()
    chunk_keys = SEEDED[:600]
    staged = chunk_keys[300]
    first = Record(b"first", 1, 10, 10).encode()
    second = records_for(chunk_keys, b"second-", 20)
    batch = engine.new_batch()
    target.apply(batch, step(copy=kv_pb2.MigrateImport(keys=[staged], records=[first])))
    target.apply(batch, step(copy=kv_pb2.MigrateImport(keys=chunk_keys, records=second)))
    engine.write(batch, sync=False)
    assert engine.get(DATA, keys.data_key(TARGET, staged)) == second[300], "the later step wins"
    assert stored_data(engine, TARGET) == dict(zip(chunk_keys, second, strict=True))
    assert target.key_count == 600 == counted(engine, TARGET)
    assert stored_count(engine, TARGET) == 600


def test_a_pass_chunk_with_a_key_staged_earlier_in_the_round_reads_its_keys(
    engine: StorageEngine, data_reads: list[int]
) -> None:
    """The log calls a pass's first chunk new; a key of it written earlier in the
    same round (not by a copy: nothing else does, this guards the count) is
    counted once all the same."""
    groups = new_groups(engine)
    target = groups.target
    groups.begin()
    chunk_keys = SEEDED[:600]
    batch = engine.new_batch()
    # An empty copy: through apply, the machine takes this batch as its round's,
    # so the key imported directly next is staged in the round.
    target.apply(batch, step(copy=kv_pb2.MigrateImport()))
    target.import_records(batch, [chunk_keys[7]], [Record(b"x", 1, 5, 5).encode()])
    made = kv_pb2.MigrateImport(keys=chunk_keys, records=records_for(chunk_keys, b"p"))
    made.bulk_pass = 7
    target.apply(batch, step(copy=made))
    engine.write(batch, sync=False)
    assert data_reads and data_reads[-1] == 600, "the pass chunk's keys were read"
    assert target.key_count == 600 == counted(engine, TARGET)


def copied_in(engine: StorageEngine, copied: list[bytes]) -> Groups:
    """Groups whose move began, with ``copied`` copied into the target."""
    groups = new_groups(engine)
    groups.begin()
    groups.applies(
        groups.target,
        step(copy=kv_pb2.MigrateImport(keys=copied, records=records_for(copied, b"a"))),
    )
    return groups


def test_a_deletion_chunk_with_a_staged_key_counts_it_once(engine: StorageEngine) -> None:
    target = copied_in(engine, SEEDED[:700]).target
    staged = SEEDED[10]
    batch = engine.new_batch()
    target.apply(
        batch,
        step(copy=kv_pb2.MigrateImport(keys=[staged], records=[Record(b"x", 1, 5, 5).encode()])),
    )
    target.apply(batch, step(copy=kv_pb2.MigrateImport(deleted=SEEDED[:600])))
    engine.write(batch, sync=False)
    assert engine.get(DATA, keys.data_key(TARGET, staged)) is None, "the later deletion wins"
    assert stored_data(engine, TARGET).keys() == set(SEEDED[600:700])
    assert target.key_count == 100 == counted(engine, TARGET)


def test_a_key_staged_after_a_chunk_in_the_same_round_wins(engine: StorageEngine) -> None:
    groups = new_groups(engine)
    target = groups.target
    groups.begin()
    chunk_keys = SEEDED[:600]
    batch = engine.new_batch()
    target.apply(
        batch,
        step(copy=kv_pb2.MigrateImport(keys=chunk_keys, records=records_for(chunk_keys, b"t"))),
    )
    later = Record(b"later", 1, 90, 90).encode()
    target.apply(batch, step(copy=kv_pb2.MigrateImport(keys=[chunk_keys[5]], records=[later])))
    target.apply(batch, step(copy=kv_pb2.MigrateImport(deleted=[chunk_keys[6]])))
    engine.write(batch, sync=False)
    assert engine.get(DATA, keys.data_key(TARGET, chunk_keys[5])) == later
    assert engine.get(DATA, keys.data_key(TARGET, chunk_keys[6])) is None
    assert target.key_count == 599 == counted(engine, TARGET)
    assert target.revision >= 50 + 599, "raised above the chunk's newest record"


def test_a_collect_with_a_key_twice_counts_it_out_once(engine: StorageEngine) -> None:
    groups = switched(engine, 700, 100)
    release(groups, None)  # not counted out: collects count by presence
    twice = SEEDED[:300] + SEEDED[:300]
    groups.applies(groups.source, step(collect=kv_pb2.MigrateCollect(keys=twice)))
    assert groups.source.key_count == 500 == counted(engine, SOURCE)


def test_a_copy_deleting_a_key_twice_counts_it_out_once(engine: StorageEngine) -> None:
    groups = copied_in(engine, SEEDED[:700])
    target = groups.target
    groups.applies(target, step(copy=kv_pb2.MigrateImport(deleted=SEEDED[:10] * 2)))
    assert target.key_count == 690 == counted(engine, TARGET)


@pytest.mark.parametrize("pause", [7, 1])
def test_an_export_pauses_after_each_list_scanned_and_leaves_staying_keys_out(
    engine: StorageEngine, monkeypatch: pytest.MonkeyPatch, pause: int
) -> None:
    """The scan hands the export lists of PAUSE_KEYS keys, moving or not, and it
    pauses after each (the last one shorter): the keys that stay are not exported."""
    monkeypatch.setattr(export, "PAUSE_KEYS", pause)
    groups = new_groups(engine)
    bulk_put(groups, groups.source, SEEDED[:300], b"v-")
    bulk_put(groups, groups.source, STAYING[:300], b"s-")
    groups.begin()
    state = groups.source.migration.state
    assert state is not None
    request = node_pb2.ExportRequest(
        group_id=SOURCE, epoch=state.epoch, target=TARGET, kind=ALL, chunk_keys=100_000
    )
    steps = list(export.export_steps(groups.source, request))
    assert steps.count(None) == -(-600 // pause)
    exported = [
        (key, record)
        for chunk in steps
        if chunk is not None
        for key, record in zip(chunk.keys, chunk.records, strict=True)
    ]
    assert exported == sorted(moving_of(groups).items())


def test_an_export_reads_every_record_as_of_its_moment_across_its_pauses(
    engine: StorageEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group goes on applying while the export pauses: a moving key changed or
    deleted at a pause, before its list was read, is still exported as it was at
    the export's moment, and the next catch-up copies its change."""
    monkeypatch.setattr(export, "PAUSE_KEYS", 7)
    groups = new_groups(engine)
    bulk_put(groups, groups.source, SEEDED[:300], b"v-")
    bulk_put(groups, groups.source, STAYING[:300], b"s-")
    groups.begin()
    source = groups.source
    assert source.migration.state is not None
    before = moving_of(groups)
    request = node_pb2.ExportRequest(
        group_id=SOURCE, epoch=source.migration.state.epoch, target=TARGET, kind=ALL
    )
    revision = source.revision
    steps = export.export_steps(source, request)
    assert next(steps) is None  # the first list is read: a pause
    gone, changed = SEEDED[299], SEEDED[298]  # the last moving keys: in later lists
    groups.write(source, delete(gone), put(changed, b"new"))
    exported = [
        (key, record)
        for chunk in steps
        if chunk is not None
        for key, record in zip(chunk.keys, chunk.records, strict=True)
    ]
    assert exported == sorted(before.items())
    changes = node_pb2.ExportRequest(
        group_id=SOURCE,
        epoch=source.migration.state.epoch,
        target=TARGET,
        kind=node_pb2.EXPORT_CHANGES,
        since_revision=revision,
    )
    caught_up = list(export_chunks(source, changes))
    assert [list(chunk.deleted) for chunk in caught_up] == [[gone]]
    assert [list(chunk.keys) for chunk in caught_up] == [[changed]]


def test_a_long_export_scan_pauses_for_the_event_loop(engine: StorageEngine) -> None:
    """``Node.Export`` awaits at each None: one per list of PAUSE_KEYS keys scanned,
    so a large chunk (thousands of keys scanned) never holds the node's loop
    throughout."""
    groups = new_groups(engine)
    bulk_put(groups, groups.source, SEEDED, b"v1-")
    bulk_put(groups, groups.source, STAYING, b"s-")
    groups.begin()
    request = node_pb2.ExportRequest(
        group_id=SOURCE,
        epoch=groups.source.migration.state.epoch,
        target=TARGET,
        kind=ALL,
        chunk_keys=100_000,
    )
    steps = list(export_steps(groups.source, request))
    scanned = counted(engine, SOURCE)
    assert steps.count(None) == -(-scanned // PAUSE_KEYS) > 1
    chunks = [chunk for chunk in steps if chunk is not None]
    assert len(chunks) == 1 and list(chunks[0].keys) == sorted(moving_of(groups))
    assert chunks == list(export_chunks(groups.source, request))


@pytest.mark.parametrize("chunk_keys", [40, 1000])
def test_an_export_cuts_its_chunks_at_their_keys_or_bytes(
    engine: StorageEngine, monkeypatch: pytest.MonkeyPatch, chunk_keys: int
) -> None:
    """A chunk ends at ``chunk_keys`` keys or with the key whose record brings it
    to MAX_CHUNK_BYTES, wherever that falls in a scanned list; a collect's chunks
    (keys only) at ``chunk_keys`` or MAX_CHUNK_BYTES of keys. Every moving key goes
    once, in key order."""
    monkeypatch.setattr(export, "PAUSE_KEYS", 64)
    monkeypatch.setattr(export, "MAX_CHUNK_BYTES", 3_000)
    groups = new_groups(engine)
    bulk_put(groups, groups.source, SEEDED[:400], b"v-")
    bulk_put(groups, groups.source, STAYING[:400], b"s-")
    groups.begin()
    moving = sorted(moving_of(groups).items())
    state = groups.source.migration.state
    assert state is not None

    def chunks(kind: node_pb2.ExportKind) -> list[kv_pb2.MigrateImport]:
        request = node_pb2.ExportRequest(
            group_id=SOURCE, epoch=state.epoch, target=TARGET, kind=kind, chunk_keys=chunk_keys
        )
        return list(export_chunks(groups.source, request))

    records = chunks(ALL)
    sizes = [
        [len(key) + len(record) for key, record in zip(chunk.keys, chunk.records, strict=True)]
        for chunk in records
    ]
    for chunk, size in zip(records[:-1], sizes[:-1], strict=True):
        full = len(chunk.keys) == chunk_keys
        assert full or sum(size) - size[-1] < 3_000 <= sum(size)
    assert all(
        len(chunk.keys) <= chunk_keys and sum(size) - size[-1] < 3_000
        for chunk, size in zip(records, sizes, strict=True)
    )
    assert len(records) > 1 and (chunk_keys == 40 or len(records[0].keys) < chunk_keys)
    exported = [pair for chunk in records for pair in zip(chunk.keys, chunk.records, strict=True)]
    assert exported == moving
    collected = chunks(KEYS)
    for chunk in collected[:-1]:
        size = sum(len(key) for key in chunk.keys)
        assert len(chunk.keys) == chunk_keys or size - len(chunk.keys[-1]) < 3_000 <= size
    assert len(collected[0].keys) == min(chunk_keys, 3_000 // len(moving[0][0]) + 1)
    assert [key for chunk in collected for key in chunk.keys] == [key for key, _ in moving]
    assert not any(chunk.records for chunk in collected)


def test_tables_an_earlier_version_left_are_removed_at_open(tmp_path: Path) -> None:
    """A version that ingested migrations' tables wrote them under ``ingest/``; one
    it left when it died goes at the next open."""
    Engine(tmp_path / "db").close()
    leftover = tmp_path / "db" / "ingest" / "12345-1.sst"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half a table")
    Engine(tmp_path / "db").close()
    assert not leftover.parent.exists()
