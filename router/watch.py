"""A watch across every group: each group's changes (``Node.Watch``), merged in revision order.

``MergedWatch`` follows one group stream per group of the ring. Each stream
sends a group's changes in revision order with a ``progress`` mark: every
change of the group below it has been sent (``shardkv.node.watch``). The
merge holds changes back until every group's progress has passed them, then
hands them out in revision order: ``events()`` yields batches whose
revisions only rise, across groups. So a client that resumes a watch from
the revision after the last one it saw (what etcd's clients do when a
stream breaks or a router restarts) misses nothing and sees nothing twice.

A stream that breaks (its leader changed or died, a node restarted) starts
again at another replica from the group's last progress: no change is lost
or repeated. The changes of one key come in its revision order, also across
a move to another group (revisions of a key rise across moves).

Ring changes: the groups are the ring's when the watch starts; a group
added later is followed from the watch's start revision as soon as this
router learns of it. Its changes below the merge's progress by then (there
can be some, written before this router learned the new ring) are handed
out at once: not lost, in order per key, but behind changes of other
groups with higher revisions. A group that leaves the ring is dropped once
its stream says it is gone.

A start revision below a group's log floor ends the watch with
``Compacted`` (the floor to start from instead).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio

from router.groups import backoff
from router.topology import Topology
from shardkv.v1 import kv_pb2, node_pb2

__all__ = ["Compacted", "MergedWatch"]

_log = logging.getLogger(__name__)

# How long one group stream may stay silent before it is started again elsewhere.
_SILENCE = 5.0


class Compacted(Exception):
    def __init__(self, revision: int) -> None:
        super().__init__(f"the watch's start is compacted; the oldest revision kept is {revision}")
        self.revision = revision


@dataclass
class _Group:
    progress: int
    task: asyncio.Task[None] | None = None
    gone: bool = False


@dataclass(order=True)
class _Held:
    revision: int
    order: int
    kv: kv_pb2.KeyValue = field(compare=False)


class MergedWatch:
    def __init__(
        self, topology: Topology, start_revision: int, key: bytes, range_end: bytes
    ) -> None:
        self.topology = topology
        self.start_revision = start_revision
        self.key = key
        self.range_end = range_end
        self._groups: dict[int, _Group] = {}
        self._held: list[_Held] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self._failure: BaseException | None = None
        # Revisions below it are handed out (the merge's progress).
        self.progress = start_revision

    async def close(self) -> None:
        tasks = [g.task for g in self._groups.values() if g.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _follow_new_groups(self) -> None:
        """Start following the groups of the ring not followed yet."""
        ring = self.topology.ring
        if ring is None:
            return
        for group_id in ring.groups:
            if group_id not in self._groups:
                group = self._groups[group_id] = _Group(progress=self.start_revision)
                group.task = asyncio.create_task(
                    self._follow(group_id, group), name=f"router-watch-group-{group_id}"
                )

    async def events(self) -> AsyncIterator[list[kv_pb2.KeyValue]]:
        """Batches of changes, in revision order (see the module docstring)."""
        await self.topology.ready()
        self._follow_new_groups()
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._failure is not None:
                raise self._failure
            self._follow_new_groups()
            live = [g.progress for g in self._groups.values() if not g.gone]
            if not live:
                continue
            merged = min(live)
            ready: list[kv_pb2.KeyValue] = []
            while self._held and self._held[0].revision < merged:
                ready.append(heapq.heappop(self._held).kv)
            self.progress = max(self.progress, merged)
            if ready:
                yield ready

    async def _follow(self, group_id: int, group: _Group) -> None:
        request = node_pb2.WatchRequest(group_id=group_id, key=self.key, range_end=self.range_end)
        for attempt in itertools.count():
            node_id = self.topology.next_candidate(group_id)
            stub = self.topology.stub(node_id) if node_id is not None else None
            if node_id is None or stub is None:
                if self.topology.ring is not None and group_id not in self.topology.ring.groups:
                    group.gone = True
                    self._changed.set()
                    return
                self.topology.refresh()
                await asyncio.sleep(backoff(attempt))
                continue
            request.start_revision = group.progress
            try:
                await self._stream(group_id, node_id, group, stub.Watch(request))
            except grpc.aio.AioRpcError as error:
                _log.debug("watch of group %d at node %d: %s", group_id, node_id, error.code())
                self.topology.failed(group_id, node_id)
            except TimeoutError:
                self.topology.failed(group_id, node_id)
            except Compacted as compacted:
                self._failure = compacted
                self._changed.set()
                return
            except Exception as error:  # the watch ends, saying why
                self._failure = error
                self._changed.set()
                return
            if group.gone:
                self._changed.set()
                return
            await asyncio.sleep(backoff(attempt))

    async def _stream(
        self,
        group_id: int,
        node_id: int,
        group: _Group,
        call: grpc.aio.UnaryStreamCall[node_pb2.WatchRequest, node_pb2.WatchBatch],
    ) -> None:
        try:
            iterator = call.__aiter__()
            while True:
                async with asyncio.timeout(_SILENCE):
                    try:
                        batch = await iterator.__anext__()
                    except StopAsyncIteration:
                        return
                if batch.HasField("error"):
                    self._refused(group_id, node_id, group, batch.error)
                    return
                if batch.compact_revision:
                    raise Compacted(batch.compact_revision)
                self.topology.leader_is(group_id, node_id)
                for kv in batch.events:
                    if kv.mod_revision >= group.progress:  # never twice
                        heapq.heappush(self._held, _Held(kv.mod_revision, next(self._order), kv))
                group.progress = max(group.progress, batch.progress)
                self._changed.set()
        finally:
            call.cancel()

    def _refused(
        self, group_id: int, node_id: int, group: _Group, error: node_pb2.GroupError
    ) -> None:
        kind = error.WhichOneof("kind")
        if kind == "not_leader" and error.not_leader.leader_id:
            self.topology.leader_is(group_id, error.not_leader.leader_id)
            return
        self.topology.failed(group_id, node_id)
        if kind == "unknown_group":
            self.topology.refresh()
            ring = self.topology.ring
            if ring is not None and group_id not in ring.groups:
                group.gone = True
