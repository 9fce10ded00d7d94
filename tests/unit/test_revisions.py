"""Revisions: unique across groups, rising per group, in real-time order (shardkv.revisions)."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given
from hypothesis import strategies as st

from shardkv.node.transport_memory import MemoryNetwork
from shardkv.revisions import (
    EPOCH_US,
    GROUP_BITS,
    commit_wait_seconds,
    next_revision,
    revision_time_us,
    stamp_now,
)
from tests.unit.test_node_runtime import GROUPS, OPTIONS, LocalCluster, put, start_all

GROUP_IDS = st.integers(min_value=1, max_value=(1 << GROUP_BITS) - 1)
TIMES = st.integers(min_value=1, max_value=1 << 50)


@given(previous=st.integers(0, 1 << 62), stamp=TIMES, group_id=GROUP_IDS)
def test_a_group_revision_always_rises_and_is_never_below_the_stamp(
    previous: int, stamp: int, group_id: int
) -> None:
    revision = next_revision(previous, stamp, group_id)
    assert revision > previous
    assert revision >> GROUP_BITS >= stamp
    assert revision % (1 << GROUP_BITS) == group_id


def test_two_groups_never_assign_the_same_revision() -> None:
    rng = random.Random(7)
    seen: dict[int, int] = {}
    revisions = {1: 0, 2: 0, 3: 0}
    stamp = 1_000
    for _ in range(5_000):
        group_id = rng.choice((1, 2, 3))
        stamp += rng.choice((0, 0, 1))  # several writes within one microsecond
        revisions[group_id] = next_revision(revisions[group_id], stamp, group_id)
        assert revisions[group_id] not in seen
        seen[revisions[group_id]] = group_id


@given(
    now=st.floats(min_value=1.7e9, max_value=4.0e9),
    ahead_us=st.integers(0, 2_000),
    g1=GROUP_IDS,
    g2=GROUP_IDS,
)
def test_a_write_stamped_after_another_was_answered_gets_a_higher_revision(
    now: float, ahead_us: int, g1: int, g2: int
) -> None:
    # Group 1's time may run ahead of the clock; its write is answered only once
    # the commit wait has passed, and a later write of any group is stamped then.
    stamp = stamp_now(now)
    revision = next_revision((stamp + ahead_us) << GROUP_BITS, stamp, g1)
    answered_at = now + commit_wait_seconds(revision, now)
    later = next_revision(0, stamp_now(answered_at), g2)
    assert later > revision


def test_commit_wait_is_zero_unless_the_revision_is_ahead_of_the_clock() -> None:
    now = 1_800_000_000.0
    behind = next_revision(0, stamp_now(now - 0.010), 1)
    assert commit_wait_seconds(behind, now) == 0.0
    ahead = next_revision(0, stamp_now(now + 0.250), 1)
    assert 0.249 <= commit_wait_seconds(ahead, now) <= 0.251
    assert commit_wait_seconds(behind, now, max_offset_us=20_000) > 0.009


def test_stamps_are_microseconds_since_2020() -> None:
    assert stamp_now(EPOCH_US / 1e6 + 1.5) == 1_500_000
    assert stamp_now(0.0) == 1, "a clock before 2020 still stamps (a revision's floor)"


def test_an_unstamped_command_counts_up_by_one() -> None:
    assert next_revision(41, 0, 5) == 42


async def test_the_leader_stamps_what_it_proposes_with_its_clock() -> None:
    clock = [4_000_000_000.0]  # 2096: never the machine's own clock
    options = dataclasses.replace(OPTIONS, clock=lambda: clock[0])
    cluster = LocalCluster(MemoryNetwork(), options=options)
    await start_all(cluster)
    leaders = await cluster.elect_all()
    results = {}
    for group_id in GROUPS:
        clock[0] += 0.001
        runtime = cluster.nodes[leaders[group_id].node_id].runtime
        results[group_id] = await cluster.settle(
            runtime.propose(group_id, put(b"k%d" % group_id, b"v", 9, group_id))
        )
    revisions = [results[g].revision for g in GROUPS]  # type: ignore[attr-defined]
    assert revisions == sorted(revisions), "later proposals, on any group, rank later"
    for group_id, revision in zip(GROUPS, revisions, strict=True):
        assert revision % (1 << GROUP_BITS) == group_id
        assert int(clock[0] * 1e6) - 1_000 * len(GROUPS) <= revision_time_us(revision)
        assert revision_time_us(revision) <= int(clock[0] * 1e6) + 10
    # Every replica applied the same revision: the stamp rides in the entry.
    await cluster.step(3)
    for group_id in GROUPS:
        applied = {node.runtime.peers[group_id].machine.revision for node in cluster.nodes.values()}
        assert applied == {results[group_id].revision}  # type: ignore[attr-defined]
