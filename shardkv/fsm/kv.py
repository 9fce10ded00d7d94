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
   creation and last write. The group revision rises for each command that
   writes, to ``shardkv.revisions.next_revision`` of the command's stamp
   (hybrid-logical: unique across groups, in real-time order; one more
   than the last for an unstamped command). A delete removes the key; recreating it starts at
   version 1 again.
3. Exactly once, with many commands of a client in flight (RIFL's
   scheme): the group records the result of every command with a
   ``client_id`` under (client_id, seq) and answers a retry from it without
   writing. The result keeps the command's shape (kind and keys, hashed:
   ``command_shape``); a command with the same seq and another shape (the
   request re-planned over other groups after a ring change moved its keys
   and their sessions here) gets the kept result marked ``reused``, and
   nothing is applied for it. The client says with each command which seqs it will never retry
   (``acked_seq``); the session's floor rises to it and the results at or
   below are deleted. A command at or below the floor is answered ``stale``
   and does nothing (its outcome is no longer known). The floor also rises
   to ``seq - RESULT_WINDOW``, so a client that never acks keeps at most
   that many results.
4. ``key_count`` is the number of keys the group holds, kept as a counter
   in ``meta`` beside the revision (so a status call does not scan the
   group, and a snapshot carries it).
5. Ownership: once the group has applied a ring (a ``Command`` carrying
   ``ring``, proposed by its node; rings only move forward by epoch), a
   command with a key the ring gives another group is refused whole with
   ``wrong_group`` (the group, its epoch, the key) and writes nothing. A
   command routed with the group's own epoch (``Command.epoch``) is not
   checked key by key: the same ring gives the same owner (a third of the
   apply cost of a bulk put, measured).
   Before any ring (epoch 0) every key is accepted: the node applies the
   cluster's first ring as soon as it leads the group, and a router routes
   only with a ring, so nothing reaches a group it would not own.
6. Put results carry the previous key's metadata but not its value (a
   large value is not copied into every result); delete and
   compare-and-set results carry the previous value too. A command's
   ``puts`` (the bulk path) write like put operations, after them and in the
   same revision, and are only counted in the result.
7. Reads (``get``, ``scan``) see what the engine holds, i.e. the last applied
   round; the node serves them once applied covers the read's index.

8. Every change (a put, a delete, a compare-and-set, a transaction's
   writes) is logged by revision in the group's event log, for watches
   (``events``); moves log nothing. The log keeps ``EVENT_LOG_BYTES``,
   dropping whole old revisions, and its floor (``event_floor``): a trim
   reads the log as applied, engine and staged round together, so the log
   is the same bytes on every replica however their rounds were cut.

Commands are validated (key and value sizes, see ``shardkv.limits``) before
they are proposed; ``apply`` trusts what committed.

