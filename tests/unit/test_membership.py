"""A group leader's side of a replica move (``shardkv.node.membership.reconfigure``), in process.

One group (1) on nodes 1, 2 and 3, each a ``NodeRuntime`` over memory
engines and the memory network; node 4 hosts an empty replica (never
bootstrapped), as a node does that the map lists as a learner. Time is the
test's: each step ticks every node, runs one round everywhere and lets the
network deliver. Every step also proposes one write at the group's leader
(a client's load), and each test ends by checking that every acknowledged
write is on every voter.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from shardkv.errors import FailedPrecondition, NotLeader
from shardkv.node.membership import reconfigure
from shardkv.node.peer import Peer
from shardkv.node.runtime import NodeRuntime
from shardkv.node.transport_memory import MemoryNetwork, MemoryTransport
from shardkv.raft import Role
from shardkv.storage import GroupStorage, MemoryDisk, MemoryEngine
from shardkv.v1 import kv_pb2, node_pb2
from tests.unit.test_node_runtime import COMPACTING, put

GROUP = 1
VOTERS = (1, 2, 3)
NEWCOMER = 4
ALL_NODES = (*VOTERS, NEWCOMER)
# COMPACTING (snapshots every few entries, no log kept behind them), in
# chunks of 256 bytes: a learner added late can only catch up by snapshot,
# over several steps (an image is some 10 kB by then; COMPACTING's 64-byte
# chunks would send it slower than the group writes it anew).
OPTIONS = dataclasses.replace(COMPACTING, snapshot_chunk_size=256)
BOUND = 300
LOAD_CLIENT = 77

ADD_LEARNER = node_pb2.RECONFIGURE_ADD_LEARNER
PROMOTE = node_pb2.RECONFIGURE_PROMOTE
REMOVE = node_pb2.RECONFIGURE_REMOVE


@dataclass
class GroupCluster:
    """Nodes hosting group 1 on one memory network, and a client writing at every step."""

    network: MemoryNetwork = field(default_factory=MemoryNetwork)
    runtimes: dict[int, NodeRuntime] = field(default_factory=dict)
    # Written key -> value, once the write was acknowledged.
    acknowledged: dict[bytes, bytes] = field(default_factory=dict)
    load: bool = True
    _writes: list[tuple[bytes, bytes, asyncio.Future[kv_pb2.CommandResult]]] = field(
        default_factory=list
    )

    def start(self, node_id: int, *, bootstrap: bool) -> NodeRuntime:
        engine = MemoryEngine(MemoryDisk())
        if bootstrap:
            GroupStorage(engine, GROUP).bootstrap(VOTERS)
        peer = Peer(engine, GROUP, node_id, OPTIONS, seed=node_id)
        transport = MemoryTransport(node_id, self.network)
        transport.update_peers({other: f"node-{other}" for other in ALL_NODES})
        runtime = NodeRuntime(node_id, engine, transport, {GROUP: peer})
        self.runtimes[node_id] = runtime
        return runtime

    def peer(self, node_id: int) -> Peer:
        return self.runtimes[node_id].peers[GROUP]

    def leader(self) -> NodeRuntime | None:
        for runtime in self.runtimes.values():
            if runtime.peers[GROUP].role == Role.LEADER:
                return runtime
        return None

    async def step(self, count: int = 1) -> None:
        for _ in range(count):
            self._write()
            for runtime in self.runtimes.values():
                runtime.tick()
            for runtime in self.runtimes.values():
                await runtime.round()
            for _ in range(3):  # deliveries, then the callers of settled futures
                await asyncio.sleep(0)
            self._collect()

    async def elect(self) -> NodeRuntime:
        for _ in range(BOUND):
            leader = self.leader()
            if leader is not None:
                return leader
            await self.step()
        raise AssertionError("no leader was elected")

    async def call(
        self, kind: node_pb2.ReconfigureKind, node_id: int, at: NodeRuntime | None = None
    ) -> node_pb2.ReconfigureResponse:
        """``reconfigure`` at ``at`` (the leader by default), stepping until it answers."""
        runtime = at if at is not None else await self.elect()
        task = asyncio.ensure_future(
            reconfigure(
                runtime, node_pb2.ReconfigureRequest(group_id=GROUP, kind=kind, node_id=node_id)
            )
        )
        for _ in range(BOUND):
            if task.done():
                return task.result()
            await self.step()
        task.cancel()
        raise AssertionError(f"{node_pb2.ReconfigureKind.Name(kind)} {node_id} did not answer")

    async def until_done(
        self, kind: node_pb2.ReconfigureKind, node_id: int
    ) -> node_pb2.ReconfigureResponse:
        """Repeat the change at whichever node leads until it is done, as the driver does."""
        reasons = []
        for _ in range(BOUND // 10):
            try:
                response = await self.call(kind, node_id)
            except NotLeader:
                await self.step()
                continue
            if response.done:
                return response
            reasons.append(response.reason)
            await self.step(3)
        raise AssertionError(f"never done; reasons: {reasons[-3:]}")

    def _write(self) -> None:
        leader = self.leader() if self.load else None
        if leader is None:
            return
        number = len(self._writes)
        key, value = b"load-%04d" % number, b"v%d" % number
        try:
            future = leader.propose(GROUP, put(key, value, LOAD_CLIENT, number + 1))
        except NotLeader:
            return
        self._writes.append((key, value, future))

    def _collect(self) -> None:
        for key, value, future in self._writes:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.acknowledged[key] = value

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.stop()
        for _, _, future in self._writes:  # stopping settles them: nobody waits for them
            if future.done() and not future.cancelled():
                future.exception()

    def check_nothing_lost(self, voters: list[int]) -> None:
        """Every acknowledged write is on every voter (once they applied the same index)."""
        assert len(self.acknowledged) > 20, f"only {len(self.acknowledged)} writes acknowledged"
        for node_id in voters:
            machine = self.peer(node_id).machine
            missing = [key for key in self.acknowledged if machine.get(key) is None]
            assert not missing, f"node {node_id} lacks acknowledged writes {missing[:5]}"


@pytest.fixture
def group() -> Iterator[GroupCluster]:
    cluster = GroupCluster()
    for node_id in VOTERS:
        cluster.start(node_id, bootstrap=True)
    cluster.start(NEWCOMER, bootstrap=False)
    yield cluster
    cluster.close()


async def converge(group: GroupCluster, nodes: list[int]) -> None:
    """Stop the load and step until ``nodes`` applied the leader's commit index."""
    group.load = False
    for _ in range(BOUND):
        leader = group.leader()
        if leader is not None:
            committed = leader.peers[GROUP].raw.raft.log.committed
            if all(group.peer(node_id).applied >= committed for node_id in nodes):
                return
        await group.step()
    raise AssertionError("the replicas did not converge")


