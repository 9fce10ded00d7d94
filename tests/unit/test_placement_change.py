"""What an admin's placement change makes of the cluster map (``shardkv.node.placement_change``).

``plan_placement`` and ``finish_replica_move`` are pure: a map in, the changed
map out (or a typed refusal). The map here: nodes 1 to 5 up (3 with the
empty state, which means up), 6 leaving, 7 removed; the meta group and data
groups 1 to 4 with three replicas each, and group 9 retired (its replicas
must count for nothing).
"""

from __future__ import annotations

from collections import Counter

import pytest

from shardkv.errors import FailedPrecondition, InvalidArgument
from shardkv.node.placement_change import finish_replica_move, plan_placement
from shardkv.v1 import cluster_pb2, node_pb2

NOW_MS = 1_700_000_000_000
REPLICAS = {0: [1, 2, 3], 1: [1, 2, 3], 2: [2, 3, 4], 3: [1, 3, 4], 4: [2, 4, 5]}
RETIRED = 9
# Replicas per up node: 1: 3, 2: 4, 3: 4, 4: 3, 5: 1 (the retired group 9 on 1, 2, 5 not counted).
Move = tuple[int, int, int]  # group, from node, to node


def cluster(
    replicas: dict[int, list[int]] | None = None,
    nodes: dict[int, str] | None = None,
) -> cluster_pb2.ClusterMap:
    replicas = replicas if replicas is not None else REPLICAS
    if nodes is None:
        nodes = {1: "up", 2: "up", 3: "", 4: "up", 5: "up", 6: "leaving", 7: "removed"}
    made = cluster_pb2.ClusterMap(cluster_id="test", version=10)
    for node_id, node_state in nodes.items():
        made.nodes.add(node_id=node_id, address=f"n{node_id}:7000", state=node_state)
    for group_id, members in replicas.items():
        made.groups.add(group_id=group_id, replicas=members, weight=1 if group_id else 0)
    if replicas is REPLICAS:
        made.groups.add(group_id=RETIRED, replicas=[1, 2, 5], retired=True)
    return made


def move_replica(group_id: int, from_node: int, to_node: int) -> node_pb2.ChangePlacementRequest:
    return node_pb2.ChangePlacementRequest(
        move_replica=node_pb2.MoveReplica(group_id=group_id, from_node=from_node, to_node=to_node)
    )


def remove_node(node_id: int) -> node_pb2.ChangePlacementRequest:
    return node_pb2.ChangePlacementRequest(remove_node=node_id)


def transfer_leader(group_id: int, to_node: int) -> node_pb2.ChangePlacementRequest:
    return node_pb2.ChangePlacementRequest(
        transfer_leader=node_pb2.TransferLeader(group_id=group_id, to_node=to_node)
    )


REBALANCE = node_pb2.ChangePlacementRequest(rebalance=True)


def plan(
    current: cluster_pb2.ClusterMap, request: node_pb2.ChangePlacementRequest
) -> cluster_pb2.ClusterMap:
    """``plan_placement``, checking that it leaves the map it was given as it was."""
    before = cluster_pb2.ClusterMap()
    before.CopyFrom(current)
    planned = plan_placement(current, request, NOW_MS)
    assert current == before
    return planned


def moves(planned: cluster_pb2.ClusterMap) -> list[Move]:
    return [(move.group_id, move.from_node, move.to_node) for move in planned.replica_moves]


def group(cluster_map: cluster_pb2.ClusterMap, group_id: int) -> cluster_pb2.GroupInfo:
    return next(found for found in cluster_map.groups if found.group_id == group_id)


def node_state(cluster_map: cluster_pb2.ClusterMap, node_id: int) -> str:
    return next(node.state for node in cluster_map.nodes if node.node_id == node_id)


