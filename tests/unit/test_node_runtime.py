"""The multi-raft runtime in one process: 3 nodes, several groups, memory engines.

Time is the test's: each step makes one tick due on every node and runs one
round everywhere, then lets the memory network deliver. No wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from shardkv.errors import NotLeader, OutcomeUnknown, ProposalFailed
from shardkv.node.peer import Peer, PeerOptions
from shardkv.node.runtime import NodeRuntime
from shardkv.node.transport_memory import MemoryNetwork, MemoryTransport
from shardkv.raft import Role
from shardkv.storage import GroupStorage, MemoryDisk, MemoryEngine
from shardkv.v1 import kv_pb2
from tests.unit.engines import replayed

NODES = (1, 2, 3)
GROUPS = (1, 2, 3, 4)
OPTIONS = PeerOptions(election_ticks=10, heartbeat_ticks=1)
# Snapshots every few entries, with no log kept behind them.
COMPACTING = PeerOptions(
    election_ticks=10,
    heartbeat_ticks=1,
    snapshot_interval=5,
    compaction_lag=0,
    snapshot_chunk_size=64,
)


@dataclass
class Node:
    node_id: int
    disk: MemoryDisk
    engine: MemoryEngine
    transport: MemoryTransport
    runtime: NodeRuntime


@dataclass
class LocalCluster:
    network: MemoryNetwork
    options: PeerOptions = OPTIONS
    nodes: dict[int, Node] = field(default_factory=dict)
    disks: dict[int, MemoryDisk] = field(default_factory=dict)

    def start(self, node_id: int, *, bootstrap: bool) -> Node:
        disk = self.disks.setdefault(node_id, MemoryDisk())
        engine = MemoryEngine(disk)
        if bootstrap:
            for group_id in GROUPS:
                GroupStorage(engine, group_id).bootstrap(NODES)
        peers = {
            group_id: Peer(engine, group_id, node_id, self.options, seed=node_id * 100 + group_id)
            for group_id in GROUPS
        }
        transport = MemoryTransport(node_id, self.network)
        transport.update_peers({other: f"node-{other}" for other in NODES})
        runtime = NodeRuntime(node_id, engine, transport, peers)
        node = Node(node_id, disk, engine, transport, runtime)
        self.nodes[node_id] = node
        return node

    async def crash(self, node_id: int) -> None:
        node = self.nodes.pop(node_id)
        node.runtime.stop()
        await node.transport.close()
        node.engine.close()

    async def step(self, count: int = 1) -> None:
        for _ in range(count):
            for node in list(self.nodes.values()):
                node.runtime.tick()
            for node in list(self.nodes.values()):
                await node.runtime.round()
            # Let the memory network deliver what the round flushed.
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    def leader(self, group_id: int) -> Peer | None:
        for node in self.nodes.values():
            peer = node.runtime.peers[group_id]
            if peer.raw.raft.role == Role.LEADER:
                return peer
        return None

    async def elect_all(self, bound: int = 200) -> dict[int, Peer]:
        for _ in range(bound):
            leaders = {group_id: self.leader(group_id) for group_id in GROUPS}
            if all(leader is not None for leader in leaders.values()):
                return {g: p for g, p in leaders.items() if p is not None}
            await self.step()
        raise AssertionError("not every group elected a leader")

    async def settle(self, future: asyncio.Future[object], bound: int = 200) -> object:
        for _ in range(bound):
            if future.done():
                return future.result()
            await self.step()
        raise AssertionError("the request did not settle")


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(MemoryNetwork())
    yield local


def put(key: bytes, value: bytes, client_id: int = 0, seq: int = 0) -> kv_pb2.Command:
    return kv_pb2.Command(
        client_id=client_id,
        seq=seq,
        operations=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))],
    )


async def start_all(cluster: LocalCluster) -> None:
    for node_id in NODES:
        cluster.start(node_id, bootstrap=True)


async def test_every_group_elects_and_commits(cluster: LocalCluster) -> None:
    await start_all(cluster)
    leaders = await cluster.elect_all()
    results = {}
    for group_id, leader in leaders.items():
        runtime = cluster.nodes[leader.node_id].runtime
        future = runtime.propose(
            group_id, put(b"k", b"group-%d" % group_id, client_id=9, seq=group_id)
        )
        results[group_id] = await cluster.settle(future)
    await cluster.step(5)
    for group_id in GROUPS:
        assert isinstance(results[group_id], kv_pb2.CommandResult)
        for node in cluster.nodes.values():
            kv = node.runtime.peers[group_id].machine.get(b"k")
            assert kv is not None and kv.value == b"group-%d" % group_id


async def test_one_synced_write_per_round_for_all_groups(cluster: LocalCluster) -> None:
    await start_all(cluster)
    leaders = await cluster.elect_all()
    # Put every group's leader on node 1 so one round carries all groups.
    for leader in leaders.values():
        if leader.node_id != 1:
            leader.raw.transfer_leadership(1)
    for _ in range(100):
        await cluster.step()
        if all(cluster.leader(g) is not None and cluster.leader(g).node_id == 1 for g in GROUPS):  # type: ignore[union-attr]
            break
    runtime = cluster.nodes[1].runtime
    before = runtime.stats.synced_writes, runtime.stats.rounds
    futures = [runtime.propose(g, put(b"a", b"%d" % i)) for g in GROUPS for i in range(10)]
    await runtime.round()
    after = runtime.stats.synced_writes, runtime.stats.rounds
    assert after[1] - before[1] == 1
    assert after[0] - before[0] == 1, "40 proposals over 4 groups, one fsync"
    for future in futures:
        await cluster.settle(future)


async def test_applied_listeners_are_called_after_rounds_that_applied_their_group(
    cluster: LocalCluster,
) -> None:
    await start_all(cluster)
    leaders = await cluster.elect_all()
    await cluster.step(3)
    follower = next(n for n in NODES if n != leaders[1].node_id)
    calls: dict[int, int] = {1: 0, 2: 0}
    runtime = cluster.nodes[follower].runtime
    # Whether the follower's state machine holds the write when its listener runs.
    held: list[bool] = []
    for group_id in calls:
        runtime.on_applied(
            group_id, lambda group_id=group_id: calls.__setitem__(group_id, calls[group_id] + 1)
        )
    runtime.on_applied(1, lambda: held.append(runtime.peers[1].machine.get(b"k") is not None))
    await cluster.step(3)  # heartbeats only: nothing applied
    assert calls == {1: 0, 2: 0}
    leader_runtime = cluster.nodes[leaders[1].node_id].runtime
    await cluster.settle(leader_runtime.propose(1, put(b"k", b"v")))
    await cluster.step(3)  # the follower learns the commit and applies it
    assert calls[1] >= 1, "the follower applied group 1's entry"
    assert calls[2] == 0, "group 2 applied nothing"
    assert held and all(held), "called once the entry is applied, not when it is appended"


async def test_a_listener_that_raises_does_not_end_the_rounds(cluster: LocalCluster) -> None:
    await start_all(cluster)
    leaders = await cluster.elect_all()
    runtime = cluster.nodes[leaders[1].node_id].runtime
    later: list[int] = []

    def broken() -> None:
        raise RuntimeError("a listener's bug")

    runtime.on_applied(1, broken)
    runtime.on_applied(1, lambda: later.append(1))
    for seq in (1, 2):  # the second write applies only if rounds go on after the first
        await cluster.settle(runtime.propose(1, put(b"k", b"%d" % seq, client_id=7, seq=seq)))
    assert len(later) >= 2, "the listeners after the broken one are called too"


async def test_follower_refuses_with_a_leader_hint(cluster: LocalCluster) -> None:
    await start_all(cluster)
    leaders = await cluster.elect_all()
    leader = leaders[1]
    follower = next(n for n in NODES if n != leader.node_id)
    await cluster.step(3)
    with pytest.raises(NotLeader) as refused:
        cluster.nodes[follower].runtime.propose(1, put(b"k", b"v"))
    assert refused.value.leader_id == leader.node_id


async def test_read_barrier_then_read_sees_every_acknowledged_write(cluster: LocalCluster) -> None:
    await start_all(cluster)
    leaders = await cluster.elect_all()
    leader = leaders[2]
    runtime = cluster.nodes[leader.node_id].runtime
    await cluster.settle(runtime.propose(2, put(b"x", b"1")))
    await cluster.settle(runtime.read_barrier(2))
    kv = leader.machine.get(b"x")
    assert kv is not None and kv.value == b"1"


async def test_restart_of_every_node_keeps_acknowledged_writes(cluster: LocalCluster) -> None:
    await start_all(cluster)
    leaders = await cluster.elect_all()
    for group_id, leader in leaders.items():
        runtime = cluster.nodes[leader.node_id].runtime
        for i in range(5):
            await cluster.settle(runtime.propose(group_id, put(b"k%d" % i, b"v%d" % i, 1, i + 1)))
    for node_id in NODES:
        await cluster.crash(node_id)
    for node_id in NODES:
        cluster.start(node_id, bootstrap=False)
    leaders = await cluster.elect_all()
    for group_id, leader in leaders.items():
        runtime = cluster.nodes[leader.node_id].runtime
        await cluster.settle(runtime.read_barrier(group_id))
        assert [kv.value for kv in leader.machine.scan()] == [b"v%d" % i for i in range(5)]
        # A retry of the last write is recognised after the restart.
        retry = await cluster.settle(runtime.propose(group_id, put(b"k4", b"v4", 1, 5)))
        assert isinstance(retry, kv_pb2.CommandResult)
        kv = leader.machine.get(b"k4")
        assert kv is not None and kv.version == 1, "the retry did not apply again"


async def test_leader_crash_under_load_loses_no_acknowledged_write(cluster: LocalCluster) -> None:
    await start_all(cluster)
    leaders = await cluster.elect_all()
    victim = leaders[1].node_id
    runtime = cluster.nodes[victim].runtime
    acknowledged: dict[bytes, bytes] = {}
    pending = []
    for i in range(20):
        key, value = b"k%d" % i, b"v%d" % i
        pending.append((key, value, runtime.propose(1, put(key, value, 3, i + 1))))
        await cluster.step()
    for key, value, future in pending:
        if future.done() and not future.exception():
            acknowledged[key] = value
    assert acknowledged, "some writes must have been acknowledged before the crash"
    await cluster.crash(victim)
    for _ in range(300):
        await cluster.step()
        leader = cluster.leader(1)
        if leader is not None and leader.node_id != victim:
            break
    leader = cluster.leader(1)
    assert leader is not None
    await cluster.settle(cluster.nodes[leader.node_id].runtime.read_barrier(1))
    for key, value in acknowledged.items():
        kv = leader.machine.get(key)
        assert kv is not None and kv.value == value


async def wipe_a_follower(cluster: LocalCluster) -> tuple[Peer, int]:
    """Start the cluster and write thirty keys to group 1, its leader's log
    compacted behind them; then a follower's data dir is lost and it starts
    again, empty: it can catch up only by a snapshot. Returns group 1's leader
    and the wiped node's id."""
    await start_all(cluster)
    leaders = await cluster.elect_all()
    leader = leaders[1]
    runtime = cluster.nodes[leader.node_id].runtime
    for i in range(30):
        await cluster.settle(runtime.propose(1, put(b"k%02d" % i, b"v%d" % i, 4, i + 1)))
    await cluster.step(3)
    assert leader.storage.first_index() > 2, "the leader compacted its log"
    wiped = next(n for n in NODES if n != leader.node_id)
    await cluster.crash(wiped)
    del cluster.disks[wiped]
    cluster.start(wiped, bootstrap=True)
    return leader, wiped


