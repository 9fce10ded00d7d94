"""``GrpcTransport``: Raft messages between node processes over gRPC streams.

This module owns the wire side of the ``Transport`` contract (see
``shardkv.node.transport``): the ``RaftTransport.Stream`` servicer for inbound
messages and one outgoing stream per peer node. What it promises:

- **One stream per ordered pair of nodes.** Node A sends to node B on the one
  long-lived ``Stream`` call it opened to B; B answers on the stream B opened
  to A. Every message of every group for that peer rides on it.
- **At most one write per flush per peer, often fewer.** ``send`` encodes
  each message into the peer's open ``RaftBatch`` at once (so later changes
  to the ``Message`` do not leak in, and an oversized message fails in
  ``send``); ``flush`` serializes the round's batches, queues them for the
  peer's sender task and returns. A batch is split only when it would
  exceed ``options.batch_bytes``, so a round of thousands of heartbeats is
  one write. A sender task that fell behind writes the batches of several
  flushes as one (up to ``batch_bytes``): the slower the stream, the bigger
  its writes.
- **The sender identifies itself in metadata at stream open**
  (``shardkv-from-node``), together with the node it means to reach
  (``shardkv-to-node``). The receiver refuses a stream meant for another node
  with FAILED_PRECONDITION (an address map gone stale: the address now serves
  another node) and confirms its own id in its initial metadata
  (``shardkv-node-id``), which the sender checks before it counts the stream
  as up. No field in ``RaftBatch`` is needed: the stream is the sender.
- **Acknowledgements.** The receiver acknowledges with ``RaftBatchAck``;
  ``count`` is the number of messages taken in (decoded and handed to the
  handler) since its previous ack on that stream. Acks are coalesced: an
  ack task writes whatever accumulated, at most once per ``ACK_INTERVAL``
  (a stream write costs a busy node more CPU than any other step of a
  message, so acks must not double the writes). They feed
  ``stats.messages_acked``; a stream that dies ends the sender's ack
  reader at once, whatever the interval.
- **Snapshots out of band.** Snapshot chunks (``MessageType.SNAPSHOT``) ride a
  second stream to the peer, on a channel (a TCP connection) of their own,
  opened the first time a snapshot goes to that peer: megabytes of a snapshot
  never queue in front of the heartbeats and appends of every other group
  (TiKV sends snapshots on a separate connection for the same reason). The
  stream says ``shardkv-lane: snapshot`` in its metadata; the receiver treats
  both lanes alike. The two lanes are not ordered with respect to each other,
  which Raft tolerates as it tolerates any reordering. The snapshot lane's
  queue is short (``snapshot_queue_batches``): Raft keeps only a small window
  of chunks in flight and resends what is lost.
- **Per-peer sender task, bounded queue.** Each peer has a queue drained by
  its own task, so a slow or dead peer never blocks the others or the node's
  loop. The queue holds at most ``queue_batches`` batches and
  ``queue_bytes`` bytes; when full, the OLDEST batches are dropped (and
  counted in ``stats.batches_overflowed``/``messages_dropped``): newer Raft
  messages supersede older ones.
- **Reconnect with backoff, dropping meanwhile.** While a stream is being
  opened, flushed batches wait in the queue. If the open fails, the peer is
  down: what was queued is dropped, and so is everything flushed until the
  next attempt, made after an exponential backoff (``initial_backoff``
  doubling to ``max_backoff``, each delay scaled by a factor in [0.5, 1) from
  the injected ``random.Random``). If an established stream breaks, its queue
  is dropped and the sender reopens at once, unless the stream lived less
  than ``max_backoff``, which counts as a failed attempt. Dropping is safe:
  Raft retransmits anything unacknowledged, and ``unreachable()`` reports the
  peer so the leader falls back to probing instead of streaming appends into
  the void.
- **Traffic per peer node.** ``traffic`` counts, per peer node, the messages
  and bytes written to its streams (both lanes) and received from it, as
  encoded on the wire (for the node's metrics, ``shardkv.metrics``).

The node owns the gRPC server: it creates it with ``server_options()`` (the
default receive limit of 4 MiB would refuse large batches), calls
``register(server)`` before starting it, and closes the transport before
stopping the server. ``update_peers`` starts sender tasks, so it must run on
the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import grpc
import grpc.aio

from shardkv.failpoints import failpoint
from shardkv.node.codec import fill_message, message_from_proto
from shardkv.node.netfaults import NetFaults
from shardkv.node.transport import MessageTooLarge, TransportBase, TransportStats
from shardkv.raft.types import Message, MessageType
from shardkv.tls import TlsMaterial, open_channel
from shardkv.v1.raft_pb2 import DESCRIPTOR, RaftBatch, RaftBatchAck

__all__ = ["GrpcTransport", "GrpcTransportOptions", "PeerTraffic", "server_options"]

_log = logging.getLogger(__name__)

_SERVICE = DESCRIPTOR.services_by_name["RaftTransport"]
_METHOD_NAME = _SERVICE.methods_by_name["Stream"].name
_STREAM_PATH = f"/{_SERVICE.full_name}/{_METHOD_NAME}"

FROM_NODE_KEY = "shardkv-from-node"
TO_NODE_KEY = "shardkv-to-node"
NODE_ID_KEY = "shardkv-node-id"
LANE_KEY = "shardkv-lane"
# At most one acknowledgement write per inbound stream per this many seconds.
ACK_INTERVAL = 0.05
RAFT_LANE = "raft"
SNAPSHOT_LANE = "snapshot"

# Upper bound of what wrapping one Message into a GroupMessage inside a
# RaftBatch adds: three tags, two length varints, the group id varint.
_FRAMING_BYTES = 24

_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class GrpcTransportOptions:
    """Limits and timings. Sizes in bytes, times in seconds."""

    # A flush splits a peer's messages into batches of at most this many bytes.
    batch_bytes: int = 4 * _MIB
    # gRPC's send/receive limit on both ends; a single larger message is refused by send().
    max_message_bytes: int = 64 * _MIB
    # Per-peer queue bounds; beyond either, the oldest batches are dropped.
    queue_batches: int = 1024
    queue_bytes: int = 64 * _MIB
    # The snapshot lane's queue bound, in batches (its byte bound is queue_bytes).
    snapshot_queue_batches: int = 16
    # Reconnect backoff: the first delay, doubling up to the cap.
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    # Opening a stream (TCP connect and the node-id handshake) fails after this long.
    connect_timeout: float = 2.0
    # HTTP/2 keepalive pings, so that a silently dead peer breaks the stream.
    keepalive_time: float = 5.0
    keepalive_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.batch_bytes <= self.max_message_bytes:
            raise ValueError("batch_bytes must be positive and at most max_message_bytes")
        if min(self.queue_batches, self.queue_bytes, self.snapshot_queue_batches) <= 0:
            raise ValueError(
                "queue_batches, queue_bytes and snapshot_queue_batches must be positive"
            )
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("backoffs must satisfy 0 < initial_backoff <= max_backoff")
        if self.connect_timeout <= 0 or self.keepalive_time <= 0 or self.keepalive_timeout <= 0:
            raise ValueError("timeouts must be positive")


@dataclass(slots=True)
class PeerTraffic:
    """What went to one peer node and came from it since the transport was made."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0


