"""One group's Raft log, hard state and applied state, in the node's engine.

``GroupStorage(engine, group_id)`` answers the Raft core's ``Storage``
protocol for one group, exactly as ``shardkv.raft.MemoryStorage`` would for
the same history (a test holds them equal), and stages the runtime's writes
into a batch the caller owns, so that the node puts a round's output of every
group into one batch with one fsync:

1. ``stage_snapshot`` (install a received snapshot: drop the log),
   ``stage_append`` (truncating any conflicting suffix), ``stage_hard_state``:
   step 3 of the Ready contract, in that order.
2. ``stage_applied``: the applied index and ConfState, in the same batch as
   the state machine's writes of the entries applied (step 5).
3. ``stage_create_snapshot`` and ``stage_compact``: record a snapshot the
   state machine took and drop the log it covers.

What it promises:

- Queries answer what is on disk, never what is only staged. The in-memory
  view (first and last index, hard state, snapshot metadata, a cache of the
  newest entries) changes in the batch's commit hook, so a write that fails
  leaves it as it was. Stagings of one group into one batch build on each
  other (a snapshot then an append then a hard state, as a Ready has them);
  a group may have writes in only one open batch at a time
  (``StagingConflict``).
- Reads of the tail come from the cache of the newest entries (at most
  ``cache_bytes``, filled from disk on open), so a leader replicating to
  followers that keep up never reads RocksDB.
- ``initial_state()`` returns the ConfState recorded with the applied index
  when that index is at or past the snapshot's: the node restarts with
  ``Config(applied=applied_index)`` from ``applied_state()``, and the Raft
  core does not replay the configuration changes up to it.
- ``bootstrap(voters)`` writes what ``MemoryStorage.with_voters`` holds (the
  snapshot at index 1, term 1 with the voters; hard state term 1, commit 1),
  and the applied state at that snapshot.

Snapshot data. Given a ``snapshot_source`` (a callable returning the image
of the group's state machine as the engine holds it now, made by
``shardkv.fsm.snapshot.snapshot_source``), ``snapshot()`` returns the latest
snapshot's metadata with the image AT ITS INDEX. (Without one the data is
empty, as ``MemoryStorage`` holds it when the application gives none: the
Raft-only uses, which compare the two.) The image is not built when Raft asks
for it, since the state machine has moved on by then, but when the engine
holds exactly the state at the snapshot's index, and kept in memory (one
image per group) until a newer snapshot replaces it. The engine holds the
state at the applied index recorded on disk, since the state machine's
writes and the applied index go in one batch. So:

- ``stage_create_snapshot`` must be at that on-disk applied index (take the
  snapshot once the batch that applied it is written), and builds the image
  then, before staging anything: an image too large (``SnapshotTooLarge``)
  records no snapshot and the log stays uncompacted.
- After a snapshot arrives (``stage_snapshot`` with ``stage_applied`` at its
  index, in one batch) or at bootstrap, the state is the snapshot's until
  the next ``stage_applied`` past it, which builds the image first if Raft
  has not asked for it yet.
- At open, if the applied index is past the snapshot's (entries applied
  since, then a restart), the image at the snapshot's index is gone with the
  state it described: a snapshot at the applied index is recorded then and
  there, image included, before Raft can ask. (Its write is not synced: if
  it is lost, the next open does it again; and the later synced write of a
  compaction that relies on it carries it to disk first, WAL order.) An
  applied index behind the snapshot's is ``CorruptValue``: the state the
  snapshot names is not in the state machine.

The images are identical bytes for the same index on every replica and
across restarts (the encoding is deterministic), as the Raft core needs.
Keeping them in the engine instead would save the rebuild at open but write
every image to disk twice; see ``shardkv.fsm.snapshot`` for the plan for
large groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from shardkv.raft.errors import Compacted, SnapshotOutOfDate, Unavailable
from shardkv.raft.storage import bootstrap_hard_state, bootstrap_snapshot, limit_size
from shardkv.raft.types import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
)
from shardkv.storage import keys, values
from shardkv.storage.engine import Batch, ColumnFamily, StorageEngine
from shardkv.storage.errors import AlreadyBootstrapped, CorruptValue, StagingConflict

__all__ = ["DEFAULT_CACHE_BYTES", "GroupStorage", "stored_groups"]

DEFAULT_CACHE_BYTES = 256 << 10

_RAFT = ColumnFamily.RAFT


@dataclass(slots=True)
class _LogState:
    """A group's log as on disk (or as a batch will leave it)."""

    hard_state: HardState
    snapshot: SnapshotMetadata
    # The entry just before the first one held: the snapshot point or the
    # compaction point, whose term Raft may still ask.
    start_index: int
    start_term: int
    last_index: int
    # The newest entries, contiguous and ending at last_index; may be empty.
    cache: list[Entry]
    cache_size: int

    def copy(self) -> _LogState:
        """A view to stage into. It shares the cache: changes build a new list."""
        return replace(self)

    def cache_first(self) -> int:
        return self.last_index - len(self.cache) + 1


