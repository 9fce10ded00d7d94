"""The storage engine contract, held by ``Engine`` (RocksDB) and ``MemoryEngine`` alike.

Every test here runs against both, through ``open_engine``: a function that
opens the same place (a directory, a ``MemoryDisk``) each time it is called,
so that closing and reopening is a restart.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardkv.storage import (
    ColumnFamily,
    DataDirInUse,
    Engine,
    EngineClosed,
    EngineError,
    MemoryEngine,
    StorageEngine,
)
from shardkv.storage import engine as engine_module
from shardkv.storage.engine import _rocks_picked
from tests.unit.engines import Opener, engine_opener

RAFT, DATA, META = ColumnFamily.RAFT, ColumnFamily.DATA, ColumnFamily.META


@pytest.fixture(params=["memory", "rocksdb"])
def open_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    with engine_opener(request.param, tmp_path / "db") as opener:
        yield opener


@pytest.fixture
def engine(open_engine: Opener) -> StorageEngine:
    return open_engine()


def put_all(engine: StorageEngine, cf: ColumnFamily, items: dict[bytes, bytes]) -> None:
    batch = engine.new_batch()
    for key, value in items.items():
        batch.put(cf, key, value)
    engine.write(batch, sync=False)


KEYS = {bytes([k]): b"v" + bytes([k]) for k in (1, 3, 5, 7, 9)}


def test_a_written_batch_is_read_back_per_column_family(engine: StorageEngine) -> None:
    batch = engine.new_batch()
    batch.put(RAFT, b"k", b"raft")
    batch.put(DATA, b"k", b"data")
    batch.put(META, b"k", b"")
    assert len(batch) == 3
    assert engine.get(RAFT, b"k") is None  # nothing before the write
    engine.write(batch, sync=True)
    assert engine.get(RAFT, b"k") == b"raft"
    assert engine.get(DATA, b"k") == b"data"
    assert engine.get(META, b"k") == b""
    assert engine.get(DATA, b"missing") is None


def test_operations_of_a_batch_apply_in_order(engine: StorageEngine) -> None:
    put_all(engine, DATA, KEYS)
    batch = engine.new_batch()
    batch.delete(DATA, b"\x01")
    batch.delete_range(DATA, b"\x03", b"\x07")
    batch.put(DATA, b"\x04", b"new")
    batch.delete(DATA, b"absent")
    engine.write(batch, sync=False)
    assert list(engine.scan(DATA, b"")) == [
        (b"\x04", b"new"),
        (b"\x07", b"v\x07"),
        (b"\x09", b"v\x09"),
    ]


def test_put_many_and_delete_many_are_puts_and_deletes_in_order(engine: StorageEngine) -> None:
    put_all(engine, DATA, KEYS)
    batch = engine.new_batch()
    batch.put(DATA, b"\x02", b"first")
    batch.put_many(DATA, {b"\x02": b"second", b"\x04": b"four", b"\x05": b"five"})
    batch.delete_many(DATA, [b"\x01", b"\x05", b"absent"])
    batch.put_many(META, {b"\x01": b"meta"})
    assert len(batch) == 1 + 3 + 3 + 1
    engine.write(batch, sync=False)
    assert dict(engine.scan(DATA, b"")) == {
        b"\x02": b"second",
        b"\x03": b"v\x03",
        b"\x04": b"four",
        b"\x07": b"v\x07",
        b"\x09": b"v\x09",
    }
    assert engine.get(META, b"\x01") == b"meta"
    with pytest.raises(EngineError, match="already written"):
        batch.put_many(DATA, {b"late": b"x"})


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (b"", None, [1, 3, 5, 7, 9]),
        (b"\x03", b"\x07", [3, 5]),
        (b"\x02", b"\x08", [3, 5, 7]),
        (b"\x09", None, [9]),
        (b"\x0a", None, []),
        (b"\x04", b"\x05", []),
        (b"\x05", b"\x05", []),
        (b"\x07", b"\x03", []),
    ],
)
def test_scan_yields_the_range_in_order_both_ways(
    engine: StorageEngine, start: bytes, end: bytes | None, expected: list[int]
) -> None:
    put_all(engine, DATA, KEYS)
    put_all(engine, META, {b"\x04": b"other column family"})
    forward = [key[0] for key, _ in engine.scan(DATA, start, end)]
    backward = [key[0] for key, _ in engine.scan(DATA, start, end, reverse=True)]
    assert forward == expected
    assert backward == expected[::-1]
    assert all(value == KEYS[key] for key, value in engine.scan(DATA, start, end))


def test_a_scan_sees_the_state_when_it_began(engine: StorageEngine) -> None:
    put_all(engine, DATA, KEYS)
    scan = engine.scan(DATA, b"")
    assert next(scan) == (b"\x01", b"v\x01")
    batch = engine.new_batch()
    batch.put(DATA, b"\x02", b"late")
    batch.delete(DATA, b"\x05")
    engine.write(batch, sync=False)
    assert [key[0] for key, _ in scan] == [3, 5, 7, 9]


@pytest.mark.parametrize("batch", [1, 2, 3, 10])
def test_scan_picked_reads_the_picked_keys_as_the_scan_began(
    engine: StorageEngine, batch: int
) -> None:
    put_all(engine, DATA, KEYS)
    put_all(engine, META, {b"\x04": b"other column family"})
    offered: list[list[int]] = []

    def odd_ones_but_5(listed: list[bytes]) -> list[bytes]:
        offered.append([key[0] for key in listed])
        return [key for key in listed if key != b"\x05"]

    lists = engine.scan_picked(DATA, b"\x02", b"\x09", pick=odd_ones_but_5, batch=batch)
    key_lists = engine.scan_picked(DATA, b"\x02", b"\x09", pick=list, batch=batch, values=False)
    first = next(lists)
    written = engine.new_batch()  # after the first list: the scan does not see it
    written.put(DATA, b"\x04", b"late")
    written.delete(DATA, b"\x07")
    engine.write(written, sync=False)
    picked = [first, *lists]
    assert [item for items in picked for item in items] == [
        (b"\x03", KEYS[b"\x03"]),
        (b"\x07", KEYS[b"\x07"]),
    ]
    in_range = [3, 5, 7]
    assert offered == [in_range[at : at + batch] for at in range(0, 3, batch)]
    assert len(picked) == len(offered)
    # Without values, also as it began.
    assert [item for items in key_lists for item in items] == [(bytes([n]), b"") for n in in_range]


def test_scan_picked_of_an_empty_range_and_a_bad_batch(engine: StorageEngine) -> None:
    put_all(engine, DATA, KEYS)
    assert list(engine.scan_picked(DATA, b"\x0a", pick=list, batch=2)) == []
    assert list(engine.scan_picked(DATA, b"", pick=lambda listed: [], batch=2)) == [[], [], []]
    with pytest.raises(ValueError):
        engine.scan_picked(DATA, b"", pick=list, batch=0)


class _FakeIterator:
    """A RocksDB iterator over ``keys``. ``failing``: it ends early on an error,
    after its first key, its status then telling the error. ``values_fail``:
    reading a value fails the test."""

    def __init__(self, keys: list[bytes], *, failing: bool, values_fail: bool = False) -> None:
        self.keys, self.failing, self.values_fail = keys, failing, values_fail
        self.at = 0

    def seek(self, key: bytes) -> None:
        self.at = sum(1 for listed in self.keys if listed < key)

    def valid(self) -> bool:
        return self.at < (1 if self.failing else len(self.keys))

    def key(self) -> bytes:
        return self.keys[self.at]

    def value(self) -> bytes:
        if self.values_fail:
            pytest.fail("a keys-only scan read a value")
        return b"v"

    def next(self) -> None:
        self.at += 1

    def status(self) -> None:
        if self.failing:
            raise RuntimeError("Corruption: bad block")


@pytest.mark.parametrize("keys_only", [False, True])
def test_a_rocksdb_scan_that_fails_raises_rather_than_stepping_on(keys_only: bool) -> None:
    """An iterator stops being valid on an error too: its status says which it was,
    before anything is picked."""
    iterator = _FakeIterator([b"\x01", b"\x02", b"\x03"], failing=True)
    offered: list[list[bytes]] = []

    def pick(listed: list[bytes]) -> list[bytes]:
        offered.append(listed)
        return listed

    scan = _rocks_picked(iterator, b"", pick, 10, not keys_only, "/data")
    with pytest.raises(EngineError, match="Corruption"):
        next(scan)
    assert offered == []


def test_a_rocksdb_keys_only_scan_reads_no_value() -> None:
    iterator = _FakeIterator([b"\x01", b"\x02", b"\x03"], failing=False, values_fail=True)
    scan = _rocks_picked(iterator, b"\x02", lambda listed: listed[:1], 1, False, "/data")
    assert list(scan) == [[(b"\x02", b"")], [(b"\x03", b"")]]


def test_scan_picked_without_values_gives_what_pick_keeps(
    engine: StorageEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each picked key with b"", and only ``batch`` ends a list (no value is read)."""
    monkeypatch.setattr(engine_module, "PICK_LIST_BYTES", 1)
    put_all(engine, DATA, KEYS)
    lists = engine.scan_picked(
        DATA, b"\x02", b"\x09", pick=lambda listed: listed[1:], batch=2, values=False
    )
    assert list(lists) == [[(b"\x05", b"")], []]


