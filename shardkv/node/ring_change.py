"""What an admin's ring change makes of the cluster map (pure: the meta leader writes it).

``plan_change(current, request)`` answers the map with the change and its
migration, or raises ``FailedPrecondition`` / ``InvalidArgument`` saying why
not:

- ``add_group``: a new data group (the given id, or the next free one) on
  the given nodes, or on the ``replication`` up nodes hosting the fewest
  replicas (ties by node id); it joins the map's groups at once (its nodes
  create it) and the target ring with its weight (default 1).
- ``remove_group``: the group's weight goes to 0 in the target ring; once
  every key moved out it is marked retired (``Migration.retiring``,
  ``GroupInfo.retired``) and its nodes drop it. The last group on the ring
  cannot go, nor can a retired one come back (its id is never reused).
- ``set_weight``: the group's weight in the target ring (0 takes it off the
  ring but keeps it).
- ``move_rate``: not a ring change, the limit of the one under way
  (``Migration.max_keys_per_second``, which a ring change takes from its
  request's ``max_keys_per_second``): the keys per second its copies carry
  over all its moves, and apart from them its collects (0: no limit). The
  same change asked again keeps the limit it has. Operators hold a
  rebalance back so that the writes it shares the nodes' CPU with keep their
  latency, as CockroachDB's snapshot rate and TiKV's
  ``snap-max-write-bytes-per-sec`` do; the switches (a move's turn, from
  the wait for quiet to the activation) are never held back.

One ring change at a time: a change while a migration runs is refused, as is
one that moves nothing; the very change under way asked again (a retry whose
answer was lost; ``Migration.reason`` names it) is answered with the map as it
is. The target ring has the next epoch; its moves are the
pairs of groups between which ``moving_shares`` finds keys changing owner.
"""

from __future__ import annotations

from collections import Counter

from shardkv.errors import FailedPrecondition, InvalidArgument
from shardkv.revisions import MAX_GROUP_ID
from shardkv.ring import build_ring, moving_shares, ring_of
from shardkv.v1 import cluster_pb2, node_pb2

__all__ = ["DEFAULT_REPLICATION", "finish_migration", "plan_change"]

DEFAULT_REPLICATION = 3
_MAX_WEIGHT = 1000


def plan_change(
    current: cluster_pb2.ClusterMap, request: node_pb2.ChangeRingRequest, now_ms: int
) -> cluster_pb2.ClusterMap:
    if request.WhichOneof("change") == "move_rate":
        return _set_rate(current, request.move_rate)
    if current.HasField("migration") and current.migration.reason == _reason(request):
        return current  # the same change asked again (a retry): the one under way
    if current.HasField("migration"):
        migration = current.migration
        raise FailedPrecondition(
            f"a ring change is under way ({migration.reason}, to epoch "
            f"{migration.target.epoch}): wait until it is done (shardkv status shows it)"
        )
    weights = {entry.group_id: entry.weight for entry in current.ring.groups}
    groups = {group.group_id: group for group in current.groups}
    changed = cluster_pb2.ClusterMap()
    changed.CopyFrom(current)
    retiring: list[int] = []
    kind = request.WhichOneof("change")
    if kind == "add_group":
        add = request.add_group
        group_id = add.group_id or max([*groups, 0]) + 1
        if group_id in groups:
            raise FailedPrecondition(f"group {group_id} exists already: pick another id")
        if group_id > MAX_GROUP_ID:
            raise FailedPrecondition(
                f"group id {group_id} is over {MAX_GROUP_ID}: revisions carry the group's id "
                "in their low bits (shardkv.revisions), so pick a lower one"
            )
        weight = add.weight or 1
        _check_weight(weight)
        changed.groups.add(group_id=group_id, replicas=_place(current, list(add.nodes)))
        changed.groups.sort(key=lambda group: group.group_id)
        weights[group_id] = weight
        reason = f"add-group {group_id}"
    elif kind == "remove_group":
        group_id = request.remove_group
        _check_data_group(groups, group_id)
        if groups[group_id].retired:
            raise FailedPrecondition(f"group {group_id} is retired already")
        if not any(weight for other, weight in weights.items() if other != group_id):
            raise FailedPrecondition(
                f"group {group_id} is the last group on the ring: add another before removing it"
            )
        weights[group_id] = 0
        retiring.append(group_id)
        reason = f"remove-group {group_id}"
    elif kind == "set_weight":
        group_id, weight = request.set_weight.group_id, request.set_weight.weight
        _check_data_group(groups, group_id)
        if groups[group_id].retired:
            raise FailedPrecondition(f"group {group_id} is retired: add a new group instead")
        _check_weight(weight, allow_zero=True)
        if not weight and not any(w for other, w in weights.items() if other != group_id):
            raise FailedPrecondition(
                f"group {group_id} is the last group on the ring: it cannot have weight 0"
            )
        weights[group_id] = weight
        reason = f"set-weight {group_id} {weight}"
    else:
        raise InvalidArgument(
            "the request names no change: add_group, remove_group, set_weight or move_rate"
        )
    target = ring_of(current.ring.epoch + 1, weights)
    moves = moving_shares(build_ring(current.ring), build_ring(target))
    if not moves and not retiring:
        raise FailedPrecondition(f"{reason} moves no key: the ring stays as it is")
    for entry in changed.groups:
        if entry.group_id in weights:
            entry.weight = weights[entry.group_id]
    changed.version = current.version + 1
    changed.migration.CopyFrom(
        cluster_pb2.Migration(
            target=target,
            started_ms=now_ms,
            reason=reason,
            retiring=retiring,
            max_keys_per_second=request.max_keys_per_second,
            moves=[
                cluster_pb2.Move(source=source, target=destination)
                for source, destination in sorted(moves)
            ],
        )
    )
    return changed


