"""``MemoryTransport`` on a ``MemoryNetwork``: the transport seam for in-process tests.

This module owns a network of transports that live in one event loop, and its
filters, in the manner of TiKV's test transport. Each ``MemoryTransport``
keeps the ``Transport`` contract of ``shardkv.node.transport`` exactly as
``GrpcTransport`` does (buffer on ``send``, one delivery per peer per
``flush``, send order kept per pair, the same ``unreachable()`` rules), so
the node under test runs the code it runs in production.

What the network promises:

- **Copies, not shared objects.** ``send`` takes a copy of the message at
  once: with ``serialize=True`` (the default) a full protobuf round trip
  through the codec, exactly what gRPC would carry; otherwise a shallow copy
  with its own entry list. No two nodes ever share a mutable ``Message``.
- **Asynchronous delivery.** ``flush`` never calls a handler itself: each
  peer's messages of one flush are delivered together by one callback on the
  event loop (``call_soon``), so handlers never run inside the sender's
  round and FIFO order per pair holds.
- **Filters**, checked when a flush hands a message to the network, in this
  order: link cuts (``cut`` one way, ``partition``, ``isolate``), then
  ``drop`` rules, then ``delay`` rules (the longest matching delay wins;
  delayed messages may overtake one another, as on a real network). Cuts
  are checked again on delivery: a message in flight when a partition starts
  is lost, like the TCP connection it rode on. A message dropped by a filter
  is a silent loss (the lossy network Raft is built for): it counts in
  ``stats.dropped``, not in the sender's ``unreachable()``.
- **Time** comes from an injected scheduler, ``scheduler(delay, callback)``;
  by default the running loop's ``call_later`` with delays in seconds. A test
  can pass one driven by a manual clock or by the node's ticks; a delay is
  then in that clock's unit.
- **Liveness.** A transport is on the network from construction until
  ``close()``; a new transport with the same id is that node restarted.
  Messages for a node with no live transport, or still in flight to an
  incarnation that has closed, are lost, and a sender that sent to a node
  with no live transport reports it in ``unreachable()``, as it would a
  stream that is down. ``update_peers`` names the peers a transport may
  send to; their addresses are ignored.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from shardkv.node.codec import message_from_proto, message_to_proto
from shardkv.node.transport import TransportBase, TransportError
from shardkv.raft.types import Message, MessageType
from shardkv.v1 import raft_pb2

__all__ = [
    "Filter",
    "MemoryNetwork",
    "MemoryNetworkStats",
    "MemoryTransport",
    "Predicate",
    "Scheduler",
]

Predicate = Callable[[int, int, int, Message], bool]
"""``predicate(from_node, to_node, group_id, message)``: whether a filter applies."""

Scheduler = Callable[[float, Callable[[], None]], object]
"""``scheduler(delay, callback)``: run ``callback`` once ``delay`` has passed."""


def _loop_scheduler(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


def _everything(from_node: int, to_node: int, group_id: int, message: Message) -> bool:
    return True


@dataclass(slots=True)
class MemoryNetworkStats:
    # Handed to the network by a flush.
    sent: int = 0
    # Given to the receiving transport.
    delivered: int = 0
    # Lost to a filter or cut, or in flight to a node that went away.
    dropped: int = 0
    # Held back by a delay filter.
    delayed: int = 0


class Filter:
    """One drop or delay rule on a network; ``remove()`` takes it off (idempotent)."""

    def __init__(
        self, network: MemoryNetwork, predicate: Predicate, delay: float, jitter: float
    ) -> None:
        self._network = network
        self.predicate = predicate
        # Zero for a drop rule.
        self.delay = delay
        self.jitter = jitter

    @property
    def drops(self) -> bool:
        return self.delay == 0

    def remove(self) -> None:
        self._network._remove_filter(self)


# One message on its way: (from_node, to_node, group_id, message).
_Packet = tuple[int, int, int, Message]


class MemoryNetwork:
    """Transports of one event loop, and the filters between them."""

    def __init__(
        self,
        *,
        serialize: bool = True,
        rng: random.Random | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.serialize = serialize
        self.stats = MemoryNetworkStats()
        self._rng = rng or random.Random(0)
        self._scheduler = scheduler or _loop_scheduler
        self._transports: dict[int, MemoryTransport] = {}
        self._filters: list[Filter] = []
        self._cuts: set[tuple[int, int]] = set()
        self._isolated: set[int] = set()

    # -- nodes --------------------------------------------------------------------

    def nodes(self) -> frozenset[int]:
        """Ids of the nodes with a live transport."""
        return frozenset(self._transports)

    def is_live(self, node_id: int) -> bool:
        return node_id in self._transports

    # -- filters ------------------------------------------------------------------

    def drop(self, predicate: Predicate) -> Filter:
        """Drop every message ``predicate`` holds for."""
        return self._add_filter(Filter(self, predicate, 0.0, 0.0))

    def drop_type(self, message_type: MessageType, *, group_id: int | None = None) -> Filter:
        """Drop every message of one type (of one group, if given)."""

        def matches(from_node: int, to_node: int, message_group: int, message: Message) -> bool:
            return message.type == message_type and group_id in (None, message_group)

        return self.drop(matches)

    def delay(
        self, delay: float, predicate: Predicate | None = None, *, jitter: float = 0.0
    ) -> Filter:
        """Hold back matching messages for ``delay`` plus up to ``jitter``.

        Without a predicate, every message. Units are the scheduler's
        (seconds on the event loop).
        """
        if delay <= 0 or jitter < 0:
            raise ValueError("a delay is positive and its jitter not negative")
        return self._add_filter(Filter(self, predicate or _everything, delay, jitter))

    def clear_filters(self) -> None:
        """Remove every drop and delay rule (cuts stay: see ``heal``)."""
        self._filters.clear()

    def cut(self, from_node: int, to_node: int) -> None:
        """Lose everything ``from_node`` sends to ``to_node``; the other way still works."""
        self._cuts.add((from_node, to_node))

    def partition(self, *sides: Iterable[int]) -> None:
        """Cut every link between nodes on different sides, both ways."""
        groups = [frozenset(side) for side in sides]
        for position, side in enumerate(groups):
            for other in groups[position + 1 :]:
                for node in side:
                    for peer in other:
                        self._cuts.add((node, peer))
                        self._cuts.add((peer, node))

    def isolate(self, node_id: int) -> None:
        """Cut a node off from every other, including nodes that start later."""
        self._isolated.add(node_id)

    def heal(self) -> None:
        """Restore every link (cuts, partitions, isolations); drop and delay rules stay."""
        self._cuts.clear()
        self._isolated.clear()

    def is_cut(self, from_node: int, to_node: int) -> bool:
        return (
            from_node in self._isolated
            or to_node in self._isolated
            or (from_node, to_node) in self._cuts
        )

    def _add_filter(self, network_filter: Filter) -> Filter:
        self._filters.append(network_filter)
        return network_filter

    def _remove_filter(self, network_filter: Filter) -> None:
        if network_filter in self._filters:
            self._filters.remove(network_filter)

    # -- carrying messages ------------------------------------------------------------

    def _attach(self, transport: MemoryTransport) -> None:
        if transport.node_id in self._transports:
            raise TransportError(
                f"node {transport.node_id} already has a live transport on this network"
            )
        self._transports[transport.node_id] = transport

    def _detach(self, transport: MemoryTransport) -> None:
        if self._transports.get(transport.node_id) is transport:
            del self._transports[transport.node_id]

    def _wire_copy(self, message: Message) -> Message:
        if self.serialize:
            data = message_to_proto(message).SerializeToString()
            return message_from_proto(raft_pb2.Message.FromString(data))
        wire = copy.copy(message)
        wire.entries = list(message.entries)
        return wire

    def _carry(self, from_node: int, to_node: int, packets: list[_Packet]) -> int:
        """Put one flush's messages for one peer on the wire; return how many batches left."""
        target = self._transports[to_node]
        now: list[_Packet] = []
        batches = 0
        for packet in packets:
            self.stats.sent += 1
            delay = self._delay_of(packet)
            if delay is None:
                self.stats.dropped += 1
            elif delay == 0:
                now.append(packet)
            else:
                self.stats.delayed += 1
                batches += 1
                self._scheduler(delay, functools.partial(self._deliver, target, [packet]))
        if now:
            batches += 1
            asyncio.get_running_loop().call_soon(self._deliver, target, now)
        return batches

    def _delay_of(self, packet: _Packet) -> float | None:
        """None to drop the packet, else how long to hold it back (0: not at all)."""
        from_node, to_node, group_id, message = packet
        if self.is_cut(from_node, to_node):
            return None
        delay = 0.0
        for network_filter in self._filters:
            if network_filter.predicate(from_node, to_node, group_id, message):
                if network_filter.drops:
                    return None
                held = network_filter.delay + self._rng.uniform(0.0, network_filter.jitter)
                delay = max(delay, held)
        return delay

    def _deliver(self, target: MemoryTransport, packets: list[_Packet]) -> None:
        if self._transports.get(target.node_id) is not target:
            self.stats.dropped += len(packets)
            return
        delivered = [packet for packet in packets if not self.is_cut(packet[0], packet[1])]
        self.stats.dropped += len(packets) - len(delivered)
        if delivered:
            self.stats.delivered += len(delivered)
            target._receive(delivered)


