"""What an admin's ring change makes of the cluster map (``shardkv.node.ring_change``).

``plan_change`` is pure: a map and a request in, the map with the change and
its migration out (or a typed refusal). The map here: nodes 1 to 5 up, 6
leaving, 7 removed; the meta group and data groups 1 to 4 (three replicas
each) on a ring of epoch 1 where every group has weight 1.
"""

from __future__ import annotations

import pytest

from shardkv.errors import FailedPrecondition, InvalidArgument
from shardkv.node.ring_change import finish_migration, plan_change
from shardkv.ring import build_ring, moving_shares, ring_of
from shardkv.v1 import cluster_pb2, node_pb2

NOW_MS = 1_700_000_000_000
REPLICAS = {0: [1, 2, 3], 1: [1, 2, 3], 2: [2, 3, 4], 3: [1, 3, 4], 4: [2, 4, 5]}
# Replicas per up node: 1: 3, 2: 4, 3: 4, 4: 3, 5: 1 (6 is leaving: not a candidate).
LEAST_LOADED = [1, 4, 5]
SAMPLE = [b"key-%d" % number for number in range(3000)]


def cluster(weights: dict[int, int] | None = None) -> cluster_pb2.ClusterMap:
    weights = weights if weights is not None else {1: 1, 2: 1, 3: 1, 4: 1}
    made = cluster_pb2.ClusterMap(cluster_id="test", version=10, ring=ring_of(1, weights))
    for node_id, node_state in [(1, "up"), (2, "up"), (3, ""), (4, "up"), (5, "up")]:
        made.nodes.add(node_id=node_id, address=f"n{node_id}:7000", state=node_state)
    made.nodes.add(node_id=6, address="n6:7000", state="leaving")
    made.nodes.add(node_id=7, address="n7:7000", state="removed")
    for group_id, replicas in REPLICAS.items():
        made.groups.add(group_id=group_id, replicas=replicas, weight=weights.get(group_id, 0))
    return made


def add_group(
    group_id: int = 0, weight: int = 0, nodes: tuple[int, ...] = ()
) -> node_pb2.ChangeRingRequest:
    return node_pb2.ChangeRingRequest(
        add_group=node_pb2.AddGroup(group_id=group_id, weight=weight, nodes=nodes)
    )


def remove_group(group_id: int) -> node_pb2.ChangeRingRequest:
    return node_pb2.ChangeRingRequest(remove_group=group_id)


def set_weight(group_id: int, weight: int) -> node_pb2.ChangeRingRequest:
    return node_pb2.ChangeRingRequest(
        set_weight=node_pb2.SetWeight(group_id=group_id, weight=weight)
    )


def plan(
    current: cluster_pb2.ClusterMap, request: node_pb2.ChangeRingRequest
) -> cluster_pb2.ClusterMap:
    """``plan_change``, checking that it leaves the map it was given as it was."""
    before = cluster_pb2.ClusterMap()
    before.CopyFrom(current)
    planned = plan_change(current, request, NOW_MS)
    assert current == before
    return planned


def moves(planned: cluster_pb2.ClusterMap) -> list[tuple[int, int]]:
    assert all(move.phase == cluster_pb2.MOVE_PENDING for move in planned.migration.moves)
    return [(move.source, move.target) for move in planned.migration.moves]


def owner_changes(planned: cluster_pb2.ClusterMap) -> set[tuple[int, int]]:
    """The (source, target) pairs of sampled keys whose owner the change moves."""
    old, new = build_ring(planned.ring), build_ring(planned.migration.target)
    return {
        (old.group_for(key), new.group_for(key))
        for key in SAMPLE
        if old.group_for(key) != new.group_for(key)
    }


def group(cluster_map: cluster_pb2.ClusterMap, group_id: int) -> cluster_pb2.GroupInfo:
    [found] = [entry for entry in cluster_map.groups if entry.group_id == group_id]
    return found


def weights(ring: cluster_pb2.Ring) -> dict[int, int]:
    return {entry.group_id: entry.weight for entry in ring.groups}


# -- add-group -----------------------------------------------------------------------


def test_add_group_takes_the_next_id_and_the_least_loaded_up_nodes() -> None:
    current = cluster()
    planned = plan(current, add_group())
    assert [entry.group_id for entry in planned.groups] == [0, 1, 2, 3, 4, 5]
    assert list(group(planned, 5).replicas) == LEAST_LOADED
    assert group(planned, 5).weight == 1
    assert planned.ring == current.ring, "the ring stays until every move is done"
    assert planned.version == current.version + 1
    migration = planned.migration
    assert migration.target == ring_of(2, {1: 1, 2: 1, 3: 1, 4: 1, 5: 1})
    assert (migration.reason, migration.started_ms, list(migration.retiring)) == (
        "add-group 5",
        NOW_MS,
        [],
    )
    # Adding a group moves keys only to it, from every group, in order.
    assert moves(planned) == [(1, 5), (2, 5), (3, 5), (4, 5)]
    assert owner_changes(planned) == set(moves(planned))
    assert set(moves(planned)) == set(
        moving_shares(build_ring(planned.ring), build_ring(migration.target))
    )


