"""The unstable tail of the log: entries (and maybe a snapshot) not yet persisted.

Entries live here from the moment they are appended (or received) until the
runtime reports them persisted through ``RawNode.advance``. The tail starts at
``offset``; a pending snapshot, when there is one, sits just before it.
"""

from __future__ import annotations

from shardkv.raft.types import Entry, Snapshot

__all__ = ["Unstable"]


class Unstable:
    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        # Entries before offset + offset_in_progress were handed to the runtime
        # in a Ready and are being written; they are not handed out twice.
        self.in_progress = 0
        self.snapshot_in_progress = False

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == index:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def next_entries(self) -> list[Entry]:
        """Entries not yet handed to the runtime for writing."""
        return self.entries[self.in_progress :]

    def next_snapshot(self) -> Snapshot | None:
        if self.snapshot is None or self.snapshot_in_progress:
            return None
        return self.snapshot

    def accept_in_progress(self) -> None:
        self.in_progress = len(self.entries)
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, index: int, term: int) -> None:
        """Entries through ``index`` (of ``term``) are persisted: forget them.

        A mismatching term means the entry was replaced by a newer leader's
        while being written; the newer one is still unstable, so keep it.
        """
        known = self.maybe_term(index)
        if known is None or known != term or index < self.offset:
            return
        drop = index + 1 - self.offset
        self.entries = self.entries[drop:]
        self.offset = index + 1
        self.in_progress = max(0, self.in_progress - drop)

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.metadata.index + 1
        self.entries = []
        self.in_progress = 0
        self.snapshot = snapshot
        self.snapshot_in_progress = False

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first <= self.offset:
            # Replaces the whole tail; the persisted log is truncated when
            # the runtime writes these.
            self.offset = first
            self.entries = list(entries)
            self.in_progress = 0
        else:
            keep = first - self.offset
            self.entries = self.entries[:keep] + list(entries)
            self.in_progress = min(self.in_progress, keep)

    def slice(self, low: int, high: int) -> list[Entry]:
        return self.entries[low - self.offset : high - self.offset]
