"""The simulated network: delays, drops, duplicates, reordering and cuts.

Messages are delivered after 1..``max_delay`` steps, each delay drawn on its
own, so messages between two nodes overtake one another. A cut link drops
everything sent over it in that direction; a partition is a set of cuts.
Tests may add a ``drop_filter`` that drops any message it returns True for.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable

from shardkv.raft import Message

__all__ = ["Network"]


class Network:
    def __init__(self, rng: random.Random, max_delay: int = 1) -> None:
        self.rng = rng
        self.max_delay = max_delay
        self.drop_rate = 0.0
        self.duplicate_rate = 0.0
        self.cuts: set[tuple[int, int]] = set()
        self.drop_filter: Callable[[Message], bool] | None = None
        self._queue: list[tuple[int, int, Message]] = []
        self._sequence = 0
        self.sent = 0
        self.dropped = 0

    def send(self, now: int, message: Message) -> None:
        self.sent += 1
        if (message.from_, message.to) in self.cuts or (
            self.drop_filter is not None and self.drop_filter(message)
        ):
            self.dropped += 1
            return
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self.dropped += 1
            return
        copies = 2 if self.duplicate_rate and self.rng.random() < self.duplicate_rate else 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.max_delay) if self.max_delay > 1 else 1
            self._sequence += 1
            heapq.heappush(self._queue, (now + delay, self._sequence, message))

    def due(self, now: int) -> list[Message]:
        delivered: list[Message] = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, _, message = heapq.heappop(queue)
            if (message.from_, message.to) in self.cuts:
                self.dropped += 1
                continue
            delivered.append(message)
        return delivered

    def partition(self, *sides: Iterable[int]) -> None:
        """Cut every link between nodes on different sides, both ways."""
        groups = [set(side) for side in sides]
        for position, side in enumerate(groups):
            for other in groups[position + 1 :]:
                for a in side:
                    for b in other:
                        self.cuts.add((a, b))
                        self.cuts.add((b, a))

    def isolate(self, node_id: int, others: Iterable[int]) -> None:
        self.partition([node_id], [other for other in others if other != node_id])

    def cut_one_way(self, from_id: int, to_id: int) -> None:
        self.cuts.add((from_id, to_id))

    def heal(self) -> None:
        self.cuts.clear()

    def in_flight(self) -> int:
        return len(self._queue)
