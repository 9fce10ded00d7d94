"""The node's key-value engine: one RocksDB directory holding every group.

``Engine`` opens (creating if missing) one RocksDB directory with three column
families, ``raft``, ``data`` and ``meta`` (``ColumnFamily``; what goes in each
is in ``keys``), through rocksdict in raw mode: bytes in, bytes out, nothing
pickled. ``MemoryEngine`` has the same interface over sorted dictionaries, for
fast tests; its ``MemoryDisk`` stands in for the directory, so a test can
close an engine and open another on the same state.

What an engine promises:

1. A ``Batch`` (from ``new_batch()``) reaches disk all at once or not at all,
   with one ``write(batch, sync)``. With ``sync=True`` it is durable (WAL
   fsynced) when ``write`` returns; ``await sync()`` makes every earlier
   write durable without blocking the event loop (the node's round writes
   unsynced, then awaits ``sync``). The node puts a whole round of every
   group's Raft output into one batch and one fsync.
2. Hooks registered with ``Batch.on_commit`` run in order right after the
   write succeeds, and never if it fails. In-memory views of what is on disk
   (``raft_log.GroupStorage``) change only through them.
3. ``scan(cf, start, end)`` yields ``(key, value)`` for ``start <= key < end``
   in key order (or reversed), as of the moment ``scan`` was called: later
   writes are not seen. It positions with a seek; a forward scan with an end
   also sets RocksDB's upper bound (never the lower one: in rocksdict 0.3.29
   the lower-bound setter sets the upper bound). ``scan_picked`` is the same
   forward scan read in lists, a function picking from each list's keys the
   ones to yield with their values as of the same moment (or with no value
   read at all): a migration's scan of a whole group hashes every key, in
   one call per list.
4. ``close()`` is idempotent; afterwards every use of the engine, of its open
   scans and of its unwritten batches raises ``EngineClosed``. Closing drops
   every column family handle and iterator before closing the database, since
   any of them alive keeps RocksDB's LOCK file, and the same directory can be
   opened again at once in the same process.
5. A directory another process (or another open ``Engine``) holds raises
   ``DataDirInUse``. RocksDB's errors reach callers only as ``EngineError``,
   translated in this module.
6. ``get_many`` reads many keys in one call. Point reads go through a bloom
   filter per table file and a block cache.

Engines are not thread-safe: the node's loop owns its engine.

**Test only: ``SHARDKV_UNSAFE_NO_FSYNC=1``.** Set in a node's environment (read
once, when an ``Engine`` is made; a loud warning is logged), it breaks
promise 1 on purpose, so that the durability test (tests/fault) can show it
catches a store that acknowledges writes it has not made durable: RocksDB
writes with its write-ahead log disabled and ``sync()`` does nothing, so a
kill -9 loses everything since the last memtable flush, as a power loss
would lose unsynced writes (merely skipping the fsync would not do: the OS
keeps a killed process's unsynced log). A clean ``close()`` still flushes
the memtables. Never set it in production: acknowledged writes are lost on a
crash.
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import contextlib
import enum
import logging
import os
import shutil
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from shardkv.storage.errors import DataDirInUse, EngineClosed, EngineError

__all__ = [
    "UNSAFE_NO_FSYNC_ENV",
    "Batch",
    "ColumnFamily",
    "Engine",
    "MemoryDisk",
    "MemoryEngine",
    "StorageEngine",
]

# The test-only switch of the module docstring: "1" turns it on.
UNSAFE_NO_FSYNC_ENV = "SHARDKV_UNSAFE_NO_FSYNC"

_log = logging.getLogger(__name__)

# Point reads (a key's record, a session's floor) skip table files without the
# key through a bloom filter, and hot blocks stay in one cache per engine.
_BLOOM_BITS_PER_KEY = 10
_BLOCK_CACHE_BYTES = 256 << 20
# About the most bytes of values one list of ``scan_picked`` holds.
PICK_LIST_BYTES = 4 << 20


class ColumnFamily(enum.StrEnum):
    RAFT = "raft"
    DATA = "data"
    META = "meta"


class Batch(abc.ABC):
    """Writes that reach disk together or not at all, and what to run once they have.

    Filled with ``put``/``delete``/``delete_range`` and handed to its engine's
    ``write`` exactly once, or ``discard``ed. Either way it is closed after.
    """

    def __init__(self, engine: StorageEngine) -> None:
        self.engine = engine
        self._hooks: list[Callable[[], None]] = []
        self._operations = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the batch was written (or its write tried) or discarded."""
        return self._closed

    def __len__(self) -> int:
        """The number of operations in the batch."""
        return self._operations

    def put(self, cf: ColumnFamily, key: bytes, value: bytes) -> None:
        self._check_open()
        self._put(cf, key, value)
        self._operations += 1

    def delete(self, cf: ColumnFamily, key: bytes) -> None:
        self._check_open()
        self._delete(cf, key)
        self._operations += 1

    def put_many(self, cf: ColumnFamily, items: Mapping[bytes, bytes]) -> None:
        """``put`` of each item (one call for a migration's thousands of keys)."""
        self._check_open()
        self._put_many(cf, items)
        self._operations += len(items)

    def delete_many(self, cf: ColumnFamily, keys: Sequence[bytes]) -> None:
        """``delete`` of each key."""
        self._check_open()
        self._delete_many(cf, keys)
        self._operations += len(keys)

    def delete_range(self, cf: ColumnFamily, start: bytes, end: bytes) -> None:
        """Delete every key ``start <= key < end``."""
        self._check_open()
        self._delete_range(cf, start, end)
        self._operations += 1

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the batch is written; never if the write fails."""
        self._check_open()
        self._hooks.append(hook)

    def discard(self) -> None:
        """Give the batch up unwritten; its hooks never run."""
        self._closed = True
        self._hooks.clear()

    def _check_open(self) -> None:
        if self.engine.closed:
            raise EngineClosed("the engine of this batch is closed")
        if self._closed:
            raise EngineError("this batch was already written or discarded; make a new one")

    def _seal(self) -> None:
        self._check_open()
        self._closed = True

    def _run_hooks(self) -> None:
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    @abc.abstractmethod
    def _put(self, cf: ColumnFamily, key: bytes, value: bytes) -> None: ...

    @abc.abstractmethod
    def _delete(self, cf: ColumnFamily, key: bytes) -> None: ...

    @abc.abstractmethod
    def _delete_range(self, cf: ColumnFamily, start: bytes, end: bytes) -> None: ...

    def _put_many(self, cf: ColumnFamily, items: Mapping[bytes, bytes]) -> None:
        for key, value in items.items():
            self._put(cf, key, value)

    def _delete_many(self, cf: ColumnFamily, keys: Sequence[bytes]) -> None:
        for key in keys:
            self._delete(cf, key)


_Item = TypeVar("_Item")


class _Scan(Iterator[_Item]):
    """An engine's scan: raises ``EngineClosed`` once the engine is closed."""

    __slots__ = ("__weakref__", "_engine", "_items")

    def __init__(self, engine: StorageEngine, items: Iterator[_Item]) -> None:
        self._engine = engine
        self._items: Iterator[_Item] | None = items

    def __next__(self) -> _Item:
        if self._engine.closed:
            self.release()
            raise EngineClosed("the engine was closed during this scan")
        if self._items is None:
            raise StopIteration
        try:
            return next(self._items)
        except StopIteration:
            self._items = None
            raise

    def release(self) -> None:
        """Drop the underlying iterator (it keeps RocksDB open while alive)."""
        self._items = None


