"""The read side of Raft's stable storage, and an in-memory implementation.

Raft reads its persisted log through the ``Storage`` protocol; the runtime
writes to it (after each ``Ready``) in whatever way its backend wants. The
log held by a storage is ``[first_index() .. last_index()]``; the entry just
before ``first_index()`` is represented by the snapshot's (index, term), so
``term(first_index() - 1)`` always answers.

``MemoryStorage`` serves the deterministic simulator and unit tests; the node
has a RocksDB implementation with the same contract.
"""

from __future__ import annotations

from typing import Protocol

from shardkv.raft.errors import Compacted, SnapshotOutOfDate, Unavailable
from shardkv.raft.types import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
)

__all__ = [
    "BOOTSTRAP_INDEX",
    "MemoryStorage",
    "Storage",
    "bootstrap_hard_state",
    "bootstrap_snapshot",
    "limit_size",
]

# A group starts from a snapshot at index 1, term 1 that holds its first
# voters. No log can then start before it, so a member added later, whose log
# is empty, is always sent this (or a later) snapshot first and learns the
# configuration it is joining; replaying only the changes that added it would
# leave it believing it is alone.
BOOTSTRAP_INDEX = 1


def bootstrap_snapshot(voters: tuple[int, ...], data: bytes = b"") -> Snapshot:
    """The snapshot every first member of a group starts from."""
    metadata = SnapshotMetadata(
        index=BOOTSTRAP_INDEX, term=BOOTSTRAP_INDEX, conf_state=ConfState(voters=voters)
    )
    return Snapshot(metadata, data)


def bootstrap_hard_state() -> HardState:
    """The hard state every first member of a group starts with: the bootstrap committed."""
    return HardState(term=BOOTSTRAP_INDEX, commit=BOOTSTRAP_INDEX)


class Storage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the configuration as of the last snapshot."""
        ...

    def entries(self, low: int, high: int, max_size: int | None = None) -> list[Entry]:
        """Entries in ``[low, high)``, at least one, at most ``max_size`` bytes.

        Raises Compacted if ``low`` is before ``first_index()``.
        """
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, for ``first_index() - 1 <= index <= last_index()``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot, to send to a follower that needs it."""
        ...


def limit_size(entries: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_size`` bytes, never empty."""
    if max_size is None or not entries:
        return entries
    size = entries[0].size()
    for position in range(1, len(entries)):
        size += entries[position].size()
        if size > max_size:
            return entries[:position]
    return entries


class MemoryStorage:
    """A ``Storage`` in memory. ``_entries[0]`` is a dummy at the snapshot point."""

    def __init__(self) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self._snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    @classmethod
    def with_voters(cls, voters: tuple[int, ...]) -> MemoryStorage:
        """A storage bootstrapped as one of the group's first ``voters``."""
        storage = cls()
        storage.apply_snapshot(bootstrap_snapshot(voters))
        storage.hard_state = bootstrap_hard_state()
        return storage

    # -- Storage -----------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def entries(self, low: int, high: int, max_size: int | None = None) -> list[Entry]:
        offset = self._entries[0].index
        if low <= offset:
            raise Compacted(f"index {low} is compacted (first is {offset + 1})")
        if high > self.last_index() + 1:
            raise Unavailable(f"entries up to {high - 1} asked, last is {self.last_index()}")
        return limit_size(self._entries[low - offset : high - offset], max_size)

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise Compacted(f"index {index} is compacted (first is {offset + 1})")
        if index - offset >= len(self._entries):
            raise Unavailable(f"index {index} is past the last {self.last_index()}")
        return self._entries[index - offset].term

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writing, done by the runtime -----------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace everything with ``snapshot`` (a follower installing one)."""
        if snapshot.metadata.index < self._snapshot.metadata.index:
            raise SnapshotOutOfDate(
                f"snapshot at {snapshot.metadata.index} is older than the one held "
                f"at {self._snapshot.metadata.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(term=snapshot.metadata.term, index=snapshot.metadata.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot the application took at ``index`` (which it applied)."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(f"snapshot at {index} is not newer than the one held")
        if index > self.last_index():
            raise Unavailable(f"snapshot at {index} is past the last index {self.last_index()}")
        metadata = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf_state)
        self._snapshot = Snapshot(metadata, data)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Drop the entries through ``compact_index``; a snapshot must cover them."""
        offset = self._entries[0].index
        if compact_index <= offset:
            raise Compacted(f"already compacted through {offset}")
        if compact_index > self.last_index():
            raise Unavailable(f"compact index {compact_index} is past the last {self.last_index()}")
        if compact_index > self._snapshot.metadata.index:
            raise Unavailable(f"compact index {compact_index} is not covered by the snapshot")
        position = compact_index - offset
        dummy = Entry(term=self._entries[position].term, index=compact_index)
        self._entries = [dummy, *self._entries[position + 1 :]]

    def append(self, entries: list[Entry]) -> None:
        """Persist ``entries``, truncating any conflicting suffix first."""
        if not entries:
            return
        first = self.first_index()
        last_new = entries[-1].index
        if last_new < first:
            return
        if first > entries[0].index:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._entries[0].index
        if offset > len(self._entries):
            raise Unavailable(
                f"missing log entries: last {self.last_index()}, appended at {entries[0].index}"
            )
        self._entries = self._entries[:offset] + entries