class _Received(NamedTuple):
    """An inbound batch and the size of its encoding (measured once, while decoding)."""

    batch: RaftBatch
    size: int


def _decode(data: bytes) -> _Received:
    return _Received(RaftBatch.FromString(data), len(data))


_Context = grpc.aio.ServicerContext[_Received, RaftBatchAck]


def server_options(options: GrpcTransportOptions | None = None) -> list[tuple[str, int]]:
    """Options the node must create its ``grpc.aio.server`` with for this transport."""
    options = options or GrpcTransportOptions()
    return [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        # Accept the senders' keepalive pings on idle streams instead of
        # answering them with GOAWAY "too many pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(options.keepalive_time / 2)),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def _channel_options(options: GrpcTransportOptions) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.keepalive_time_ms", _ms(options.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(options.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC's own reconnect backoff (default up to 120 s) would otherwise
        # fail our attempts fast long after the peer is back.
        ("grpc.initial_reconnect_backoff_ms", _ms(options.initial_backoff)),
        ("grpc.max_reconnect_backoff_ms", _ms(options.max_backoff)),
        # One connection per (transport, peer): transports sharing a process
        # (tests) must not share a subchannel or its backoff.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


# Errors that mean "this call is over": gRPC's own, and the InvalidStateError
# grpc.aio raises for a write on a call that has already finished.
_CALL_ENDED = (grpc.RpcError, asyncio.InvalidStateError)


class GrpcTransport(TransportBase):
    """The ``Transport`` over gRPC; see the module docstring for what it promises."""

    def __init__(
        self,
        node_id: int,
        *,
        options: GrpcTransportOptions | None = None,
        rng: random.Random | None = None,
        tls: TlsMaterial | None = None,
    ) -> None:
        super().__init__(node_id)
        self._options = options or GrpcTransportOptions()
        self._tls = tls
        self._rng = rng or random.Random()
        self._links: dict[int, _PeerLink] = {}
        # The snapshot lane: a second link to a peer, made when a snapshot first goes there.
        self._snapshot_links: dict[int, _PeerLink] = {}
        self._snapshot_options = dataclasses.replace(
            self._options, queue_batches=self._options.snapshot_queue_batches
        )
        self._addresses: dict[int, str] = {}
        # Stopped links still closing their channel; close() waits for them.
        self._retiring: set[asyncio.Task[None]] = set()
        self._inbound: set[asyncio.Task[None]] = set()
        # Per peer node, whatever the lane; see the module docstring.
        self.traffic: dict[int, PeerTraffic] = {}
        # Test-only faults on what this node receives (shardkv.node.netfaults).
        self._faults = NetFaults.from_environment()

    @property
    def options(self) -> GrpcTransportOptions:
        return self._options

    # -- wiring, and the Transport protocol ----------------------------------------

    def register(self, server: grpc.aio.Server) -> None:
        """Add the ``RaftTransport`` service to the node's server (before it starts)."""
        handler = grpc.stream_stream_rpc_method_handler(
            self._serve_stream,
            request_deserializer=_decode,
            response_serializer=RaftBatchAck.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE.full_name, {_METHOD_NAME: handler}),)
        )

    def update_peers(self, peers: Mapping[int, str]) -> None:
        """Replace the peer map; a new or changed address gets a fresh stream."""
        self._check_open()
        self._addresses = {
            node_id: address for node_id, address in peers.items() if node_id != self.node_id
        }
        for links in (self._links, self._snapshot_links):
            for node_id in list(links):
                link = links[node_id]
                if self._addresses.get(node_id) != link.address:
                    del links[node_id]
                    self._retire(link)
        for node_id, address in self._addresses.items():
            if node_id not in self._links:
                self._links[node_id] = self._new_link(node_id, address, RAFT_LANE)

    def _new_link(self, node_id: int, address: str, lane: str) -> _PeerLink:
        options = self._snapshot_options if lane == SNAPSHOT_LANE else self._options
        return _PeerLink(
            self.node_id,
            node_id,
            address,
            lane,
            options,
            self._rng,
            self.stats,
            self._traffic_of(node_id),
            self._tls,
        )

    def _traffic_of(self, node_id: int) -> PeerTraffic:
        traffic = self.traffic.get(node_id)
        if traffic is None:
            traffic = self.traffic[node_id] = PeerTraffic()
        return traffic

    def send(self, to_node: int, group_id: int, message: Message) -> None:
        self._check_send(to_node)
        link = self._links.get(to_node)
        if link is None:
            self._drop_for(to_node)
            return
        if message.type == MessageType.SNAPSHOT:
            failpoint("snapshot.send")
            link = self._snapshot_links.get(to_node) or self._open_snapshot_lane(to_node)
        link.buffer(group_id, message)

    def _open_snapshot_lane(self, to_node: int) -> _PeerLink:
        link = self._new_link(to_node, self._addresses[to_node], SNAPSHOT_LANE)
        self._snapshot_links[to_node] = link
        return link

    async def flush(self) -> None:
        self._check_open()
        for link in self._links.values():
            link.flush()
        for link in self._snapshot_links.values():
            link.flush()

    def unreachable(self) -> frozenset[int]:
        nodes = self._take_lost()
        for node_id, link in self._links.items():
            if link.take_unreachable():
                nodes.add(node_id)
        # A snapshot lane that is only connecting has lost nothing yet: only
        # what it dropped counts, or a first snapshot would stall the peer's appends.
        for node_id, link in self._snapshot_links.items():
            if link.take_lost():
                nodes.add(node_id)
        return frozenset(nodes)

    async def _close(self) -> None:
        for links in (self._links, self._snapshot_links):
            for link in links.values():
                self._retire(link)
            links.clear()
        for task in self._inbound:
            task.cancel()
        await asyncio.gather(*self._retiring, *self._inbound, return_exceptions=True)

    def _retire(self, link: _PeerLink) -> None:
        task = link.stop()
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- inbound ------------------------------------------------------------------

    async def _serve_stream(
        self,
        requests: AsyncIterator[_Received],
        context: _Context,
    ) -> None:
        if self.closed:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"node {self.node_id} is shutting down"
            )
        from_node = await self._check_caller(context)
        await context.send_initial_metadata(((NODE_ID_KEY, str(self.node_id)),))
        lane = _metadata(context).get(LANE_KEY, RAFT_LANE)
        # The reading runs in a task of our own so that close() can end it by
        # cancelling: cancelling the servicer's task instead would leave the
        # call open (grpc.aio takes that for a cancellation by the client).
        # Returning from here then ends the stream with OK.
        reading = asyncio.create_task(
            self._read_stream(from_node, requests, context), name=f"{lane}-from-{from_node}"
        )
        self._inbound.add(reading)
        reading.add_done_callback(self._inbound.discard)
        try:
            await asyncio.wait((reading,))
        finally:
            reading.cancel()

    async def _read_stream(
        self,
        from_node: int,
        requests: AsyncIterator[_Received],
        context: _Context,
    ) -> None:
        acks = _AckWriter(context)
        try:
            async for received in requests:
                self._receive(from_node, received)
                acks.add(len(received.batch.messages))
        except _CALL_ENDED:
            return  # the sender went away; it will open a new stream
        finally:
            acks.stop()

    async def _check_caller(self, context: _Context) -> int:
        """The sender's node id from the stream's metadata; aborts the stream if it is wrong."""
        metadata = _metadata(context)
        from_value = metadata.get(FROM_NODE_KEY)
        to_value = metadata.get(TO_NODE_KEY)
        if not isinstance(from_value, str) or not from_value.isdigit() or int(from_value) <= 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a Raft stream must carry the sender's node id in {FROM_NODE_KEY!r} metadata",
            )
        if to_value != str(self.node_id):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this address serves node {self.node_id}, not node {to_value!r}: "
                "refresh the peer address map",
            )
        return int(from_value)

    def _receive(self, from_node: int, received: _Received) -> None:
        batch = received.batch
        self.stats.batches_received += 1
        traffic = self._traffic_of(from_node)
        traffic.messages_received += len(batch.messages)
        traffic.bytes_received += received.size
        for group_message in batch.messages:
            try:
                message = message_from_proto(group_message.message)
            except ValueError as exc:
                self.stats.decode_errors += 1
                _log.warning(
                    "node %d: dropped a message of group %d from node %d: %s",
                    self.node_id,
                    group_message.group_id,
                    from_node,
                    exc,
                )
                continue
            if self._faults is not None:
                delay = self._faults.inbound(from_node)
                if delay is None:
                    continue
                if delay:
                    loop = asyncio.get_running_loop()
                    loop.call_later(
                        delay, self._dispatch_late, from_node, group_message.group_id, message
                    )
                    continue
            self._dispatch(from_node, group_message.group_id, message)

    def _dispatch_late(self, from_node: int, group_id: int, message: Message) -> None:
        """A message the test-only faults delayed; nothing once the transport closed."""
        if not self.closed:
            self._dispatch(from_node, group_id, message)