async def test_a_replica_moves_to_a_new_node_by_snapshot_while_the_group_commits(
    group: GroupCluster,
) -> None:
    """Add a learner, let it catch up from a compacted log, promote it, remove an old voter."""
    leader = await group.elect()
    await group.step(40)
    assert leader.peers[GROUP].storage.first_index() > 2, "the leader compacted its log"
    newcomer = group.peer(NEWCOMER)
    assert not newcomer.conf_state.voters and newcomer.applied == 0, "it starts empty"

    # Cut off, the learner cannot catch up: it is added, but not promoted.
    group.network.isolate(NEWCOMER)
    added = await group.call(ADD_LEARNER, NEWCOMER)
    assert added.done, added.reason
    assert (sorted(added.voters), list(added.learners)) == ([1, 2, 3], [NEWCOMER])
    refused = await group.call(PROMOTE, NEWCOMER)
    assert not refused.done
    assert f"node {NEWCOMER} is catching up" in refused.reason
    # A learner never counts for a quorum: the group commits without it.
    before = len(group.acknowledged)
    await group.step(20)
    assert len(group.acknowledged) > before + 10
    again = await group.call(ADD_LEARNER, NEWCOMER)
    assert again.done, "adding a learner twice is done at once"

    group.network.heal()
    promoted = await group.until_done(PROMOTE, NEWCOMER)
    assert sorted(promoted.voters) == [1, 2, 3, NEWCOMER]
    assert list(promoted.learners) == []
    assert newcomer.storage.snapshot_metadata().index > 1, "it caught up by a snapshot"

    # Remove an old voter that does not lead; the group goes on with the newcomer.
    current = await group.elect()
    leaving = next(node_id for node_id in VOTERS if node_id != current.node_id)
    removed = await group.call(REMOVE, leaving)
    assert removed.done, removed.reason
    assert sorted(removed.voters) == sorted({*VOTERS, NEWCOMER} - {leaving})
    assert removed.index >= leader.peers[GROUP].applied - 1
    assert (await group.call(REMOVE, leaving)).done, "removing a non-member is done at once"
    before = len(group.acknowledged)
    await group.step(20)
    assert len(group.acknowledged) > before + 10, "the group commits with its new voters"

    voters = sorted(removed.voters)
    await converge(group, voters)
    group.check_nothing_lost(voters)
    assert list(newcomer.machine.scan()) == list(group.leader().peers[GROUP].machine.scan())  # type: ignore[union-attr]