class GroupStorage:
    """The Raft ``Storage`` of one group, and the staging of its writes."""

    def __init__(
        self,
        engine: StorageEngine,
        group_id: int,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        snapshot_source: Callable[[], bytes] | None = None,
    ) -> None:
        self.engine = engine
        self.group_id = group_id
        self.cache_bytes = cache_bytes
        self._state = self._load()
        self._applied = self._load_applied()
        self._pending: tuple[Batch, _LogState] | None = None
        self._snapshot_source = snapshot_source
        # Images of the state machine by snapshot index: the on-disk
        # snapshot's, and one a batch being staged will record.
        self._images: dict[int, bytes] = {}
        if snapshot_source is not None:
            self._snapshot_applied_state()

    def __repr__(self) -> str:
        state = self._state
        return (
            f"GroupStorage(group {self.group_id}, log ({state.start_index}, "
            f"{state.last_index}], {state.hard_state})"
        )

    # -- Storage -----------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        state = self._state
        applied_index, applied_conf_state = self._applied
        if applied_index >= state.snapshot.index:
            return state.hard_state, applied_conf_state
        return state.hard_state, state.snapshot.conf_state

    def entries(self, low: int, high: int, max_size: int | None = None) -> list[Entry]:
        return self._entries(self._state, low, high, max_size)

    def term(self, index: int) -> int:
        return self._term(self._state, index)

    def first_index(self) -> int:
        return self._state.start_index + 1

    def last_index(self) -> int:
        return self._state.last_index

    def snapshot_metadata(self) -> SnapshotMetadata:
        """The latest snapshot's metadata, without building or reading its image."""
        return self._state.snapshot

    def snapshot(self) -> Snapshot:
        metadata = self._state.snapshot
        if self._snapshot_source is None:
            return Snapshot(metadata, b"")
        return Snapshot(metadata, self._image(metadata.index))

    # -- applied state -------------------------------------------------------------

    def applied_state(self) -> tuple[int, ConfState]:
        """(applied index, ConfState as of it); (0, empty) if nothing was applied."""
        return self._applied

    def stage_applied(self, batch: Batch, applied_index: int, conf_state: ConfState) -> None:
        """Record the applied index, in the batch of the writes that applied it."""
        self._check_batch(batch)
        if self._snapshot_source is not None:
            snapshot_index = self._snapshot_index(batch)
            if applied_index > snapshot_index:
                # The last moment the engine holds the snapshot's state.
                self._image(snapshot_index)
        batch.put(
            ColumnFamily.META,
            keys.applied_state_key(self.group_id),
            values.encode_applied_state(applied_index, conf_state),
        )
        applied = (applied_index, conf_state)

        def commit() -> None:
            self._applied = applied

        batch.on_commit(commit)

    # -- staging the log -----------------------------------------------------------

    def stage_append(self, batch: Batch, entries: list[Entry]) -> None:
        """Persist ``entries``, truncating any conflicting suffix (as ``MemoryStorage.append``)."""
        if not entries:
            return
        view = self._view(batch)
        first = view.start_index + 1
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        start, last = entries[0].index, entries[-1].index
        if start > view.last_index + 1:
            raise Unavailable(f"missing log entries: last {view.last_index}, appended at {start}")
        for entry in entries:
            batch.put(_RAFT, keys.entry_key(self.group_id, entry.index), values.encode_entry(entry))
        if last < view.last_index:
            batch.delete_range(_RAFT, *keys.entry_range(self.group_id, last + 1))
        # The cache keeps every entry staged in this batch, so that later
        # stagings into it read them from memory; it is trimmed on commit.
        cut = max(0, start - view.cache_first())
        view.cache_size -= sum(entry.size() for entry in view.cache[cut:])
        view.cache = view.cache[:cut] + entries
        view.cache_size += sum(entry.size() for entry in entries)
        view.last_index = last

    def stage_hard_state(self, batch: Batch, hard_state: HardState) -> None:
        view = self._view(batch)
        batch.put(_RAFT, keys.hard_state_key(self.group_id), values.encode_hard_state(hard_state))
        view.hard_state = hard_state

    def stage_snapshot(
        self, batch: Batch, metadata: SnapshotMetadata, image: bytes | None = None
    ) -> None:
        """Install a snapshot: drop the whole log and record ``metadata``.

        ``image`` is the received snapshot's data: kept as this snapshot's
        image once the batch commits, so it is not built again by a scan.
        """
        view = self._view(batch)
        if metadata.index < view.snapshot.index:
            raise SnapshotOutOfDate(
                f"snapshot at {metadata.index} is older than the one held at {view.snapshot.index}"
            )
        batch.delete_range(_RAFT, *keys.entry_range(self.group_id))
        self._stage_snapshot_metadata(batch, view, metadata)
        self._stage_log_start(batch, view, metadata.index, metadata.term)
        view.last_index = metadata.index
        view.cache = []
        view.cache_size = 0
        if image is not None and self._snapshot_source is not None:
            # Runs after the view's own commit hook, which resets the images.
            batch.on_commit(lambda: self._images.__setitem__(metadata.index, image))

    def stage_create_snapshot(
        self, batch: Batch, index: int, conf_state: ConfState
    ) -> SnapshotMetadata:
        """Record a snapshot the state machine took at ``index`` (which it applied).

        With a snapshot source, ``index`` must be the applied index on disk,
        and the image is built now (see the module docstring).
        """
        view = self._view(batch)
        if index <= view.snapshot.index:
            raise SnapshotOutOfDate(f"snapshot at {index} is not newer than the one held")
        if index > view.last_index:
            raise Unavailable(f"snapshot at {index} is past the last index {view.last_index}")
        metadata = SnapshotMetadata(
            index=index, term=self._term(view, index), conf_state=conf_state
        )
        if self._snapshot_source is not None:
            applied_index = self._applied[0]
            if index != applied_index:
                raise ValueError(
                    f"group {self.group_id} is at applied index {applied_index} on disk, "
                    f"so a snapshot at {index} would not match the state machine: take "
                    "snapshots at the applied index, once the batch that applied it is written"
                )
            self._images[index] = self._snapshot_source()
        self._stage_snapshot_metadata(batch, view, metadata)
        return metadata

    def stage_compact(self, batch: Batch, compact_index: int) -> None:
        """Drop the entries through ``compact_index``; a snapshot must cover them."""
        view = self._view(batch)
        if compact_index <= view.start_index:
            raise Compacted(f"already compacted through {view.start_index}")
        if compact_index > view.last_index:
            raise Unavailable(f"compact index {compact_index} is past the last {view.last_index}")
        if compact_index > view.snapshot.index:
            raise Unavailable(f"compact index {compact_index} is not covered by the snapshot")
        term = self._term(view, compact_index)
        batch.delete_range(_RAFT, *keys.entry_range(self.group_id, 0, compact_index + 1))
        self._stage_log_start(batch, view, compact_index, term)
        cut = max(0, compact_index + 1 - view.cache_first())
        view.cache_size -= sum(entry.size() for entry in view.cache[:cut])
        view.cache = view.cache[cut:]

    def bootstrap(self, voters: tuple[int, ...]) -> None:
        """Make this replica one of the group's first ``voters``, durably."""
        state = self._state
        if not state.hard_state.is_empty() or state.snapshot.index or state.last_index:
            raise AlreadyBootstrapped(f"group {self.group_id} already has Raft state here")
        metadata = bootstrap_snapshot(voters).metadata
        batch = self.engine.new_batch()
        self.stage_snapshot(batch, metadata)
        self.stage_hard_state(batch, bootstrap_hard_state())
        self.stage_applied(batch, metadata.index, metadata.conf_state)
        self.engine.write(batch, sync=True)

    # -- internals -------------------------------------------------------------------

    def _view(self, batch: Batch) -> _LogState:
        """The log as ``batch`` will leave it; made on the first staging into it."""
        self._check_batch(batch)
        if self._pending is not None:
            pending_batch, view = self._pending
            if pending_batch is batch:
                return view
            if not pending_batch.closed:
                raise StagingConflict(
                    f"group {self.group_id} already has writes in another open batch; "
                    "write or discard it first"
                )
        view = self._state.copy()

        def commit() -> None:
            self._pending = None
            self._state = view
            self._trim_cache(view)
            index = view.snapshot.index
            self._images = {index: self._images[index]} if index in self._images else {}

        batch.on_commit(commit)
        self._pending = (batch, view)
        return view

    def _snapshot_index(self, batch: Batch) -> int:
        """The snapshot's index as ``batch`` will leave it."""
        if self._pending is not None and self._pending[0] is batch:
            return self._pending[1].snapshot.index
        return self._state.snapshot.index

    def image_at(self, index: int) -> bytes:
        """The image of the snapshot at ``index``, built now if the engine holds that state."""
        return self._image(index)

    def _image(self, index: int) -> bytes:
        """The state machine's image at snapshot ``index``, built now if the engine holds it."""
        assert self._snapshot_source is not None
        image = self._images.get(index)
        if image is None:
            self._check_applied_at(index)
            image = self._images[index] = self._snapshot_source()
        return image

    def _check_applied_at(self, index: int) -> None:
        applied_index = self._applied[0]
        if applied_index != index:
            raise CorruptValue(
                f"group {self.group_id} holds no image of its snapshot at {index}, and its "
                f"state machine is at applied index {applied_index}, not at the snapshot's: "
                "a snapshot is installed with stage_applied at its index, in one batch"
            )

    def _snapshot_applied_state(self) -> None:
        """At open: make the snapshot name the state the state machine holds."""
        applied_index, conf_state = self._applied
        snapshot_index = self._state.snapshot.index
        if applied_index > snapshot_index:
            batch = self.engine.new_batch()
            self.stage_create_snapshot(batch, applied_index, conf_state)
            self.engine.write(batch, sync=False)
        else:
            self._check_applied_at(snapshot_index)

    def _check_batch(self, batch: Batch) -> None:
        if batch.engine is not self.engine:
            raise ValueError("this batch was made by another engine than the group's")

    def _trim_cache(self, state: _LogState) -> None:
        cut = 0
        size = state.cache_size
        while size > self.cache_bytes and cut < len(state.cache):
            size -= state.cache[cut].size()
            cut += 1
        if cut:
            state.cache = state.cache[cut:]
        state.cache_size = size

    def _stage_snapshot_metadata(
        self, batch: Batch, view: _LogState, metadata: SnapshotMetadata
    ) -> None:
        batch.put(
            _RAFT,
            keys.snapshot_metadata_key(self.group_id),
            values.encode_snapshot_metadata(metadata),
        )
        view.snapshot = metadata

    def _stage_log_start(self, batch: Batch, view: _LogState, index: int, term: int) -> None:
        batch.put(_RAFT, keys.log_start_key(self.group_id), values.encode_log_start(index, term))
        view.start_index, view.start_term = index, term

    def _entries(self, state: _LogState, low: int, high: int, max_size: int | None) -> list[Entry]:
        if low <= state.start_index:
            raise Compacted(f"index {low} is compacted (first is {state.start_index + 1})")
        if high > state.last_index + 1:
            raise Unavailable(f"entries up to {high - 1} asked, last is {state.last_index}")
        if low >= high:
            return []
        cache_first = state.cache_first()
        if low >= cache_first:
            return limit_size(state.cache[low - cache_first : high - cache_first], max_size)
        stored = self._read_entries(low, min(high, cache_first), max_size)
        if high <= cache_first or len(stored) < cache_first - low:
            return stored
        return limit_size(stored + state.cache[: high - cache_first], max_size)

    def _term(self, state: _LogState, index: int) -> int:
        if index < state.start_index:
            raise Compacted(f"index {index} is compacted (first is {state.start_index + 1})")
        if index > state.last_index:
            raise Unavailable(f"index {index} is past the last {state.last_index}")
        if index == state.start_index:
            return state.start_term
        cache_first = state.cache_first()
        if index >= cache_first:
            return state.cache[index - cache_first].term
        value = self.engine.get(_RAFT, keys.entry_key(self.group_id, index))
        if value is None:
            raise CorruptValue(f"group {self.group_id} has no entry {index} on disk")
        return values.decode_entry(index, value).term

    def _read_entries(self, low: int, high: int, max_size: int | None) -> list[Entry]:
        """Entries ``[low, high)`` from disk, stopping once past ``max_size`` bytes."""
        entries: list[Entry] = []
        size = 0
        expected = low
        for key, value in self.engine.scan(_RAFT, *keys.entry_range(self.group_id, low, high)):
            _, index = keys.decode_entry_key(key)
            if index != expected:
                break
            entry = values.decode_entry(index, value)
            size += entry.size()
            if entries and max_size is not None and size > max_size:
                return entries
            entries.append(entry)
            expected += 1
        if expected != high:
            raise CorruptValue(f"group {self.group_id} has no entry {expected} on disk")
        return entries

    def _load(self) -> _LogState:
        group_id = self.group_id
        engine = self.engine
        stored = engine.get(_RAFT, keys.hard_state_key(group_id))
        hard_state = EMPTY_HARD_STATE if stored is None else values.decode_hard_state(stored)
        stored = engine.get(_RAFT, keys.snapshot_metadata_key(group_id))
        snapshot = SnapshotMetadata() if stored is None else values.decode_snapshot_metadata(stored)
        stored = engine.get(_RAFT, keys.log_start_key(group_id))
        start_index, start_term = (0, 0) if stored is None else values.decode_log_start(stored)
        # Walk back from the newest entry to find the last index and fill the cache.
        last_index = start_index
        cache: list[Entry] = []
        cache_size = 0
        newest_first = engine.scan(_RAFT, *keys.entry_range(group_id), reverse=True)
        for position, (key, value) in enumerate(newest_first):
            _, index = keys.decode_entry_key(key)
            if position == 0:
                last_index = index
            if index <= start_index or index != last_index - position:
                raise CorruptValue(
                    f"group {group_id}'s log on disk has a hole or a stray entry at {index}"
                )
            entry = values.decode_entry(index, value)
            if cache_size + entry.size() > self.cache_bytes:
                break
            cache.append(entry)
            cache_size += entry.size()
        cache.reverse()
        return _LogState(
            hard_state=hard_state,
            snapshot=snapshot,
            start_index=start_index,
            start_term=start_term,
            last_index=last_index,
            cache=cache,
            cache_size=cache_size,
        )

    def _load_applied(self) -> tuple[int, ConfState]:
        stored = self.engine.get(ColumnFamily.META, keys.applied_state_key(self.group_id))
        return (0, ConfState()) if stored is None else values.decode_applied_state(stored)


def stored_groups(engine: StorageEngine) -> list[int]:
    """The groups with Raft state in ``engine`` (one seek per group, not a scan of the logs)."""
    found: list[int] = []
    start = b""
    while True:
        first = next(engine.scan(ColumnFamily.RAFT, start), None)
        if first is None:
            return found
        group_id = int.from_bytes(first[0][: keys.GROUP_KEY_SIZE], "big")
        found.append(group_id)
        end = keys.group_range(group_id)[1]
        if end is None:
            return found
        start = end
