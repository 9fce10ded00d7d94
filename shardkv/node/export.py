"""The source side of a move: read a group's moving keys out in chunks (``Node.Export``).

``export_chunks(machine, request)`` yields ``MigrateImport`` chunks of what
moves from the group to ``request.target`` in the migration ``request.epoch``
(the caller checked the group takes part, read after a ReadIndex barrier at
its leader, and stops at its first chunk or pause after this node's replica
of the group was removed: its keys are then dropped without marks):

- ``EXPORT_ALL``: every moving key with its stored record, as of one moment:
  one engine iterator is a consistent view for as long as it lives, and the
  chunks are cut from it while the group goes on applying. It reads the
  group's keys and records in lists of ``PAUSE_KEYS`` and picks the moving
  ones out of each in one call (``scan_picked`` with ``moving_keys``: the
  scan hashes every key of the group); each chunk takes them a list at a
  time, not key by key. Every write after that moment is marked (the move
  began before the export), so the next ``EXPORT_CHANGES`` from the
  revision read at that moment finds it.
- ``EXPORT_CHANGES``: the moving keys marked after ``since_revision``, each
  read as it is when its chunk is cut (present: its record; absent: a
  deletion), then every client session and the moved transaction records.
  A key written again meanwhile is marked again, above the revision this
  export reports, so the next round takes it; after the seal nothing moves
  any more and one round reads the final state.
- ``EXPORT_KEYS``: the moving keys only (no record read): what the source
  collects once the target serves them.

A chunk holds at most ``chunk_keys`` keys (default 1,000) and about
``MAX_CHUNK_BYTES`` of keys and records. Each chunk is a Raft entry at the
target, so the driver asks for large ones.
"""

from __future__ import annotations

from collections.abc import Iterator

from shardkv.fsm.kv import KeyValueStateMachine
from shardkv.storage import keys
from shardkv.storage.engine import ColumnFamily
from shardkv.v1 import kv_pb2, node_pb2

__all__ = ["DEFAULT_CHUNK_KEYS", "MAX_CHUNK_BYTES", "PAUSE_KEYS", "export_chunks", "export_steps"]

DEFAULT_CHUNK_KEYS = 1000
# Under the 4 MiB a gRPC channel receives by default, with room for framing.
MAX_CHUNK_BYTES = 3 << 20
# Keys scanned between two chances for the event loop (a few milliseconds):
# each list the scan reads, hashes and picks the moving keys from.
PAUSE_KEYS = 2048


def export_chunks(
    machine: KeyValueStateMachine, request: node_pb2.ExportRequest
) -> Iterator[kv_pb2.MigrateImport]:
    """What moves, in chunks; see the module docstring."""
    for chunk in export_steps(machine, request):
        if chunk is not None:
            yield chunk


def export_steps(
    machine: KeyValueStateMachine, request: node_pb2.ExportRequest
) -> Iterator[kv_pb2.MigrateImport | None]:
    """``export_chunks``, with a None after every list of keys scanned (at most
    ``PAUSE_KEYS``): where a caller on the event loop lets it run (a large chunk
    scans many keys)."""
    chunk_keys = request.chunk_keys or DEFAULT_CHUNK_KEYS
    if request.kind == node_pb2.EXPORT_CHANGES:
        yield from _changes(machine, request.target, request.since_revision, chunk_keys)
        return
    skip = keys.GROUP_KEY_SIZE
    moving = machine.migration.moving_keys(request.target, skip=skip)
    low, high = keys.group_range(machine.group_id)
    with_records = request.kind == node_pb2.EXPORT_ALL  # else EXPORT_KEYS: none read
    lists = machine.engine.scan_picked(
        ColumnFamily.DATA, low, high, pick=moving, batch=PAUSE_KEYS, values=with_records
    )
    chunk, size = kv_pb2.MigrateImport(), 0
    for picked in lists:
        while picked:
            # As many as the chunk takes, added in one call per field.
            taken = picked[: chunk_keys - len(chunk.keys)]
            taken_size = sum(len(key) - skip + len(stored) for key, stored in taken)
            if size + taken_size >= MAX_CHUNK_BYTES:
                taken, taken_size = _filling(taken, MAX_CHUNK_BYTES - size, skip)
            picked = picked[len(taken) :]
            chunk.keys.extend([key[skip:] for key, _ in taken])
            if with_records:
                chunk.records.extend([stored for _, stored in taken])
            size += taken_size
            if len(chunk.keys) >= chunk_keys or size >= MAX_CHUNK_BYTES:
                yield chunk
                chunk, size = kv_pb2.MigrateImport(), 0
        yield None  # a list of keys scanned: the caller's loop may run
    if chunk.keys:
        yield chunk


def _filling(
    items: list[tuple[bytes, bytes]], room: int, skip: int
) -> tuple[list[tuple[bytes, bytes]], int]:
    """The first of ``items`` up to the one whose key and record fill ``room``
    bytes, and their size."""
    size = 0
    for count, (key, stored) in enumerate(items, 1):
        size += len(key) - skip + len(stored)
        if size >= room:
            return items[:count], size
    return items, size


def _changes(
    machine: KeyValueStateMachine, target: int, since: int, chunk_keys: int
) -> Iterator[kv_pb2.MigrateImport]:
    migration, engine, group = machine.migration, machine.engine, machine.group_id
    changed = list(migration.changed_since(target, since))
    chunk, size = kv_pb2.MigrateImport(), 0
    for key in changed:
        stored = engine.get(ColumnFamily.DATA, keys.data_key(group, key))
        if stored is None:
            chunk.deleted.append(key)
            size += len(key)
        else:
            chunk.keys.append(key)
            chunk.records.append(stored)
            size += len(key) + len(stored)
        if len(chunk.keys) + len(chunk.deleted) >= chunk_keys or size >= MAX_CHUNK_BYTES:
            yield chunk
            chunk, size = kv_pb2.MigrateImport(), 0
    chunk.sessions.extend(migration.sessions())
    chunk.txn_records.extend(migration.moving_records(target))
    yield chunk