async def catch_up(cluster: LocalCluster, follower: Peer, leader: Peer) -> None:
    for _ in range(300):
        await cluster.step()
        if follower.applied >= leader.applied:
            return


async def test_follower_with_a_wiped_data_dir_catches_up_by_snapshot() -> None:
    cluster = LocalCluster(MemoryNetwork(), options=COMPACTING)
    leader, wiped = await wipe_a_follower(cluster)
    follower = cluster.nodes[wiped].runtime.peers[1]
    await catch_up(cluster, follower, leader)
    assert follower.applied >= leader.applied
    assert follower.storage.snapshot_metadata().index > 1, "it caught up by a snapshot"
    assert list(follower.machine.scan()) == list(leader.machine.scan())
    assert follower.machine.revision == leader.machine.revision


async def test_applied_listeners_are_called_after_a_snapshot_is_installed() -> None:
    """A replica that catches up by snapshot applies no entry for what it covers:
    its listeners are called for the install, once the image is its state."""
    cluster = LocalCluster(MemoryNetwork(), options=COMPACTING)
    leader, wiped = await wipe_a_follower(cluster)
    restarted = cluster.nodes[wiped].runtime
    follower = restarted.peers[1]
    # At each call: the replica's applied index, its snapshot's, and whether it holds
    # the first write (which only the image brings: the log before it is gone).
    calls: list[tuple[int, int, bool]] = []
    restarted.on_applied(
        1,
        lambda: calls.append(
            (
                follower.applied,
                follower.storage.snapshot_metadata().index,
                follower.machine.get(b"k00") is not None,
            )
        ),
    )
    await catch_up(cluster, follower, leader)
    installed = follower.storage.snapshot_metadata().index
    assert installed > 1, "it caught up by a snapshot"
    # The empty replica applies nothing before the install: its first call is for it.
    assert calls and calls[0] == (installed, installed, True), "called with the image applied"