def _metadata(context: _Context) -> dict[str, object]:
    return {key: value for key, value in context.invocation_metadata() or ()}


class _AckWriter:
    """Acknowledges received messages on an inbound stream, coalescing while a write is out."""

    def __init__(self, context: _Context) -> None:
        self._context = context
        self._pending = 0
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="raft-transport-acks")

    def add(self, count: int) -> None:
        self._pending += count
        self._ready.set()

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            ack = RaftBatchAck()
            ack.count, self._pending = self._pending, 0
            try:
                await self._context.write(ack)
            except _CALL_ENDED:
                return  # the stream is over; the reading side ends too
            await asyncio.sleep(ACK_INTERVAL)


@dataclass(slots=True)
class _Batch:
    """A batch being filled by ``send``; ``size`` is an upper bound of its encoding."""

    proto: RaftBatch = field(default_factory=RaftBatch)
    messages: int = 0
    size: int = 0


class _Chunk(NamedTuple):
    """A flushed batch, serialized: what the sender task writes."""

    data: bytes
    messages: int


def _serialized(data: bytes) -> bytes:
    return data


class _ConnectFailed(Exception):
    """Opening the stream to a peer failed; internal to the sender task."""


class _PeerLink:
    """One lane to a peer node: its channel, its outgoing stream, and the queue its task drains.

    States: ``connecting`` (flushes queue up), ``up`` (the task writes the
    queue), ``down`` (backing off: flushes are dropped).

    The queue holds serialized ``RaftBatch``es, so that chunks can be joined
    without decoding: concatenated protobuf encodings parse as one message
    whose repeated fields are concatenated.
    """

    def __init__(
        self,
        node_id: int,
        peer_id: int,
        address: str,
        lane: str,
        options: GrpcTransportOptions,
        rng: random.Random,
        stats: TransportStats,
        traffic: PeerTraffic,
        tls: TlsMaterial | None,
    ) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        self.address = address
        self.lane = lane
        self._options = options
        self._rng = rng
        self._stats = stats
        self._traffic = traffic
        self._state = "connecting"
        # Messages lost for this peer since the last take_unreachable().
        self._lost = False
        # Batches of the current round, not yet flushed; the last one is open.
        self._pending: list[_Batch] = []
        self._queue: deque[_Chunk] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        # Set by stop(). The task is cancelled too, but a cancellation can be
        # lost in a race inside gRPC's awaitables, so its loops check this.
        self._stopping = False
        self._channel = open_channel(address, tls, options=_channel_options(options))
        self._stream: grpc.aio.StreamStreamMultiCallable[bytes, RaftBatchAck] = (
            self._channel.stream_stream(
                _STREAM_PATH,
                request_serializer=_serialized,
                response_deserializer=RaftBatchAck.FromString,
            )
        )
        self._task = asyncio.create_task(self._run(), name=f"{lane}-transport-to-{peer_id}")

    # -- called by the transport, on the node's loop --------------------------------

    def buffer(self, group_id: int, message: Message) -> None:
        """Encode ``message`` straight into the batch it travels in (no copy)."""
        pending = self._pending
        if not pending:
            pending.append(_Batch())
        batch = pending[-1]
        group_message = batch.proto.messages.add()
        group_message.group_id = group_id
        fill_message(group_message.message, message)
        size = group_message.message.ByteSize() + _FRAMING_BYTES
        if size > self._options.max_message_bytes:
            del batch.proto.messages[-1]
            raise MessageTooLarge(group_id, size, self._options.max_message_bytes)
        if batch.messages and batch.size + size > self._options.batch_bytes:
            # Rare: the batch is full; this message opens the next one.
            moved = _Batch()
            moved.proto.messages.add().CopyFrom(group_message)
            del batch.proto.messages[-1]
            pending.append(moved)
            batch = moved
        batch.messages += 1
        batch.size += size

    def flush(self) -> None:
        if not self._pending:
            return
        batches, self._pending = self._pending, []
        if self._state == "down":
            self._drop(sum(batch.messages for batch in batches))
            return
        for batch in batches:
            chunk = _Chunk(batch.proto.SerializeToString(), batch.messages)
            self._queue.append(chunk)
            self._queued_bytes += len(chunk.data)
        options = self._options
        while len(self._queue) > 1 and (
            len(self._queue) > options.queue_batches or self._queued_bytes > options.queue_bytes
        ):
            oldest = self._queue.popleft()
            self._queued_bytes -= len(oldest.data)
            self._stats.batches_overflowed += 1
            self._drop(oldest.messages)
        self._wakeup.set()

    def take_unreachable(self) -> bool:
        """Whether messages may have been lost since the last call; resets the mark."""
        unreachable = self._lost or self._state != "up"
        self._lost = False
        return unreachable

    def take_lost(self) -> bool:
        """Whether messages were dropped since the last call; resets the mark."""
        lost, self._lost = self._lost, False
        return lost

    def stop(self) -> asyncio.Task[None]:
        self._drop(sum(batch.messages for batch in self._pending))
        self._pending = []
        self._stopping = True
        self._wakeup.set()
        self._task.cancel()
        return self._task

    # -- the sender task ------------------------------------------------------------

    def _drop(self, messages: int) -> None:
        if messages:
            self._stats.messages_dropped += messages
            self._lost = True

    def _go_down(self) -> None:
        self._state = "down"
        self._drop(sum(chunk.messages for chunk in self._queue))
        self._queue.clear()
        self._queued_bytes = 0

    def _take_write(self) -> _Chunk:
        """Pop the oldest chunk, with the ones after it that fit in the same batch."""
        first = self._queue.popleft()
        self._queued_bytes -= len(first.data)
        queue, budget = self._queue, self._options.batch_bytes
        if not queue or len(first.data) + len(queue[0].data) > budget:
            return first
        parts, size, messages = [first.data], len(first.data), first.messages
        while queue and size + len(queue[0].data) <= budget:
            chunk = queue.popleft()
            parts.append(chunk.data)
            size += len(chunk.data)
            messages += chunk.messages
        self._queued_bytes -= size - len(first.data)
        return _Chunk(b"".join(parts), messages)

    def _backoff(self, attempt: int) -> float:
        base = self._options.initial_backoff * (1 << min(attempt - 1, 30))
        return min(self._options.max_backoff, base) * self._rng.uniform(0.5, 1.0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while not self._stopping:
                self._state = "connecting"
                try:
                    call = await self._open()
                except _ConnectFailed as exc:
                    attempt += 1
                    log = _log.warning if attempt == 1 else _log.debug
                    log(
                        "node %d: cannot open a %s stream to node %d at %s (%s); retrying",
                        self.node_id,
                        self.lane,
                        self.peer_id,
                        self.address,
                        exc,
                    )
                    self._go_down()
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                self._state = "up"
                self._stats.connects += 1
                opened_at = loop.time()
                _log.info(
                    "node %d: %s stream to node %d is up", self.node_id, self.lane, self.peer_id
                )
                try:
                    reason = await self._pump(call)
                except Exception as exc:  # a bug here must not end this peer's sender for good
                    _log.exception("node %d: sender to node %d failed", self.node_id, self.peer_id)
                    reason = _describe(exc)
                finally:
                    call.cancel()
                self._go_down()
                if self._stopping:
                    break
                _log.warning(
                    "node %d: %s stream to node %d broke (%s)",
                    self.node_id,
                    self.lane,
                    self.peer_id,
                    reason,
                )
                if loop.time() - opened_at >= self._options.max_backoff:
                    attempt = 0
                else:
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt))
        finally:
            self._go_down()
            await self._channel.close(None)

    async def _open(self) -> grpc.aio.StreamStreamCall[bytes, RaftBatchAck]:
        call = self._stream(
            None,
            metadata=(
                (FROM_NODE_KEY, str(self.node_id)),
                (TO_NODE_KEY, str(self.peer_id)),
                (LANE_KEY, self.lane),
            ),
            wait_for_ready=False,
        )
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can
            # swallow a cancellation that races with the result.
            async with asyncio.timeout(self._options.connect_timeout):
                metadata = await call.initial_metadata()
            confirmed = metadata.get(NODE_ID_KEY)
            if confirmed is None:
                # The call ended before the peer's handshake: its status says why.
                raise _ConnectFailed(f"{(await call.code()).name}: {await call.details()}")
            if confirmed != str(self.peer_id):
                raise _ConnectFailed(f"the address serves node {confirmed!r}")
        except TimeoutError:
            call.cancel()
            raise _ConnectFailed(f"no answer in {self._options.connect_timeout} s") from None
        except _CALL_ENDED as exc:
            call.cancel()
            raise _ConnectFailed(_describe(exc)) from exc
        except _ConnectFailed:
            call.cancel()
            raise
        return call

    async def _pump(self, call: grpc.aio.StreamStreamCall[bytes, RaftBatchAck]) -> str:
        """Write queued batches until the stream ends; return why it ended."""
        reader = asyncio.create_task(self._read_acks(call), name=f"raft-acks-from-{self.peer_id}")
        reader.add_done_callback(lambda _: self._wakeup.set())
        try:
            while not reader.done():
                if self._stopping:
                    return "the transport is closing"
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                chunk = self._take_write()
                try:
                    await call.write(chunk.data)
                except _CALL_ENDED as exc:
                    self._drop(chunk.messages)
                    return _describe(exc)
                self._stats.batches_sent += 1
                self._stats.messages_sent += chunk.messages
                self._traffic.messages_sent += chunk.messages
                self._traffic.bytes_sent += len(chunk.data)
                if self.lane == SNAPSHOT_LANE:
                    self._stats.snapshot_messages_sent += chunk.messages
            return reader.result()
        finally:
            reader.cancel()

    async def _read_acks(self, call: grpc.aio.StreamStreamCall[bytes, RaftBatchAck]) -> str:
        try:
            async for ack in call:
                self._stats.messages_acked += ack.count
        except _CALL_ENDED as exc:
            return _describe(exc)
        return "closed by the peer"
