"""Linearizable reads by ReadIndex (Raft dissertation §6.4).

The leader records the commit index when a read arrives, confirms it is still
leader by a round of heartbeats carrying the read's context, and once a
quorum has answered, every read queued up to that one may be served when the
application has applied through its recorded index.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["PendingRead", "ReadOnly"]


@dataclass(slots=True)
class PendingRead:
    index: int
    context: bytes
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._pending: OrderedDict[bytes, PendingRead] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def add_request(self, index: int, context: bytes, self_id: int) -> None:
        if context in self._pending:
            return
        self._pending[context] = PendingRead(index=index, context=context, acks={self_id})

    def receive_ack(self, from_id: int, context: bytes) -> set[int] | None:
        read = self._pending.get(context)
        if read is None:
            return None
        read.acks.add(from_id)
        return read.acks

    def advance(self, context: bytes) -> list[PendingRead]:
        """Release every read queued up to and including ``context``'s."""
        if context not in self._pending:
            return []
        released: list[PendingRead] = []
        while self._pending:
            key, read = self._pending.popitem(last=False)
            released.append(read)
            if key == context:
                break
        return released

    def last_pending_context(self) -> bytes | None:
        return next(reversed(self._pending)) if self._pending else None

    def reset(self) -> None:
        self._pending.clear()