class StorageEngine(abc.ABC):
    """What the storage layer needs of a key-value engine (see the module docstring)."""

    def __init__(self) -> None:
        self._closed = False
        self._scans: weakref.WeakSet[_Scan[Any]] = weakref.WeakSet()

    @property
    def closed(self) -> bool:
        return self._closed

    def new_batch(self) -> Batch:
        self._check_open()
        return self._new_batch()

    def write(self, batch: Batch, sync: bool) -> None:
        """Write ``batch`` atomically (durably if ``sync``), then run its hooks."""
        self._check_open()
        if batch.engine is not self:
            raise ValueError("this batch was made by another engine")
        batch._seal()
        self._write(batch, sync)
        batch._run_hooks()

    async def sync(self) -> None:
        """Make every write so far durable; the event loop runs on while the disk syncs.

        ``write(batch, sync=False)`` then ``await sync()`` is ``write(batch,
        sync=True)`` without holding the event loop (and the GIL) for the
        fsync: RocksDB syncs its write-ahead log in a worker thread.
        """
        self._check_open()
        await self._sync()

    def get(self, cf: ColumnFamily, key: bytes) -> bytes | None:
        self._check_open()
        return self._get(cf, key)

    def get_many(self, cf: ColumnFamily, keys: list[bytes]) -> list[bytes | None]:
        """``get`` of each key, in one call."""
        self._check_open()
        return self._get_many(cf, keys)

    def scan(
        self,
        cf: ColumnFamily,
        start: bytes,
        end: bytes | None = None,
        *,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` for ``start <= key < end`` (None: no end), as of now."""
        self._check_open()
        return self._tracked(self._scan(cf, start, end, reverse))

    def scan_picked(
        self,
        cf: ColumnFamily,
        start: bytes,
        end: bytes | None = None,
        *,
        pick: Callable[[list[bytes]], list[bytes]],
        batch: int,
        values: bool = True,
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        """``scan`` of the keys ``pick`` chooses: the keys ``start <= key < end`` are
        read in key order, with their values, in lists of at most ``batch`` keys
        (shorter where their values pass ``PICK_LIST_BYTES``, and the last);
        ``pick`` is given each list's keys and returns the ones to keep (a
        sub-list of it, in its order; it must not change the list), and a list
        of those with their values is yielded for each list read (empty when
        none is picked). Keys and values are as of the call, as ``scan``'s.

        The values of the keys not picked are read too: stepping over a value
        costs far less than seeking back to a picked key for it. Without
        ``values``, no value is read: each picked key comes with ``b""``, and
        only ``batch`` ends a list."""
        self._check_open()
        if batch < 1:
            raise ValueError("a batch holds at least one key")
        return self._tracked(self._scan_picked(cf, start, end, pick, batch, values))

    def _tracked(self, items: Iterator[_Item]) -> Iterator[_Item]:
        """A scan of ``items`` that ``close`` ends (made once the engine is known open)."""
        scan = _Scan(self, items)
        self._scans.add(scan)
        return scan

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for scan in list(self._scans):
            scan.release()
        self._close()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the storage engine is closed")

    @abc.abstractmethod
    def _new_batch(self) -> Batch: ...

    @abc.abstractmethod
    def _write(self, batch: Batch, sync: bool) -> None: ...

    @abc.abstractmethod
    async def _sync(self) -> None: ...

    @abc.abstractmethod
    def _get(self, cf: ColumnFamily, key: bytes) -> bytes | None: ...

    def _get_many(self, cf: ColumnFamily, keys: list[bytes]) -> list[bytes | None]:
        return [self._get(cf, key) for key in keys]

    @abc.abstractmethod
    def _scan(
        self, cf: ColumnFamily, start: bytes, end: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]: ...

    @abc.abstractmethod
    def _scan_picked(
        self,
        cf: ColumnFamily,
        start: bytes,
        end: bytes | None,
        pick: Callable[[list[bytes]], list[bytes]],
        batch: int,
        values: bool,
    ) -> Iterator[list[tuple[bytes, bytes]]]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...


# -- RocksDB -------------------------------------------------------------------


class _RocksBatch(Batch):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._handles = engine._handles
        self.write_batch = WriteBatch(raw_mode=True)

    def _put(self, cf: ColumnFamily, key: bytes, value: bytes) -> None:
        self.write_batch.put(key, value, self._handles[cf])

    def _delete(self, cf: ColumnFamily, key: bytes) -> None:
        self.write_batch.delete(key, self._handles[cf])

    def _delete_range(self, cf: ColumnFamily, start: bytes, end: bytes) -> None:
        self.write_batch.delete_range(start, end, self._handles[cf])

    def _put_many(self, cf: ColumnFamily, items: Mapping[bytes, bytes]) -> None:
        put, handle = self.write_batch.put, self._handles[cf]
        for key, value in items.items():
            put(key, value, handle)

    def _delete_many(self, cf: ColumnFamily, keys: Sequence[bytes]) -> None:
        delete, handle = self.write_batch.delete, self._handles[cf]
        for key in keys:
            delete(key, handle)


class Engine(StorageEngine):
    """One RocksDB directory with the ``raft``, ``data`` and ``meta`` column families."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = os.fspath(path)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        cache = Cache(_BLOCK_CACHE_BYTES)
        families = {cf.value: _family_options(cf, cache) for cf in ColumnFamily}
        try:
            os.makedirs(self.path, exist_ok=True)
            self._db: Any = Rdict(self.path, options, column_families=families)
        except Exception as exc:
            if "lock" in str(exc).lower():
                raise DataDirInUse(
                    f"data dir {self.path} already in use: another shardkv-node process "
                    "(or another Engine in this one) has it open"
                ) from exc
            raise EngineError(f"cannot open RocksDB at {self.path}: {exc}") from exc
        self._families: dict[ColumnFamily, Any] = {
            cf: self._db.get_column_family(cf.value) for cf in ColumnFamily
        }
        self._handles: dict[ColumnFamily, Any] = {
            cf: self._db.get_column_family_handle(cf.value) for cf in ColumnFamily
        }
        # Tables an earlier version of the node (it ingested migrations' tables)
        # left when it died while writing or ingesting one.
        shutil.rmtree(os.path.join(self.path, "ingest"), ignore_errors=True)
        self.unsafe_no_fsync = os.environ.get(UNSAFE_NO_FSYNC_ENV) == "1"
        self._write_options = {sync: WriteOptions() for sync in (False, True)}
        if self.unsafe_no_fsync:
            _log.warning(
                "%s=1: TEST-ONLY UNSAFE MODE, RocksDB at %s writes without its log and never "
                "syncs; acknowledged writes WILL BE LOST on a crash. Never set it in production.",
                UNSAFE_NO_FSYNC_ENV,
                self.path,
            )
            for write_options in self._write_options.values():
                # A property at run time; rocksdict's stub declares a method.
                write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        else:
            self._write_options[True].sync = True

    def __repr__(self) -> str:
        return f"Engine({self.path!r}{', closed' if self.closed else ''})"

    def _new_batch(self) -> Batch:
        return _RocksBatch(self)

    def _write(self, batch: Batch, sync: bool) -> None:
        assert isinstance(batch, _RocksBatch)
        try:
            self._db.write(batch.write_batch, self._write_options[sync])
        except Exception as exc:
            raise EngineError(f"RocksDB write to {self.path} failed: {exc}") from exc

    async def _sync(self) -> None:
        if self.unsafe_no_fsync:
            return
        try:
            # flush_wal releases the GIL while it syncs.
            await asyncio.to_thread(self._db.flush_wal, True)
        except Exception as exc:
            raise EngineError(f"syncing RocksDB's log at {self.path} failed: {exc}") from exc

    def _get(self, cf: ColumnFamily, key: bytes) -> bytes | None:
        try:
            value: bytes | None = self._families[cf].get(key)
        except Exception as exc:
            raise EngineError(f"RocksDB read from {self.path} failed: {exc}") from exc
        return value

    def _get_many(self, cf: ColumnFamily, keys: list[bytes]) -> list[bytes | None]:
        try:
            values: list[bytes | None] = self._families[cf].get(keys)
        except Exception as exc:
            raise EngineError(f"RocksDB read from {self.path} failed: {exc}") from exc
        return values

    def _scan(
        self, cf: ColumnFamily, start: bytes, end: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        return _rocks_items(self._iterator(cf, end, reverse), start, end, reverse, self.path)

    def _scan_picked(
        self,
        cf: ColumnFamily,
        start: bytes,
        end: bytes | None,
        pick: Callable[[list[bytes]], list[bytes]],
        batch: int,
        values: bool,
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        return _rocks_picked(self._iterator(cf, end, False), start, pick, batch, values, self.path)

    def _iterator(self, cf: ColumnFamily, end: bytes | None, reverse: bool) -> Any:
        # A live iterator is a consistent view by itself; rocksdict 0.3.29
        # ignores a Snapshot when iterating, so none is used.
        options = ReadOptions()
        if end is not None and not reverse:
            # RocksDB then stops at the bound. Without it, stepping past the
            # range's last key skips every deleted key after it first: the
            # marks before a group's trimmed event log cost tens of ms a scan.
            # (A lower bound for reverse scans is not set: rocksdict 0.3.29's
            # set_iterate_lower_bound sets the upper one.)
            options.set_iterate_upper_bound(end)
        return self._families[cf].iter(options)

    def _close(self) -> None:
        # Every handle alive keeps the LOCK file: drop them all, then close.
        self._families.clear()
        self._handles.clear()
        db, self._db = self._db, None
        try:
            db.close()
        except Exception as exc:
            raise EngineError(f"closing RocksDB at {self.path} failed: {exc}") from exc


def _family_options(cf: ColumnFamily, cache: Cache) -> Options:
    options = Options(raw_mode=True)
    if cf is not ColumnFamily.RAFT:  # the log is read in order, never probed
        table = BlockBasedOptions()
        table.set_bloom_filter(_BLOOM_BITS_PER_KEY, False)
        table.set_block_cache(cache)
        options.set_block_based_table_factory(table)
    return options


def _rocks_items(
    iterator: Any,
    start: bytes,
    end: bytes | None,
    reverse: bool,
    path: str,
) -> Iterator[tuple[bytes, bytes]]:
    # A plain function, not a method: the generator must reference the
    # iterator only, so that dropping the generator frees it.
    with _scan_errors(path):
        if reverse:
            if end is None:
                iterator.seek_to_last()
            else:
                iterator.seek_for_prev(end)
                if iterator.valid() and iterator.key() >= end:
                    iterator.prev()
            while iterator.valid():
                key: bytes = iterator.key()
                if key < start:
                    break
                yield key, iterator.value()
                iterator.prev()
        else:
            iterator.seek(start)
            while iterator.valid():
                key = iterator.key()
                if end is not None and key >= end:
                    break
                yield key, iterator.value()
                iterator.next()
        iterator.status()


def _rocks_picked(
    iterator: Any,
    start: bytes,
    pick: Callable[[list[bytes]], list[bytes]],
    batch: int,
    values: bool,
    path: str,
) -> Iterator[list[tuple[bytes, bytes]]]:
    # One iterator throughout (one view), each list read with its values: a
    # seek back to each picked key cost more than the listing of every key
    # (a migration's export picks about one key in five). (Not rocksdict's
    # items(), which cannot say whether it ended on an error.)
    with _scan_errors(path):
        iterator.seek(start)
    while True:
        with _scan_errors(path):
            listed, read = (
                _list_items(iterator, batch) if values else (_list_keys(iterator, batch), None)
            )
        if not listed:
            return
        chosen = pick(listed)  # the caller's: its errors are its own
        if read is None:
            yield [(key, b"") for key in chosen]
        elif len(chosen) == len(listed):
            yield list(zip(listed, read, strict=True))
        else:
            value_of = dict(zip(listed, read, strict=True))
            yield [(key, value_of[key]) for key in chosen]


def _list_items(iterator: Any, batch: int) -> tuple[list[bytes], list[bytes]]:
    valid, key, value, advance = iterator.valid, iterator.key, iterator.value, iterator.next
    listed: list[bytes] = []
    values: list[bytes] = []
    size = 0
    while len(listed) < batch and size < PICK_LIST_BYTES and valid():
        listed.append(key())
        values.append(read := value())
        size += len(read)
        advance()
    iterator.status()
    return listed, values


def _list_keys(iterator: Any, batch: int) -> list[bytes]:
    valid, key, advance = iterator.valid, iterator.key, iterator.next
    listed: list[bytes] = []
    while len(listed) < batch and valid():
        listed.append(key())
        advance()
    iterator.status()
    return listed


@contextlib.contextmanager
def _scan_errors(path: str) -> Iterator[None]:
    try:
        yield
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"RocksDB scan of {path} failed: {exc}") from exc


# -- in memory -----------------------------------------------------------------


class _SortedTable:
    """One column family in memory: a dict and its keys in order."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.values:
            bisect.insort(self.keys, key)
        self.values[key] = value

    def delete(self, key: bytes) -> None:
        if self.values.pop(key, None) is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]

    def delete_range(self, start: bytes, end: bytes) -> None:
        low, high = self._bounds(start, end)
        for key in self.keys[low:high]:
            del self.values[key]
        del self.keys[low:high]

    def items(self, start: bytes, end: bytes | None) -> list[tuple[bytes, bytes]]:
        low, high = self._bounds(start, end)
        return [(key, self.values[key]) for key in self.keys[low:high]]

    def _bounds(self, start: bytes, end: bytes | None) -> tuple[int, int]:
        low = bisect.bisect_left(self.keys, start)
        high = len(self.keys) if end is None else bisect.bisect_left(self.keys, end)
        return low, max(low, high)


def _memory_picked(
    items: list[tuple[bytes, bytes]],
    pick: Callable[[list[bytes]], list[bytes]],
    batch: int,
    values: bool,
) -> Iterator[list[tuple[bytes, bytes]]]:
    at = 0
    while at < len(items):
        # As RocksDB's: a list ends at ``batch`` keys or past PICK_LIST_BYTES of values.
        end, size = at, 0
        while end < len(items) and end - at < batch and (size < PICK_LIST_BYTES or not values):
            size += len(items[end][1])
            end += 1
        value_of = dict(items[at:end])
        at = end
        yield [(key, value_of[key] if values else b"") for key in pick(list(value_of))]


class MemoryDisk:
    """What a ``MemoryEngine`` writes to: outlives the engine, like a data directory.

    Only written batches reach it, so a test that drops an engine and opens
    another on the same disk sees what a restarted node would see. (Unlike a
    real disk it keeps unsynced writes too.)
    """

    def __init__(self) -> None:
        self.tables = {cf: _SortedTable() for cf in ColumnFamily}
        self.in_use = False


_Operation = tuple[Callable[..., None], tuple[bytes, ...]]


class _MemoryBatch(Batch):
    def __init__(self, engine: MemoryEngine) -> None:
        super().__init__(engine)
        self._tables = engine.disk.tables
        self.operations: list[_Operation] = []

    def _put(self, cf: ColumnFamily, key: bytes, value: bytes) -> None:
        self.operations.append((self._tables[cf].put, (key, value)))

    def _delete(self, cf: ColumnFamily, key: bytes) -> None:
        self.operations.append((self._tables[cf].delete, (key,)))

    def _delete_range(self, cf: ColumnFamily, start: bytes, end: bytes) -> None:
        self.operations.append((self._tables[cf].delete_range, (start, end)))


class MemoryEngine(StorageEngine):
    """A ``StorageEngine`` over a ``MemoryDisk`` (a new one if none is given)."""

    def __init__(self, disk: MemoryDisk | None = None) -> None:
        super().__init__()
        self.disk = MemoryDisk() if disk is None else disk
        if self.disk.in_use:
            raise DataDirInUse("this memory disk is already in use by an open MemoryEngine")
        self.disk.in_use = True

    def _new_batch(self) -> Batch:
        return _MemoryBatch(self)

    def _write(self, batch: Batch, sync: bool) -> None:
        assert isinstance(batch, _MemoryBatch)
        for operation, arguments in batch.operations:
            operation(*arguments)

    async def _sync(self) -> None:
        return None  # a MemoryDisk keeps every write

    def _get(self, cf: ColumnFamily, key: bytes) -> bytes | None:
        return self.disk.tables[cf].values.get(key)

    def _scan(
        self, cf: ColumnFamily, start: bytes, end: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        items = self.disk.tables[cf].items(start, end)
        return reversed(items) if reverse else iter(items)

    def _scan_picked(
        self,
        cf: ColumnFamily,
        start: bytes,
        end: bytes | None,
        pick: Callable[[list[bytes]], list[bytes]],
        batch: int,
        values: bool,
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        return _memory_picked(self.disk.tables[cf].items(start, end), pick, batch, values)

    def _close(self) -> None:
        self.disk.in_use = False