async def test_a_proposal_a_snapshot_covers_settles_as_unknown() -> None:
    """A deposed leader that catches up by snapshot still answers its callers."""
    cluster = LocalCluster(MemoryNetwork(), options=COMPACTING)
    await start_all(cluster)
    leaders = await cluster.elect_all()
    old = leaders[1]
    cluster.network.isolate(old.node_id)
    stranded = cluster.nodes[old.node_id].runtime.propose(1, put(b"lost", b"x", 6, 1))
    new = None
    for _ in range(300):
        await cluster.step()
        new = cluster.leader(1)
        if new is not None and new.node_id != old.node_id:
            break
    assert new is not None and new.node_id != old.node_id
    runtime = cluster.nodes[new.node_id].runtime
    for i in range(20):
        await cluster.settle(runtime.propose(1, put(b"k%d" % i, b"v", 7, i + 1)))
    await cluster.step(3)
    assert new.storage.first_index() > old.raw.raft.log.last_index(), "compacted past it"
    cluster.network.heal()
    for _ in range(300):
        await cluster.step()
        if stranded.done():
            break
    assert stranded.done()
    assert isinstance(stranded.exception(), (OutcomeUnknown, ProposalFailed))
    assert old.storage.snapshot_metadata().index > 1, "it caught up by a snapshot"


