"""What a committed Command does to one data group's keys.

``KeyValueStateMachine`` owns one group's user keys (the ``data`` column
family, under the group's prefix) and its bookkeeping in ``meta``: the
group's revision counter and its client sessions (the dedup table).

What it promises:

1. ``apply(batch, command)`` is deterministic: the same commands in the same
   order give the same keys, metadata and results on every replica. Its
   writes go into the caller's batch, beside the applied index (the node
   writes both at once, so a crash never applies an entry twice), and later
   commands of the same round see them (a staged overlay, dropped when the
   batch commits).
2. Per key: ``version`` counts writes since creation (1 after the first),
   ``create_revision`` and ``mod_revision`` are the group revisions of its
   creation and last write. The group revision rises by one for each
   command that writes. A delete removes the key; recreating it starts at
   version 1 again.
3. Exactly once: a command with ``client_id`` != 0 is applied only if its
   ``seq`` is above the session's last; a retry of the last one gets the
   recorded result back without writing; an older one is ``STALE`` and
   writes nothing (the client gave up on it long ago).
4. ``key_count`` is the number of keys the group holds, kept as a counter
   in ``meta`` beside the revision (so a status call does not scan the
   group, and a snapshot carries it).
5. Reads (``get``, ``scan``) see what the engine holds, i.e. the last applied
   round; the node serves them once applied covers the read's index.

Commands are validated (key and value sizes, see ``shardkv.limits``) before
they are proposed; ``apply`` trusts what committed.

TODO: sessions never expire, so the dedup table grows with the number of
clients ever seen. Safe for now (one small record per client); expiry by
the leader's clock through the log comes with leases.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from shardkv.storage import keys
from shardkv.storage.engine import Batch, ColumnFamily, StorageEngine
from shardkv.v1 import kv_pb2

__all__ = ["STALE", "KeyValueStateMachine", "Record"]

# The answer to a command older than its client's latest applied one.
STALE = kv_pb2.CommandResult()

_RECORD = struct.Struct(">BQQQ")
_RECORD_FORMAT = 1
_COUNTER = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Record:
    """A stored key: its value and metadata (the ``data`` column family value)."""

    value: bytes
    version: int
    create_revision: int
    mod_revision: int

    def encode(self) -> bytes:
        header = _RECORD.pack(_RECORD_FORMAT, self.version, self.create_revision, self.mod_revision)
        return header + self.value

    @classmethod
    def decode(cls, data: bytes) -> Record:
        record_format, version, create_revision, mod_revision = _RECORD.unpack_from(data)
        if record_format != _RECORD_FORMAT:
            raise ValueError(f"unknown record format {record_format}")
        return cls(data[_RECORD.size :], version, create_revision, mod_revision)

    def key_value(self, key: bytes) -> kv_pb2.KeyValue:
        return kv_pb2.KeyValue(
            key=key,
            value=self.value,
            version=self.version,
            create_revision=self.create_revision,
            mod_revision=self.mod_revision,
        )


class KeyValueStateMachine:
    def __init__(self, engine: StorageEngine, group_id: int) -> None:
        self.engine = engine
        self.group_id = group_id
        # Writes of the round being staged, by engine key (None: deleted),
        # visible to later commands of the round until the batch commits.
        self._overlay: dict[tuple[ColumnFamily, bytes], bytes | None] = {}
        self._overlay_batch: Batch | None = None
        stored = engine.get(ColumnFamily.META, keys.revision_key(group_id))
        self.revision = _COUNTER.unpack(stored)[0] if stored is not None else 0
        stored = engine.get(ColumnFamily.META, keys.key_count_key(group_id))
        if stored is not None:
            self.key_count: int = _COUNTER.unpack(stored)[0]
        else:
            # A group that never wrote has no counter: count what is there (nothing).
            self.key_count = sum(1 for _ in self.scan())

    # -- applying ----------------------------------------------------------------

    def apply(self, batch: Batch, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        self._track(batch)
        session_key = b""
        if command.client_id:
            session_key = keys.session_key(self.group_id, command.client_id)
            session = self._read(ColumnFamily.META, session_key)
            if session is not None:
                last_seq = _COUNTER.unpack_from(session)[0]
                if command.seq == last_seq:
                    return kv_pb2.CommandResult.FromString(session[_COUNTER.size :])
                if command.seq < last_seq:
                    return STALE
        result = kv_pb2.CommandResult()
        revision = self.revision + 1
        wrote = False
        key_count = self.key_count
        for operation in command.operations:
            outcome, written = self._apply_operation(batch, operation, revision)
            result.results.append(outcome)
            wrote = wrote or written
        if wrote:
            self.revision = revision
            self._write(
                batch, ColumnFamily.META, keys.revision_key(self.group_id), _COUNTER.pack(revision)
            )
        if self.key_count != key_count:
            self._write(
                batch,
                ColumnFamily.META,
                keys.key_count_key(self.group_id),
                _COUNTER.pack(self.key_count),
            )
        result.revision = self.revision
        if session_key:
            self._write(
                batch,
                ColumnFamily.META,
                session_key,
                _COUNTER.pack(command.seq) + result.SerializeToString(),
            )
        return result

    def _apply_operation(
        self, batch: Batch, operation: kv_pb2.Operation, revision: int
    ) -> tuple[kv_pb2.OperationResult, bool]:
        kind = operation.WhichOneof("kind")
        if kind == "put":
            key, value = operation.put.key, operation.put.value
            previous = self._get_staged(key)
            self._store(batch, key, previous, value, revision)
            return _result(True, key, previous), True
        if kind == "delete":
            key = operation.delete.key
            previous = self._get_staged(key)
            if previous is None:
                return _result(False, key, None), False
            self._write(batch, ColumnFamily.DATA, keys.data_key(self.group_id, key), None)
            self.key_count -= 1
            return _result(True, key, previous), True
        if kind == "compare_and_set":
            cas = operation.compare_and_set
            previous = self._get_staged(cas.key)
            current = previous.value if previous is not None else None
            expected = cas.expected if cas.HasField("expected") else None
            if current != expected:
                return _result(False, cas.key, previous), False
            self._store(batch, cas.key, previous, cas.value, revision)
            return _result(True, cas.key, previous), True
        raise ValueError(f"a committed operation has no kind: {operation!r}")

    def _store(
        self, batch: Batch, key: bytes, previous: Record | None, value: bytes, revision: int
    ) -> None:
        if previous is None:
            record = Record(value, version=1, create_revision=revision, mod_revision=revision)
            self.key_count += 1
        else:
            record = Record(value, previous.version + 1, previous.create_revision, revision)
        self._write(batch, ColumnFamily.DATA, keys.data_key(self.group_id, key), record.encode())

    # -- the staged overlay ----------------------------------------------------------

    def _track(self, batch: Batch) -> None:
        if self._overlay_batch is batch:
            return
        self._overlay = {}
        self._overlay_batch = batch
        batch.on_commit(self._clear_overlay)

    def _clear_overlay(self) -> None:
        self._overlay = {}
        self._overlay_batch = None

    def _read(self, cf: ColumnFamily, key: bytes) -> bytes | None:
        staged = self._overlay.get((cf, key), _MISSING)
        if staged is not _MISSING:
            return staged  # type: ignore[return-value]
        return self.engine.get(cf, key)

    def _write(self, batch: Batch, cf: ColumnFamily, key: bytes, value: bytes | None) -> None:
        if value is None:
            batch.delete(cf, key)
        else:
            batch.put(cf, key, value)
        self._overlay[(cf, key)] = value

    def _get_staged(self, key: bytes) -> Record | None:
        stored = self._read(ColumnFamily.DATA, keys.data_key(self.group_id, key))
        return Record.decode(stored) if stored is not None else None

    # -- reading the applied state -----------------------------------------------

    def get(self, key: bytes) -> kv_pb2.KeyValue | None:
        stored = self.engine.get(ColumnFamily.DATA, keys.data_key(self.group_id, key))
        return Record.decode(stored).key_value(key) if stored is not None else None

    def scan(
        self,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        prefix: bytes | None = None,
        limit: int = 0,
    ) -> Iterator[kv_pb2.KeyValue]:
        """Keys in ``[start, end)``, or with ``prefix``, in key order; ``limit`` 0 means all."""
        if prefix is not None:
            low, high = keys.data_prefix_range(self.group_id, prefix)
        else:
            low, high = keys.data_range(self.group_id, start, end)
        for count, (engine_key, stored) in enumerate(
            self.engine.scan(ColumnFamily.DATA, low, high), start=1
        ):
            _, user_key = keys.decode_data_key(engine_key)
            yield Record.decode(stored).key_value(user_key)
            if limit and count >= limit:
                return


_MISSING = object()


def _result(succeeded: bool, key: bytes, previous: Record | None) -> kv_pb2.OperationResult:
    result = kv_pb2.OperationResult(succeeded=succeeded)
    if previous is not None:
        result.previous.CopyFrom(previous.key_value(key))
    return result