def finish_all(cluster_map: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap:
    """The map once every planned move is done, each at a higher Raft index."""
    for index in range(len(cluster_map.replica_moves)):
        cluster_map = finish_replica_move(cluster_map, cluster_map.replica_moves[0], 100 + index)
    assert not cluster_map.replica_moves
    return cluster_map


def replica_counts(cluster_map: cluster_pb2.ClusterMap) -> Counter[int]:
    """Voters per up node (every up node listed, even with none)."""
    up = [node.node_id for node in cluster_map.nodes if node.state in ("", "up")]
    counts: Counter[int] = Counter(dict.fromkeys(up, 0))
    for info in cluster_map.groups:
        if not info.retired:
            counts.update(info.replicas)
    return counts


# -- move-replica -------------------------------------------------------------------------------


def test_a_replica_move_lists_the_new_node_as_a_learner_and_records_the_move() -> None:
    current = cluster()
    planned = plan(current, move_replica(1, 1, 5))
    assert planned.version == 11
    assert list(group(planned, 1).replicas) == [1, 2, 3], "voters change only once it is done"
    assert list(group(planned, 1).learners) == [5]
    assert list(planned.replica_moves) == [
        cluster_pb2.ReplicaMove(
            group_id=1,
            from_node=1,
            to_node=5,
            phase=cluster_pb2.REPLICA_PENDING,
            started_ms=NOW_MS,
            phase_started_ms=NOW_MS,
        )
    ]
    # Nothing else changed.
    for info in planned.groups:
        if info.group_id != 1:
            assert info == group(current, info.group_id)
    assert list(planned.nodes) == list(current.nodes)


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (move_replica(8, 1, 5), "there is no group 8"),
        (move_replica(RETIRED, 1, 4), f"there is no group {RETIRED}"),
        (move_replica(2, 1, 5), "node 1 holds no replica of group 2"),
        (move_replica(1, 1, 6), "node 6 is not an up member"),
        (move_replica(1, 1, 7), "node 7 is not an up member"),
        (move_replica(1, 1, 8), "node 8 is not an up member"),
        (move_replica(1, 1, 2), "node 2 holds a replica of group 1 already"),
    ],
)
def test_a_replica_move_is_refused_when_it_cannot_be_done(
    request_: node_pb2.ChangePlacementRequest, reason: str
) -> None:
    with pytest.raises(FailedPrecondition, match=reason):
        plan(cluster(), request_)


def test_a_group_moves_one_replica_at_a_time() -> None:
    moving = plan(cluster(), move_replica(1, 1, 5))
    with pytest.raises(FailedPrecondition, match="group 1 has a replica move under way"):
        plan(moving, move_replica(1, 2, 4))
    with pytest.raises(FailedPrecondition, match="node 5 holds a replica of group 1 already"):
        plan(moving, move_replica(1, 2, 5))
    # Another group may move meanwhile.
    both = plan(moving, move_replica(2, 2, 5))
    assert moves(both) == [(1, 1, 5), (2, 2, 5)]


def test_a_request_naming_no_change_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="names no change"):
        plan(cluster(), node_pb2.ChangePlacementRequest())


# -- remove-node ----------------------------------------------------------------------------------


def test_removing_a_node_moves_each_replica_to_the_least_loaded_node_lacking_the_group() -> None:
    planned = plan(cluster(), remove_node(3))
    assert node_state(planned, 3) == "leaving"
    # Loads count planned learners: 5 (load 1) takes groups 0 and 1; for group 2
    # nodes 1 and 5 tie at 3 (the lower id wins); for group 3, 5 (3) beats 2 (4).
    assert moves(planned) == [(0, 3, 5), (1, 3, 5), (2, 3, 1), (3, 3, 5)]
    for group_id, _, to_node in moves(planned):
        assert list(group(planned, group_id).learners) == [to_node]
    assert all(node_state(planned, node) == node_state(cluster(), node) for node in (1, 2, 4, 5))
    # Once every move is done the node holds nothing and is removed.
    done = finish_all(planned)
    assert node_state(done, 3) == "removed"
    assert all(3 not in info.replicas and 3 not in info.learners for info in done.groups)


