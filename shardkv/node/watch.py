"""A group's changes as a stream (``Node.Watch``): its event log, then changes as they apply.

The state machine logs every change by revision (``KeyValueStateMachine.events``).
A watch of one group, served at its leader, repeats every ``poll`` seconds:

1. take ``mark``, this node's clock as a revision (``clock_revision``:
   low bits 0, no group's write has it);
2. a read barrier: the group has applied every entry its log held when the
   barrier began; every write that was not in the log then gets a revision
   above ``mark`` (``shardkv.revisions``: the stamp of a later proposal is at
   least the clock, and the clock has passed ``mark``);
3. send the changes from the next revision on that are in the log now, and
   ``progress``: above ``mark`` and every revision sent. Every change of the
   group below ``progress`` has then been sent, which is what lets a router
   merge the streams of every group in revision order.

A start below the log's floor (dropped to keep its size, or never logged:
a snapshot from before it) is answered with ``compact_revision`` and the
stream ends. Errors (not the leader, the group gone) end the stream after a
batch that carries them; the caller starts again elsewhere from its last
progress, so no change is lost or sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from shardkv.errors import NotLeader, ShardKVError
from shardkv.node.runtime import NodeRuntime
from shardkv.raft import Role
from shardkv.revisions import clock_revision
from shardkv.v1 import kv_pb2, node_pb2

__all__ = ["DEFAULT_POLL", "in_range", "watch_group"]

DEFAULT_POLL = 0.05
# Changes read from the log per batch.
_BATCH = 1000


def in_range(key: bytes, start: bytes, range_end: bytes) -> bool:
    """Whether ``key`` is watched: ``start`` alone (no ``range_end``), else
    ``[start, range_end)``, where ``range_end`` ``\\0`` means to the end."""
    if not range_end:
        return key == start
    if range_end == b"\x00":
        return key >= start
    return start <= key < range_end


async def watch_group(
    runtime: NodeRuntime,
    request: node_pb2.WatchRequest,
    group_error: Callable[[ShardKVError], Awaitable[node_pb2.GroupError]],
    poll: float = DEFAULT_POLL,
) -> AsyncIterator[node_pb2.WatchBatch]:
    """The batches of one watch (see the module docstring)."""
    group_id = request.group_id
    next_revision = request.start_revision
    while True:
        mark = clock_revision()
        try:
            await runtime.read_barrier(group_id)
            peer = runtime.peer(group_id)
            if peer.role != Role.LEADER:
                raise NotLeader(group_id, peer.leader_id)
        except ShardKVError as error:
            yield node_pb2.WatchBatch(error=await group_error(error))
            return
        machine = peer.machine
        if next_revision < machine.event_floor:
            yield node_pb2.WatchBatch(compact_revision=machine.event_floor)
            return
        found = machine.events(next_revision, _BATCH + 1)
        if len(found) > _BATCH:
            # Up to the last whole revision read: the rest comes next time.
            last = found[-1][0]
            if found[0][0] == last:  # one write of many changes: all of it at once
                found = [(r, kv) for r, kv in machine.events(last, 1 << 30) if r == last]
                progress = last + 1
            else:
                found = [(revision, kv) for revision, kv in found if revision < last]
                progress = last
        else:
            progress = max(mark, found[-1][0] + 1 if found else 0, next_revision)
        events: list[kv_pb2.KeyValue] = [
            kv for _, kv in found if in_range(kv.key, request.key, request.range_end)
        ]
        yield node_pb2.WatchBatch(events=events, progress=progress)
        next_revision = progress
        if len(found) < _BATCH:
            await asyncio.sleep(poll)
