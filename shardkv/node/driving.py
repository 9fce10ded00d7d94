"""What the meta leader's drivers share: one task per unfinished item of the cluster map.

A ``MapDriver`` runs on every node and acts only where this node leads the
meta group. Every ``interval`` seconds, and whenever the agent takes a new
map, it looks at the map:
each unfinished item (``pending``: a ring change's move, a replica move) gets
one task, which reads the item from the map, does its next step
(``advance``) and loops until the item is gone or finished. The map is the
only memory that matters: a new leader starts tasks from what it says.

- **Fencing token**: the meta group's term when this node began to lead it.
  Steps carry it where the groups can check it; a change of term cancels
  every task and starts over under the new token.
- **Failures**: a step that raises is logged, its reason written into the
  item (``record_stuck``, so ``shardkv status`` can say why it does not
  progress), and retried after a back-off growing to ``_MAX_RETRY`` seconds.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Hashable
from typing import Generic, TypeVar

from shardkv.errors import ShardKVError
from shardkv.node.cluster import META_GROUP, ClusterAgent
from shardkv.node.passes import Passes
from shardkv.node.resolver import NodeGroupCalls
from shardkv.raft import Role
from shardkv.v1 import cluster_pb2

__all__ = ["MapDriver", "StepFailed"]

_log = logging.getLogger(__name__)

_FIRST_RETRY = 0.1
_MAX_RETRY = 5.0

_Key = TypeVar("_Key", bound=Hashable)
_Item = TypeVar("_Item")


class StepFailed(ShardKVError):
    """A step did not apply; the item is retried from its recorded phase."""


class MapDriver(Passes, Generic[_Key, _Item]):
    name = "driver"

    def __init__(self, agent: ClusterAgent, calls: NodeGroupCalls, *, interval: float = 0.2):
        super().__init__(interval)
        self.agent = agent
        self.runtime = agent.runtime
        self.calls = calls
        self.token = 0
        self._tasks: dict[_Key, asyncio.Task[None]] = {}
        # A new item (a ring change just written) starts at once.
        agent.on_learn(self.wake)

    # -- what a driver says --------------------------------------------------------------

    @abc.abstractmethod
    def pending(self, cluster_map: cluster_pb2.ClusterMap) -> list[_Key]:
        """The unfinished items of the map."""

    @abc.abstractmethod
    def item(self, cluster_map: cluster_pb2.ClusterMap, key: _Key) -> _Item | None:
        """The item as the map says now; None once it is gone or finished."""

    @abc.abstractmethod
    async def advance(self, key: _Key, item: _Item) -> None:
        """Do the item's next step and record it in the map."""

    @abc.abstractmethod
    async def record_stuck(self, key: _Key, why: str) -> None:
        """Write why the item does not progress into the map."""

    async def settle(self, cluster_map: cluster_pb2.ClusterMap) -> None:
        """Called on each pass with nothing pending (a driver may close its work)."""

    def forget(self) -> None:
        """Drop what the tasks kept in memory (they were cancelled)."""

    # -- the loop -----------------------------------------------------------------------

    def describe(self) -> str:
        return f"node {self.runtime.node_id}: {self.name} driver"

    async def stop(self) -> None:
        self.halt()
        await self._cancel()

    async def _cancel(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.forget()

    async def step(self) -> None:
        meta = self.runtime.peers.get(META_GROUP)
        if meta is None or meta.role != Role.LEADER:
            if self._tasks:
                await self._cancel()
            return
        term = meta.raw.raft.term
        if term != self.token:
            await self._cancel()
            self.token = term
        for key, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[key]
        cluster_map = self.agent.map
        if cluster_map is None:
            return
        pending = self.pending(cluster_map)
        if not pending:
            await self.settle(cluster_map)
            return
        for key in pending:
            if key not in self._tasks:
                self._tasks[key] = asyncio.create_task(self._drive(key), name=f"{self.name}-{key}")

    async def _drive(self, key: _Key) -> None:
        failures = 0
        while True:
            cluster_map = self.agent.map
            item = self.item(cluster_map, key) if cluster_map is not None else None
            if item is None:
                self.wake()  # the pass may have work to close
                return
            steps = self.runtime.metrics.driver_steps
            try:
                await self.advance(key, item)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                steps.labels(self.name, "failed").inc()
                failures += 1
                why = f"{type(error).__name__}: {error}"
                _log.warning(
                    "node %d: %s %s: %s (attempt %d)",
                    self.runtime.node_id,
                    self.name,
                    key,
                    why,
                    failures,
                    extra={"node_id": self.runtime.node_id},
                )
                with contextlib.suppress(Exception):
                    await self.record_stuck(key, why[:500])
                await asyncio.sleep(min(_MAX_RETRY, _FIRST_RETRY * 2 ** min(failures, 8)))
            else:
                steps.labels(self.name, "done").inc()
                failures = 0
