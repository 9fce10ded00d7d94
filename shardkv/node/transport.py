"""The seam between the node's loop and the network: the ``Transport`` protocol.

This module owns the interface every transport implements, the errors they
raise, their counters, and the plumbing the implementations share. The two
implementations live beside it: ``transport_grpc.GrpcTransport`` (one
long-lived gRPC stream per pair of nodes) and ``transport_memory``'s
``MemoryTransport`` on a ``MemoryNetwork`` (one event loop, with filters, for
tests).

The contract, for every round of the node's loop:

1. ``send(to_node, group_id, message)`` for every message of every group's
   Ready. It only buffers (it may encode, so it may raise
   ``MessageTooLarge``); nothing touches the network.
2. ``await flush()`` once. Every message buffered for one peer node leaves as
   one batch (split only where a batch would exceed a byte budget), never one
   RPC per message. ``flush`` hands the batches over and returns without
   waiting for the network.
3. ``unreachable()``: the peer nodes to which messages may have been lost since
   the previous call (their stream is down, or the transport dropped something
   for them). The node calls ``RawNode.report_unreachable`` for them in every
   group they share.

Delivery is best effort: a transport may drop messages (a peer down, a stream
broken, a queue full) and never retries them itself. That is safe because
Raft retransmits whatever is not acknowledged (appends, snapshot chunks,
votes on the next election timeout, heartbeats on the next tick); it only
needs to hear about lost messages early, which is what ``unreachable()`` is
for. Messages from one node to another arrive in the order they were sent,
unless some were dropped between them (a memory network's delay filters may
reorder too, as a real network could).

Receiving: the node registers ONE callback with ``set_handler``; the
transport calls it as ``handler(from_node, group_id, message)`` for every
message that arrives, in arrival order, on the event loop. (A callback
rather than an async iterator: the node's loop batches per round anyway, so
the handler only appends to the node's inbox and wakes its loop; no queue
in between and no task per peer on the receiving side.) The handler must
not block and should not raise; an exception it raises is logged, counted in
``stats.handler_errors``, and costs that one message only. Messages that
arrive before a handler is set are dropped (and counted).

Peers are named by node id; ``update_peers({node_id: address})`` replaces the
whole map (an entry for the transport's own node is ignored). Sending to a
node that has no address drops the message and reports that node in
``unreachable()``. Sending to one's own node is a programming error
(``ValueError``): groups on the same node talk through the node's loop.

Lifecycle: a transport is an async context manager; ``close()`` is
idempotent, and ``send``/``flush`` after it raise ``TransportClosed``.

Errors::

    TransportError
    ├── TransportClosed    the transport was used after close()
    └── MessageTooLarge    one message is larger than the transport can ever carry
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from shardkv.raft.types import Message

__all__ = [
    "MessageHandler",
    "MessageTooLarge",
    "Transport",
    "TransportBase",
    "TransportClosed",
    "TransportError",
    "TransportStats",
]

_log = logging.getLogger(__name__)

MessageHandler = Callable[[int, int, Message], None]
"""``handler(from_node, group_id, message)``: one received message."""


class TransportError(Exception):
    """Root of every error a transport raises itself."""


class TransportClosed(TransportError):
    """The transport was used after ``close()``."""


class MessageTooLarge(TransportError):
    """One message is larger than a transport message may ever be.

    Raft must be configured to stay below it: ``max_size_per_msg`` and
    ``snapshot_chunk_size`` well under the transport's ``max_message_bytes``.
    """

    def __init__(self, group_id: int, size: int, limit: int) -> None:
        super().__init__(
            f"a message of group {group_id} takes {size} bytes, over the transport's limit of "
            f"{limit}: lower the Raft max_size_per_msg / snapshot_chunk_size, or raise "
            "max_message_bytes"
        )
        self.group_id = group_id
        self.size = size
        self.limit = limit


@dataclass(slots=True)
class TransportStats:
    """Counters since the transport was made; they only grow."""

    # Handed to the network: written to a stream, or scheduled on a memory network.
    messages_sent: int = 0
    # Units of sending: stream writes (gRPC), deliveries (memory).
    batches_sent: int = 0
    # Never handed to the network: no address, stream down, queue full, stream broke.
    messages_dropped: int = 0
    # Batches pushed out of a full per-peer queue (their messages are in messages_dropped).
    batches_overflowed: int = 0
    # Acknowledged by the receiving transport (gRPC only).
    messages_acked: int = 0
    # Given to the handler.
    messages_received: int = 0
    batches_received: int = 0
    # Arrived while no handler was set.
    messages_unhandled: int = 0
    # The handler raised (logged, message lost).
    handler_errors: int = 0
    # Arrived but could not be decoded (a newer protocol); logged, message lost.
    decode_errors: int = 0
    # Outgoing streams opened successfully (gRPC only).
    connects: int = 0
    # Of messages_sent, those on the snapshot lane (gRPC only).
    snapshot_messages_sent: int = 0


@runtime_checkable
class Transport(Protocol):
    """What the node needs of a transport; see the module docstring for the contract."""

    @property
    def node_id(self) -> int: ...

    @property
    def stats(self) -> TransportStats: ...

    def set_handler(self, handler: MessageHandler) -> None: ...

    def update_peers(self, peers: Mapping[int, str]) -> None: ...

    def send(self, to_node: int, group_id: int, message: Message) -> None: ...

    async def flush(self) -> None: ...

    def unreachable(self) -> frozenset[int]: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class TransportBase:
    """Plumbing every implementation shares: handler, dispatch, counters, lifecycle.

    Not part of the seam: the node sees only ``Transport``. Subclasses
    implement ``send``, ``flush``, ``update_peers``, ``unreachable`` and
    ``_close``; ``_drop_for`` and ``_take_lost`` keep the nodes that lost
    messages between two ``unreachable()`` calls.
    """

    def __init__(self, node_id: int) -> None:
        if node_id <= 0:
            raise ValueError(f"node ids are positive, got {node_id}")
        self._node_id = node_id
        self._stats = TransportStats()
        self._handler: MessageHandler | None = None
        self._closed = False
        # Nodes we dropped messages for since the last _take_lost().
        self._lost: set[int] = set()

    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def stats(self) -> TransportStats:
        return self._stats

    @property
    def closed(self) -> bool:
        return self._closed

    def set_handler(self, handler: MessageHandler) -> None:
        self._handler = handler

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"transport of node {self._node_id} is closed")

    def _check_send(self, to_node: int) -> None:
        self._check_open()
        if to_node == self._node_id:
            raise ValueError(f"node {to_node} sent a message to itself through its transport")

    def _drop_for(self, to_node: int, messages: int = 1) -> None:
        """Drop ``messages`` for ``to_node``: count them, and report the node as unreachable."""
        self._stats.messages_dropped += messages
        self._lost.add(to_node)

    def _take_lost(self) -> set[int]:
        """The nodes ``_drop_for`` dropped messages for since the last call; resets them."""
        lost, self._lost = self._lost, set()
        return lost

    def _dispatch(self, from_node: int, group_id: int, message: Message) -> None:
        """Give one received message to the handler, counting what happens to it."""
        handler = self._handler
        if handler is None:
            self._stats.messages_unhandled += 1
            return
        self._stats.messages_received += 1
        try:
            handler(from_node, group_id, message)
        except Exception:
            self._stats.handler_errors += 1
            _log.exception(
                "node %d: the message handler raised on a %s of group %d from node %d",
                self._node_id,
                message.type.name,
                group_id,
                from_node,
            )

    async def close(self) -> None:
        """Stop sending and receiving; harmless to call again."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    async def _close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