def test_scan_picked_lists_end_past_their_bytes_of_values(
    engine: StorageEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list holds at most ``batch`` keys, and ends with the value that takes it
    past PICK_LIST_BYTES: a scan of large values does not hold thousands at once."""
    monkeypatch.setattr(engine_module, "PICK_LIST_BYTES", 250)
    put_all(engine, DATA, {bytes([n]): bytes(100) for n in range(1, 8)})
    offered: list[list[int]] = []

    def every(listed: list[bytes]) -> list[bytes]:
        offered.append([key[0] for key in listed])
        return listed

    picked = [
        key[0] for items in engine.scan_picked(DATA, b"", pick=every, batch=4) for key, _ in items
    ]
    assert picked == list(range(1, 8))
    assert offered == [[1, 2, 3], [4, 5, 6], [7]]


def test_hooks_run_in_order_after_the_write_and_never_after_discard(
    engine: StorageEngine,
) -> None:
    ran: list[str] = []
    batch = engine.new_batch()
    batch.put(DATA, b"k", b"v")
    batch.on_commit(lambda: ran.append(f"first sees {engine.get(DATA, b'k')!r}"))
    batch.on_commit(lambda: ran.append("second"))
    assert ran == []
    engine.write(batch, sync=False)
    assert ran == ["first sees b'v'", "second"]

    discarded = engine.new_batch()
    discarded.put(DATA, b"gone", b"v")
    discarded.on_commit(lambda: ran.append("discarded"))
    discarded.discard()
    assert discarded.closed
    with pytest.raises(EngineError, match="already written or discarded"):
        engine.write(discarded, sync=False)
    assert engine.get(DATA, b"gone") is None
    assert ran == ["first sees b'v'", "second"]


def test_a_batch_is_written_once(engine: StorageEngine) -> None:
    batch = engine.new_batch()
    batch.put(DATA, b"k", b"v")
    engine.write(batch, sync=False)
    assert batch.closed
    with pytest.raises(EngineError, match="already written"):
        engine.write(batch, sync=False)
    with pytest.raises(EngineError, match="already written"):
        batch.put(DATA, b"k", b"again")


def test_an_empty_batch_writes_and_runs_its_hooks(engine: StorageEngine) -> None:
    ran: list[bool] = []
    batch = engine.new_batch()
    batch.on_commit(lambda: ran.append(True))
    engine.write(batch, sync=True)
    assert ran == [True]


def test_a_batch_of_another_engine_is_refused(engine: StorageEngine) -> None:
    with MemoryEngine() as other, pytest.raises(ValueError, match="another engine"):
        engine.write(other.new_batch(), sync=False)


def test_what_was_written_survives_close_and_reopen(open_engine: Opener) -> None:
    with open_engine() as engine:
        put_all(engine, DATA, KEYS)
        put_all(engine, RAFT, {b"r": b"1"})
        batch = engine.new_batch()
        batch.put(META, b"m", b"2")
        batch.delete(DATA, b"\x05")
        engine.write(batch, sync=True)
    with open_engine() as engine:
        assert [key[0] for key, _ in engine.scan(DATA, b"")] == [1, 3, 7, 9]
        assert engine.get(RAFT, b"r") == b"1"
        assert engine.get(META, b"m") == b"2"


def test_close_is_idempotent_and_use_after_close_is_a_clear_error(
    engine: StorageEngine,
) -> None:
    put_all(engine, DATA, KEYS)
    batch = engine.new_batch()
    scan = engine.scan(DATA, b"")
    next(scan)
    picked = engine.scan_picked(DATA, b"", pick=list, batch=1)
    next(picked)
    picked_keys = engine.scan_picked(DATA, b"", pick=list, batch=1, values=False)
    next(picked_keys)
    engine.close()
    engine.close()
    assert engine.closed
    attempts: list[Callable[[], object]] = [
        lambda: engine.get(DATA, b"\x01"),
        lambda: engine.scan(DATA, b""),
        lambda: engine.scan_picked(DATA, b"", pick=list, batch=1),
        lambda: engine.scan_picked(DATA, b"", pick=list, batch=1, values=False),
        engine.new_batch,
        lambda: engine.write(batch, sync=False),
        lambda: batch.put(DATA, b"k", b"v"),
        lambda: next(scan),
        lambda: next(picked),
        lambda: next(picked_keys),
        engine.__enter__,
    ]
    for attempt in attempts:
        with pytest.raises(EngineClosed):
            attempt()


def test_the_same_place_reopens_at_once_even_with_scans_and_batches_left_alive(
    open_engine: Opener,
) -> None:
    # Every scan and batch stays referenced across the reopens on purpose.
    alive: list[object] = []
    for round_ in range(2):
        engine = open_engine()
        put_all(engine, DATA, {bytes([round_]): b"v"})
        scan = engine.scan(DATA, b"")
        next(scan)
        picked = engine.scan_picked(DATA, b"", pick=list, batch=1)
        next(picked)
        picked_keys = engine.scan_picked(DATA, b"", pick=list, batch=1, values=False)
        next(picked_keys)
        batch = engine.new_batch()
        batch.put(DATA, b"unwritten", b"v")
        engine.close()
        alive += [scan, picked, picked_keys, batch]
    with open_engine() as engine:
        assert [key for key, _ in engine.scan(DATA, b"")] == [b"\x00", b"\x01"]
    assert len(alive) == 8


def test_a_second_open_of_the_same_place_is_refused(open_engine: Opener) -> None:
    with open_engine(), pytest.raises(DataDirInUse, match="already in use"):
        open_engine()
    with open_engine() as engine:
        assert not engine.closed


def test_another_process_is_refused_a_data_dir_in_use(tmp_path: Path) -> None:
    path = tmp_path / "db"
    script = (
        "import sys\n"
        "from shardkv.storage import Engine, DataDirInUse\n"
        "try:\n"
        "    Engine(sys.argv[1])\n"
        "except DataDirInUse as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    with Engine(path):
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=False
        )
    assert result.returncode == 3, result.stderr
    assert f"data dir {path} already in use" in result.stdout


def test_engine_creates_missing_parent_directories(tmp_path: Path) -> None:
    with Engine(tmp_path / "a" / "b" / "db") as engine:
        put_all(engine, RAFT, {b"k": b"v"})
        assert engine.get(RAFT, b"k") == b"v"


def test_a_forward_scan_stops_at_its_end_without_stepping_over_deleted_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RocksDB iterators carry the scan's end as their upper bound: stepping past
    the range's last key does not first skip the deleted keys after it (a
    migration's marks before a group's trimmed event log cost tens of ms a scan).
    Made visible with a read that fails after skipping more than 100 keys."""
    import shardkv.storage.engine as engine_module

    real = engine_module.ReadOptions

    def limited() -> object:
        options = real()
        options.set_max_skippable_internal_keys(100)
        return options

    monkeypatch.setattr(engine_module, "ReadOptions", limited)
    with Engine(tmp_path / "db") as engine:
        batch = engine.new_batch()
        for n in range(10):
            batch.put(ColumnFamily.DATA, b"a%04d" % n, b"v")
        for n in range(1000):
            batch.put(ColumnFamily.DATA, b"b%04d" % n, b"v")
        batch.put(ColumnFamily.DATA, b"c", b"live")
        engine.write(batch, sync=False)
        batch = engine.new_batch()
        for n in range(1000):
            batch.delete(ColumnFamily.DATA, b"b%04d" % n)
        engine.write(batch, sync=False)
        wanted = [b"a%04d" % n for n in range(10)]
        assert [key for key, _ in engine.scan(ColumnFamily.DATA, b"a", b"b")] == wanted
        assert [key for key, _ in engine.scan(ColumnFamily.DATA, b"a0003", b"a0005")] == wanted[3:5]
        backwards = engine.scan(ColumnFamily.DATA, b"a", b"b", reverse=True)
        assert [key for key, _ in backwards] == wanted[::-1]