TODO: sessions never expire, so the dedup table keeps one floor record per
client ever seen (their results go as they are acked). Expiry by the
leader's clock through the log comes with leases.
"""

from __future__ import annotations

import itertools
import operator
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from shardkv.fsm.migration import Access, Migration
from shardkv.fsm.txn import Transactions
from shardkv.revisions import next_revision
from shardkv.ring import KeyRing, build_ring
from shardkv.storage import keys
from shardkv.storage.engine import Batch, ColumnFamily, StorageEngine
from shardkv.txn_protocol import step_keys
from shardkv.v1 import cluster_pb2, kv_pb2

__all__ = ["RESULT_WINDOW", "STALE", "KeyValueStateMachine", "Record"]

# The answer to a command at or below its client's acked floor.
STALE = kv_pb2.CommandResult(stale=True)
# Results a client that never acks keeps per group.
RESULT_WINDOW = 100_000
# Above this many seqs to forget at once, one range delete instead of point deletes.
_POINT_DELETES = 256

_RECORD = struct.Struct(">BQQQ")
_RECORD_FORMAT = 1
# A key attached to a lease: the same header, then the lease id.
_LEASED_RECORD = struct.Struct(">BQQQQ")
_LEASED_FORMAT = 2
_COUNTER = struct.Struct(">Q")
# Where a record keeps its mod_revision (format, version, create, mod).
_MOD_REVISION_AT = 1 + 8 + 8
_MOD_REVISION_BYTES = operator.itemgetter(slice(_MOD_REVISION_AT, _MOD_REVISION_AT + 8))
_EVENT_LOG = struct.Struct(">QQ")
_KEY_LENGTH = struct.Struct(">H")
# The event log's size per group: above it the oldest events go, to 3/4 of it.
EVENT_LOG_BYTES = 2 << 20


@dataclass(frozen=True, slots=True)
class Record:
    """A stored key: its value and metadata (the ``data`` column family value).

    A key without a lease keeps format 1 (what every record was before
    leases); one attached to a lease is format 2, with the lease after the
    revisions."""

    value: bytes
    version: int
    create_revision: int
    mod_revision: int
    lease: int = 0

    def encode(self) -> bytes:
        if self.lease:
            header = _LEASED_RECORD.pack(
                _LEASED_FORMAT, self.version, self.create_revision, self.mod_revision, self.lease
            )
        else:
            header = _RECORD.pack(
                _RECORD_FORMAT, self.version, self.create_revision, self.mod_revision
            )
        return header + self.value

    @classmethod
    def decode(cls, data: bytes) -> Record:
        record_format = data[0] if data else 0
        if record_format == _RECORD_FORMAT:
            _, version, create_revision, mod_revision = _RECORD.unpack_from(data)
            return cls(data[_RECORD.size :], version, create_revision, mod_revision)
        if record_format == _LEASED_FORMAT:
            _, version, create_revision, mod_revision, lease = _LEASED_RECORD.unpack_from(data)
            return cls(data[_LEASED_RECORD.size :], version, create_revision, mod_revision, lease)
        raise ValueError(f"unknown record format {record_format}")

    @staticmethod
    def revisions(data: bytes) -> tuple[int, int]:
        """(create, mod) revision of an encoded record, from its header alone."""
        if not data or data[0] not in (_RECORD_FORMAT, _LEASED_FORMAT):
            raise ValueError(f"unknown record format {data[:1]!r}")
        _, _, create_revision, mod_revision = _RECORD.unpack_from(data)
        return create_revision, mod_revision

    @staticmethod
    def newest_revision(records: Sequence[bytes]) -> int:
        """The highest revision of any of these encoded records (0: none)."""
        if not records:
            return 0
        # Every format keeps mod_revision (a record's highest) big-endian at
        # the same offset: the largest bytes there are the largest number.
        newest = max(records, key=_MOD_REVISION_BYTES)
        return Record.revisions(newest)[1]

    def key_value(self, key: bytes) -> kv_pb2.KeyValue:
        return kv_pb2.KeyValue(
            key=key,
            value=self.value,
            version=self.version,
            create_revision=self.create_revision,
            mod_revision=self.mod_revision,
            lease=self.lease,
        )


class KeyValueStateMachine:
    def __init__(self, engine: StorageEngine, group_id: int) -> None:
        self.engine = engine
        self.group_id = group_id
        # Writes of the round being staged, per column family by engine key
        # (None: deleted), visible to later commands of the round until the
        # batch commits.
        self._overlay = _no_overlay()
        self._overlay_batch: Batch | None = None
        stored = engine.get(ColumnFamily.META, keys.revision_key(group_id))
        # The revision, and how many commands wrote (revisions do not count
        # them: shardkv.revisions); stored together, 8 bytes each.
        self.revision = _COUNTER.unpack_from(stored)[0] if stored is not None else 0
        self.writes = _COUNTER.unpack_from(stored, 8)[0] if stored and len(stored) >= 16 else 0
        stored = engine.get(ColumnFamily.META, keys.ring_key(group_id))
        self.ring: KeyRing | None = None
        self._set_ring(cluster_pb2.Ring.FromString(stored) if stored is not None else None)
        self.migration = Migration(self)
        self._imported_revision = 0
        # The stamp of the command being applied (shardkv.revisions).
        self._stamp = 0
        self.txns = Transactions(self)
        stored = engine.get(ColumnFamily.META, keys.event_log_key(group_id))
        # Events below the floor are gone (a group from before the event log:
        # none before its revision then).
        self.event_floor, self.event_bytes = (
            _EVENT_LOG.unpack(stored) if stored is not None else (self.revision + 1, 0)
        )
        self._event_revision = self._event_seq = 0
        self._events_changed = False
        stored = engine.get(ColumnFamily.META, keys.key_count_key(group_id))
        # Counted here during a migration: the data dir of a version that ingested
        # bulk copies as tables (and dropped the count first) may hold a table
        # whose entry is applied again, so a bulk pass's keys are read to count
        # them for as long as this process lives (``import_records``).
        self._recounted = stored is None and self.migration.active
        if stored is not None:
            self.key_count: int = _COUNTER.unpack(stored)[0]
        else:
            # No counter yet (a new group, or data written before counters): count
            # once, every stored key (scan() would skip the ones a migration hides).
            low, high = keys.data_range(group_id)
            self.key_count = sum(1 for _ in engine.scan(ColumnFamily.DATA, low, high))
            self.key_count -= self.migration.counted_out_held()

    # -- applying ----------------------------------------------------------------

    def apply(self, batch: Batch, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        self._track(batch)
        self._stamp = command.stamp
        if command.HasField("ring"):
            return self.apply_ring(batch, command.ring)
        if command.HasField("migrate"):
            return self.migration.apply(batch, command.migrate)
        if not command.client_id:
            return self._execute(batch, command)
        client_id, seq = command.client_id, command.seq
        floor_key = keys.session_key(self.group_id, client_id)
        stored = self._read(ColumnFamily.META, floor_key)
        floor = _COUNTER.unpack(stored)[0] if stored is not None else 0
        if seq <= floor:
            return STALE
        result_key = keys.result_key(self.group_id, client_id, seq)
        recorded = self._read(ColumnFamily.META, result_key)
        if recorded is not None:
            kept = kv_pb2.CommandResult.FromString(recorded)
            kept.replayed = True
            if kept.shape and kept.shape != command_shape(command):
                kept.reused = True  # another command's: see CommandResult.reused
            return kept
        result = self._execute(batch, command)
        if result.HasField("wrong_group") or result.HasField("locked"):
            # Nothing happened here: not recorded, so that a retry with the
            # same seq, once the group owns the keys (or at another group,
            # or the lock is gone), is applied rather than answered with
            # this refusal.
            return result
        result.shape = command_shape(command)
        self._write(batch, ColumnFamily.META, result_key, result.SerializeToString())
        new_floor = max(floor, min(command.acked_seq, seq - 1), seq - RESULT_WINDOW)
        if new_floor > floor:
            self._forget(batch, client_id, floor, new_floor)
            self._write(batch, ColumnFamily.META, floor_key, _COUNTER.pack(new_floor))
        return result

    def _forget(self, batch: Batch, client_id: int, floor: int, new_floor: int) -> None:
        """Delete the client's results for seqs in ``(floor, new_floor]``."""
        if new_floor - floor <= _POINT_DELETES:
            for old_seq in range(floor + 1, new_floor + 1):
                key = keys.result_key(self.group_id, client_id, old_seq)
                self._write(batch, ColumnFamily.META, key, None)
            self.txns.forget_records(batch, client_id, floor, new_floor)
            return
        low, high = keys.result_range(self.group_id, client_id, floor + 1, new_floor + 1)
        batch.delete_range(ColumnFamily.META, low, high)
        # Staged results of the range are unreachable now: seqs at or below
        # the floor are answered stale before any result is looked up.
        self.txns.forget_records(batch, client_id, floor, new_floor)

    def _execute(self, batch: Batch, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        wrong_group = self._wrong_group(command)
        if wrong_group is not None:
            return kv_pb2.CommandResult(wrong_group=wrong_group, revision=self.revision)
        if command.HasField("txn"):
            return self.txns.apply(batch, command)
        lock = self.txns.lock_on(_command_keys(command))
        if lock is not None:
            return kv_pb2.CommandResult(locked=lock, revision=self.revision)
        results = self.write_operations(batch, command.operations, command.puts)
        return kv_pb2.CommandResult(
            results=results, puts_written=len(command.puts), revision=self.revision
        )

    def _count(self, batch: Batch, revision: int | None, key_count: int) -> None:
        """Record a new group revision (when something was written) and key count."""
        if revision is not None:
            self.revision = revision
            self._write(
                batch,
                ColumnFamily.META,
                keys.revision_key(self.group_id),
                _COUNTER.pack(revision) + _COUNTER.pack(self.writes),
            )
        if self.key_count != key_count:
            self._write(
                batch,
                ColumnFamily.META,
                keys.key_count_key(self.group_id),
                _COUNTER.pack(self.key_count),
            )

    # -- what the transaction participant uses (shardkv.fsm.txn) -----------------------

    def write_operations(
        self,
        batch: Batch,
        operations: Sequence[kv_pb2.Operation],
        puts: Sequence[kv_pb2.KeyValue] = (),
    ) -> list[kv_pb2.OperationResult]:
        """Apply ``operations``, then ``puts`` (no result each), as one write of one revision.

        The revision rises only if something was written.
        """
        revision = next_revision(self.revision, self._stamp, self.group_id)
        key_count = self.key_count
        wrote = bool(puts)
        results = []
        for operation in operations:
            outcome, written = self._apply_operation(batch, operation, revision)
            results.append(outcome)
            wrote = wrote or written
        for put in puts:
            self._store(batch, put.key, self._get_staged(put.key), put.value, revision, put.lease)
        if wrote:
            self.writes += 1
        self._count(batch, revision if wrote else None, key_count)
        if self._events_changed:
            self._trim_events(batch)
        return results

    # -- the event log (what watches read) -------------------------------------------

    def _log_event(self, batch: Batch, key: bytes, stored: bytes, revision: int) -> None:
        """Record a change: the key and its stored record (b"": deleted at ``revision``).
        An event is the key's length (u16), the key, then the record as stored."""
        if revision != self._event_revision:
            self._event_revision, self._event_seq = revision, 0
        data = _KEY_LENGTH.pack(len(key)) + key + stored
        self._write(
            batch, ColumnFamily.META, keys.event_key(self.group_id, revision, self._event_seq), data
        )
        self._event_seq += 1
        self.event_bytes += len(data)
        self._events_changed = True

    def _trim_events(self, batch: Batch) -> None:
        """Drop the oldest events while the log is over ``EVENT_LOG_BYTES`` (whole
        revisions at a time), and record the floor and size."""
        self._events_changed = False
        if self.event_bytes > EVENT_LOG_BYTES:
            # The log as applied so far: what the engine holds, then what this
            # round staged (newer), so that every replica trims alike however
            # its rounds were cut.
            low, high = keys.event_range(self.group_id, self.event_floor)
            meta = ColumnFamily.META
            committed = (
                (key, value)
                for key, value in self.engine.scan(meta, low, high)
                if key not in self._overlay[meta]
            )
            staged = sorted(
                (key, value)
                for key, value in self._overlay[meta].items()
                if low <= key < high and value is not None
            )
            target = EVENT_LOG_BYTES * 3 // 4
            for key, value in itertools.chain(committed, staged):
                revision = keys.decode_event_key(key)[0]
                if self.event_bytes <= target and revision >= self.event_floor:
                    break
                self._write(batch, ColumnFamily.META, key, None)
                self.event_bytes -= len(value)
                self.event_floor = revision + 1
        self._record_event_log(batch)

    def _record_event_log(self, batch: Batch) -> None:
        self._write(
            batch,
            ColumnFamily.META,
            keys.event_log_key(self.group_id),
            _EVENT_LOG.pack(self.event_floor, self.event_bytes),
        )

    def events(self, from_revision: int, limit: int) -> list[tuple[int, kv_pb2.KeyValue]]:
        """Up to ``limit`` changes from ``from_revision`` on, in order (as applied:
        the caller checks ``event_floor``)."""
        low, high = keys.event_range(self.group_id, from_revision)
        found = []
        for key, value in self.engine.scan(ColumnFamily.META, low, high):
            revision = keys.decode_event_key(key)[0]
            end = _KEY_LENGTH.size + _KEY_LENGTH.unpack_from(value)[0]
            user_key, stored = value[_KEY_LENGTH.size : end], value[end:]
            if stored:
                found.append((revision, Record.decode(stored).key_value(user_key)))
            else:
                found.append((revision, kv_pb2.KeyValue(key=user_key, mod_revision=revision)))
            if len(found) >= limit:
                break
        return found

    def read_meta(self, key: bytes) -> bytes | None:
        return self._read(ColumnFamily.META, key)

    def write_meta(self, batch: Batch, key: bytes, value: bytes | None) -> None:
        self._write(batch, ColumnFamily.META, key, value)

    def lock_against(self, command: kv_pb2.Command) -> kv_pb2.LockInfo | None:
        """A lock in the applied state that ``command`` would be refused for, if any.

        A hint for the leader, to answer ``locked`` without a trip through the
        log (applying decides for certain; a stale answer only delays a retry).
        What the session would answer (a retry of a command that applied, a
        stale seq) or ownership would refuse is never answered ``locked``:
        apply answers those first.
        """
        if not self.txns.locks or command.HasField("ring"):
            return None
        if command.HasField("txn"):
            if not command.txn.HasField("prepare"):
                return None  # decide, finish and forget never wait for locks
            prepare = command.txn.prepare
            ref = kv_pb2.TxnRef(client_id=command.client_id, seq=command.seq)
            lock = self.txns.conflict(prepare, None if prepare.one_phase else ref)
        else:
            lock = self.txns.lock_on(_command_keys(command))
        if lock is None:
            return None
        if command.client_id and (
            command.seq <= self.session_floor(command.client_id)
            or self._read(
                ColumnFamily.META, keys.result_key(self.group_id, command.client_id, command.seq)
            )
            is not None
        ):
            return None  # the session answers it (a retry of what applied, or stale)
        if self._wrong_group(command) is not None:
            return None
        return lock

    def staged_record(self, key: bytes) -> Record | None:
        return self._get_staged(key)

    def session_floor(self, client_id: int) -> int:
        stored = self._read(ColumnFamily.META, keys.session_key(self.group_id, client_id))
        return _COUNTER.unpack(stored)[0] if stored is not None else 0

    # -- ownership -----------------------------------------------------------------------

    def apply_ring(self, batch: Batch, ring: cluster_pb2.Ring) -> kv_pb2.CommandResult:
        """Take ``ring`` (ownership) if it is newer than the one applied."""
        if ring.epoch > self.epoch:
            self._write(
                batch, ColumnFamily.META, keys.ring_key(self.group_id), ring.SerializeToString()
            )
            self._set_ring(ring)
            self.migration.end(batch, ring.epoch)
        return kv_pb2.CommandResult(revision=self.revision)

    def _set_ring(self, ring: cluster_pb2.Ring | None) -> None:
        self.ring = build_ring(ring) if ring is not None else None

    @property
    def epoch(self) -> int:
        """The epoch of the ring the group applied; 0 before any."""
        return self.ring.epoch if self.ring is not None else 0

    def wrong_group(self, key: bytes, access: Access = Access.READ) -> kv_pb2.WrongGroup | None:
        """Why this group does not serve ``key`` for ``access``, or None if it does.

        Its applied ring decides, and during a migration the state of the
        key's move (``shardkv.fsm.migration``).
        """
        ring = self.ring
        if ring is None:
            return None
        if self.migration.active:
            return self.migration.refusal(key, access)
        if ring.weights and ring.group_for(key) == self.group_id:
            return None
        return kv_pb2.WrongGroup(group_id=self.group_id, epoch=ring.epoch, key=key)

    def importing(self, command: kv_pb2.Command, *, every: bool = True) -> bool:
        """Whether every key ``command`` writes (with ``every=False``: any) is one this
        group imports and does not serve yet (its move switching over;
        ``Migration.importing``): a hint for the leader, which may hold the command
        until the move is active rather than have it refused and sent again.
        Applying decides, as ever."""
        if not self.migration.active:
            return False
        return self.migration.importing(_command_keys(command), every=every)

    def _wrong_group(self, command: kv_pb2.Command) -> kv_pb2.WrongGroup | None:
        if self.ring is None:
            if command.epoch:
                # Routed with a ring this group has not applied yet: wait for it.
                return kv_pb2.WrongGroup(group_id=self.group_id, epoch=0)
            return None  # no ring anywhere yet (bootstrap, tests): every key is ours
        if command.epoch == self.ring.epoch and not self.migration.active:
            return None  # routed with this very ring: every key is ours
        for key in _command_keys(command):
            refused = self.wrong_group(key, Access.WRITE)
            if refused is not None:
                return refused
        if command.txn.HasField("decide") and command.txn.decide.primary_key:
            return self.wrong_group(command.txn.decide.primary_key, Access.DECIDE)
        return None

    def scan_refusal(self, epoch: int = 0, groups: Sequence[int] = ()) -> kv_pb2.WrongGroup | None:
        """Why a scan routed with ring ``epoch`` over ``groups`` cannot be answered, or None:
        keys in transit, or a router's map older than where this group's keys went."""
        if epoch and self.ring is not None and epoch < self.ring.epoch:
            return kv_pb2.WrongGroup(group_id=self.group_id, epoch=self.ring.epoch)
        return self.migration.scan_refusal(groups)

    def _apply_operation(
        self, batch: Batch, operation: kv_pb2.Operation, revision: int
    ) -> tuple[kv_pb2.OperationResult, bool]:
        kind = operation.WhichOneof("kind")
        if kind == "put":
            key, value = operation.put.key, operation.put.value
            previous = self._get_staged(key)
            self._store(batch, key, previous, value, revision, operation.put.lease)
            outcome = _result(True, key, previous)
            if previous is not None:
                outcome.previous.value = b""  # metadata only: see the docstring
            return outcome, True
        if kind == "delete":
            key = operation.delete.key
            previous = self._get_staged(key)
            if previous is None:
                return _result(False, key, None), False
            self._write(batch, ColumnFamily.DATA, keys.data_key(self.group_id, key), None)
            self.key_count -= 1
            if self.migration.active:
                self.migration.mark(batch, key, revision)
            self._log_event(batch, key, b"", revision)
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
        self,
        batch: Batch,
        key: bytes,
        previous: Record | None,
        value: bytes,
        revision: int,
        lease: int = 0,
    ) -> None:
        if previous is None:
            record = Record(value, 1, revision, revision, lease)
            self.key_count += 1
        else:
            record = Record(value, previous.version + 1, previous.create_revision, revision, lease)
        stored = record.encode()
        self._write(batch, ColumnFamily.DATA, keys.data_key(self.group_id, key), stored)
        if self.migration.active:
            self.migration.mark(batch, key, revision)
        self._log_event(batch, key, stored, revision)

    # -- what a migration uses (shardkv.fsm.migration) ------------------------------------

    def import_records(
        self, batch: Batch, moved: Sequence[bytes], stored: Sequence[bytes], *, new: bool = False
    ) -> None:
        """Write copied keys as the source stores them (value and metadata), the ones
        new here counted in, read in one call; ``finish_import`` then raises the
        revision above theirs. ``new``: the log says none of the keys is here (a
        bulk copy's, see ``Migration``), so they are counted without reading
        them; unless one was written earlier in this round, or this replica
        recounted at its start during a migration (``__init__``)."""
        if not moved:
            return
        prefix = keys.group_prefix(self.group_id)
        items = dict(zip((prefix + key for key in moved), stored, strict=True))
        staged = self._overlay[ColumnFamily.DATA]
        if new and not self._recounted and (not staged or staged.keys().isdisjoint(items.keys())):
            added = len(items)
        else:
            added = self._read_many(list(items)).count(None)
        batch.put_many(ColumnFamily.DATA, items)
        staged.update(items)
        self.key_count += added
        self._imported_revision = max(self._imported_revision, Record.newest_revision(stored))

    def drop_keys(self, batch: Batch, moved: Sequence[bytes], *, counted: bool = True) -> None:
        """Delete keys that moved (no revision, no mark: not writes of the user's), the
        ones still here counted out, their presence read in one call. Not ``counted``:
        the keys were counted out already (a release that said how many), so
        none is read to count it."""
        if not moved:
            return
        prefix = keys.group_prefix(self.group_id)
        dropped = list(dict.fromkeys(prefix + key for key in moved))
        if counted:
            present = self._read_many(dropped)
            dropped = [
                key for key, stored in zip(dropped, present, strict=True) if stored is not None
            ]
            self.key_count -= len(dropped)
        batch.delete_many(ColumnFamily.DATA, dropped)
        self._overlay[ColumnFamily.DATA].update(dict.fromkeys(dropped))

    def _read_many(self, engine_keys: list[bytes]) -> list[bytes | None]:
        """``_read`` of many data keys: the staged ones from the overlay, the rest in
        one call to the engine."""
        found = self.engine.get_many(ColumnFamily.DATA, engine_keys)
        staged = self._overlay[ColumnFamily.DATA]
        if staged:
            for at, engine_key in enumerate(engine_keys):
                value = staged.get(engine_key, _MISSING)
                if value is not _MISSING:
                    found[at] = value  # type: ignore[call-overload]
        return found

    def merge_session(self, batch: Batch, copy: kv_pb2.SessionCopy) -> None:
        """Take in a client's session from another group: the higher floor, and its results."""
        floor_key = keys.session_key(self.group_id, copy.client_id)
        stored = self._read(ColumnFamily.META, floor_key)
        floor = _COUNTER.unpack(stored)[0] if stored is not None else 0
        if copy.floor > floor:
            self._forget(batch, copy.client_id, floor, copy.floor)
            self._write(batch, ColumnFamily.META, floor_key, _COUNTER.pack(copy.floor))
            floor = copy.floor
        for seq, result in zip(copy.seqs, copy.results, strict=True):
            if seq <= floor:
                continue
            result_key = keys.result_key(self.group_id, copy.client_id, seq)
            if self._read(ColumnFamily.META, result_key) is None:
                self._write(batch, ColumnFamily.META, result_key, result)

    def finish_import(self, batch: Batch) -> None:
        """Record the key count, and raise the revision counter to the highest imported
        revision (so the next write here gets a revision above every imported one)."""
        revision = self._imported_revision if self._imported_revision > self.revision else None
        self._imported_revision = 0
        self._count(batch, revision, -1)  # -1: always record the count
        # Stored now: a replica that restarts before the next write must not
        # take the raised revision for the log's floor.
        self._record_event_log(batch)

    # -- the staged overlay ----------------------------------------------------------

    def _track(self, batch: Batch) -> None:
        if self._overlay_batch is batch:
            return
        self._overlay = _no_overlay()
        self._overlay_batch = batch
        batch.on_commit(self._clear_overlay)

    def _clear_overlay(self) -> None:
        self._overlay = _no_overlay()
        self._overlay_batch = None

    def _read(self, cf: ColumnFamily, key: bytes) -> bytes | None:
        staged = self._overlay[cf].get(key, _MISSING)
        if staged is not _MISSING:
            return staged  # type: ignore[return-value]
        return self.engine.get(cf, key)

    def _write(self, batch: Batch, cf: ColumnFamily, key: bytes, value: bytes | None) -> None:
        if value is None:
            batch.delete(cf, key)
        else:
            batch.put(cf, key, value)
        self._overlay[cf][key] = value

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
        migration = self.migration if self.migration.active else None
        count = 0
        for engine_key, stored in self.engine.scan(ColumnFamily.DATA, low, high):
            _, user_key = keys.decode_data_key(engine_key)
            if migration is not None and migration.refusal(user_key, Access.READ) is not None:
                continue  # moved away, or copied here and not served yet
            yield Record.decode(stored).key_value(user_key)
            count += 1
            if limit and count >= limit:
                return


