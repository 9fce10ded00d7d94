"""The Raft log as Raft sees it: persisted storage plus the unstable tail.

Invariants: ``applied <= committed <= last_index()``, and
``storage.first_index() - 1 <= committed``. Raises nothing for indexes inside
the log; ``term`` answers None for an index that is compacted or beyond it.
"""

from __future__ import annotations

from shardkv.raft.errors import Compacted, Unavailable
from shardkv.raft.storage import Storage, limit_size
from shardkv.raft.types import Entry, Snapshot
from shardkv.raft.unstable import Unstable

__all__ = ["RaftLog"]


class RaftLog:
    def __init__(self, storage: Storage, max_applying_size: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(offset=last + 1)
        self.committed = first - 1
        self.applied = first - 1
        # Committed entries handed out in a Ready but not yet reported applied.
        self.applying = first - 1
        self.max_applying_size = max_applying_size

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, last={self.last_index()})"
        )

    # -- indexes and terms -------------------------------------------------

    def first_index(self) -> int:
        first = self.unstable.maybe_first_index()
        return first if first is not None else self.storage.first_index()

    def last_index(self) -> int:
        last = self.unstable.maybe_last_index()
        return last if last is not None else self.storage.last_index()

    def term(self, index: int) -> int | None:
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        if index < self.first_index() - 1 or index > self.last_index():
            return None
        try:
            return self.storage.term(index)
        except (Compacted, Unavailable):
            return None

    def last_term(self) -> int:
        term = self.term(self.last_index())
        assert term is not None, "the last entry's term is always known"
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """§5.4.1: is a candidate's log at least as up to date as ours?"""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # -- appending -----------------------------------------------------------

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: list[Entry]
    ) -> int | None:
        """Append a leader's entries that follow (index, log_term); None if they do not fit."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            assert conflict > self.committed, (
                f"entry {conflict} conflicts with the committed log (committed {self.committed})"
            )
            self.append(entries[conflict - (index + 1) :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, entries: list[Entry]) -> int:
        if not entries:
            return self.last_index()
        assert entries[0].index - 1 >= self.committed, "cannot overwrite committed entries"
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry that is new or disagrees with ours, or 0."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (i, t) with i <= index whose term t <= ``term``.

        Fast backtracking (§5.3 "the follower can include the term of the
        conflicting entry"): every entry between the result and ``index``
        has a term larger than ``term`` and so cannot match the other log.
        """
        while index > 0:
            our_term = self.term(index)
            if our_term is None:
                return index, 0
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    # -- committing and applying -----------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), (
                f"commit {index} is past the last index {self.last_index()}"
            )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """§5.4.2: only an entry of the current term commits by counting replicas."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def has_next_committed(self) -> bool:
        return self.committed > self.applying and self.applying + 1 >= self.first_index()

    def next_committed(self) -> list[Entry]:
        """Committed entries not yet handed out to the application.

        Some may still be in the unstable tail: they go out in the same Ready
        as their write, and the runtime persists before it applies.
        """
        if not self.has_next_committed():
            return []
        low = max(self.applying + 1, self.first_index())
        return self.slice(low, self.committed + 1, self.max_applying_size)

    def accept_applying(self, index: int) -> None:
        self.applying = max(self.applying, index)

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        assert self.applied <= index <= self.committed, (
            f"applied {index} out of range [{self.applied}, {self.committed}]"
        )
        self.applied = index
        self.applying = max(self.applying, index)

    def slice(self, low: int, high: int, max_size: int | None = None) -> list[Entry]:
        """Entries in ``[low, high)``; raises Compacted below the first index."""
        if low >= high:
            return []
        if low < self.first_index():
            raise Compacted(f"index {low} is compacted")
        assert high <= self.last_index() + 1, f"slice up to {high - 1} past {self.last_index()}"
        result: list[Entry] = []
        offset = self.unstable.offset
        if low < offset:
            result = self.storage.entries(low, min(high, offset), max_size)
            if len(result) < min(high, offset) - low:
                return result
        if high > offset:
            tail = self.unstable.slice(max(low, offset), high)
            result = result + tail if result else tail
        return limit_size(result, max_size)

    def entries_from(self, index: int, max_size: int | None) -> list[Entry]:
        if index > self.last_index():
            return []
        return self.slice(index, self.last_index() + 1, max_size)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        self.committed = snapshot.metadata.index
        # Everything up to the snapshot reaches the application through it.
        self.applying = snapshot.metadata.index
        self.unstable.restore(snapshot)

    # -- persistence -------------------------------------------------------

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snapshot_to(self, index: int) -> None:
        self.unstable.stable_snapshot_to(index)