def _set_rate(current: cluster_pb2.ClusterMap, rate: int) -> cluster_pb2.ClusterMap:
    """The map with the running migration's rate limit set (the same map when it is
    that already: a retry)."""
    if not current.HasField("migration"):
        raise FailedPrecondition("no ring change is under way: give its limit with the change")
    if current.migration.max_keys_per_second == rate:
        return current
    changed = cluster_pb2.ClusterMap()
    changed.CopyFrom(current)
    changed.migration.max_keys_per_second = rate
    changed.version = current.version + 1
    return changed


def finish_migration(current: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap:
    """The map once every move of its migration is done: the target ring, retired groups gone."""
    migration = current.migration
    finished = cluster_pb2.ClusterMap()
    finished.CopyFrom(current)
    finished.ring.CopyFrom(migration.target)
    finished.ClearField("migration")
    retiring = set(migration.retiring)
    for group in finished.groups:
        if group.group_id in retiring:
            group.retired = True
            group.weight = 0
    finished.version = current.version + 1
    return finished


def _reason(request: node_pb2.ChangeRingRequest) -> str:
    """How a change names itself in ``Migration.reason`` ("" when it names no group yet)."""
    kind = request.WhichOneof("change")
    if kind == "add_group":
        return f"add-group {request.add_group.group_id}" if request.add_group.group_id else ""
    if kind == "remove_group":
        return f"remove-group {request.remove_group}"
    if kind == "set_weight":
        return f"set-weight {request.set_weight.group_id} {request.set_weight.weight}"
    return ""


def _check_data_group(groups: dict[int, cluster_pb2.GroupInfo], group_id: int) -> None:
    if group_id == 0:
        raise InvalidArgument("group 0 is the meta group: it holds no keys of the ring")
    if group_id not in groups:
        raise FailedPrecondition(f"there is no group {group_id}: see shardkv status")


def _check_weight(weight: int, *, allow_zero: bool = False) -> None:
    if weight > _MAX_WEIGHT or (weight == 0 and not allow_zero):
        raise InvalidArgument(f"weight {weight} is out of range: 1 to {_MAX_WEIGHT}")


def _place(current: cluster_pb2.ClusterMap, nodes: list[int]) -> list[int]:
    """The replicas of a new group: ``nodes`` when given (checked), else the least loaded."""
    up = [node.node_id for node in current.nodes if node.state in ("", "up")]
    if nodes:
        unknown = sorted(set(nodes) - set(up))
        if unknown:
            raise FailedPrecondition(f"nodes {unknown} are not up members: see shardkv status")
        if len(set(nodes)) != len(nodes):
            raise InvalidArgument(f"nodes {nodes} name a node twice")
        return sorted(nodes)
    live = [group for group in current.groups if not group.retired]
    sizes = [len(group.replicas) for group in live if group.group_id != 0]
    replication = max(set(sizes), key=sizes.count) if sizes else DEFAULT_REPLICATION
    if len(up) < replication:
        raise FailedPrecondition(
            f"a group needs {replication} nodes and only {len(up)} are up: add nodes, or "
            "name them with --nodes"
        )
    load = Counter(replica for group in live for replica in group.replicas)
    return sorted(sorted(up, key=lambda node: (load[node], node))[:replication])