_MISSING = object()


def _no_overlay() -> dict[ColumnFamily, dict[bytes, bytes | None]]:
    """A round's staged writes before it staged any: per column family, by engine key."""
    return {cf: {} for cf in ColumnFamily}


def _command_keys(command: kv_pb2.Command) -> Iterator[bytes]:
    """The user keys a command touches (a transaction step's prepare: all of them)."""
    for operation in command.operations:
        kind = operation.WhichOneof("kind")
        if kind is not None:
            yield getattr(operation, kind).key
    for put in command.puts:
        yield put.key
    if command.txn.HasField("prepare"):
        yield from step_keys(command.txn.prepare)


def command_shape(command: kv_pb2.Command) -> int:
    """A hash of what ``command`` is (its kind and keys, in order): two commands with the
    same session seq are the same request's same part only if their shapes agree."""
    if command.HasField("txn"):
        step = command.txn
        kind = step.WhichOneof("kind") or ""
        if kind == "prepare" and step.prepare.one_phase:
            kind = "one_phase"
    else:
        kind = "write"
    # One hash over the keys joined (one C call, not two per key: commands
    # of a bulk put carry thousands); the count guards against re-cut keys.
    command_keys = list(_command_keys(command))
    shape = zlib.crc32(
        b"\x00".join(command_keys), zlib.crc32(b"%s:%d" % (kind.encode(), len(command_keys)))
    )
    return shape or 1  # 0 means "unknown"


def _result(succeeded: bool, key: bytes, previous: Record | None) -> kv_pb2.OperationResult:
    result = kv_pb2.OperationResult(succeeded=succeeded)
    if previous is not None:
        result.previous.CopyFrom(previous.key_value(key))
    return result