class MemoryTransport(TransportBase):
    """The ``Transport`` on a ``MemoryNetwork``; on the network from construction to close."""

    def __init__(self, node_id: int, network: MemoryNetwork) -> None:
        super().__init__(node_id)
        self._network = network
        self._peers: frozenset[int] = frozenset()
        self._pending: dict[int, list[_Packet]] = {}
        network._attach(self)

    @property
    def network(self) -> MemoryNetwork:
        return self._network

    def update_peers(self, peers: Mapping[int, str]) -> None:
        self._check_open()
        self._peers = frozenset(node_id for node_id in peers if node_id != self.node_id)

    def send(self, to_node: int, group_id: int, message: Message) -> None:
        self._check_send(to_node)
        if to_node not in self._peers:
            self._drop_for(to_node)
            return
        packet = (self.node_id, to_node, group_id, self._network._wire_copy(message))
        self._pending.setdefault(to_node, []).append(packet)

    async def flush(self) -> None:
        self._check_open()
        pending, self._pending = self._pending, {}
        for to_node, packets in pending.items():
            if not self._network.is_live(to_node):
                self._drop_for(to_node, len(packets))
                continue
            self.stats.batches_sent += self._network._carry(self.node_id, to_node, packets)
            self.stats.messages_sent += len(packets)

    def unreachable(self) -> frozenset[int]:
        down = {node_id for node_id in self._peers if not self._network.is_live(node_id)}
        return frozenset(down | self._take_lost())

    def _receive(self, packets: list[_Packet]) -> None:
        self.stats.batches_received += 1
        for from_node, _, group_id, message in packets:
            self._dispatch(from_node, group_id, message)

    async def _close(self) -> None:
        self.stats.messages_dropped += sum(len(packets) for packets in self._pending.values())
        self._pending.clear()
        self._network._detach(self)
