"""The image of one group's state machine, as a Raft snapshot carries it.

A leader ships ``Snapshot.data`` to a follower that lags behind its log
(Raft paper §7, chunked by the Raft core); this module owns what those bytes
are. The image holds everything of the group that the state machine wrote
through the log: every key of the group in the ``data`` column family, and
every record of the group in ``meta`` except the applied state, which is Raft
storage's (``GroupStorage.stage_applied`` writes it beside the image on
install). Today those meta records are the revision counter and the client
sessions; records the state machine adds later (ownership, locks,
transaction records) ride along by construction.

What it promises:

1. ``build_snapshot_data(engine, group_id)`` is a point-in-time image: both
   column families are read through scans taken one right after the other,
   before either is read. Each scan sees the engine as of its own call (a
   live RocksDB iterator is a consistent view), and nothing can write between
   the two calls because the node's loop alone owns the engine. Writes made
   while the image is being read are not in it.
2. The encoding is deterministic: the same state gives the same bytes, on
   every replica and engine. The Raft core relies on it, since a follower
   keys the chunks it assembles by (index, term) only, and may take them
   from two leaders in turn.
3. ``stage_install_snapshot_data`` checks the whole image before it stages
   anything: a truncated, corrupt, foreign (another group's) or newer-format
   image raises ``CorruptValue`` and leaves the batch as it was. Otherwise it
   stages the replacement of the group's state-machine records by the
   image's: every data key and state-machine meta record of the group is
   deleted, then every record of the image is put, in the caller's batch (the
   node writes it with the snapshot's metadata and applied state, at once).
   Other groups and the applied state are never touched.

The encoding (integers big-endian)::

    header    magic "SKVI", version u8, group id u64
    records   cf tag u8 (1 data, 2 meta), key length u32, key,
              value length u32, value
    trailer   record count u64, CRC-32 (zlib) of everything before it, u32

Keys are relative to the group (without its 8-byte prefix). Records come in
(cf tag, key) order, strictly increasing: data keys in key order, then meta
records in key order, as the scans yield them.

The image is built whole, as ``bytes`` in memory, because the Raft core's
``Snapshot`` carries bytes; ``GroupStorage`` keeps the latest one per group.
TODO: stream large groups out of band (TiKV sends snapshot files over a
separate stream) instead of holding and chunking one ``bytes``. Safe for now:
the ring splits data over many groups, so one group stays far below memory,
and ``MAX_SNAPSHOT_BYTES`` turns a group that outgrew that assumption into a
clear ``SnapshotTooLarge`` when the snapshot is taken (the log then keeps
growing uncompacted, which is safe) rather than into exhausted memory.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable

from shardkv.storage import keys
from shardkv.storage.engine import Batch, ColumnFamily, StorageEngine
from shardkv.storage.errors import CorruptValue, EngineError

__all__ = [
    "FORMAT_VERSION",
    "MAX_SNAPSHOT_BYTES",
    "SnapshotTooLarge",
    "build_snapshot_data",
    "snapshot_source",
    "stage_install_snapshot_data",
]

FORMAT_VERSION = 1
MAX_SNAPSHOT_BYTES = 256 << 20

_MAGIC = b"SKVI"
_HEADER = struct.Struct(">4sBQ")
_RECORD_KEY = struct.Struct(">BI")
_VALUE_LENGTH = struct.Struct(">I")
_COUNT = struct.Struct(">Q")
_CHECKSUM = struct.Struct(">I")

_CF_TAGS = {ColumnFamily.DATA: 1, ColumnFamily.META: 2}
_TAG_CFS = {tag: cf for cf, tag in _CF_TAGS.items()}

_Record = tuple[ColumnFamily, bytes, bytes]


class SnapshotTooLarge(EngineError):
    """A group's image would exceed ``MAX_SNAPSHOT_BYTES``: split the group."""


def build_snapshot_data(
    engine: StorageEngine, group_id: int, *, max_bytes: int = MAX_SNAPSHOT_BYTES
) -> bytes:
    """The image of ``group_id``'s state machine as the engine holds it now."""
    start, end = keys.group_range(group_id)
    # Both scans first, then the reading (promise 1).
    data_scan = engine.scan(ColumnFamily.DATA, start, end)
    meta_scan = engine.scan(ColumnFamily.META, *keys.state_machine_meta_range(group_id))
    writer = _ImageWriter(group_id, max_bytes)
    for key, value in data_scan:
        writer.add(ColumnFamily.DATA, key[keys.GROUP_KEY_SIZE :], value)
    for key, value in meta_scan:
        writer.add(ColumnFamily.META, key[keys.GROUP_KEY_SIZE :], value)
    return writer.finish()


def snapshot_source(engine: StorageEngine, group_id: int) -> Callable[[], bytes]:
    """What ``GroupStorage(..., snapshot_source=...)`` calls to take the group's image."""
    return functools.partial(build_snapshot_data, engine, group_id)


