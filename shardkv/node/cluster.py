"""The node's view of the cluster map, and the ring it keeps its groups on.

The cluster map (``ClusterMap``: nodes, groups, the ring and its epoch) is one
value in the meta group (group 0) under ``CLUSTER_MAP_KEY``, read and changed
as a whole by compare-and-set. ``ClusterAgent`` runs beside a node's runtime,
every ``interval`` seconds and whenever woken (also when the node's replica of
the meta group applied entries: a new map is learnt in the round after):

1. **Bootstrap.** The leader of the meta group writes the initial map (from
   the static configuration every first node shares, ``initial_map``) if the
   meta group holds none: a compare-and-set on "absent", so several leaders
   over time or a restart in the middle write it once.
2. **Learn.** A node with a replica of the meta group reads the map from its
   own applied state (never older than what it applied before: epochs only
   rise); a node without one asks its peers (``GetClusterMap``) every pass
   and keeps the newest map it hears, and one whose replica does not lead
   asks them too every ``_PEER_POLL_INTERVAL`` seconds (its replica may lag,
   or have been moved away before it applied its own removal). ``map`` is
   what the node's service answers routers with.
3. **Ring.** For every data group this node leads whose applied ring is
   older than the map's, it proposes the map's ring through the group's log
   (one proposal at a time per group). From then on the group refuses keys
   the ring gives another group (``WRONG_GROUP`` with its epoch).

Joining (``add_node``): a new node asks any member; the leader of the meta
group reads the map after a ReadIndex barrier, adds the node, and writes it
back by compare-and-set on the value it read (retrying if the map moved).
Adding a node again with the same address answers the current map; another
node's id or address is a ``FailedPrecondition``. Every node dials the nodes
the map names (``transport.update_peers``), so later placement can use them.
Ring and placement changes (``change_ring``, which also sets the limit of a
ring change under way; ``change_placement``) are planned
by ``shardkv.node.ring_change`` and ``shardkv.node.placement_change`` and
written the same way (``update_map``); the meta leader's drivers carry them
out.

4. **Replicas.** The node starts the replicas the map gives it and drops the
   ones the map took away (``_place_replicas``; new groups, replica moves,
   retired groups).
5. **Leaders spread.** Each group has a preferred leader: the one the map
   names (``GroupInfo.preferred_leader``: transfer-leader, rebalance), else
   the voter at position ``group_id mod voters`` of its sorted voters, so the
   groups' leaders spread over the nodes instead of piling on whichever node
   won the first elections. A leader that is not the preferred one hands the
   lead over (Raft's leadership transfer) when the preferred node is
   reachable and caught up, at most once per ``transfer_backoff`` seconds
   per group, so a flapping node cannot make the lead ping-pong.

Decision: the meta group is a key-value group like the others, holding the
map under a reserved key; it gets no ring and is never on one. The map is
small (nodes and groups), so whole-value compare-and-set is simple and safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import grpc
import grpc.aio

from shardkv.errors import FailedPrecondition, NotLeader, ProposalFailed, ShardKVError
from shardkv.node.config import NodeConfig
from shardkv.node.passes import Passes
from shardkv.node.placement_change import plan_placement
from shardkv.node.ring_change import plan_change
from shardkv.node.runtime import NodeRuntime
from shardkv.raft import Role
from shardkv.ring import map_order, ring_of
from shardkv.tls import TlsMaterial, open_channel
from shardkv.txn_protocol import now_ms
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, node_pb2_grpc

__all__ = ["CLUSTER_MAP_KEY", "META_GROUP", "ClusterAgent", "initial_map"]

_log = logging.getLogger(__name__)

META_GROUP = 0
CLUSTER_MAP_KEY = b"\x00cluster/map"
_POLL_TIMEOUT = 1.0
# How often a node with a meta replica that does not lead asks its peers for the map.
_PEER_POLL_INTERVAL = 1.0


def initial_map(config: NodeConfig) -> cluster_pb2.ClusterMap:
    """The map the first nodes bootstrap: every data group on the ring with weight 1."""
    data_groups = {group: 1 for group in config.groups if group != META_GROUP}
    return cluster_pb2.ClusterMap(
        cluster_id=config.cluster_id,
        version=1,
        ring=ring_of(1, data_groups),
        nodes=[
            cluster_pb2.NodeInfo(node_id=node_id, address=address, state="up")
            for node_id, address in sorted(config.initial_cluster.items())
        ],
        groups=[
            cluster_pb2.GroupInfo(
                group_id=group, replicas=list(replicas), weight=data_groups.get(group, 0)
            )
            for group, replicas in sorted(config.groups.items())
        ],
    )


class ClusterAgent(Passes):
    def __init__(
        self,
        runtime: NodeRuntime,
        initial: cluster_pb2.ClusterMap,
        peers: Mapping[int, str],
        *,
        interval: float = 0.2,
        transfer_backoff: float = 10.0,
        tls: TlsMaterial | None = None,
        create_group: Callable[[int, list[int] | None], None] | None = None,
    ) -> None:
        super().__init__(interval)
        self.runtime = runtime
        self._tls = tls
        self._create_group = create_group
        self.initial = initial
        self.map: cluster_pb2.ClusterMap | None = None
        self._initial_peers = dict(peers)
        self._peers = {node: address for node, address in peers.items() if node != runtime.node_id}
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._pending: dict[int, asyncio.Future[kv_pb2.CommandResult]] = {}
        self.transfer_backoff = transfer_backoff
        self._next_transfer: dict[int, float] = {}
        self._next_poll = 0.0
        # Preferred leaders the map names (transfer-leader, rebalance).
        self._preferred: dict[int, int] = {}
        # A map the meta group applied here is learnt in the next pass, not an
        # interval later: a new group's replicas start (and elect) at once.
        runtime.on_applied(META_GROUP, self.wake)
        # Told of every new map taken (on_learn): the drivers.
        self._learn_listeners: list[Callable[[], None]] = []

    def describe(self) -> str:
        return f"node {self.runtime.node_id}: cluster agent"

    async def stop(self) -> None:
        self.halt()
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    async def step(self) -> None:
        """One pass of bootstrap, learn and ring (see the module docstring)."""
        meta = self.runtime.peers.get(META_GROUP)
        if meta is not None:
            self._maybe_bootstrap()
            stored = meta.machine.get(CLUSTER_MAP_KEY)
            if stored is not None:
                self.learn(cluster_pb2.ClusterMap.FromString(stored.value))
        loop = asyncio.get_running_loop()
        if meta is None or (meta.role != Role.LEADER and loop.time() >= self._next_poll):
            # A replica of the meta group may lag, or have been moved away
            # without applying its removal: ask the others too, now and then.
            self._next_poll = loop.time() + _PEER_POLL_INTERVAL
            await self._poll()
        self._place_replicas()
        self._push_ring()
        self._balance_leaders()

    def _balance_leaders(self) -> None:
        now = asyncio.get_running_loop().time()
        for group_id, peer in self.runtime.peers.items():
            if peer.role != Role.LEADER or now < self._next_transfer.get(group_id, 0.0):
                continue
            raft = peer.raw.raft
            voters = sorted(peer.conf_state.voters)
            if not voters:
                continue
            preferred = self._preferred.get(group_id, 0)
            if preferred not in voters:
                preferred = voters[group_id % len(voters)]
            progress = raft.progress.get(preferred)
            if preferred == self.runtime.node_id or progress is None:
                continue
            # Caught up to what is committed: under steady writes the last
            # index is rarely matched, and the transfer waits for the rest.
            if not progress.recent_active or progress.match < raft.log.committed:
                continue
            self._next_transfer[group_id] = now + self.transfer_backoff
            _log.info(
                "node %d: handing group %d's lead to node %d",
                self.runtime.node_id,
                group_id,
                preferred,
            )
            self.runtime.transfer_leadership(group_id, preferred)

    def on_learn(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever this agent takes a new map (a driver then
        looks at it at once, not an interval later)."""
        self._learn_listeners.append(listener)

    def learn(self, cluster_map: cluster_pb2.ClusterMap) -> None:
        """Take ``cluster_map`` unless ours is newer; dial the nodes it names."""
        if self.map is not None and map_order(cluster_map) < map_order(self.map):
            return
        if self.map == cluster_map:
            return
        _log.info(
            "node %d: cluster map of epoch %d with %d nodes",
            self.runtime.node_id,
            cluster_map.ring.epoch,
            len(cluster_map.nodes),
        )
        self.map = cluster_map
        self._preferred = {
            group.group_id: group.preferred_leader
            for group in cluster_map.groups
            if group.preferred_leader
        }
        addresses = {node.node_id: node.address for node in cluster_map.nodes}
        self._peers.update(
            (node, address) for node, address in addresses.items() if node != self.runtime.node_id
        )
        self.runtime.transport.update_peers({**self._initial_peers, **addresses})
        for listener in self._learn_listeners:
            try:
                listener()
            except Exception:  # the map is taken all the same (update_map learns it too)
                _log.exception("node %d: a map listener failed", self.runtime.node_id)

    async def update_map(
        self, change: Callable[[cluster_pb2.ClusterMap], cluster_pb2.ClusterMap | None]
    ) -> cluster_pb2.ClusterMap:
        """Change the map at the meta group's leader by compare-and-set.

        ``change`` gets the map as read after a ReadIndex barrier and returns
        the changed map (its version raised), or None to change nothing (the
        map read is answered). It may raise to refuse. Retried while the map
        moves under it.
        """
        meta = self.runtime.peer(META_GROUP)
        for _ in range(20):
            if meta.role != Role.LEADER:
                raise NotLeader(META_GROUP, meta.raw.status().leader_id)
            await self.runtime.read_barrier(META_GROUP)
            stored = meta.machine.get(CLUSTER_MAP_KEY)
            if stored is None:
                raise ProposalFailed("the cluster map is not written yet: retry shortly")
            current = cluster_pb2.ClusterMap.FromString(stored.value)
            changed = change(current)
            if changed is None:
                return current
            command = kv_pb2.Command(
                operations=[
                    kv_pb2.Operation(
                        compare_and_set=kv_pb2.CompareAndSet(
                            key=CLUSTER_MAP_KEY,
                            expected=stored.value,
                            value=changed.SerializeToString(),
                        )
                    )
                ]
            )
            result = await self.runtime.propose(META_GROUP, command)
            if result.results and result.results[0].succeeded:
                self.learn(changed)
                return changed
        raise ProposalFailed("the cluster map kept changing: retry")

    async def add_node(self, node_id: int, address: str, cluster_id: str) -> cluster_pb2.ClusterMap:
        """Put a node in the cluster map; see the module docstring."""

        def change(current: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap | None:
            if cluster_id != current.cluster_id:
                raise FailedPrecondition(
                    f"node {node_id} belongs to cluster {cluster_id!r}, this is "
                    f"{current.cluster_id!r}: check its cluster_id"
                )
            for node in current.nodes:
                if node.node_id == node_id and node.address == address:
                    return None
                if node.node_id == node_id or node.address == address:
                    raise FailedPrecondition(
                        f"node {node.node_id} at {node.address} is already a member: "
                        f"pick another node id or address than {node_id} at {address}"
                    )
            changed = cluster_pb2.ClusterMap()
            changed.CopyFrom(current)
            changed.nodes.add(node_id=node_id, address=address, state="up")
            changed.nodes.sort(key=lambda node: node.node_id)
            changed.version = current.version + 1
            return changed

        return await self.update_map(change)

    async def change_placement(
        self, request: node_pb2.ChangePlacementRequest
    ) -> cluster_pb2.ClusterMap:
        """Plan a placement change (``shardkv.node.placement_change``); start it unless dry."""
        planned: list[cluster_pb2.ClusterMap] = []

        def change(current: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap | None:
            planned[:] = [plan_placement(current, request, now_ms())]
            if request.dry_run or planned[0] is current:
                return None
            return planned[0]

        await self.update_map(change)
        if not request.dry_run:
            _log.info(
                "node %d: placement change %s: %d replica moves under way",
                self.runtime.node_id,
                request.WhichOneof("change"),
                len(planned[0].replica_moves),
                extra={"node_id": self.runtime.node_id},
            )
            self._next_transfer.clear()  # a new preferred leader is taken at once
            self.wake()
        return planned[0]

    async def change_ring(self, request: node_pb2.ChangeRingRequest) -> cluster_pb2.ClusterMap:
        """Plan a ring change (``shardkv.node.ring_change``) and, unless a dry run, start it;
        or set the limit of the one under way (``move_rate``)."""
        planned: list[cluster_pb2.ClusterMap] = []

        def change(current: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap | None:
            planned[:] = [plan_change(current, request, now_ms())]
            # The map itself: a repeat of what is under way, nothing to write.
            return None if request.dry_run or planned[0] is current else planned[0]

        written = await self.update_map(change)
        if request.dry_run:
            return planned[0]
        if request.WhichOneof("change") == "move_rate":
            limit = written.migration.max_keys_per_second
            _log.info(
                "node %d: ring change %s: %s",
                self.runtime.node_id,
                written.migration.reason,
                f"at most {limit} keys/s" if limit else "no limit",
                extra={"node_id": self.runtime.node_id},
            )
            return written
        _log.info(
            "node %d: ring change %s to epoch %d started: %d moves",
            self.runtime.node_id,
            written.migration.reason,
            written.migration.target.epoch,
            len(written.migration.moves),
            extra={"node_id": self.runtime.node_id},
        )
        self.wake()
        return written

    def _maybe_bootstrap(self) -> None:
        meta = self.runtime.peers[META_GROUP]
        if meta.role != Role.LEADER or META_GROUP in self._pending:
            return
        if meta.machine.get(CLUSTER_MAP_KEY) is not None:
            return
        command = kv_pb2.Command(
            operations=[
                kv_pb2.Operation(
                    compare_and_set=kv_pb2.CompareAndSet(
                        key=CLUSTER_MAP_KEY, value=self.initial.SerializeToString()
                    )
                )
            ]
        )
        self._propose(META_GROUP, command)

    def _place_replicas(self) -> None:
        """Host the replicas the map gives this node; drop the ones it took away.

        - A group the map lists this node in and that it does not host starts
          here. A voter of a group that never changed membership
          (``conf_index`` 0, a group just added) bootstraps the initial
          configuration as the first groups did, so the replicas elect a
          leader among themselves; any other (a learner of a replica move)
          starts empty and catches up from the leader.
        - A hosted group that is retired, or that the map lists without this
          node, is dropped, but only if the replica has not applied past the
          map's ``conf_index`` with this node still a member: a stale map
          (read before this node joined the group) never drops a replica.
        """
        cluster_map = self.map
        if cluster_map is None or self._create_group is None:
            return
        node_id = self.runtime.node_id
        for group in cluster_map.groups:
            peer = self.runtime.peers.get(group.group_id)
            member = node_id in group.replicas or node_id in group.learners
            extra = {"node_id": node_id, "group_id": group.group_id}
            if peer is None and member and not group.retired:
                bootstrap = node_id in group.replicas and not group.conf_index
                _log.info(
                    "node %d: starting a replica of group %d (%s)",
                    node_id,
                    group.group_id,
                    "bootstrapped" if bootstrap else "empty, to catch up",
                    extra=extra,
                )
                self._create_group(group.group_id, sorted(group.replicas) if bootstrap else None)
            elif peer is not None and (group.retired or not member):
                state = peer.conf_state
                still_member = node_id in state.voters or node_id in state.learners
                if not group.retired and still_member and peer.applied >= group.conf_index:
                    continue  # this map is older than our membership
                _log.info(
                    "node %d: dropping its replica of group %d (%s)",
                    node_id,
                    group.group_id,
                    "retired" if group.retired else "moved away",
                    extra=extra,
                )
                self.runtime.remove_peer(group.group_id)

    def _push_ring(self) -> None:
        if self.map is None:
            return
        ring = self.map.ring
        for group_id, peer in self.runtime.peers.items():
            if group_id == META_GROUP or group_id in self._pending:
                continue
            if peer.role == Role.LEADER and peer.machine.epoch < ring.epoch:
                self._propose(group_id, kv_pb2.Command(ring=ring))

    def _propose(self, group_id: int, command: kv_pb2.Command) -> None:
        try:
            future = self.runtime.propose(group_id, command)
        except ShardKVError as error:  # lost the lead since the round: next pass
            _log.debug("node %d: group %d: %s", self.runtime.node_id, group_id, error)
            return
        self._pending[group_id] = future

        def done(settled: asyncio.Future[kv_pb2.CommandResult]) -> None:
            self._pending.pop(group_id, None)
            if not settled.cancelled():
                settled.exception()  # retrieved: a failure is retried on a later pass
            self.wake()

        future.add_done_callback(done)

    async def _poll(self) -> None:
        """Ask the peers for their map; keep the highest epoch."""

        async def ask(node_id: int, address: str) -> cluster_pb2.ClusterMap | None:
            channel = self._channels.get(node_id)
            if channel is None:
                channel = self._channels[node_id] = open_channel(address, self._tls)
            stub = node_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]
            try:
                response: node_pb2.GetClusterMapResponse = await stub.GetClusterMap(
                    node_pb2.GetClusterMapRequest(), timeout=_POLL_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                return None
            return response.map if response.HasField("map") else None

        answers = await asyncio.gather(
            *(ask(node_id, address) for node_id, address in self._peers.items())
        )
        for answer in answers:
            if answer is not None:
                self.learn(answer)