async def test_the_log_is_compacted_by_size_before_the_entry_count_is_reached() -> None:
    by_size = PeerOptions(
        election_ticks=10,
        heartbeat_ticks=1,
        snapshot_interval=1_000_000,
        snapshot_log_bytes=4096,
        compaction_lag=0,
    )
    cluster = LocalCluster(MemoryNetwork(), options=by_size)
    await start_all(cluster)
    leaders = await cluster.elect_all()
    leader = leaders[1]
    runtime = cluster.nodes[leader.node_id].runtime
    value = b"v" * 1000
    for seq in range(1, 4):
        await cluster.settle(runtime.propose(1, put(b"k%d" % seq, value, 7, seq)))
    # About 3 KiB of commands applied: not yet 4096 bytes of entry data.
    assert leader.storage.snapshot_metadata().index == 1
    for seq in range(4, 9):
        await cluster.settle(runtime.propose(1, put(b"k%d" % seq, value, 7, seq)))
    await cluster.step(2)
    snapshot_index = leader.storage.snapshot_metadata().index
    assert snapshot_index > 1, "8 KiB applied: a snapshot by size"
    assert leader.storage.first_index() == snapshot_index + 1
    assert leader.log_bytes < 4096
    # A small group of small writes is not snapshotted by size.
    small = leaders[2]
    small_runtime = cluster.nodes[small.node_id].runtime
    for seq in range(1, 20):
        await cluster.settle(small_runtime.propose(2, put(b"s", b"x", 8, seq)))
    assert small.storage.snapshot_metadata().index == 1


async def test_many_commands_ride_few_entries_each_with_its_own_result() -> None:
    chunked = PeerOptions(election_ticks=10, heartbeat_ticks=1, max_entry_bytes=3100)
    cluster = LocalCluster(MemoryNetwork(), options=chunked)
    await start_all(cluster)
    leaders = await cluster.elect_all()
    leader = leaders[3]
    runtime = cluster.nodes[leader.node_id].runtime
    commands = [put(b"m%d" % n, b"x" * 1000, 21, n) for n in range(1, 11)]
    before = leader.storage.last_index()
    futures = runtime.propose_many(3, commands)
    results = [await cluster.settle(future) for future in futures]
    # Three commands of about 1 KB fit in 3,100 bytes: entries of 3, 3, 3 and 1.
    assert leader.storage.last_index() - before == 4
    revisions = [result.revision for result in results]  # type: ignore[attr-defined]
    assert revisions == sorted(set(revisions)) and len(revisions) == 10
    # Again: every command answered from its session, nothing applied twice.
    again = [await cluster.settle(f) for f in runtime.propose_many(3, commands)]
    assert again == [replayed(result) for result in results]
    await cluster.step(3)
    for node in cluster.nodes.values():
        kv = node.runtime.peers[3].machine.get(b"m10")
        assert kv is not None and kv.version == 1


async def test_a_large_group_waits_for_a_log_a_quarter_of_its_image_before_snapshotting() -> None:
    by_count = PeerOptions(
        election_ticks=10, heartbeat_ticks=1, snapshot_interval=5, compaction_lag=0
    )
    cluster = LocalCluster(MemoryNetwork(), options=by_count)
    await start_all(cluster)
    leaders = await cluster.elect_all()
    leader = leaders[1]
    runtime = cluster.nodes[leader.node_id].runtime
    for seq in range(1, 11):
        await cluster.settle(runtime.propose(1, put(b"big%d" % seq, b"x" * 10_000, 31, seq)))
    await cluster.step(2)
    first = leader.storage.snapshot_metadata().index
    assert first > 1 and leader.image_bytes > 50_000
    # Small writes: the entry count passes the interval many times over, but
    # a new image (about 200 KB: the keys, and their changes in the event log)
    # waits until the log holds a quarter of it.
    for seq in range(11, 61):
        await cluster.settle(runtime.propose(1, put(b"small", b"s", 31, seq)))
    await cluster.step(2)
    assert leader.storage.snapshot_metadata().index == first
    for seq in range(61, 68):
        await cluster.settle(runtime.propose(1, put(b"big%d" % seq, b"y" * 10_000, 31, seq)))
    await cluster.step(2)
    assert leader.storage.snapshot_metadata().index > first