def test_a_node_holding_nothing_is_removed_at_once() -> None:
    current = cluster()
    current.nodes.add(node_id=8, address="n8:7000", state="up")
    current.groups[-1].replicas.append(8)  # only the retired group: it counts for nothing
    planned = plan(current, remove_node(8))
    assert node_state(planned, 8) == "removed"
    assert not planned.replica_moves
    # A leaving node that holds nothing any more, too; a removed one is left as it is.
    assert node_state(plan(current, remove_node(6)), 6) == "removed"
    assert plan(current, remove_node(7)) is current


def test_removing_an_unknown_node_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="there is no node 8"):
        plan(cluster(), remove_node(8))


def test_removing_a_node_is_refused_when_no_node_can_take_its_replica() -> None:
    three = cluster({0: [1, 2, 3], 1: [1, 2, 3]}, {1: "up", 2: "up", 3: "up"})
    with pytest.raises(FailedPrecondition, match="no up node can take node 1's replica of group 0"):
        plan(three, remove_node(1))
    # A leaving node is no candidate either.
    with_leaving = cluster({0: [1, 2, 3]}, {1: "up", 2: "up", 3: "up", 4: "leaving"})
    with pytest.raises(FailedPrecondition, match="no up node can take"):
        plan(with_leaving, remove_node(1))


def test_a_node_removed_while_a_replica_moves_to_it_ends_holding_nothing() -> None:
    """Decommission means every replica moves away first: one still on its way in too.

    Either the removal is refused until the move into the node is done, or the
    node ends holding nothing once every move it planned is done.
    """
    moving = plan(cluster(), move_replica(1, 1, 5))
    try:
        planned = plan(moving, remove_node(5))
    except FailedPrecondition:
        return
    done = finish_all(planned)
    holding = [info.group_id for info in done.groups if 5 in info.replicas and not info.retired]
    assert not holding, (
        f"node 5 is {node_state(done, 5)!r}, holds groups {holding} and nothing moves them away"
    )
    assert node_state(done, 5) == "removed"


# -- transfer-leader ------------------------------------------------------------------------------


def test_transfer_leader_names_the_preferred_leader() -> None:
    planned = plan(cluster(), transfer_leader(2, 4))
    assert group(planned, 2).preferred_leader == 4
    assert planned.version == 11
    assert not planned.replica_moves
    # Asked again: no change, the same map.
    assert plan(planned, transfer_leader(2, 4)) is planned


def test_transfer_leader_is_refused_for_a_node_that_does_not_vote_in_the_group() -> None:
    with pytest.raises(FailedPrecondition, match="node 5 is not a voter of group 2"):
        plan(cluster(), transfer_leader(2, 5))
    learning = plan(cluster(), move_replica(2, 2, 5))
    with pytest.raises(FailedPrecondition, match="node 5 is not a voter of group 2"):
        plan(learning, transfer_leader(2, 5))
    with pytest.raises(FailedPrecondition, match=f"there is no group {RETIRED}"):
        plan(cluster(), transfer_leader(RETIRED, 1))


# -- rebalance ------------------------------------------------------------------------------------


def skewed() -> cluster_pb2.ClusterMap:
    """Every group on nodes 1, 2 and 3; node 4 (just added) holds nothing."""
    return cluster(
        {group_id: [1, 2, 3] for group_id in range(7)}, {1: "up", 2: "up", 3: "up", 4: "up"}
    )


def test_rebalance_spreads_replicas_until_the_counts_differ_by_at_most_one() -> None:
    planned = plan(skewed(), REBALANCE)
    assert planned.replica_moves, "node 4 holds nothing: something must move"
    assert all(to_node == 4 for _, _, to_node in moves(planned))
    counts = replica_counts(finish_all(planned))
    assert sum(counts.values()) == 21
    assert max(counts.values()) - min(counts.values()) <= 1, (
        f"replicas per node once the planned moves {moves(planned)} are done: {dict(counts)}"
    )


