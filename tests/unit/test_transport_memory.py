"""MemoryTransport and MemoryNetwork: the transport contract in one loop, and each filter.

Time is virtual: delays run on a manual clock handed to the network as its
scheduler; immediate deliveries need only one turn of the event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections.abc import AsyncIterator, Callable

import pytest

from shardkv.node.transport import Transport, TransportClosed, TransportError
from shardkv.node.transport_memory import MemoryNetwork, MemoryTransport
from shardkv.raft.types import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)


class ManualClock:
    """A scheduler whose time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = 0

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self._sequence += 1
        heapq.heappush(self._timers, (self.now + delay, self._sequence, callback))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, callback = heapq.heappop(self._timers)
            callback()


class Inbox:
    """A handler that keeps what arrived: (from_node, group_id, message)."""

    def __init__(self) -> None:
        self.received: list[tuple[int, int, Message]] = []

    def __call__(self, from_node: int, group_id: int, message: Message) -> None:
        self.received.append((from_node, group_id, message))

    def messages(self, from_node: int | None = None) -> list[Message]:
        return [m for sender, _, m in self.received if from_node in (None, sender)]


async def one_loop_turn() -> None:
    # Immediate deliveries are call_soon callbacks scheduled by flush(): they
    # run before this task resumes.
    await asyncio.sleep(0)


def heartbeat(from_node: int, to_node: int, commit: int = 0) -> Message:
    return Message(MessageType.HEARTBEAT, to=to_node, from_=from_node, term=1, commit=commit)


class Cluster:
    def __init__(self, network: MemoryNetwork, node_ids: list[int]) -> None:
        self.network = network
        self.transports: dict[int, MemoryTransport] = {}
        self.inboxes: dict[int, Inbox] = {}
        for node_id in node_ids:
            self.start(node_id)

    def start(self, node_id: int) -> MemoryTransport:
        transport = MemoryTransport(node_id, self.network)
        inbox = Inbox()
        transport.set_handler(inbox)
        self.transports[node_id] = transport
        self.inboxes[node_id] = inbox
        peers = {peer: f"node-{peer}" for peer in self.transports}
        for member in self.transports.values():
            member.update_peers(peers)
        return transport

    async def send(self, from_node: int, to_node: int, message: Message, group_id: int = 1) -> None:
        transport = self.transports[from_node]
        transport.send(to_node, group_id, message)
        await transport.flush()
        await one_loop_turn()

    def got(self, node_id: int, from_node: int | None = None) -> list[Message]:
        return self.inboxes[node_id].messages(from_node)

    async def close(self) -> None:
        for transport in self.transports.values():
            await transport.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def cluster(clock: ManualClock) -> AsyncIterator[Cluster]:
    cluster = Cluster(MemoryNetwork(scheduler=clock), [1, 2, 3])
    yield cluster
    await cluster.close()


# The contract


async def test_is_a_transport(cluster: Cluster) -> None:
    # The annotation has mypy check every method against the protocol.
    transport: Transport = cluster.transports[1]
    assert transport.node_id == 1
    assert transport.unreachable() == frozenset()


async def test_delivers_in_order_as_copies_after_one_loop_turn(cluster: Cluster) -> None:
    sent = [
        Message(
            MessageType.APPEND,
            to=2,
            from_=1,
            term=3,
            log_term=2,
            index=7,
            entries=[Entry(3, 8, data=b"x" * 10), Entry(3, 9, data=b"")],
            commit=6,
        ),
        Message(
            MessageType.SNAPSHOT,
            to=2,
            from_=1,
            term=3,
            snapshot=Snapshot(SnapshotMetadata(5, 2, ConfState((1, 2), (3,))), b"image"),
            snapshot_offset=0,
            snapshot_done=True,
        ),
        *(heartbeat(1, 2, commit) for commit in range(100)),
    ]
    transport = cluster.transports[1]
    for number, message in enumerate(sent):
        transport.send(2, number % 7, message)
    await transport.flush()
    assert cluster.got(2) == [], "flush must not call handlers itself"
    await one_loop_turn()
    received = cluster.inboxes[2].received
    assert [(sender, group) for sender, group, _ in received] == [
        (1, number % 7) for number in range(len(sent))
    ]
    assert [message for _, _, message in received] == sent
    assert all(got is not original for got, original in zip(cluster.got(2), sent, strict=True))
    assert transport.stats.batches_sent == 1
    assert cluster.transports[2].stats.batches_received == 1


