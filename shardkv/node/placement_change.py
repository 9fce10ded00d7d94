"""What an admin's placement change makes of the cluster map (pure: the meta leader writes it).

``plan_placement(current, request)`` answers the changed map, or raises
``FailedPrecondition`` / ``InvalidArgument`` saying why not:

- ``move_replica(G, FROM, TO)``: a ``ReplicaMove`` for the group, and TO
  listed among its learners (so TO starts an empty replica that catches up).
  One move per group at a time; TO must be an up node without a replica of G.
- ``remove_node(N)`` (decommission): N becomes "leaving" and every replica
  it holds gets a move to the up node with the fewest replicas that lacks one
  of that group; a node holding nothing is "removed" at once. Refused while
  a replica is moving to N (wait for that move first).
- ``transfer_leader(G, TO)``: TO, a voter of G, becomes its preferred leader;
  the node leading G hands the lead over (``ClusterAgent``) and keeps it there.
- ``rebalance``: replica moves from the nodes with the most replicas to those
  with the fewest until they differ by at most one, and preferred leaders
  spread so that each node leads as evenly as its replicas allow, counting
  each group's voters as they will be once its move is done (a node joining
  may be preferred: it takes the lead once it is a voter).

``finish_replica_move(current, move)`` is the map once a move is done: TO a
voter in place of FROM, the move gone, and a leaving node that holds nothing
more marked "removed".
"""

from __future__ import annotations

from collections import Counter

from shardkv.errors import FailedPrecondition, InvalidArgument
from shardkv.v1 import cluster_pb2, node_pb2

__all__ = ["finish_replica_move", "plan_placement"]


def plan_placement(
    current: cluster_pb2.ClusterMap, request: node_pb2.ChangePlacementRequest, now_ms: int
) -> cluster_pb2.ClusterMap:
    changed = cluster_pb2.ClusterMap()
    changed.CopyFrom(current)
    kind = request.WhichOneof("change")
    if kind == "move_replica":
        move = request.move_replica
        _add_move(changed, move.group_id, move.from_node, move.to_node, now_ms)
    elif kind == "remove_node":
        _remove_node(changed, request.remove_node, now_ms)
    elif kind == "transfer_leader":
        transfer = request.transfer_leader
        group = _group(changed, transfer.group_id)
        if transfer.to_node not in group.replicas:
            raise FailedPrecondition(
                f"node {transfer.to_node} is not a voter of group {transfer.group_id} "
                f"(replicas {list(group.replicas)}): move a replica there first"
            )
        group.preferred_leader = transfer.to_node
    elif kind == "rebalance":
        if changed.replica_moves:
            raise FailedPrecondition("replica moves are under way: wait until they are done")
        _rebalance(changed, now_ms)
    else:
        raise InvalidArgument(
            "the request names no change: move_replica, remove_node, transfer_leader or rebalance"
        )
    if changed == current:
        return current
    changed.version = current.version + 1
    return changed


def finish_replica_move(
    current: cluster_pb2.ClusterMap, done: cluster_pb2.ReplicaMove, conf_index: int
) -> cluster_pb2.ClusterMap:
    """The map once ``done`` is: ``conf_index`` is the group's index at or past the removal."""
    changed = cluster_pb2.ClusterMap()
    changed.CopyFrom(current)
    group = _group(changed, done.group_id)
    group.conf_index = max(group.conf_index, conf_index)
    replicas = (set(group.replicas) - {done.from_node}) | {done.to_node}
    del group.replicas[:]
    group.replicas.extend(sorted(replicas))
    learners = [node for node in group.learners if node != done.to_node]
    del group.learners[:]
    group.learners.extend(learners)
    if group.preferred_leader == done.from_node:
        group.preferred_leader = 0
    moves = [
        move
        for move in changed.replica_moves
        if (move.group_id, move.from_node, move.to_node)
        != (done.group_id, done.from_node, done.to_node)
    ]
    del changed.replica_moves[:]
    changed.replica_moves.extend(moves)
    _mark_removed(changed)
    changed.version = current.version + 1
    return changed


# -- the pieces ------------------------------------------------------------------------


def _group(cluster_map: cluster_pb2.ClusterMap, group_id: int) -> cluster_pb2.GroupInfo:
    for group in cluster_map.groups:
        if group.group_id == group_id and not group.retired:
            return group
    raise FailedPrecondition(f"there is no group {group_id}: see shardkv status")


def _up_nodes(cluster_map: cluster_pb2.ClusterMap) -> list[int]:
    return [node.node_id for node in cluster_map.nodes if node.state in ("", "up")]


