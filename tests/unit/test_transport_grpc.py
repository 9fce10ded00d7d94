"""GrpcTransport on real gRPC servers on 127.0.0.1: delivery, batching, reconnects, failures.

These are the transport's real-socket tests (what only gRPC shows); Raft
logic over a lossy network is the simulator's job. Every wait is bounded:
arrivals are awaited on events, and the few states a test cannot observe
otherwise (a stream noticed down) are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest

from shardkv.node.transport import MessageTooLarge, Transport, TransportClosed
from shardkv.node.transport_grpc import GrpcTransport, GrpcTransportOptions, server_options
from shardkv.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from tests.ports import free_ports

# Fast reconnects and short connect timeouts keep the file well under 10 s.
OPTIONS = GrpcTransportOptions(initial_backoff=0.02, max_backoff=0.2, connect_timeout=1.0)
WAIT = 5.0


class Inbox:
    """A handler that keeps what arrived and wakes waiters."""

    def __init__(self) -> None:
        self.received: list[tuple[int, int, Message]] = []
        self._changed = asyncio.Event()

    def __call__(self, from_node: int, group_id: int, message: Message) -> None:
        self.received.append((from_node, group_id, message))
        self._changed.set()

    def messages(self, from_node: int | None = None) -> list[Message]:
        return [m for sender, _, m in self.received if from_node in (None, sender)]

    async def wait_for(self, count: int, timeout: float = WAIT) -> None:
        async def enough() -> None:
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(enough(), timeout)


@dataclass
class Node:
    node_id: int
    transport: GrpcTransport
    server: grpc.aio.Server
    port: int
    inbox: Inbox = field(default_factory=Inbox)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Cluster:
    def __init__(self) -> None:
        self.nodes: list[Node] = []

    async def start(
        self,
        node_id: int,
        port: int = 0,
        options: GrpcTransportOptions = OPTIONS,
        *,
        with_handler: bool = True,
    ) -> Node:
        server = grpc.aio.server(options=server_options(options))
        transport = GrpcTransport(node_id, options=options, rng=random.Random(node_id))
        transport.register(server)
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        node = Node(node_id, transport, server, bound)
        if with_handler:
            transport.set_handler(node.inbox)
        self.nodes.append(node)
        return node

    def connect_all(self) -> None:
        peers = {node.node_id: node.address for node in self.nodes}
        for node in self.nodes:
            node.transport.update_peers(peers)

    async def stop(self, node: Node) -> None:
        await node.transport.close()
        await node.server.stop(0)
        self.nodes.remove(node)

    async def stop_all(self) -> None:
        for node in list(self.nodes):
            await self.stop(node)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        await cluster.stop_all()


async def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def varied_messages(from_node: int, to_node: int, count: int) -> Iterator[tuple[int, Message]]:
    """(group_id, message) of every shape the Raft core sends, with payloads."""
    rng = random.Random(from_node * 1000 + to_node)
    for number in range(count):
        group_id = number % 13
        kind = number % 5
        if kind == 0:
            entries = [
                Entry(4, number + offset, EntryType.NORMAL, rng.randbytes(rng.randrange(200)))
                for offset in range(rng.randrange(4))
            ]
            message = Message(
                MessageType.APPEND,
                to=to_node,
                from_=from_node,
                term=4,
                log_term=3,
                index=number,
                entries=entries,
                commit=number // 2,
            )
        elif kind == 1:
            message = Message(
                MessageType.APPEND_RESPONSE,
                to=to_node,
                from_=from_node,
                term=4,
                index=number,
                reject=True,
                reject_hint=number // 3,
            )
        elif kind == 2:
            snapshot = Snapshot(SnapshotMetadata(number, 3, ConfState((1, 2, 3), (4,))), b"s")
            message = Message(
                MessageType.SNAPSHOT,
                to=to_node,
                from_=from_node,
                term=4,
                snapshot=snapshot,
                snapshot_offset=number,
                snapshot_done=number % 2 == 0,
            )
        elif kind == 3:
            message = Message(
                MessageType.PRE_VOTE, to=to_node, from_=from_node, term=5, context=b"ctx"
            )
        else:
            message = Message(
                MessageType.HEARTBEAT, to=to_node, from_=from_node, term=4, stamp=number
            )
        yield group_id, message


def lanes(
    messages: list[tuple[int, Message]],
) -> tuple[list[tuple[int, Message]], list[tuple[int, Message]]]:
    """(group_id, message) pairs split by lane: order is kept within each, not across."""
    snapshots = [pair for pair in messages if pair[1].type == MessageType.SNAPSHOT]
    return [pair for pair in messages if pair[1].type != MessageType.SNAPSHOT], snapshots


# Delivery


async def test_is_a_transport() -> None:
    # The annotation has mypy check every method against the protocol.
    transport: Transport = GrpcTransport(1)
    async with transport:
        assert transport.node_id == 1
        assert transport.unreachable() == frozenset()
    with pytest.raises(TransportClosed):
        await transport.flush()


async def test_two_nodes_exchange_every_message_intact_and_in_order(cluster: Cluster) -> None:
    a, b = await cluster.start(1), await cluster.start(2)
    cluster.connect_all()
    to_b = list(varied_messages(1, 2, 500))
    to_a = list(varied_messages(2, 1, 500))
    for group_id, message in to_b:
        a.transport.send(2, group_id, message)
    for group_id, message in to_a:
        b.transport.send(1, group_id, message)
    await a.transport.flush()
    await b.transport.flush()
    await b.inbox.wait_for(len(to_b))
    await a.inbox.wait_for(len(to_a))
    assert lanes([(group, m) for _, group, m in b.inbox.received]) == lanes(to_b)
    assert lanes([(group, m) for _, group, m in a.inbox.received]) == lanes(to_a)
    snapshots = sum(message.type == MessageType.SNAPSHOT for _, message in to_b)
    assert snapshots and a.transport.stats.snapshot_messages_sent == snapshots
    await eventually(lambda: a.transport.stats.messages_acked == len(to_b))
    assert b.transport.stats.decode_errors == b.transport.stats.handler_errors == 0


async def test_three_nodes_each_sending_to_both_others(cluster: Cluster) -> None:
    nodes = [await cluster.start(node_id) for node_id in (1, 2, 3)]
    cluster.connect_all()
    sent: dict[tuple[int, int], list[tuple[int, Message]]] = {}
    for round_number in range(3):
        for node in nodes:
            for peer in nodes:
                if peer is node:
                    continue
                batch = list(varied_messages(node.node_id, peer.node_id, 300))
                batch = [(group, m) for group, m in batch[round_number * 100 :][:100]]
                sent.setdefault((node.node_id, peer.node_id), []).extend(batch)
                for group_id, message in batch:
                    node.transport.send(peer.node_id, group_id, message)
            await node.transport.flush()
    for node in nodes:
        await node.inbox.wait_for(600)
        for sender in nodes:
            if sender is not node:
                got = [
                    (group, message)
                    for origin, group, message in node.inbox.received
                    if origin == sender.node_id
                ]
                assert lanes(got) == lanes(sent[(sender.node_id, node.node_id)])


# Batching


async def test_ten_thousand_messages_in_one_flush_are_one_stream_write(cluster: Cluster) -> None:
    a, b = await cluster.start(1), await cluster.start(2)
    cluster.connect_all()
    for number in range(10_000):
        a.transport.send(
            2, number % 50, Message(MessageType.HEARTBEAT, to=2, from_=1, term=1, commit=number)
        )
    await a.transport.flush()
    await b.inbox.wait_for(10_000)
    assert [m.commit for m in b.inbox.messages()] == list(range(10_000))
    # The sender counts a write once gRPC has taken it, which may be after it arrived.
    await eventually(lambda: a.transport.stats.messages_sent == 10_000)
    assert a.transport.stats.batches_sent == 1
    assert b.transport.stats.batches_received == 1


async def test_a_flush_over_the_byte_budget_is_split_into_few_writes(cluster: Cluster) -> None:
    options = GrpcTransportOptions(batch_bytes=64 * 1024, initial_backoff=0.02, max_backoff=0.2)
    a, b = await cluster.start(1, options=options), await cluster.start(2, options=options)
    cluster.connect_all()
    payload = b"v" * 1000
    for number in range(1000):
        entry = Entry(1, number + 1, data=payload)
        a.transport.send(2, 1, Message(MessageType.APPEND, to=2, from_=1, entries=[entry]))
    await a.transport.flush()
    await b.inbox.wait_for(1000)
    assert [m.entries[0].index for m in b.inbox.messages()] == list(range(1, 1001))
    # About 1 MB in batches of at most 64 KiB: at least 16 writes, and not many more.
    await eventually(lambda: a.transport.stats.messages_sent == 1000)
    writes = a.transport.stats.batches_sent
    assert 16 <= writes <= 20
    assert b.transport.stats.batches_received == writes


async def test_a_message_larger_than_the_limit_is_refused_at_send(cluster: Cluster) -> None:
    options = GrpcTransportOptions(batch_bytes=4096, max_message_bytes=4096)
    a, b = await cluster.start(1, options=options), await cluster.start(2, options=options)
    cluster.connect_all()
    too_big = Message(MessageType.APPEND, to=2, from_=1, entries=[Entry(1, 1, data=b"x" * 5000)])
    with pytest.raises(MessageTooLarge) as caught:
        a.transport.send(2, 9, too_big)
    assert caught.value.group_id == 9 and caught.value.limit == 4096
    fits = Message(MessageType.APPEND, to=2, from_=1, entries=[Entry(1, 1, data=b"x" * 3000)])
    a.transport.send(2, 9, fits)
    a.transport.send(2, 9, fits)
    await a.transport.flush()
    await b.inbox.wait_for(2)
    assert b.inbox.messages() == [fits, fits]
    await eventually(lambda: a.transport.stats.messages_sent == 2)
    assert a.transport.stats.batches_sent == 2


async def test_snapshots_ride_their_own_stream_and_do_not_hold_back_heartbeats(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(1), await cluster.start(2)
    cluster.connect_all()
    metadata = SnapshotMetadata(100, 3, ConfState((1, 2, 3), ()))

    def snapshot_chunk(offset: int, data: bytes) -> Message:
        return Message(
            MessageType.SNAPSHOT,
            to=2,
            from_=1,
            term=3,
            snapshot=Snapshot(metadata, data),
            snapshot_offset=offset,
        )

    heartbeat = Message(MessageType.HEARTBEAT, to=2, from_=1, term=3, commit=7)
    # Both lanes up first.
    a.transport.send(2, 1, snapshot_chunk(0, b"first"))
    a.transport.send(2, 5, heartbeat)
    await a.transport.flush()
    await b.inbox.wait_for(2)
    assert a.transport.stats.connects == 2
    # 16 MiB of snapshot, then a heartbeat: it does not queue behind them.
    chunk = b"s" * (1 << 20)
    for number in range(16):
        a.transport.send(2, number % 3, snapshot_chunk(number * len(chunk), chunk))
    await a.transport.flush()
    a.transport.send(2, 5, heartbeat)
    await a.transport.flush()
    await b.inbox.wait_for(2 + 17)
    later = [m for _, _, m in b.inbox.received[2:]]
    offsets = [m.snapshot_offset for m in later if m.type == MessageType.SNAPSHOT]
    assert offsets == [number * len(chunk) for number in range(16)]
    assert later.index(heartbeat) < len(later) - 1, "the heartbeat overtook the snapshot"
    await eventually(lambda: a.transport.stats.snapshot_messages_sent == 17)
    assert a.transport.stats.messages_dropped == 0
    assert a.transport.unreachable() == frozenset()


async def test_a_snapshot_to_a_down_peer_is_dropped_and_reported(cluster: Cluster) -> None:
    a = await cluster.start(1)
    (port,) = free_ports(1)
    a.transport.update_peers({1: a.address, 2: f"127.0.0.1:{port}"})
    snapshot = Snapshot(SnapshotMetadata(5, 1, ConfState((1, 2), ())), b"image")
    message = Message(MessageType.SNAPSHOT, to=2, from_=1, term=1, snapshot=snapshot)

    async def lost() -> bool:
        a.transport.send(2, 1, message)
        await a.transport.flush()
        await asyncio.sleep(0.05)
        return 2 in a.transport.unreachable()

    async def until_lost() -> None:
        while not await lost():
            pass

    await asyncio.wait_for(until_lost(), WAIT)
    assert a.transport.stats.messages_dropped >= 1
    assert a.transport.stats.snapshot_messages_sent == 0


# Failures


async def test_a_restarted_peer_is_reconnected_and_later_messages_arrive(cluster: Cluster) -> None:
    # Not an ephemeral port: an outgoing connection could take it while b is down.
    a, b = await cluster.start(1), await cluster.start(2, port=free_ports(1)[0])
    cluster.connect_all()
    a.transport.send(2, 1, Message(MessageType.HEARTBEAT, to=2, from_=1, commit=1))
    await a.transport.flush()
    await b.inbox.wait_for(1)
    port = b.port
    await cluster.stop(b)
    await eventually(lambda: 2 in a.transport.unreachable())

    restarted = await cluster.start(2, port=port)

    async def retransmit() -> None:  # as Raft would, every tick
        while True:
            a.transport.send(2, 1, Message(MessageType.HEARTBEAT, to=2, from_=1, commit=2))
            await a.transport.flush()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(retransmit())
    try:
        await restarted.inbox.wait_for(1)
    finally:
        task.cancel()
    arrived = len(restarted.inbox.received)
    for commit in range(100, 200):
        a.transport.send(2, 1, Message(MessageType.HEARTBEAT, to=2, from_=1, commit=commit))
    await a.transport.flush()
    await restarted.inbox.wait_for(arrived + 100)
    assert [m.commit for m in restarted.inbox.messages()[-100:]] == list(range(100, 200))
    assert a.transport.stats.connects == 2
    a.transport.unreachable()  # clears the drops reported while the peer was away
    assert a.transport.unreachable() == frozenset()


async def test_a_down_peer_does_not_block_the_others(cluster: Cluster) -> None:
    a, b = await cluster.start(1), await cluster.start(2)
    a.transport.update_peers({2: b.address, 3: f"127.0.0.1:{free_ports(1)[0]}"})
    for number in range(100):
        heartbeat = Message(MessageType.HEARTBEAT, term=1, commit=number)
        a.transport.send(3, 1, heartbeat)
        a.transport.send(2, 1, heartbeat)
    await a.transport.flush()
    await b.inbox.wait_for(100)
    assert [m.commit for m in b.inbox.messages()] == list(range(100))
    await eventually(lambda: a.transport.stats.messages_dropped == 100)
    assert a.transport.unreachable() == {3}
    # While node 3 stays down, what is flushed for it is dropped at once.
    a.transport.send(3, 1, Message(MessageType.HEARTBEAT))
    a.transport.send(2, 1, Message(MessageType.HEARTBEAT, commit=1000))
    await a.transport.flush()
    await b.inbox.wait_for(101)
    await eventually(lambda: a.transport.stats.messages_dropped == 101)
    assert 3 in a.transport.unreachable()


async def test_a_stream_to_the_wrong_node_is_refused(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await cluster.start(1), await cluster.start(2)
    # A stale map: node 3's address now serves node 2.
    a.transport.update_peers({3: b.address})
    with caplog.at_level(logging.WARNING, logger="shardkv.node.transport_grpc"):
        for number in range(10):
            a.transport.send(3, 1, Message(MessageType.HEARTBEAT, commit=number))
        await a.transport.flush()
        await eventually(lambda: a.transport.stats.messages_dropped == 10)
    assert b.inbox.received == []
    assert 3 in a.transport.unreachable()
    assert "FAILED_PRECONDITION" in caplog.text and "serves node 2" in caplog.text


@pytest.mark.parametrize(
    "bound", [{"queue_batches": 2}, {"queue_bytes": 3000}], ids=["batches", "bytes"]
)
async def test_a_full_queue_drops_its_oldest_batches(
    cluster: Cluster, bound: dict[str, int]
) -> None:
    # A peer that accepts TCP but never speaks HTTP/2: the stream stays
    # "connecting" until the connect timeout, so flushes pile up in the queue.
    options = GrpcTransportOptions(connect_timeout=0.3, **bound)
    a = await cluster.start(1, options=options)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        a.transport.update_peers({2: f"127.0.0.1:{silent.getsockname()[1]}"})
        for _ in range(5):
            for number in range(10):
                entries = [Entry(1, number, data=b"x" * 100)]
                a.transport.send(2, 1, Message(MessageType.APPEND, entries=entries))
            await a.transport.flush()
        # Each flush is one batch of about 1.2 KB; two fit.
        assert a.transport.stats.batches_overflowed == 3
        assert a.transport.stats.messages_dropped == 30
        await eventually(lambda: a.transport.stats.messages_dropped == 50)
    assert a.transport.unreachable() == {2}


async def test_unknown_peers_self_sends_and_missing_handlers(cluster: Cluster) -> None:
    a, b = await cluster.start(1), await cluster.start(2, with_handler=False)
    cluster.connect_all()
    a.transport.send(7, 1, Message(MessageType.HEARTBEAT))
    assert a.transport.stats.messages_dropped == 1
    assert 7 in a.transport.unreachable()
    assert 7 not in a.transport.unreachable()
    with pytest.raises(ValueError, match="itself"):
        a.transport.send(1, 1, Message(MessageType.HEARTBEAT))
    a.transport.send(2, 1, Message(MessageType.HEARTBEAT))
    await a.transport.flush()
    await eventually(lambda: b.transport.stats.messages_unhandled == 1)
    assert b.transport.stats.messages_received == 0


async def test_close_is_idempotent_and_a_closed_node_refuses_streams(cluster: Cluster) -> None:
    a, b = await cluster.start(1), await cluster.start(2)
    cluster.connect_all()
    a.transport.send(2, 1, Message(MessageType.HEARTBEAT))
    await a.transport.flush()
    await b.inbox.wait_for(1)
    async with b.transport:
        pass
    await b.transport.close()
    with pytest.raises(TransportClosed):
        b.transport.send(1, 1, Message(MessageType.HEARTBEAT))
    with pytest.raises(TransportClosed):
        await b.transport.flush()
    # b's server still runs, but its transport takes no more streams.
    await eventually(lambda: 2 in a.transport.unreachable())
    a.transport.send(2, 1, Message(MessageType.HEARTBEAT))
    await a.transport.flush()
    await eventually(lambda: a.transport.stats.messages_dropped == 1)
    assert len(b.inbox.received) == 1
