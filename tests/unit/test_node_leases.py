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
    record = LeaseRecord(10, granted=1).encode()
    assert deadlines.touch(peer, 1, record, 10, renew=False) == 10
    clock.now += 4
    assert deadlines.touch(peer, 1, record, 10, renew=False) == 6
    assert deadlines.touch(peer, 1, record, 10, renew=True) == 10
    clock.now += 10
    assert deadlines.touch(peer, 1, record, 10, renew=True) is None, "too late: it is expiring"
    # The same id granted again (another record): a lease of its own, at its full TTL.
    again = LeaseRecord(10, granted=2).encode()
    assert deadlines.touch(peer, 1, again, 10, renew=False) == 10


def test_a_new_leadership_restarts_every_deadline_at_the_full_ttl() -> None:
    clock = Clock()
    deadlines = LeaseDeadlines(clock)
    fake = FakePeer(7, KeyValueStateMachine(MemoryEngine(), 7))
    record = LeaseRecord(10).encode()
    deadlines.touch(as_peer(fake), 1, record, 10, renew=False)
    clock.now += 9.5
    fake.leader_changes += 2  # it lost the group and won it back
    assert deadlines.touch(as_peer(fake), 1, record, 10, renew=False) == 10, "extended, never cut"


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
    record = led.machine.get(lease_key(1))
    assert record is not None
    keeper.deadlines.touch(as_peer(led), 1, record.value, 5, renew=True)  # a keep-alive
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
    # An expired lease is not expired again.
    assert keeper.step() == []
    # The follower's group comes to this node: its lease starts at its full TTL here.
    # (Granted 9.5 s ago with a TTL of 5: past it, as its old leader counted.)
    followed.role = Role.LEADER
    followed.leader_changes += 1
    assert keeper.step() == [], "first seen here: the full TTL from now"
    clock.now += 4.5
    assert keeper.step() == [], "not before the full TTL under the new leadership"
    clock.now += 1
    await asyncio.gather(*keeper.step())
    ended = followed.machine.get(lease_key(3))
    assert ended is not None and LeaseRecord.decode(ended.value).state == LeaseState.EXPIRED
    await keeper.stop()


async def test_an_expiry_in_flight_does_not_end_a_lease_revoked_and_granted_again() -> None:
    clock = Clock()
    led = FakePeer(7, KeyValueStateMachine(MemoryEngine(), 7))
    put = kv_pb2.Put(key=lease_key(1), value=LeaseRecord(5, granted=1).encode())
    batch = led.machine.engine.new_batch()
    led.machine.apply(batch, kv_pb2.Command(operations=[kv_pb2.Operation(put=put)]))
    led.machine.engine.write(batch, sync=False)
    runtime = FakeRuntime({7: led})
    keeper = LeaseKeeper(cast(NodeRuntime, runtime), LeaseDeadlines(clock))
    keeper.step()
    clock.now += 6
    expiring = keeper.step()
    # Before the expiry applies, the lease is revoked, reaped and granted again.
    regrant = kv_pb2.Put(key=lease_key(1), value=LeaseRecord(5, granted=2).encode())
    batch = led.machine.engine.new_batch()
    led.machine.apply(batch, kv_pb2.Command(operations=[kv_pb2.Operation(put=regrant)]))
    led.machine.engine.write(batch, sync=False)
    await asyncio.gather(*expiring)
    now = led.machine.get(lease_key(1))
    assert now is not None and LeaseRecord.decode(now.value) == LeaseRecord(5, granted=2)
    assert keeper.step() == [], "the new grant has a deadline of its own"
    await keeper.stop()
