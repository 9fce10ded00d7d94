"""The nemesis' schedules (tests.fault.nemesis.plan) and the soak's table, without processes."""

from __future__ import annotations

import pytest

from shardkv.failpoints import POINTS
from tests.fault.nemesis import ALL_NODES, ALL_ROUTERS, FAULTS, ROUTER_POINTS, plan
from tests.fault.run import RunResult
from tests.fault.soak import summary_table

SEEDS = range(300)


def test_a_seed_gives_the_same_schedule_every_time() -> None:
    for seed in SEEDS:
        first = plan(seed, 45, nodes=4, replicas=3)
        assert plan(seed, 45, nodes=4, replicas=3) == first


def test_faults_follow_one_another_within_the_run() -> None:
    for seed in SEEDS:
        schedule = plan(seed, 20, nodes=3, replicas=3)
        assert schedule.faults, seed
        ends = 0.0
        for fault in schedule.faults:
            assert fault.kind in FAULTS
            assert fault.at >= ends, f"seed {seed}: faults overlap"
            assert fault.hold > 0
            ends = fault.at + fault.hold
        assert ends <= 20, f"seed {seed}: a fault outlasts the run"


def test_replica_moves_only_where_a_node_lacks_a_replica() -> None:
    kinds = {fault.kind for seed in SEEDS for fault in plan(seed, 45, nodes=3, replicas=3).faults}
    assert "move-replica" not in kinds
    assert kinds == set(FAULTS) - {"move-replica"}
    kinds = {fault.kind for seed in SEEDS for fault in plan(seed, 45, nodes=4, replicas=3).faults}
    assert kinds == set(FAULTS)


def test_every_failpoint_is_drawn_and_armed_where_it_can_fire() -> None:
    drawn = set()
    for seed in SEEDS:
        point = plan(seed, 45, nodes=3, replicas=3).failpoint
        assert point is not None
        drawn.add(point.name)
        if point.name in ROUTER_POINTS:
            assert point.where == ALL_ROUTERS
        else:
            assert point.where == ALL_NODES or 1 <= point.where <= 3
        assert point.spec.startswith(f"{point.name}={point.hit}*")
    assert drawn == set(POINTS)


def test_a_migration_failpoint_makes_the_first_fault_a_ring_change() -> None:
    checked = 0
    for seed in SEEDS:
        schedule = plan(seed, 45, nodes=3, replicas=3)
        assert schedule.failpoint is not None
        if schedule.failpoint.name.startswith("migration."):
            assert schedule.faults[0].kind == "ring-change", seed
            checked += 1
    assert checked > 10


def test_without_transactions_no_coordinator_or_resolver_point_is_drawn() -> None:
    for seed in SEEDS:
        point = plan(seed, 45, nodes=3, replicas=3, transactions=False).failpoint
        assert point is not None
        assert point.name not in (*ROUTER_POINTS, "txn.resolver")


@pytest.mark.parametrize("kinds", [("kill-all",), ("loss", "one-way")])
def test_kinds_limit_the_faults_and_no_failpoint_means_none(kinds: tuple[str, ...]) -> None:
    schedule = plan(5, 30, nodes=3, replicas=3, kinds=kinds, failpoint=False)
    assert schedule.failpoint is None
    assert schedule.faults
    assert {fault.kind for fault in schedule.faults} <= set(kinds)


def test_an_unknown_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="no such fault: kil"):
        plan(5, 30, nodes=3, replicas=3, kinds=("kil", "pause"))


def test_the_soak_table_adds_up_per_workload() -> None:
    first = RunResult(1, "register", 45, "", faults=11, inflicted=10, ok=100, unknown=3)
    second = RunResult(
        2, "bank", 45, "", faults=7, inflicted=7, ok=20, failed=5, failpoint_fired=True
    )
    second.anomalies.append("bank final: ...")
    table = summary_table([first, second])
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert [cell.strip() for cell in rows["register"].split("|")[2:-1]] == [
        "1",
        "10",
        "0",
        "100",
        "0",
        "3",
        "0",
    ]
    assert [cell.strip() for cell in rows["all"].split("|")[2:-1]] == [
        "2",
        "17",
        "1",
        "120",
        "5",
        "3",
        "1",
    ]
