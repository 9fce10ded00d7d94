"""What a leader knows of each follower: matched index, next index, flow control.

A follower's progress is in one of three states:

- PROBE: we do not know where its log matches ours; send one append at a
  time and wait for its answer (or a heartbeat response) before the next.
- REPLICATE: it follows; stream appends optimistically, at most
  ``Inflights.capacity`` unacknowledged messages at a time.
- SNAPSHOT: its next entry is compacted away; send it the snapshot in chunks
  and append nothing until it has restored.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """The last index of each append sent and not yet acknowledged, in order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._indexes: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._indexes)

    def full(self) -> bool:
        return len(self._indexes) >= self.capacity

    def add(self, index: int) -> None:
        assert not self.full(), "adding to full inflights"
        self._indexes.append(index)

    def free_le(self, index: int) -> None:
        """Forget every message whose entries are all at or below ``index``."""
        while self._indexes and self._indexes[0] <= index:
            self._indexes.popleft()

    def free_first_one(self) -> None:
        if self._indexes:
            self._indexes.popleft()

    def reset(self) -> None:
        self._indexes.clear()


class Progress:
    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.is_learner = is_learner
        # PROBE: an append is out and unanswered; send no more until a reply.
        self.probe_sent = False
        # SNAPSHOT: the snapshot being sent; the offset the follower has
        # acknowledged, the offset of the next chunk to send, whether the last
        # chunk went out, and the leader's clock at the last acknowledgement.
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.snapshot_sent = 0
        self.snapshot_all_sent = False
        self.snapshot_progress_clock = 0
        # Set on any message from the follower; check-quorum reads and clears it.
        self.recent_active = False
        # The latest heartbeat stamp the follower echoed (leader leases).
        self.acked_stamp = 0
        self.inflights = Inflights(max_inflight)

    def __repr__(self) -> str:
        learner = ", learner" if self.is_learner else ""
        snapshot = ""
        if self.state == ProgressState.SNAPSHOT:
            snapshot = f", snapshot={self.pending_snapshot}"
        return (
            f"Progress({self.state.name}, match={self.match}, next={self.next}{learner}{snapshot})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.snapshot_sent = 0
        self.snapshot_all_sent = False
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int, clock: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.snapshot_progress_clock = clock

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged entries through ``index``; did match move?"""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: int, count: int) -> None:
        """An append carrying ``count`` entries up to ``last_index`` went out."""
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at ``rejected``; back off towards ``match_hint``.

        False when the rejection is stale (an answer to an older append).
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True