def stage_install_snapshot_data(
    engine: StorageEngine, batch: Batch, group_id: int, data: bytes
) -> None:
    """Stage the replacement of ``group_id``'s state machine by the image ``data``."""
    if batch.engine is not engine:
        raise ValueError("this batch was made by another engine")
    records = _decode(group_id, data)
    prefix, end = keys.group_range(group_id)
    if end is None:
        raise ValueError(f"group id {group_id} is out of range")
    meta_start, _ = keys.state_machine_meta_range(group_id)
    batch.delete_range(ColumnFamily.DATA, prefix, end)
    batch.delete_range(ColumnFamily.META, meta_start, end)
    for cf, key, value in records:
        batch.put(cf, prefix + key, value)


class _ImageWriter:
    """Encodes records as they come, with a running checksum and size guard."""

    def __init__(self, group_id: int, max_bytes: int) -> None:
        self._group_id = group_id
        self._max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._checksum = 0
        self._count = 0
        self._append(_HEADER.pack(_MAGIC, FORMAT_VERSION, group_id))

    def add(self, cf: ColumnFamily, key: bytes, value: bytes) -> None:
        self._append(_RECORD_KEY.pack(_CF_TAGS[cf], len(key)))
        self._append(key)
        self._append(_VALUE_LENGTH.pack(len(value)))
        self._append(value)
        self._count += 1

    def finish(self) -> bytes:
        self._append(_COUNT.pack(self._count))
        self._append(_CHECKSUM.pack(self._checksum))
        return b"".join(self._parts)

    def _append(self, part: bytes) -> None:
        self._size += len(part)
        if self._size > self._max_bytes:
            raise SnapshotTooLarge(
                f"the snapshot image of group {self._group_id} would exceed "
                f"{self._max_bytes} bytes: split the group (give the ring more groups)"
            )
        self._parts.append(part)
        self._checksum = zlib.crc32(part, self._checksum)


def _decode(group_id: int, data: bytes) -> list[_Record]:
    """Every record of the image, checked whole: checksum, format, order, count."""
    what = f"the snapshot image for group {group_id}"
    if not data:
        raise CorruptValue(
            f"{what} is empty: the sender's GroupStorage has no snapshot source "
            "(pass snapshot_source=shardkv.fsm.snapshot.snapshot_source(engine, group_id))"
        )
    minimum = _HEADER.size + _COUNT.size + _CHECKSUM.size
    if len(data) < minimum:
        raise CorruptValue(f"{what} is truncated: {len(data)} bytes, less than {minimum}")
    magic, version, image_group = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptValue(f"{what} is not a shardkv snapshot image (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise CorruptValue(
            f"{what} has format version {version}; this version reads {FORMAT_VERSION}"
        )
    checksum_offset = len(data) - _CHECKSUM.size
    (checksum,) = _CHECKSUM.unpack_from(data, checksum_offset)
    if zlib.crc32(memoryview(data)[:checksum_offset]) != checksum:
        raise CorruptValue(f"{what} is truncated or corrupt: its checksum does not match")
    if image_group != group_id:
        raise CorruptValue(f"{what} is an image of group {image_group}")
    count_offset = checksum_offset - _COUNT.size
    (count,) = _COUNT.unpack_from(data, count_offset)
    meta_start = keys.state_machine_meta_range(group_id)[0][keys.GROUP_KEY_SIZE :]
    records: list[_Record] = []
    previous: tuple[int, bytes] | None = None
    offset = _HEADER.size
    while offset < count_offset:
        tag, key_length = _unpack(_RECORD_KEY, data, offset, count_offset, what)
        offset += _RECORD_KEY.size
        key = _take(data, offset, key_length, count_offset, what)
        offset += key_length
        (value_length,) = _unpack(_VALUE_LENGTH, data, offset, count_offset, what)
        offset += _VALUE_LENGTH.size
        value = _take(data, offset, value_length, count_offset, what)
        offset += value_length
        cf = _TAG_CFS.get(tag)
        if cf is None:
            raise CorruptValue(f"{what} has a record of unknown column family tag {tag}")
        if cf == ColumnFamily.META and key < meta_start:
            raise CorruptValue(f"{what} holds a meta record that is not the state machine's")
        if previous is not None and (tag, key) <= previous:
            raise CorruptValue(f"{what} has records out of order at {key!r}")
        previous = (tag, key)
        records.append((cf, key, value))
    if count != len(records):
        raise CorruptValue(f"{what} says {count} records but holds {len(records)}")
    return records


def _unpack(
    layout: struct.Struct, data: bytes, offset: int, limit: int, what: str
) -> tuple[int, ...]:
    if offset + layout.size > limit:
        raise CorruptValue(f"{what} has a record cut short at byte {offset}")
    fields: tuple[int, ...] = layout.unpack_from(data, offset)
    return fields


def _take(data: bytes, offset: int, length: int, limit: int, what: str) -> bytes:
    if offset + length > limit:
        raise CorruptValue(f"{what} has a record cut short at byte {offset}")
    return data[offset : offset + length]