def test_rebalance_of_a_balanced_layout_moves_nothing_and_spreads_the_leaders() -> None:
    balanced = cluster({group_id: [1, 2, 3] for group_id in range(6)}, {1: "up", 2: "up", 3: "up"})
    planned = plan(balanced, REBALANCE)
    assert not planned.replica_moves
    leaders = Counter(info.preferred_leader for info in planned.groups)
    assert leaders == {1: 2, 2: 2, 3: 2}
    assert all(info.preferred_leader in info.replicas for info in planned.groups)


def test_rebalance_prefers_leaders_among_the_voters_to_be_and_spreads_them() -> None:
    """A node a replica moves to may be preferred (it leads once it votes); one leaving never."""
    planned = plan(skewed(), REBALANCE)
    joining = {(group_id, to_node) for group_id, _, to_node in moves(planned)}
    leaving = {(group_id, from_node) for group_id, from_node, _ in moves(planned)}
    for info in planned.groups:
        key = (info.group_id, info.preferred_leader)
        assert info.preferred_leader in info.replicas or key in joining, info
        assert key not in leaving, info
    done = finish_all(planned)
    assert all(info.preferred_leader in info.replicas for info in done.groups)
    leads = Counter(info.preferred_leader for info in done.groups)
    assert set(leads) == {1, 2, 3, 4}
    assert max(leads.values()) - min(leads.values()) <= 1, dict(leads)


def test_rebalance_is_refused_while_replicas_move() -> None:
    moving = plan(cluster(), move_replica(1, 1, 5))
    with pytest.raises(FailedPrecondition, match="replica moves are under way"):
        plan(moving, REBALANCE)


def test_rebalance_leaves_retired_groups_alone() -> None:
    current = skewed()
    current.groups.add(group_id=RETIRED, replicas=[1, 2, 3], retired=True)
    planned = plan(current, REBALANCE)
    assert RETIRED not in {group_id for group_id, _, _ in moves(planned)}
    assert group(planned, RETIRED) == group(current, RETIRED)


# -- finishing a move -----------------------------------------------------------------------------


def test_a_finished_move_makes_the_new_node_a_voter_in_place_of_the_old() -> None:
    moving = plan(cluster(), move_replica(1, 1, 5))
    moving = plan(moving, move_replica(2, 2, 5))
    done = finish_replica_move(moving, moving.replica_moves[0], 42)
    assert done.version == moving.version + 1
    assert list(group(done, 1).replicas) == [2, 3, 5]
    assert list(group(done, 1).learners) == []
    assert group(done, 1).conf_index == 42
    assert moves(done) == [(2, 2, 5)], "the other move goes on"
    assert list(group(done, 2).learners) == [5]
    # The conf index never goes back (a repeat answered by a lagging leader).
    group(moving, 1).conf_index = 50
    assert group(finish_replica_move(moving, moving.replica_moves[0], 42), 1).conf_index == 50


@pytest.mark.parametrize(("preferred", "after"), [(1, 0), (2, 2)])
def test_a_finished_move_clears_a_preferred_leader_that_left(preferred: int, after: int) -> None:
    moving = plan(plan(cluster(), transfer_leader(1, preferred)), move_replica(1, 1, 5))
    done = finish_replica_move(moving, moving.replica_moves[0], 42)
    assert group(done, 1).preferred_leader == after


def test_a_leaving_node_becomes_removed_with_its_last_move() -> None:
    leaving = plan(cluster(), remove_node(5))
    assert moves(leaving) == [(4, 5, 1)], "node 1 (3 replicas) beats node 3 (4)"
    assert node_state(leaving, 5) == "leaving"
    done = finish_replica_move(leaving, leaving.replica_moves[0], 7)
    assert node_state(done, 5) == "removed"
    assert list(group(done, 4).replicas) == [1, 2, 4]
    assert list(group(done, RETIRED).replicas) == [1, 2, 5], "retired groups are left alone"
