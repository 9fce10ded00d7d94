"""What a router knows of the cluster: the map, the routing, and who leads each group.

``Topology`` keeps the newest ``ClusterMap`` it has heard from any node
(``GetClusterMap``; the highest ring epoch, then map version, wins, so a lagging node never
takes the router back), the ``Routing`` built from it (the ring, and during a
ring change the moves already served by their target: ``shardkv.ring``), one
gRPC channel per node, and a cache of each group's leader:

- the map is polled every ``poll_interval`` seconds from the seed addresses
  and every node of the map, and at once when a node answers with a newer
  epoch than ours (``refresh``); callers wait for the first map with
  ``ready()``, and for the next newer one with ``changed(timeout)`` (during
  a migration a move advancing changes the map's version, not its epoch);
- a leader is learnt from NOT_LEADER hints; with no hint, or after a node
  failed, the next replica is tried in turn (``next_candidate``), so a group
  whose leader died is found again in at most one pass over its replicas.

Routers are stateless: all of this is a cache, rebuilt from the nodes at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

import grpc
import grpc.aio

from shardkv.ring import Routing, map_order
from shardkv.tls import TlsMaterial, open_channel
from shardkv.v1 import cluster_pb2, node_pb2, node_pb2_grpc

__all__ = ["Topology"]

_log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Topology:
    def __init__(
        self,
        seeds: Sequence[str],
        *,
        poll_interval: float = 1.0,
        tls: TlsMaterial | None = None,
    ) -> None:
        if not seeds:
            raise ValueError("a router needs the address of at least one node")
        self.seeds = list(seeds)
        self.poll_interval = poll_interval
        self._tls = tls
        self.map: cluster_pb2.ClusterMap | None = None
        self.ring: Routing | None = None
        self._addresses: dict[int, str] = {}
        self._replicas: dict[int, tuple[int, ...]] = {}
        self._leaders: dict[int, int] = {}
        # Which replica to try next for a group with no known leader.
        self._turn: dict[int, int] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, node_pb2_grpc.NodeStub] = {}
        self._have_map = asyncio.Event()
        # Set and replaced by every map taken: ``changed`` waits on the current one.
        self._map_changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever(), name="router-topology")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._stubs.clear()

    async def ready(self) -> None:
        """Until the first map is known."""
        await self._have_map.wait()

    def refresh(self) -> None:
        """Poll for a newer map now (a node answered with a newer epoch)."""
        self._poke.set()

    def moved(self, source: int, target: int, epoch: int) -> bool:
        """A group said its keys moving to ``target`` in the migration to ring ``epoch``
        are no longer served by it: route them there before the map says so (the
        target holds or refuses them until it serves them). False when our map knows
        no such migration (it predates it, or is of another): wait for a newer one."""
        if self.ring is None or self.ring.target is None or self.ring.target.epoch != epoch:
            return False
        self.ring = self.ring.with_active(source, target)
        return True

    async def changed(self, timeout: float) -> bool:
        """Wait until ``learn`` takes a newer map, at most ``timeout`` seconds; whether it did."""
        event = self._map_changed
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
        except TimeoutError:
            return False
        return True

    # -- the map ----------------------------------------------------------------------

    def learn(self, cluster_map: cluster_pb2.ClusterMap) -> bool:
        """Take ``cluster_map`` if it is at least as new as ours; whether it changed anything."""
        if self.map is not None and map_order(cluster_map) < map_order(self.map):
            return False
        if self.map == cluster_map:
            return False
        before = self.ring
        self.map = cluster_map
        self.ring = Routing(cluster_map).keeping(before)
        self._addresses = {node.node_id: node.address for node in cluster_map.nodes}
        self._replicas = {group.group_id: tuple(group.replicas) for group in cluster_map.groups}
        for group_id in list(self._leaders):
            if self._leaders[group_id] not in self._replicas.get(group_id, ()):
                del self._leaders[group_id]
        self._have_map.set()
        self._map_changed.set()
        self._map_changed = asyncio.Event()
        # A migration's progress changes the map often; only a change of where
        # keys go is worth a line at info.
        moved = before is None or (before.epoch, before.groups, before.active) != (
            self.ring.epoch,
            self.ring.groups,
            self.ring.active,
        )
        _log.log(
            logging.INFO if moved else logging.DEBUG,
            "cluster map of epoch %d, version %d: %d groups%s",
            cluster_map.ring.epoch,
            cluster_map.version,
            len(self._replicas),
            " (migrating)" if cluster_map.HasField("migration") else "",
        )
        return True

    @property
    def epoch(self) -> int:
        return self.map.ring.epoch if self.map is not None else 0

    @property
    def version(self) -> int:
        """The map's version: it rises with every change, a move's progress included."""
        return self.map.version if self.map is not None else 0

    def current_ring(self) -> Routing:
        if self.ring is None:
            raise LookupError("no cluster map yet")
        return self.ring

    def replicas(self, group_id: int) -> tuple[int, ...]:
        return self._replicas.get(group_id, ())

    def address(self, node_id: int) -> str | None:
        return self._addresses.get(node_id)

    @property
    def nodes(self) -> dict[int, str]:
        return dict(self._addresses)

    # -- leaders ----------------------------------------------------------------------

    def next_candidate(self, group_id: int) -> int | None:
        """The node to send the group's next request to: its leader, or a replica in turn."""
        leader = self._leaders.get(group_id)
        if leader is not None:
            return leader
        replicas = self._replicas.get(group_id, ())
        if not replicas:
            return None
        turn = self._turn.get(group_id, group_id)
        return replicas[turn % len(replicas)]

    def leader_is(self, group_id: int, node_id: int) -> None:
        if node_id in self._replicas.get(group_id, ()):
            self._leaders[group_id] = node_id

    def failed(self, group_id: int, node_id: int) -> None:
        """``node_id`` did not serve the group: try the next replica next time."""
        if self._leaders.get(group_id) == node_id:
            del self._leaders[group_id]
        replicas = self._replicas.get(group_id, ())
        if node_id in replicas:
            self._turn[group_id] = replicas.index(node_id) + 1

    def stub(self, node_id: int) -> node_pb2_grpc.NodeStub | None:
        address = self._addresses.get(node_id)
        return self.stub_at(address) if address is not None else None

    def stub_at(self, address: str) -> node_pb2_grpc.NodeStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = open_channel(address, self._tls, options=_CHANNEL_OPTIONS)
            self._channels[address] = channel
            stub = self._stubs[address] = node_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]
        return stub

    # -- polling ----------------------------------------------------------------------

    def _poll_addresses(self) -> Iterable[str]:
        return dict.fromkeys([*self._addresses.values(), *self.seeds])

    async def poll_once(self) -> None:
        async def ask(address: str) -> cluster_pb2.ClusterMap | None:
            try:
                response: node_pb2.GetClusterMapResponse = await self.stub_at(
                    address
                ).GetClusterMap(node_pb2.GetClusterMapRequest(), timeout=1.0)
            except grpc.aio.AioRpcError:
                return None
            return response.map if response.HasField("map") else None

        answers = await asyncio.gather(*(ask(address) for address in self._poll_addresses()))
        for answer in sorted((answer for answer in answers if answer is not None), key=map_order):
            self.learn(answer)

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # the poller must outlive any one bad answer
                _log.exception("polling the cluster map failed")
            interval = self.poll_interval if self.map is not None else 0.1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._poke.wait()
            self._poke.clear()