async def test_without_serializing_no_mutable_state_is_shared(clock: ManualClock) -> None:
    cluster = Cluster(MemoryNetwork(serialize=False, scheduler=clock), [1, 2])
    message = Message(MessageType.APPEND, to=2, from_=1, entries=[Entry(1, 1)])
    await cluster.send(1, 2, message)
    message.entries.append(Entry(1, 2))
    assert cluster.got(2)[0].entries == [Entry(1, 1)]
    await cluster.close()


async def test_one_delivery_per_peer_per_flush(cluster: Cluster) -> None:
    transport = cluster.transports[1]
    for number in range(1000):
        transport.send(2, number, heartbeat(1, 2))
        transport.send(3, number, heartbeat(1, 3))
    await transport.flush()
    await one_loop_turn()
    assert len(cluster.got(2)) == len(cluster.got(3)) == 1000
    assert transport.stats.batches_sent == 2
    assert transport.stats.messages_sent == 2000


async def test_a_closed_peer_is_unreachable_and_a_restarted_one_receives(cluster: Cluster) -> None:
    assert cluster.transports[1].unreachable() == frozenset()
    await cluster.transports[2].close()
    assert cluster.transports[1].unreachable() == {2}
    await cluster.send(1, 2, heartbeat(1, 2))
    assert cluster.transports[1].stats.messages_dropped == 1
    cluster.start(2)
    # The drop above is reported once more, then the peer is reachable again.
    assert cluster.transports[1].unreachable() == {2}
    assert cluster.transports[1].unreachable() == frozenset()
    await cluster.send(1, 2, heartbeat(1, 2, commit=5))
    assert [m.commit for m in cluster.got(2)] == [5]


async def test_messages_in_flight_to_a_node_that_restarts_are_lost(
    cluster: Cluster, clock: ManualClock
) -> None:
    cluster.network.delay(1.0)
    await cluster.send(1, 2, heartbeat(1, 2))
    old_inbox = cluster.inboxes[2]
    await cluster.transports[2].close()
    cluster.start(2)
    clock.advance(1.0)
    assert old_inbox.received == [] and cluster.got(2) == []
    assert cluster.network.stats.dropped == 1


async def test_unknown_peers_and_self_sends(cluster: Cluster) -> None:
    transport = cluster.transports[1]
    transport.update_peers({1: "me", 2: "node-2"})
    transport.send(3, 1, heartbeat(1, 3))
    assert transport.unreachable() == {3}
    assert transport.unreachable() == frozenset()
    with pytest.raises(ValueError, match="itself"):
        transport.send(1, 1, heartbeat(1, 1))


async def test_close_is_idempotent_and_use_after_close_is_an_error(cluster: Cluster) -> None:
    transport = cluster.transports[1]
    transport.send(2, 1, heartbeat(1, 2))
    await transport.close()
    await transport.close()
    assert transport.stats.messages_dropped == 1
    with pytest.raises(TransportClosed):
        transport.send(2, 1, heartbeat(1, 2))
    with pytest.raises(TransportClosed):
        await transport.flush()
    with pytest.raises(TransportClosed):
        transport.update_peers({})
    with pytest.raises(TransportClosed):
        async with transport:
            pass


async def test_context_manager_closes_and_frees_the_node_id() -> None:
    network = MemoryNetwork()
    async with MemoryTransport(1, network) as transport:
        assert network.nodes() == {1}
        with pytest.raises(TransportError, match="already has a live transport"):
            MemoryTransport(1, network)
    assert transport.closed and network.nodes() == frozenset()