def _load(cluster_map: cluster_pb2.ClusterMap, *, after_moves: bool = True) -> Counter[int]:
    """Replicas per node once the moves under way are done (learners in, movers out),
    or as held now (``after_moves`` False: learners and movers both count)."""
    load: Counter[int] = Counter()
    for group in cluster_map.groups:
        if group.retired:
            continue
        load.update(group.replicas)
        load.update(group.learners)
    if after_moves:
        load.subtract(move.from_node for move in cluster_map.replica_moves)
    return load


def _add_move(
    cluster_map: cluster_pb2.ClusterMap, group_id: int, from_node: int, to_node: int, now_ms: int
) -> None:
    group = _group(cluster_map, group_id)
    if from_node not in group.replicas:
        raise FailedPrecondition(
            f"node {from_node} holds no replica of group {group_id} "
            f"(replicas {list(group.replicas)})"
        )
    if to_node not in _up_nodes(cluster_map):
        raise FailedPrecondition(f"node {to_node} is not an up member: see shardkv status")
    if to_node in group.replicas or to_node in group.learners:
        raise FailedPrecondition(f"node {to_node} holds a replica of group {group_id} already")
    if any(move.group_id == group_id for move in cluster_map.replica_moves):
        raise FailedPrecondition(
            f"group {group_id} has a replica move under way: wait until it is done"
        )
    group.learners.append(to_node)
    cluster_map.replica_moves.add(
        group_id=group_id,
        from_node=from_node,
        to_node=to_node,
        started_ms=now_ms,
        phase_started_ms=now_ms,
    )


def _remove_node(cluster_map: cluster_pb2.ClusterMap, node_id: int, now_ms: int) -> None:
    node = next((node for node in cluster_map.nodes if node.node_id == node_id), None)
    if node is None:
        raise FailedPrecondition(f"there is no node {node_id}: see shardkv status")
    if node.state == "removed":
        return
    moves = cluster_map.replica_moves
    incoming = sorted(move.group_id for move in moves if move.to_node == node_id)
    if incoming:
        raise FailedPrecondition(
            f"replicas of groups {incoming} are moving to node {node_id}: wait until those "
            "moves are done, then remove it"
        )
    node.state = "leaving"
    up = [candidate for candidate in _up_nodes(cluster_map) if candidate != node_id]
    moving = {(move.group_id, move.from_node) for move in cluster_map.replica_moves}
    for group in cluster_map.groups:
        if group.retired or node_id not in group.replicas or (group.group_id, node_id) in moving:
            continue
        load = _load(cluster_map)
        candidates = [
            candidate
            for candidate in up
            if candidate not in group.replicas and candidate not in group.learners
        ]
        if not candidates:
            raise FailedPrecondition(
                f"no up node can take node {node_id}'s replica of group {group.group_id}: "
                "add a node first"
            )
        target = min(candidates, key=lambda candidate: (load[candidate], candidate))
        _add_move(cluster_map, group.group_id, node_id, target, now_ms)
    _mark_removed(cluster_map)


def _mark_removed(cluster_map: cluster_pb2.ClusterMap) -> None:
    load = _load(cluster_map, after_moves=False)
    for node in cluster_map.nodes:
        if node.state == "leaving" and not load[node.node_id]:
            node.state = "removed"


def _rebalance(cluster_map: cluster_pb2.ClusterMap, now_ms: int) -> None:
    up = _up_nodes(cluster_map)
    if not up:
        return
    for _ in range(sum(len(group.replicas) for group in cluster_map.groups)):
        load = _load(cluster_map)
        busiest = max(up, key=lambda node: (load[node], -node))
        idlest = min(up, key=lambda node: (load[node], node))
        if load[busiest] - load[idlest] <= 1:
            break
        movable = [
            group
            for group in cluster_map.groups
            if not group.retired
            and busiest in group.replicas
            and idlest not in group.replicas
            and idlest not in group.learners
            and not any(move.group_id == group.group_id for move in cluster_map.replica_moves)
        ]
        if not movable:
            break
        _add_move(cluster_map, movable[0].group_id, busiest, idlest, now_ms)
    # Leaders: each group's preferred leader is its voter that leads fewest so far.
    leads: Counter[int] = Counter()
    for group in sorted(cluster_map.groups, key=lambda group: group.group_id):
        voters = [node for node in group.replicas if node in up] or list(group.replicas)
        if group.retired or not voters:
            continue
        for move in cluster_map.replica_moves:
            if move.group_id == group.group_id and move.from_node in voters:
                voters.remove(move.from_node)  # it is leaving the group
                voters.append(move.to_node)  # and this one joins it
        leader = min(voters, key=lambda node: (leads[node], node))
        group.preferred_leader = leader
        leads[leader] += 1