def test_add_group_with_an_id_a_weight_and_nodes() -> None:
    planned = plan(cluster(), add_group(group_id=9, weight=3, nodes=(5, 2, 3)))
    assert [entry.group_id for entry in planned.groups] == [0, 1, 2, 3, 4, 9]
    assert list(group(planned, 9).replicas) == [2, 3, 5]
    assert group(planned, 9).weight == 3
    assert weights(planned.migration.target) == {1: 1, 2: 1, 3: 1, 4: 1, 9: 3}
    assert planned.migration.reason == "add-group 9"
    assert moves(planned) == [(1, 9), (2, 9), (3, 9), (4, 9)]
    assert owner_changes(planned) == set(moves(planned))


@pytest.mark.parametrize(
    ("request_", "error", "words"),
    [
        (add_group(group_id=3), FailedPrecondition, "exists already"),
        (add_group(group_id=2048), FailedPrecondition, "over 2047"),
        (add_group(nodes=(1, 6, 8)), FailedPrecondition, "[6, 8]"),
        (add_group(nodes=(7,)), FailedPrecondition, "not up"),
        (add_group(nodes=(1, 2, 1)), InvalidArgument, "twice"),
        (add_group(weight=1001), InvalidArgument, "out of range"),
        (node_pb2.ChangeRingRequest(), InvalidArgument, "names no change"),
    ],
)
def test_a_change_that_cannot_be_made_is_refused(
    request_: node_pb2.ChangeRingRequest, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        plan(cluster(), request_)


def test_add_group_needs_as_many_up_nodes_as_a_group_has_replicas() -> None:
    current = cluster()
    for node in current.nodes:
        if node.node_id > 2:
            node.state = "leaving"
    with pytest.raises(FailedPrecondition, match="needs 3 nodes and only 2 are up"):
        plan(current, add_group())
    planned = plan(current, add_group(nodes=(1, 2)))
    assert list(group(planned, 5).replicas) == [1, 2], "named nodes: their number is taken"


def test_retired_groups_keep_their_id_and_hold_no_load() -> None:
    current = cluster()
    current.groups.add(group_id=7, replicas=[5, 6, 1], retired=True)
    planned = plan(current, add_group())
    assert [entry.group_id for entry in planned.groups][-1] == 8, "retired ids are not reused"
    assert list(group(planned, 8).replicas) == LEAST_LOADED
    with pytest.raises(FailedPrecondition, match="exists already"):
        plan(current, add_group(group_id=7))
    with pytest.raises(FailedPrecondition, match="retired"):
        plan(current, remove_group(7))
    with pytest.raises(FailedPrecondition, match="retired"):
        plan(current, set_weight(7, 1))


# -- remove-group and set-weight -------------------------------------------------------


def test_remove_group_moves_its_keys_to_the_others_and_retires_it() -> None:
    current = cluster()
    planned = plan(current, remove_group(2))
    assert group(planned, 2).weight == 0
    assert list(group(planned, 2).replicas) == REPLICAS[2], "it keeps its replicas until done"
    assert weights(planned.migration.target) == {1: 1, 3: 1, 4: 1}
    assert planned.migration.target.epoch == 2
    assert list(planned.migration.retiring) == [2]
    assert planned.migration.reason == "remove-group 2"
    assert all(source == 2 for source, _ in moves(planned))
    assert owner_changes(planned) == set(moves(planned))
    assert {target for _, target in moves(planned)} == {1, 3, 4}


def test_the_last_group_and_the_meta_group_cannot_be_removed() -> None:
    alone = cluster({1: 1})
    with pytest.raises(FailedPrecondition, match="last group"):
        plan(alone, remove_group(1))
    with pytest.raises(FailedPrecondition, match="last group"):
        plan(alone, set_weight(1, 0))
    with pytest.raises(InvalidArgument, match="meta group"):
        plan(cluster(), remove_group(0))
    with pytest.raises(FailedPrecondition, match="no group 12"):
        plan(cluster(), remove_group(12))
    with pytest.raises(FailedPrecondition, match="no group 12"):
        plan(cluster(), set_weight(12, 2))


def test_remove_group_of_a_group_off_the_ring_moves_nothing_but_retires_it() -> None:
    current = cluster({1: 1, 2: 1, 3: 1})  # group 4 has weight 0
    planned = plan(current, remove_group(4))
    assert moves(planned) == []
    assert list(planned.migration.retiring) == [4]


def test_set_weight_moves_keys_to_or_from_the_group() -> None:
    heavier = plan(cluster(), set_weight(2, 3))
    assert group(heavier, 2).weight == 3
    assert weights(heavier.migration.target) == {1: 1, 2: 3, 3: 1, 4: 1}
    assert heavier.migration.reason == "set-weight 2 3"
    assert list(heavier.migration.retiring) == []
    assert moves(heavier) and all(target == 2 for _, target in moves(heavier))
    assert owner_changes(heavier) == set(moves(heavier))
    off = plan(cluster(), set_weight(3, 0))
    assert group(off, 3).weight == 0
    assert weights(off.migration.target) == {1: 1, 2: 1, 4: 1}
    assert list(off.migration.retiring) == [], "off the ring, still a group"
    assert moves(off) and all(source == 3 for source, _ in moves(off))
    with pytest.raises(FailedPrecondition, match="moves no key"):
        plan(cluster(), set_weight(2, 1))
    with pytest.raises(InvalidArgument, match="out of range"):
        plan(cluster(), set_weight(2, 1001))


# -- one change at a time --------------------------------------------------------------


def test_a_change_under_way_is_the_only_one_and_asking_it_again_answers_it() -> None:
    under_way = plan(cluster(), add_group(group_id=5))
    assert plan(under_way, add_group(group_id=5)) == under_way
    # A request that names no id yet cannot be known as the same change.
    for other in (add_group(), add_group(group_id=6), remove_group(1), set_weight(1, 2)):
        with pytest.raises(FailedPrecondition, match=r"under way \(add-group 5, to epoch 2\)"):
            plan(under_way, other)
    removing = plan(cluster(), remove_group(3))
    assert plan(removing, remove_group(3)) == removing
    weighing = plan(cluster(), set_weight(1, 2))
    assert plan(weighing, set_weight(1, 2)) == weighing
    with pytest.raises(FailedPrecondition, match="under way"):
        plan(weighing, set_weight(1, 3))


# -- the move's limit ------------------------------------------------------------------


def move_rate(keys_per_second: int) -> node_pb2.ChangeRingRequest:
    return node_pb2.ChangeRingRequest(move_rate=keys_per_second)


def test_a_ring_change_keeps_its_limit_in_the_migration() -> None:
    for request in (add_group(group_id=5), remove_group(3), set_weight(1, 2)):
        request.max_keys_per_second = 20_000
        assert plan(cluster(), request).migration.max_keys_per_second == 20_000
    assert plan(cluster(), add_group(group_id=5)).migration.max_keys_per_second == 0


def test_move_rate_changes_the_limit_of_the_change_under_way_only() -> None:
    under_way = plan(cluster(), add_group(group_id=5))
    limited = plan(under_way, move_rate(5_000))
    assert limited.migration.max_keys_per_second == 5_000
    assert limited.version == under_way.version + 1
    limited.migration.max_keys_per_second = 0
    limited.version = under_way.version
    assert limited == under_way, "the limit is all it changes"
    # The same limit again (a retry) is the map as it is; 0 lifts it.
    limited = plan(under_way, move_rate(5_000))
    assert plan(limited, move_rate(5_000)) is limited
    lifted = plan(limited, move_rate(0))
    assert lifted.migration.max_keys_per_second == 0
    assert lifted.version == limited.version + 1
    with pytest.raises(FailedPrecondition, match="no ring change is under way"):
        plan(cluster(), move_rate(5_000))


# -- finishing -----------------------------------------------------------------------


def test_finishing_takes_the_target_ring_and_retires_removed_groups() -> None:
    removing = plan(cluster(), remove_group(2))
    finished = finish_migration(removing)
    assert not finished.HasField("migration")
    assert finished.ring == removing.migration.target
    assert finished.version == removing.version + 1
    retired = group(finished, 2)
    assert retired.retired and retired.weight == 0
    assert [entry.group_id for entry in finished.groups if not entry.retired] == [0, 1, 3, 4]
    assert list(finished.nodes) == list(removing.nodes)
    # The next change starts from there: epoch 3; the retired group is gone for good.
    again = plan(finished, add_group())
    assert again.migration.target.epoch == 3
    assert [entry.group_id for entry in again.groups][-1] == 5
    with pytest.raises(FailedPrecondition, match="retired"):
        plan(finished, remove_group(2))


def test_finishing_an_added_group_keeps_it_on_the_ring() -> None:
    adding = plan(cluster(), add_group(weight=2))
    finished = finish_migration(adding)
    assert finished.ring == ring_of(2, {1: 1, 2: 1, 3: 1, 4: 1, 5: 2})
    assert not group(finished, 5).retired and group(finished, 5).weight == 2
    assert not finished.HasField("migration")
    assert finished.version == adding.version + 1