async def test_handler_errors_are_logged_and_cost_one_message(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[int] = []

    def handler(from_node: int, group_id: int, message: Message) -> None:
        if message.commit == 1:
            raise RuntimeError("boom")
        received.append(message.commit)

    cluster.transports[2].set_handler(handler)
    transport = cluster.transports[1]
    for commit in range(3):
        transport.send(2, 1, heartbeat(1, 2, commit))
    with caplog.at_level(logging.ERROR):
        await transport.flush()
        await one_loop_turn()
    assert received == [0, 2]
    assert cluster.transports[2].stats.handler_errors == 1
    assert "handler raised" in caplog.text


async def test_messages_without_a_handler_are_counted(clock: ManualClock) -> None:
    network = MemoryNetwork(scheduler=clock)
    sender, receiver = MemoryTransport(1, network), MemoryTransport(2, network)
    sender.update_peers({2: ""})
    sender.send(2, 1, heartbeat(1, 2))
    await sender.flush()
    await one_loop_turn()
    assert receiver.stats.messages_unhandled == 1
    await sender.close()
    await receiver.close()


# Filters


async def test_drop_predicate_drops_only_what_it_matches(cluster: Cluster) -> None:
    rule = cluster.network.drop(lambda from_node, to_node, group_id, message: group_id == 7)
    await cluster.send(1, 2, heartbeat(1, 2, commit=1), group_id=7)
    await cluster.send(1, 2, heartbeat(1, 2, commit=2), group_id=8)
    assert [m.commit for m in cluster.got(2)] == [2]
    assert cluster.network.stats.dropped == 1
    # Filter drops are network loss, not an unreachable peer.
    assert cluster.transports[1].unreachable() == frozenset()
    rule.remove()
    rule.remove()
    await cluster.send(1, 2, heartbeat(1, 2, commit=3), group_id=7)
    assert [m.commit for m in cluster.got(2)] == [2, 3]


async def test_drop_type_drops_one_message_type(cluster: Cluster) -> None:
    cluster.network.drop_type(MessageType.APPEND)
    cluster.network.drop_type(MessageType.HEARTBEAT, group_id=5)
    await cluster.send(1, 2, Message(MessageType.APPEND, to=2, from_=1))
    await cluster.send(1, 2, Message(MessageType.VOTE, to=2, from_=1))
    await cluster.send(1, 2, heartbeat(1, 2), group_id=5)
    await cluster.send(1, 2, heartbeat(1, 2), group_id=6)
    assert [m.type for m in cluster.got(2)] == [MessageType.VOTE, MessageType.HEARTBEAT]
    cluster.network.clear_filters()
    await cluster.send(1, 2, Message(MessageType.APPEND, to=2, from_=1))
    assert cluster.got(2)[-1].type == MessageType.APPEND


async def test_delay_holds_messages_for_that_long(cluster: Cluster, clock: ManualClock) -> None:
    cluster.network.delay(2.0, lambda from_node, to_node, group_id, message: to_node == 2)
    await cluster.send(1, 2, heartbeat(1, 2))
    await cluster.send(1, 3, heartbeat(1, 3))
    assert cluster.got(2) == [] and len(cluster.got(3)) == 1
    clock.advance(1.9)
    assert cluster.got(2) == []
    clock.advance(0.1)
    assert len(cluster.got(2)) == 1
    assert cluster.network.stats.delayed == 1


async def test_delay_with_jitter_can_reorder(clock: ManualClock) -> None:
    cluster = Cluster(MemoryNetwork(scheduler=clock, rng=random.Random(4)), [1, 2])
    cluster.network.delay(1.0, jitter=1.0)
    transport = cluster.transports[1]
    for commit in range(50):
        transport.send(2, 1, heartbeat(1, 2, commit))
    await transport.flush()
    clock.advance(2.0)
    commits = [m.commit for m in cluster.got(2)]
    assert sorted(commits) == list(range(50)) and commits != list(range(50))
    await cluster.close()


async def test_partition_cuts_between_sides_and_heal_restores(cluster: Cluster) -> None:
    cluster.network.partition([1], [2, 3])
    for sender, receiver in [(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)]:
        await cluster.send(sender, receiver, heartbeat(sender, receiver))
    assert cluster.got(1) == [] and cluster.got(2, from_node=1) == []
    assert cluster.got(3, from_node=1) == []
    assert len(cluster.got(2, from_node=3)) == len(cluster.got(3, from_node=2)) == 1
    cluster.network.heal()
    await cluster.send(1, 2, heartbeat(1, 2))
    await cluster.send(2, 1, heartbeat(2, 1))
    assert len(cluster.got(2, from_node=1)) == len(cluster.got(1)) == 1


async def test_isolate_cuts_a_node_off_from_every_other_even_later_ones(cluster: Cluster) -> None:
    cluster.network.isolate(3)
    cluster.start(4)
    for peer in (1, 2, 4):
        await cluster.send(3, peer, heartbeat(3, peer))
        await cluster.send(peer, 3, heartbeat(peer, 3))
    await cluster.send(1, 2, heartbeat(1, 2))
    assert cluster.got(3) == []
    assert all(cluster.got(peer, from_node=3) == [] for peer in (1, 2, 4))
    assert len(cluster.got(2, from_node=1)) == 1


async def test_one_way_cut(cluster: Cluster) -> None:
    cluster.network.cut(1, 2)
    await cluster.send(1, 2, heartbeat(1, 2))
    await cluster.send(2, 1, heartbeat(2, 1))
    assert cluster.got(2) == [] and len(cluster.got(1)) == 1


async def test_a_partition_loses_messages_already_in_flight(
    cluster: Cluster, clock: ManualClock
) -> None:
    cluster.network.delay(1.0)
    await cluster.send(1, 2, heartbeat(1, 2))
    cluster.network.partition([1], [2])
    clock.advance(1.0)
    assert cluster.got(2) == []
    assert cluster.network.stats.dropped == 1
