"""Bulk migration: tables ingested into the engine (``StorageEngine.table_writer``,
``ingest``, ``get_many``), the ring's ``moving_filter``, and the state machine's
``import_records``/``drop_keys`` with the counted-out release (``released_keys``).

The move is the one of ``test_fsm_migration`` (group 5 added: 1 -> 5), with
thousands of keys so that copies and collects of ``INGEST_KEYS`` or more take
the table path. Everything runs on ``MemoryEngine`` and RocksDB.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardkv.fsm.kv import INGEST_KEYS, KeyValueStateMachine, Record
from shardkv.node.export import PAUSE_KEYS, export_chunks, export_steps
from shardkv.ring import KeyRing, build_ring, moving_filter
from shardkv.storage import ColumnFamily, Engine, MemoryEngine, StorageEngine, keys
from shardkv.storage.engine import Table
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
CHUNK = 1000  # keys per copy/collect chunk: >= INGEST_KEYS, with a smaller last one


@pytest.fixture(params=["memory", "rocksdb"])
def open_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    with engine_opener(request.param, tmp_path / "db") as opener:
        yield opener


# -- the engine's tables ---------------------------------------------------------------


def table_of(engine: StorageEngine, entries: list[tuple[bytes, bytes | None]]) -> Table:
    writer = engine.table_writer()
    for key, value in entries:
        if value is None:
            writer.delete(key)
        else:
            writer.put(key, value)
    assert writer.entries == len(entries)
    return writer.finish()


def data(engine: StorageEngine) -> dict[bytes, bytes]:
    return dict(engine.scan(DATA, b""))


def test_an_ingested_table_replaces_keys_and_deletes(open_engine: Opener) -> None:
    engine = open_engine()
    batch = engine.new_batch()
    for number in range(20):
        batch.put(DATA, b"k%02d" % number, b"old%d" % number)
    batch.put(META, b"k05", b"meta")
    engine.write(batch, sync=False)
    entries: list[tuple[bytes, bytes | None]] = []
    for number in range(0, 30, 2):
        key = b"k%02d" % number
        entries.append((key, None if number % 4 == 0 else b"new" + key))
    table = table_of(engine, entries)
    assert table
    assert engine.get(DATA, b"k02") == b"old2", "nothing before the ingest"
    engine.ingest(DATA, table)
    expected = {b"k%02d" % n: b"old%d" % n for n in range(20)}
    for key, value in entries:
        if value is None:
            expected.pop(key, None)
        else:
            expected[key] = value
    assert data(engine) == expected
    assert b"k00" not in expected and expected[b"k22"] == b"newk22"
    assert engine.get(META, b"k05") == b"meta", "other column families untouched"
    assert engine.get(META, b"k02") is None


def test_a_batch_written_after_the_ingest_wins(open_engine: Opener) -> None:
    engine = open_engine()
    batch = engine.new_batch()
    batch.put(DATA, b"a", b"batch-a")
    batch.delete(DATA, b"b")
    batch.put(DATA, b"c", b"batch-c")
    engine.ingest(DATA, table_of(engine, [(b"a", b"table-a"), (b"b", b"table-b"), (b"d", None)]))
    assert engine.get(DATA, b"a") == b"table-a", "the table is in at once"
    engine.write(batch, sync=False)
    assert data(engine) == {b"a": b"batch-a", b"c": b"batch-c"}
    # And a later table wins over the batch before it.
    engine.ingest(DATA, table_of(engine, [(b"a", None), (b"c", b"table-c")]))
    assert data(engine) == {b"c": b"table-c"}


def test_an_empty_table_is_a_no_op(open_engine: Opener) -> None:
    engine = open_engine()
    batch = engine.new_batch()
    batch.put(DATA, b"a", b"1")
    engine.write(batch, sync=False)
    writer = engine.table_writer()
    writer.put_many([])
    writer.delete_many([])
    assert writer.entries == 0
    table = writer.finish()
    assert not table and table.entries == 0
    engine.ingest(DATA, table)
    engine.ingest(DATA, table)
    assert data(engine) == {b"a": b"1"}


@pytest.mark.parametrize("first", [b"b", b"a"], ids=["equal", "decreasing"])
def test_keys_out_of_order_are_refused(open_engine: Opener, first: bytes) -> None:
    engine = open_engine()
    writer = engine.table_writer()
    writer.put(b"b", b"1")
    with pytest.raises(ValueError):
        writer.put(first, b"2")
    with pytest.raises(ValueError):
        writer.delete(first)
    writer.finish()
    # The memory engine's ValueError, or RocksDB's own (a plain Exception).
    refused = "strictly increasing|strict ascending order"
    many = engine.table_writer()
    with pytest.raises(Exception, match=refused):
        many.put_many([(b"b", b"1"), (first, b"2")])
    many = engine.table_writer()
    with pytest.raises(Exception, match=refused):
        many.delete_many([b"b", first])


def test_put_many_and_delete_many_count_and_ingest(open_engine: Opener) -> None:
    engine = open_engine()
    batch = engine.new_batch()
    for number in range(10):
        batch.put(DATA, b"d%d" % number, b"x")
    engine.write(batch, sync=False)
    writer = engine.table_writer()
    writer.put_many((b"p%d" % n, b"v%d" % n) for n in range(5))
    assert writer.entries == 5
    engine.ingest(DATA, writer.finish())
    writer = engine.table_writer()
    writer.delete_many(b"d%d" % n for n in range(0, 10, 3))
    assert writer.entries == 4
    engine.ingest(DATA, writer.finish())
    assert data(engine) == {
        **{b"d%d" % n: b"x" for n in range(10) if n % 3},
        **{b"p%d" % n: b"v%d" % n for n in range(5)},
    }


def test_get_many_equals_get_for_each(open_engine: Opener) -> None:
    engine = open_engine()
    batch = engine.new_batch()
    for number in range(0, 300, 2):
        batch.put(DATA, b"g%03d" % number, b"v%d" % number)
        batch.put(META, b"g%03d" % (number + 1), b"m")
    engine.write(batch, sync=False)
    engine.ingest(DATA, table_of(engine, [(b"g%03d" % n, None) for n in range(0, 300, 10)]))
    asked = [b"g%03d" % n for n in random.Random(3).sample(range(300), 200)] + [b"", b"zz", b"g000"]
    for cf in (DATA, META):
        assert engine.get_many(cf, asked) == [engine.get(cf, key) for key in asked]
    assert engine.get_many(DATA, []) == []
    assert engine.get_many(DATA, [b"g002"]) == [b"v2"]
    assert engine.get_many(DATA, [b"g010"]) == [None]


def test_an_ingested_table_survives_a_restart(open_engine: Opener) -> None:
    engine = open_engine()
    batch = engine.new_batch()
    batch.put(DATA, b"gone", b"x")
    batch.put(DATA, b"kept", b"x")
    engine.write(batch, sync=True)
    engine.ingest(DATA, table_of(engine, [(b"gone", None), (b"new", b"n"), (b"z", b"z")]))
    engine.close()
    reopened = open_engine()
    assert data(reopened) == {b"kept": b"x", b"new": b"n", b"z": b"z"}
    # A second table after the restart (RocksDB: table files numbered anew).
    reopened.ingest(DATA, table_of(reopened, [(b"kept", b"y")]))
    assert data(reopened) == {b"kept": b"y", b"new": b"n", b"z": b"z"}
    reopened.close()
    assert data(open_engine()) == {b"kept": b"y", b"new": b"n", b"z": b"z"}


# -- the ring's moving_filter ------------------------------------------------------------


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
def test_moving_filter_agrees_with_both_rings(change: str) -> None:
    old_weights, new_weights = RING_CHANGES[change]
    old, new = KeyRing(1, old_weights), KeyRing(2, new_weights)
    owners = [(old.group_for(key), new.group_for(key)) for key in RING_KEYS]
    groups = sorted(set(old_weights) | set(new_weights))
    moved_pairs = 0
    for source, target in itertools.product(groups, repeat=2):
        moves = moving_filter(old, new, source, target)
        expected = [pair == (source, target) for pair in owners]
        got = [moves(key) for key in RING_KEYS]
        assert got == expected, (source, target)
        moved_pairs += source != target and any(expected)
    assert moved_pairs, "some keys move in every change"


def test_moving_filter_at_the_points_of_both_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Positions exactly at (and around) a point of either ring, through ring_digest."""
    old, new = KeyRing(1, {1: 1, 2: 1, 3: 1}), KeyRing(2, {1: 1, 2: 1, 3: 1, 4: 1})
    import shardkv.ring as ring_module

    positions = sorted(set(old.points()[0]) | set(new.points()[0]))
    probes = [0, (1 << 128) - 1]
    for point in positions[:: max(1, len(positions) // 300)]:
        probes += [point - 1, point, point + 1]
    keyed = {b"p%d" % n: position for n, position in enumerate(probes)}
    monkeypatch.setattr(ring_module, "ring_digest", lambda key: keyed[key].to_bytes(16, "big"))
    for source, target in itertools.product((1, 2, 3, 4), repeat=2):
        moves = moving_filter(old, new, source, target)
        for key, position in keyed.items():
            expected = old.owner_at(position) == source and new.owner_at(position) == target
            assert moves(key) == expected, (source, target, position)


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
    moves = groups.source.migration.moving_filter(TARGET)
    return {key: value for key, value in stored_data(groups.engine, SOURCE).items() if moves(key)}


def copy_bulk(
    groups: Groups, kind: node_pb2.ExportKind, since: int = 0, bulk_pass: int | None = None
) -> tuple[int, int]:
    """Copy in chunks of CHUNK keys; (the revision read at, how many chunks took the table
    path). A copy of everything is bulk pass 7 unless ``bulk_pass`` says otherwise, as the
    driver sends it."""
    revision = groups.source.revision
    if bulk_pass is None:
        bulk_pass = 7 if kind == ALL else 0
    big = 0
    for chunk in groups.export(kind, since, chunk_keys=CHUNK):
        big += len(chunk.keys) >= INGEST_KEYS or len(chunk.deleted) >= INGEST_KEYS
        chunk.bulk_pass = bulk_pass
        groups.applies(groups.target, step(copy=chunk))
    return revision, big


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
    big = 0
    for chunk in groups.export(KEYS, chunk_keys=CHUNK):
        big += len(chunk.keys) >= INGEST_KEYS
        groups.applies(groups.source, step(collect=kv_pb2.MigrateCollect(keys=chunk.keys)))
    groups.applies(groups.source, step(collect=kv_pb2.MigrateCollect(last=True)))
    return big


def bulk_move(groups: Groups, released: bool) -> dict[bytes, bytes]:
    """The whole move with a catch-up of changes (writes, deletions, new keys);
    the moving keys as the source held them at the release."""
    source, target = groups.source, groups.target
    bulk_put(groups, source, SEEDED, b"v1-")
    bulk_put(groups, source, STAYING, b"s-")
    groups.apply(source, kv_pb2.Command(puts=[kv_pb2.KeyValue(key=SEEDED[0], value=b"v2")]))
    groups.begin()
    watermark, big = copy_bulk(groups, ALL)
    assert big >= 2, "the first copy takes the table path"
    assert target.key_count == len(SEEDED) == counted(groups.engine, TARGET)
    # Changes while copying: 700 deleted, 600 rewritten, 100 new, a staying key.
    deleted, rewritten = SEEDED[100:800], SEEDED[800:1400]
    for start in range(0, len(deleted), 100):
        groups.write(source, *(delete(key) for key in deleted[start : start + 100]))
    bulk_put(groups, source, rewritten, b"v2-")
    bulk_put(groups, source, NEW_MOVING, b"new-")
    groups.write(source, put(STAYING[0], b"s2"))
    watermark, big = copy_bulk(groups, CHANGES, watermark)
    assert big >= 1, "the catch-up takes the table path"
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
    assert collect_bulk(groups) >= 1, "the collect takes the table path"
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
    """How many keys each ``get_many`` of the data column family read."""
    reads: list[int] = []
    get_many = engine.get_many

    def counting(cf: ColumnFamily, wanted: list[bytes]) -> list[bytes | None]:
        if cf is DATA:
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
    _, big = copy_bulk(groups, ALL)
    assert big >= 2
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
    assert len(chunks) >= 3 and all(len(chunk.keys) >= INGEST_KEYS for chunk in chunks[:2])
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


# -- the crash window: a table in, the batch not written ----------------------------------


def records_for(moved: list[bytes], tag: bytes, revision: int = 50) -> list[bytes]:
    return [Record(tag + key, 1, revision, revision + n).encode() for n, key in enumerate(moved)]


@pytest.mark.parametrize("bulk_pass", [0, 7], ids=["catch-up", "bulk-pass"])
def test_a_restart_after_an_ingest_recounts(open_engine: Opener, bulk_pass: int) -> None:
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
        assert stored_count(engine, TARGET) == 300
        # A chunk of 700 (200 of them known already) applied, the batch not written.
        chunk_keys = SEEDED[100:800]
    made = step(
        copy=kv_pb2.MigrateImport(
            keys=chunk_keys, records=records_for(chunk_keys, b"b"), bulk_pass=bulk_pass
        )
    )
    total = len(set(first) | set(chunk_keys))
    batch = engine.new_batch()
    result = groups.target.apply(batch, made)
    assert result.migrate.applied
    assert groups.target.key_count == total
    assert stored_count(engine, TARGET) is None, "the stored count is gone with the table in"
    assert counted(engine, TARGET) == total, "the table is in already"
    # The node goes down here: the batch is lost.
    del batch
    engine.close()
    engine = open_engine()
    restarted = KeyValueStateMachine(engine, TARGET)
    assert restarted.key_count == total
    # The entry is applied again on the restart (the log still calls the pass's
    # keys new): the count stays right.
    batch = engine.new_batch()
    assert restarted.apply(batch, made).migrate.applied
    engine.write(batch, sync=False)
    assert restarted.key_count == total == counted(engine, TARGET)
    assert stored_count(engine, TARGET) == total
    found = restarted.get(chunk_keys[-1])
    assert found is not None and found.value == b"b" + chunk_keys[-1]


def test_a_restart_after_a_counted_collect_recounts(open_engine: Opener) -> None:
    engine = open_engine()
    groups = switched(engine, 1200, 100)
    source = groups.source
    release(groups, None)  # not counted out: collects count by presence
    assert source.key_count == 1300
    made = step(collect=kv_pb2.MigrateCollect(keys=SEEDED[:700] + STAYING[:5]))
    batch = engine.new_batch()
    assert source.apply(batch, made).migrate.applied
    assert source.key_count == 600
    assert stored_count(engine, SOURCE) is None
    del batch
    engine.close()
    engine = open_engine()
    restarted = KeyValueStateMachine(engine, SOURCE)
    assert restarted.key_count == 600 == counted(engine, SOURCE)
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
    # A collect of 600 taken as a table (not counted: the stored count stays),
    # then the node restarts with the batch lost and without a stored count.
    made = step(collect=kv_pb2.MigrateCollect(keys=SEEDED[:600]))
    batch = engine.new_batch()
    assert source.apply(batch, made).migrate.applied
    assert source.key_count == 120
    assert counted(engine, SOURCE) == 120 + 900
    del batch
    engine.close()
    engine = open_engine()
    drop_stored_count()
    restarted = KeyValueStateMachine(engine, SOURCE)
    assert restarted.key_count == 120, "the 900 moved keys not collected yet are not counted"
    batch = engine.new_batch()
    assert restarted.apply(batch, made).migrate.applied
    engine.write(batch, sync=False)
    assert restarted.key_count == 120
    groups = Groups(engine, restarted, KeyValueStateMachine(engine, TARGET))
    collect_bulk(groups)
    assert restarted.key_count == 120 == counted(engine, SOURCE)
    drop_stored_count()
    assert KeyValueStateMachine(engine, SOURCE).key_count == 120


# -- a chunk with a key staged in the same round -------------------------------------------


def test_a_chunk_with_a_staged_key_goes_key_by_key(engine: StorageEngine) -> None:
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


def test_a_deletion_chunk_with_a_staged_key_goes_key_by_key(engine: StorageEngine) -> None:
    groups = new_groups(engine)
    target = groups.target
    groups.begin()
    base = SEEDED[:700]
    groups.applies(
        target, step(copy=kv_pb2.MigrateImport(keys=base, records=records_for(base, b"a")))
    )
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


def test_a_chunk_staged_after_a_table_in_the_same_round_wins(engine: StorageEngine) -> None:
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
    assert target.revision >= 50 + 599, "raised above the table's newest record"


def test_a_long_export_scan_pauses_for_the_event_loop(engine: StorageEngine) -> None:
    """``Node.Export`` awaits at each None: one per PAUSE_KEYS keys scanned, so a
    large chunk (thousands of keys scanned) never holds the node's loop throughout."""
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
    assert steps.count(None) == scanned // PAUSE_KEYS > 0
    chunks = [chunk for chunk in steps if chunk is not None]
    assert len(chunks) == 1 and list(chunks[0].keys) == sorted(moving_of(groups))
    assert chunks == list(export_chunks(groups.source, request))


def test_tables_left_by_a_dead_process_are_removed_at_open(tmp_path: Path) -> None:
    from shardkv.storage.engine import Engine

    Engine(tmp_path / "db").close()
    leftover = tmp_path / "db" / "ingest" / "12345-1.sst"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half a table")
    engine = Engine(tmp_path / "db")
    try:
        assert not leftover.exists()
        table = engine.table_writer()
        table.put(b"k", b"v")
        engine.ingest(DATA, table.finish())
        assert engine.get(DATA, b"k") == b"v"
        assert list((tmp_path / "db" / "ingest").iterdir()) == []
    finally:
        engine.close()


def test_a_table_of_another_kind_of_engine_is_refused(tmp_path: Path) -> None:
    with MemoryEngine() as memory, Engine(tmp_path / "db") as rocks:
        with pytest.raises(ValueError, match="another kind"):
            rocks.ingest(DATA, table_of(memory, [(b"a", b"1")]))
        with pytest.raises(ValueError, match="another kind"):
            memory.ingest(DATA, table_of(rocks, [(b"a", b"1")]))
        assert data(memory) == {} and data(rocks) == {}