async def test_a_learner_is_not_promoted_before_it_caught_up_even_when_asked_early(
    group: GroupCluster,
) -> None:
    await group.elect()
    await group.step(40)
    with pytest.raises(FailedPrecondition, match=f"node {NEWCOMER} is not a learner"):
        await group.call(PROMOTE, NEWCOMER)
    assert (await group.call(ADD_LEARNER, NEWCOMER)).done
    # Asked again and again from the moment it was added: each answer either
    # refuses (the learner lags) or, once done, finds it caught up.
    answers = []
    for _ in range(BOUND // 4):
        leader = await group.elect()
        committed = leader.peers[GROUP].raw.raft.log.committed
        response = await group.call(PROMOTE, NEWCOMER, at=leader)
        answers.append(response.done)
        if response.done:
            assert group.peer(NEWCOMER).applied > 1
            break
        assert "catching up" in response.reason, response.reason
        assert leader.peers[GROUP].raw.raft.progress[NEWCOMER].match < committed
        await group.step(3)
    assert answers[0] is False, "just added, it cannot have caught up"
    assert answers[-1] is True
    await converge(group, [*VOTERS, NEWCOMER])
    group.check_nothing_lost([*VOTERS, NEWCOMER])


async def test_a_leader_asked_to_remove_itself_hands_the_lead_over_first(
    group: GroupCluster,
) -> None:
    leader = await group.elect()
    await group.step(30)
    response = await group.call(REMOVE, leader.node_id, at=leader)
    assert not response.done
    assert "handing the lead to node" in response.reason
    successor = int(response.reason.split("node ")[1].split()[0])
    assert successor in VOTERS and successor != leader.node_id
    for _ in range(BOUND):
        if group.leader() is not None and group.leader() is not leader:
            break
        await group.step()
    assert group.leader() is group.runtimes[successor], "the lead went where it said"
    with pytest.raises(NotLeader) as not_leader:
        await group.call(REMOVE, leader.node_id, at=leader)
    assert not_leader.value.leader_id == successor
    removed = await group.call(REMOVE, leader.node_id)
    assert removed.done, removed.reason
    remaining = sorted(set(VOTERS) - {leader.node_id})
    assert sorted(removed.voters) == remaining
    before = len(group.acknowledged)
    await group.step(20)
    assert len(group.acknowledged) > before + 10, "two voters of two commit"
    await converge(group, remaining)
    group.check_nothing_lost(remaining)


async def test_one_membership_change_at_a_time(group: GroupCluster) -> None:
    leader = await group.elect()
    await group.step(5)
    group.start(5, bootstrap=False)
    request = node_pb2.ReconfigureRequest
    first = asyncio.ensure_future(
        reconfigure(leader, request(group_id=GROUP, kind=ADD_LEARNER, node_id=NEWCOMER))
    )
    second = asyncio.ensure_future(
        reconfigure(leader, request(group_id=GROUP, kind=ADD_LEARNER, node_id=5))
    )
    for _ in range(BOUND):
        if first.done() and second.done():
            break
        await group.step()
    assert first.result().done
    assert not second.result().done
    assert "pending" in second.result().reason
    # Once the first applied, the second goes through.
    assert (await group.call(ADD_LEARNER, 5)).done
    assert sorted(group.peer(leader.node_id).conf_state.learners) == [NEWCOMER, 5]


async def test_a_follower_refuses_with_the_leaders_id(group: GroupCluster) -> None:
    leader = await group.elect()
    await group.step(5)
    follower = group.runtimes[next(node for node in VOTERS if node != leader.node_id)]
    with pytest.raises(NotLeader) as refused:
        await group.call(ADD_LEARNER, NEWCOMER, at=follower)
    assert refused.value.leader_id == leader.node_id
