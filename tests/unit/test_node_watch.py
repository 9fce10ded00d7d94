"""A group's watch stream (``shardkv.node.watch``) over a real state machine and a fake runtime."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, cast

import pytest

from shardkv.errors import NotLeader, ShardKVError
from shardkv.fsm.kv import KeyValueStateMachine
from shardkv.node import watch as watch_module
from shardkv.node.runtime import NodeRuntime
from shardkv.node.watch import in_range, watch_group
from shardkv.raft import Role
from shardkv.revisions import stamp_now
from shardkv.storage.engine import MemoryEngine
from shardkv.v1 import kv_pb2, node_pb2

# The longest a test waits for the stream (it polls every 10 ms).
WAIT = 5.0


@dataclass
class FakePeer:
    machine: KeyValueStateMachine
    role: Role = Role.LEADER
    leader_id: int = 1


class FakeRuntime:
    def __init__(self, machine: KeyValueStateMachine) -> None:
        self.the_peer = FakePeer(machine)

    async def read_barrier(self, group_id: int) -> None:
        if self.the_peer.role != Role.LEADER:
            raise NotLeader(group_id, 2)

    def peer(self, group_id: int) -> FakePeer:
        return self.the_peer


def write(machine: KeyValueStateMachine, *operations: kv_pb2.Operation) -> int:
    """Apply as a leader proposes: stamped with the clock."""
    batch = machine.engine.new_batch()
    command = kv_pb2.Command(operations=list(operations), stamp=stamp_now(time.time()))
    result = machine.apply(batch, command)
    machine.engine.write(batch, sync=False)
    return result.revision


def put(key: bytes) -> kv_pb2.Operation:
    return kv_pb2.Operation(put=kv_pb2.Put(key=key, value=b"v"))


async def group_error(error: ShardKVError) -> node_pb2.GroupError:
    return node_pb2.GroupError(not_leader=node_pb2.NotLeader(leader_id=2))


async def first(stream: Any, count: int) -> list[node_pb2.WatchBatch]:
    batches = []
    async with asyncio.timeout(WAIT):
        async for batch in stream:
            batches.append(batch)
            if len(batches) == count:
                break
    await stream.aclose()
    return batches


def test_in_range_is_etcds() -> None:
    assert in_range(b"a", b"a", b"") and not in_range(b"ab", b"a", b"")
    assert in_range(b"b", b"a", b"c") and not in_range(b"c", b"a", b"c")
    assert in_range(b"zzz", b"b", b"\x00") and not in_range(b"a", b"b", b"\x00")


async def test_changes_from_a_revision_then_as_they_apply_with_rising_progress() -> None:
    machine = KeyValueStateMachine(MemoryEngine(), 3)
    first_revision = write(machine, put(b"a/1"), put(b"b/1"))
    write(machine, put(b"a/2"))
    runtime = FakeRuntime(machine)
    request = node_pb2.WatchRequest(
        group_id=3, start_revision=first_revision, key=b"a/", range_end=b"a0"
    )
    stream = watch_group(cast(NodeRuntime, runtime), request, group_error, poll=0.01)
    batch = await stream.__anext__()
    assert [kv.key for kv in batch.events] == [b"a/1", b"a/2"], "in range only"
    progress = batch.progress
    assert progress > machine.revision
    write(machine, kv_pb2.Operation(delete=kv_pb2.Delete(key=b"a/1")))
    async with asyncio.timeout(WAIT):
        later = await stream.__anext__()
        while not later.events:
            assert later.progress >= progress
            later = await stream.__anext__()
    [deleted] = later.events
    assert (deleted.key, deleted.version) == (b"a/1", 0)
    assert deleted.mod_revision >= progress, "nothing below a progress mark comes later"
    await stream.aclose()


async def test_a_big_backlog_comes_in_whole_revisions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "_BATCH", 3)
    machine = KeyValueStateMachine(MemoryEngine(), 3)
    start = write(machine, put(b"k1"), put(b"k2"))
    write(machine, put(b"k3"), put(b"k4"))
    write(machine, *(put(b"m%d" % n) for n in range(5)))  # one revision over the batch
    runtime = FakeRuntime(machine)
    request = node_pb2.WatchRequest(
        group_id=3, start_revision=start, key=b"\x00", range_end=b"\x00"
    )
    stream = watch_group(cast(NodeRuntime, runtime), request, group_error, poll=0.01)
    batches = await first(stream, 3)
    assert [len(batch.events) for batch in batches] == [2, 2, 5]
    seen = [kv.key for batch in batches for kv in batch.events]
    assert seen == [b"k1", b"k2", b"k3", b"k4", *(b"m%d" % n for n in range(5))]
    for batch, after in itertools.pairwise(batches):
        assert all(kv.mod_revision >= batch.progress for kv in after.events)


async def test_a_compacted_start_and_a_lost_leadership_end_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shardkv.fsm.kv.EVENT_LOG_BYTES", 200)
    machine = KeyValueStateMachine(MemoryEngine(), 3)
    start = write(machine, put(b"old"))
    for n in range(20):
        write(machine, put(b"key%d" % n))
    runtime = FakeRuntime(machine)
    request = node_pb2.WatchRequest(group_id=3, start_revision=start, key=b"old")
    batches = await first(watch_group(cast(NodeRuntime, runtime), request, group_error), 5)
    assert len(batches) == 1 and batches[0].compact_revision == machine.event_floor > start
    runtime.the_peer.role = Role.FOLLOWER
    request.start_revision = machine.event_floor
    batches = await first(watch_group(cast(NodeRuntime, runtime), request, group_error), 5)
    assert len(batches) == 1 and batches[0].error.not_leader.leader_id == 2
