"""The placement driver: the meta group's leader moves replicas between nodes.

Each ``ReplicaMove`` of the cluster map (``shardkv.node.placement_change``)
gets one task (``MapDriver``), which asks the group's leader for one
membership change at a time (``Node.Reconfigure``, ``shardkv.node.membership``)
and records each phase in the map before the next:

1. ``REPLICA_PENDING``: the new node is listed among the group's learners, so
   it has started an empty replica; add it as a Raft learner. Record
   ``REPLICA_LEARNING``.
2. ``REPLICA_LEARNING``: wait until it has caught up (the leader's log, or a
   snapshot when the log it needs was compacted), then promote it to voter.
   Record ``REPLICA_VOTING`` (the map lists it among the voters).
3. ``REPLICA_VOTING``: remove the old node (a leader asked to remove itself
   first hands the lead over). The move leaves the map, the old node drops
   its replica when it sees the map, and a decommissioned node that holds
   nothing more is marked "removed".

Every step is idempotent at the group (a member added twice is added once),
so a new meta leader repeats the step the map names. The group keeps
serving throughout: a learner never counts for a quorum, and the voter set
changes one node at a time.
"""

from __future__ import annotations

import asyncio
import logging

from shardkv.node.driving import MapDriver, StepFailed
from shardkv.node.placement_change import finish_replica_move
from shardkv.txn_protocol import now_ms
from shardkv.v1 import cluster_pb2, node_pb2

__all__ = ["PlacementDriver"]

_log = logging.getLogger(__name__)

_Key = tuple[int, int, int]  # group, from node, to node
_NOT_DONE_WAIT = 0.1
_REPORT_AFTER = 2.0


class PlacementDriver(MapDriver[_Key, cluster_pb2.ReplicaMove]):
    name = "placement"

    def pending(self, cluster_map: cluster_pb2.ClusterMap) -> list[_Key]:
        return [(move.group_id, move.from_node, move.to_node) for move in cluster_map.replica_moves]

    def item(
        self, cluster_map: cluster_pb2.ClusterMap, key: _Key
    ) -> cluster_pb2.ReplicaMove | None:
        for move in cluster_map.replica_moves:
            if (move.group_id, move.from_node, move.to_node) == key:
                return move
        return None

    async def record_stuck(self, key: _Key, why: str) -> None:
        await self._record(key, stuck=why)

    async def advance(self, key: _Key, move: cluster_pb2.ReplicaMove) -> None:
        group_id, from_node, to_node = key
        if move.phase == cluster_pb2.REPLICA_PENDING:
            await self._reconfigure(key, node_pb2.RECONFIGURE_ADD_LEARNER, to_node)
            await self._record(key, phase=cluster_pb2.REPLICA_LEARNING)
        elif move.phase == cluster_pb2.REPLICA_LEARNING:
            await self._reconfigure(key, node_pb2.RECONFIGURE_PROMOTE, to_node)
            await self._record(key, phase=cluster_pb2.REPLICA_VOTING)
        elif move.phase == cluster_pb2.REPLICA_VOTING:
            index = await self._reconfigure(key, node_pb2.RECONFIGURE_REMOVE, from_node)

            def change(current: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap | None:
                done = self.item(current, key)
                return finish_replica_move(current, done, index) if done is not None else None

            await self.agent.update_map(change)
            _log.info(
                "node %d: group %d's replica moved from node %d to node %d",
                self.runtime.node_id,
                group_id,
                from_node,
                to_node,
                extra={"node_id": self.runtime.node_id, "group_id": group_id},
            )
            self.agent.wake()

    async def _reconfigure(self, key: _Key, kind: node_pb2.ReconfigureKind, node: int) -> int:
        """The change at the group's leader, repeated while it answers "not done yet"
        (what it waits for goes into the move once it waited ``_REPORT_AFTER`` seconds);
        the leader's applied index once done."""
        group_id = key[0]
        name = node_pb2.ReconfigureKind.Name(kind)
        loop = asyncio.get_running_loop()
        # The first report after _REPORT_AFTER, then one every _REPORT_AFTER: a
        # reason that changes at every poll ("index X of Y") must not rewrite the
        # map ten times a second.
        report_at = loop.time() + _REPORT_AFTER
        while True:
            response = await self.calls.reconfigure(
                node_pb2.ReconfigureRequest(group_id=group_id, kind=kind, node_id=node)
            )
            if response.done:
                return response.index
            if not response.reason:
                raise StepFailed(f"group {group_id}: {name} node {node} was not done")
            if loop.time() >= report_at:
                await self._record(key, stuck=f"{name} node {node}: {response.reason}")
                report_at = loop.time() + _REPORT_AFTER
            await asyncio.sleep(_NOT_DONE_WAIT)

    async def _record(self, key: _Key, **fields: object) -> None:
        def change(current: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap | None:
            move = self.item(current, key)
            if move is None:
                return None
            phase = fields.get("phase")
            if isinstance(phase, int) and move.phase >= phase:
                return None  # recorded already
            if "stuck" in fields and move.stuck == fields["stuck"]:
                return None
            changed = cluster_pb2.ClusterMap()
            changed.CopyFrom(current)
            target = self.item(changed, key)
            assert target is not None
            for name, value in fields.items():
                setattr(target, name, value)
            if phase is not None:
                target.stuck = ""
                target.phase_started_ms = now_ms()
            changed.version = current.version + 1
            return changed

        await self.agent.update_map(change)
