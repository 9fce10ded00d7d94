"""The owner leader's lease deadlines and expiry (``shardkv.node.leases``), on fake peers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from shardkv.fsm.kv import KeyValueStateMachine
from shardkv.leases import LeaseRecord, LeaseState, lease_key
from shardkv.node.leases import LeaseDeadlines, LeaseKeeper
from shardkv.node.peer import Peer
from shardkv.node.runtime import NodeRuntime
from shardkv.raft import Role
from shardkv.storage.engine import MemoryEngine
from shardkv.v1 import kv_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakePeer:
    group_id: int
    machine: KeyValueStateMachine
    role: Role = Role.LEADER
    leader_changes: int = 1


@dataclass
class FakeRuntime:
    peers: dict[int, FakePeer]
    node_id: int = 1
    proposed: list[kv_pb2.Command] = field(default_factory=list)

    async def propose(self, group_id: int, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        self.proposed.append(command)
        machine = self.peers[group_id].machine
        batch = machine.engine.new_batch()
        result = machine.apply(batch, command)
        machine.engine.write(batch, sync=False)
        return result


def granted(machine: KeyValueStateMachine, lease_id: int, ttl: int) -> None:
    put = kv_pb2.Put(key=lease_key(lease_id), value=LeaseRecord(ttl).encode())
    batch = machine.engine.new_batch()
    machine.apply(batch, kv_pb2.Command(operations=[kv_pb2.Operation(put=put)]))
    machine.engine.write(batch, sync=False)


def as_peer(peer: FakePeer) -> Peer:
    return cast(Peer, peer)


def test_a_lease_starts_at_its_full_ttl_and_a_renew_restarts_it() -> None:
    clock = Clock()
    deadlines = LeaseDeadlines(clock)
    peer = as_peer(FakePeer(7, KeyValueStateMachine(MemoryEngine(), 7)))
    assert deadlines.touch(peer, 1, 10, renew=False) == 10
    clock.now += 4
    assert deadlines.touch(peer, 1, 10, renew=False) == 6
    assert deadlines.touch(peer, 1, 10, renew=True) == 10
    clock.now += 10
    assert deadlines.touch(peer, 1, 10, renew=True) is None, "too late: it is expiring"


def test_a_new_leadership_restarts_every_deadline_at_the_full_ttl() -> None:
    clock = Clock()
    deadlines = LeaseDeadlines(clock)
    fake = FakePeer(7, KeyValueStateMachine(MemoryEngine(), 7))
    deadlines.touch(as_peer(fake), 1, 10, renew=False)
    clock.now += 9.5
    fake.leader_changes += 2  # it lost the group and won it back
    assert deadlines.touch(as_peer(fake), 1, 10, renew=False) == 10, "extended, never cut"


async def test_the_keeper_expires_only_what_passed_its_deadline_in_groups_it_leads() -> None:
    clock = Clock()
    led = FakePeer(7, KeyValueStateMachine(MemoryEngine(), 7))
    followed = FakePeer(8, KeyValueStateMachine(MemoryEngine(), 8), role=Role.FOLLOWER)
    granted(led.machine, 1, 5)
    granted(led.machine, 2, 50)
    granted(followed.machine, 3, 5)
    runtime = FakeRuntime({7: led, 8: followed})
    keeper = LeaseKeeper(cast(NodeRuntime, runtime), LeaseDeadlines(clock))
    assert keeper.step() == []
    clock.now += 4
    keeper.deadlines.touch(as_peer(led), 1, 5, renew=True)  # a keep-alive
    clock.now += 4
    assert keeper.step() == [], "renewed: 1 s left"
    clock.now += 1.5
    await asyncio.gather(*keeper.step())
    assert len(runtime.proposed) == 1
    states = {
        lease: LeaseRecord.decode(cast(Any, led.machine.get(lease_key(lease))).value).state
        for lease in (1, 2)
    }
    assert states == {1: LeaseState.EXPIRED, 2: LeaseState.ALIVE}
    follower_record = followed.machine.get(lease_key(3))
    assert follower_record is not None
    assert LeaseRecord.decode(follower_record.value).state == LeaseState.ALIVE, "not its leader"
    # An expired lease is not expired again; a lease revoked meanwhile fails the compare.
    assert keeper.step() == []
    await keeper.stop()
