"""Ring changes with live migration (issue 6) against real node and router processes.

Each test starts three nodes hosting data groups 1 to 4, routers in front,
and changes the ring with the client's admin calls while clients keep going.
A change is over when the newest cluster map (asked of the nodes directly:
the routers poll theirs once a second) has the target ring and no
migration. What each checks:

1. Concurrent register clients (``test_router_history.run_client``) on keys
   that move, through two routers, while group 5 is added, weighted up,
   removed, and another group added: the history, closed by a final read of every
   key, is linearizable (``tests.checkers``), and keys written before it all
   read back.
2. Minimal movement: adding a fifth group to loaded groups moves about a
   fifth of the keys, each to the new group (the target ring's owner), and
   the sources drop what they gave (key counts on every replica: the moved
   copies are collected at the source).
3. The meta group's leader (which drives the moves) is SIGKILLed once a move
   is frozen (or further) while another is still copying or frozen, and
   restarted: the migration completes and every key, including writes made
   during the move, reads as acknowledged.
4. A router paused (SIGSTOP) across a whole ring change serves the moved keys
   once resumed: it is refused (WRONG_GROUP), takes the newer map and routes
   again.
5. A bank (``tests.integration.bank``) transfers across groups while a group
   is added: its total is conserved and no balance is negative.
6. Keys that do not move keep their latency while the others move; the moved
   keys are unwritable (frozen) for well under a second; and a move's keys
   are served by the new group as soon as that move is active, while other
   moves of the change are not.
7. A ring change given a limit (``max_keys_per_second``) copies no faster
   than it, across all its moves; ``set_move_rate(0)`` lifts it while the
   change runs, and the change then completes with every key in place.

Under load (1, 4, 5) no router call may fail with an exception the router
did not handle (gRPC's "Unexpected [...] raised by servicer method": UNKNOWN).
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial

import pytest

from router import AsyncClient, Client, DeadlineExceeded
from shardkv.node.cluster import META_GROUP
from shardkv.ring import KeyRing, build_ring
from shardkv.v1 import cluster_pb2
from tests.checkers.linearizability import Operation, check_history
from tests.integration.bank import (
    Bank,
    BankReport,
)
from tests.integration.conftest import (
    POLL,
    Cluster,
    ClusterClient,
    MakeCluster,
    Settings,
    wait_until,
)
from tests.integration.routers import RouterProcess
from tests.integration.test_router_history import CLIENTS, run_client

pytestmark = pytest.mark.integration

SETTINGS = Settings(nodes=3, groups=4)
NEW_GROUP = 5
# Generous: a change of a few thousand keys takes about a second here.
CHANGE_TIMEOUT = 40.0
MOVING_PHASES = (cluster_pb2.MOVE_COPYING, cluster_pb2.MOVE_FROZEN)


# -- helpers --------------------------------------------------------------------------------------


def wait_change_done(
    cluster: Cluster, change: cluster_pb2.ClusterMap, timeout: float = CHANGE_TIMEOUT
) -> cluster_pb2.ClusterMap:
    """The map once the ring change ``change`` (a change call's answer) is over.

    Fails after ``timeout`` seconds naming each move's phase and why it is stuck.
    """
    assert change.HasField("migration"), change
    epoch = change.migration.target.epoch
    deadline = time.monotonic() + timeout
    current: cluster_pb2.ClusterMap | None = None
    while time.monotonic() < deadline:
        current = cluster.newest_map()
        if current is not None and current.ring.epoch >= epoch:
            assert not current.HasField("migration") or current.ring.epoch > epoch, current
            return current
        time.sleep(POLL)
    pytest.fail(
        f"the ring change to epoch {epoch} ({change.migration.reason}) did not finish in "
        f"{timeout} s; moves: {phases(current)}"
    )


def wait_all_caught_up(cluster: Cluster) -> None:
    """Until every running node applied what each group's leader applied (same key counts)."""
    for node_id in cluster.running():
        wait_until(
            f"node {node_id} to catch up", partial(cluster.caught_up, node_id), CHANGE_TIMEOUT
        )


def key_counts(cluster: Cluster, node_id: int | None = None) -> dict[int, int]:
    """Data group -> key count, as each group's leader (or node ``node_id``) reports it."""
    if node_id is not None:
        statuses = cluster.group_statuses(node_id)
        assert statuses is not None, f"node {node_id} does not answer"
        return {g: status.key_count for g, status in statuses.items() if g != META_GROUP}
    leaders = cluster.wait_leaders()
    by_node = {leader: cluster.group_statuses(leader) or {} for leader in set(leaders.values())}
    return {
        group_id: by_node[leader][group_id].key_count
        for group_id, leader in leaders.items()
        if group_id != META_GROUP
    }


def keys_named(
    name: str, count: int, owner: Callable[[bytes], bool], limit: int = 100_000
) -> list[bytes]:
    """The first ``count`` keys ``name/N`` for which ``owner`` holds."""
    found = [key for key in (f"{name}/{n}".encode() for n in range(limit)) if owner(key)]
    assert len(found) >= count, f"only {len(found)} keys {name}/N fit"
    return found[:count]


def with_group(ring: KeyRing, group_id: int, weight: int = 1) -> KeyRing:
    """``ring`` with ``group_id`` at ``weight``, one epoch later: a change's target ring."""
    return KeyRing(ring.epoch + 1, {**ring.weights, group_id: weight})


def phases(cluster_map: cluster_pb2.ClusterMap | None) -> list[str]:
    """Each move of the map's migration: its groups, phase, and why it is stuck (if it is)."""
    if cluster_map is None or not cluster_map.HasField("migration"):
        return []
    return [
        f"{move.source}->{move.target} {cluster_pb2.MovePhase.Name(move.phase)}"
        f" ({move.keys_copied} keys copied){f' stuck: {move.stuck}' if move.stuck else ''}"
        for move in cluster_map.migration.moves
    ]


def unhandled_errors(*routers: RouterProcess) -> list[str]:
    """Calls a router failed with an exception it did not handle (gRPC answered UNKNOWN)."""
    return [
        f"{router.name}: {line.strip()}"
        for router in routers
        for line in router.log_path.read_text(errors="replace").splitlines()
        if "Unexpected [" in line
    ]


def read_back(client: Client, expected: dict[bytes, bytes]) -> dict[bytes, bytes | None]:
    """The keys of ``expected`` whose value differs: key -> what was read (None: absent)."""
    found = client.get_many(list(expected))
    return {key: found.get(key) for key, value in expected.items() if found.get(key) != value}


# -- 1. linearizable registers through repeated ring changes --------------------------------------

HISTORY_SECONDS = 14.0


def test_register_clients_stay_linearizable_while_groups_are_added_and_removed(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    cluster.start_all()
    routers = [RouterProcess(cluster, "router-1"), RouterProcess(cluster, "router-2")]
    target = with_group(cluster.ring, NEW_GROUP)
    # Six keys that move to the new group (and back), two that stay put.
    moving = keys_named("reg", 6, lambda key: target.group_for(key) != cluster.ring.group_for(key))
    staying = keys_named("reg", 2, lambda key: target.group_for(key) == cluster.ring.group_for(key))
    registers = moving + staying
    # Written before the changes, read after: no acknowledged write may be lost.
    settled = {b"settled/%d" % n: b"s%d" % n for n in range(300)}
    history: list[Operation] = []
    # (change, seconds of load left when it was done, its moves as (source, target))
    changes_done: list[tuple[str, float, list[tuple[int, int]]]] = []
    try:
        for router in routers:
            router.start()
        with Client(routers[0].address, timeout=20.0) as client:
            client.put_many(settled)

        async def ring_changes(stop_at: float) -> None:
            async with AsyncClient(routers[1].address, timeout=20.0) as admin:
                steps: list[tuple[str, Callable[[], Awaitable[cluster_pb2.ClusterMap]]]] = [
                    ("add-group 5", lambda: admin.add_group()),
                    ("set-weight 5 3", lambda: admin.set_weight(NEW_GROUP, 3)),
                    ("remove-group 5", lambda: admin.remove_group(NEW_GROUP)),
                    ("add-group again", lambda: admin.add_group()),
                ]
                await asyncio.sleep(1.0)
                for name, step in steps:
                    change = await step()
                    moves = [(move.source, move.target) for move in change.migration.moves]
                    await asyncio.to_thread(wait_change_done, cluster, change)
                    changes_done.append((name, stop_at - time.monotonic(), moves))

        async def scenario() -> None:
            stop_at = time.monotonic() + HISTORY_SECONDS
            await asyncio.gather(
                *(
                    run_client(number, routers[number % 2].address, history, stop_at, registers)
                    for number in range(CLIENTS)
                ),
                ring_changes(stop_at),
            )

        asyncio.run(scenario())
        with Client(routers[0].address, timeout=20.0) as client:
            for key in registers:
                call = time.monotonic()
                value = client.get(key)
                history.append(
                    Operation(CLIENTS, "get", key, None, None, value, call, time.monotonic())
                )
            lost = read_back(client, settled)
        final_map = cluster.newest_map()
        errors = unhandled_errors(*routers)
    finally:
        for router in routers:
            router.close()
    print(f"changes (name, seconds of load left when done, moves): {changes_done}")
    assert len(changes_done) == 4
    # Every change ran under load: the clients were still going when the last was done.
    assert changes_done[-1][1] > 0, changes_done
    assert not lost, f"acknowledged writes lost: {dict(list(lost.items())[:10])}"
    assert not errors, "\n".join(errors[:10])
    assert final_map is not None
    added_again = {target for source, target in changes_done[-1][2]}
    assert len(added_again) == 1, changes_done
    assert set(build_ring(final_map.ring).weights) == {*cluster.group_ids, *added_again}
    answered = [op for op in history if op.ret is not None]
    assert len(answered) > 300, f"only {len(answered)} operations were answered"
    moved_answered = [op for op in answered if op.key in moving]
    assert {op.kind for op in moved_answered} == {"put", "get", "cas", "delete"}
    print(f"{len(answered)} answered, {len(history) - len(answered)} of unknown outcome")
    result = check_history(history)
    assert result.ok, result.explanation
    assert not result.timed_out


# -- 2. minimal movement, and garbage collection at the source ------------------------------------

LOADED_KEYS = 4000


def test_adding_a_group_moves_about_a_fifth_of_the_keys_all_into_it(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    cluster.start_all()
    router = RouterProcess(cluster, "router-1")
    data = {b"load/%05d" % n: b"value-%d" % n for n in range(LOADED_KEYS)}
    try:
        router.start()
        with Client(router.address, timeout=20.0) as client:
            client.put_many(data)
            before = key_counts(cluster)
            assert sum(before.values()) == LOADED_KEYS, before
            change = client.add_group()
            assert sorted((m.source, m.target) for m in change.migration.moves) == [
                (source, NEW_GROUP) for source in cluster.group_ids
            ]
            finished = wait_change_done(cluster, change)
            new_ring = build_ring(finished.ring)
            wait_all_caught_up(cluster)
            after = key_counts(cluster)
            per_node = {node_id: key_counts(cluster, node_id) for node_id in cluster.running()}
            mismatched = read_back(client, data)
    finally:
        router.close()
    print(f"key counts before {before}, after {after}")
    # Where every key should be now: the old owner, or the new group.
    moved_from = {group_id: 0 for group_id in cluster.group_ids}
    expected_after = dict.fromkeys((*cluster.group_ids, NEW_GROUP), 0)
    for key in data:
        old_owner, new_owner = cluster.ring.group_for(key), new_ring.group_for(key)
        assert new_owner in (old_owner, NEW_GROUP), f"{key!r} moved {old_owner} -> {new_owner}"
        expected_after[new_owner] += 1
        if new_owner != old_owner:
            moved_from[old_owner] += 1
    assert after == expected_after
    assert all(counts == after for counts in per_node.values()), per_node
    assert sum(after.values()) == LOADED_KEYS
    # Minimal movement: about 1/5 of the keys moved (the ring's vnodes are not exact).
    assert 0.12 * LOADED_KEYS < after[NEW_GROUP] < 0.28 * LOADED_KEYS, after
    for group_id in cluster.group_ids:
        # The source dropped exactly what it gave: collected, not kept beside the copy.
        assert after[group_id] == before[group_id] - moved_from[group_id], (group_id, after)
        assert moved_from[group_id] > 0
    assert not mismatched, dict(list(mismatched.items())[:10])


# -- 3. the meta leader killed mid-migration ------------------------------------------------------

KILL_KEYS = 12_000
REWRITE_SECONDS = 20.0


def test_killing_the_meta_leader_mid_migration_still_completes_it(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    cluster.start_all()
    router = RouterProcess(cluster, "router-1")
    data = {b"bulk/%05d" % n: b"v-%d-%s" % (n, b"x" * 100) for n in range(KILL_KEYS)}
    target = with_group(cluster.ring, NEW_GROUP)
    rewritten = keys_named("bulk-rewrite", 40, lambda key: target.group_for(key) == NEW_GROUP)
    try:
        router.start()
        with Client(router.address, timeout=30.0) as client:
            client.put_many(data, batch_size=500)
            client.put_many(dict.fromkeys(rewritten, b"old"))
            meta_leader = cluster.wait_leaders()[META_GROUP]
            change = client.add_group()

            def moving() -> cluster_pb2.ClusterMap | None:
                """The map once a move got past its copy while one is copying or frozen."""
                current = cluster.newest_map()
                if current is not None and current.ring.epoch >= target.epoch:
                    pytest.fail("the migration ended before the moment to kill: load more keys")
                if current is None or not current.HasField("migration"):
                    return None
                moves = current.migration.moves
                past_copy = any(move.phase >= cluster_pb2.MOVE_FROZEN for move in moves)
                in_flight = any(move.phase in MOVING_PHASES for move in moves)
                return current if past_copy and in_flight else None

            seen = wait_until("a move past its copy", moving, timeout=CHANGE_TIMEOUT)
            cluster.kill(meta_leader)
            print(f"killed node {meta_leader} (meta leader) at {phases(seen)}")
            # Writes to moving keys while the driver is gone and after it resumes,
            # within REWRITE_SECONDS in all (a key not tried keeps b"old").
            acknowledged: dict[bytes, bytes] = {}
            unknown: dict[bytes, bytes] = {}
            stop_writing = time.monotonic() + REWRITE_SECONDS
            for number, key in enumerate(rewritten):
                if number == len(rewritten) // 2:
                    cluster.start(meta_leader)
                left = stop_writing - time.monotonic()
                if left <= 0:
                    continue
                value = b"new-%d" % number
                try:
                    client.put(key, value, timeout=min(5.0, left))
                except DeadlineExceeded:
                    unknown[key] = value
                else:
                    acknowledged[key] = value
            finished = wait_change_done(cluster, change)
            assert build_ring(finished.ring).weights == target.weights
            wait_all_caught_up(cluster)
            counts = key_counts(cluster)
            mismatched = read_back(client, data)
            rewrites = client.get_many(rewritten)
    finally:
        router.close()
    print(f"key counts after {counts}; {len(unknown)} rewrites of unknown outcome")
    assert not mismatched, f"{len(mismatched)} keys wrong, e.g. {list(mismatched.items())[:5]}"
    expected = dict.fromkeys((*cluster.group_ids, NEW_GROUP), 0)
    for key in (*data, *rewritten):
        expected[target.group_for(key)] += 1
    assert counts == expected
    for key in rewritten:
        if key in acknowledged:
            assert rewrites.get(key) == acknowledged[key], key
        else:
            assert rewrites.get(key) in (b"old", unknown.get(key)), key
    assert len(acknowledged) >= len(rewritten) // 2, f"{len(acknowledged)} rewrites acknowledged"


# -- 4. a router with a stale map -----------------------------------------------------------------


def test_a_router_paused_across_a_ring_change_reroutes_the_moved_keys(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    cluster.start_all()
    fresh = RouterProcess(cluster, "router-fresh")
    # DEBUG: it logs each refusal it routes again after.
    stale = RouterProcess(cluster, "router-stale", env={"SHARDKV_LOG_LEVEL": "DEBUG"})
    target = with_group(cluster.ring, NEW_GROUP)
    moved = keys_named("stale", 24, lambda key: target.group_for(key) == NEW_GROUP)
    try:
        fresh.start()
        stale.start()
        with Client(stale.address, timeout=20.0) as client:
            client.put_many({key: b"before" for key in moved})
            # Its caches are warm: every key's group and that group's leader.
            assert client.get_many(moved) == dict.fromkeys(moved, b"before")
        assert stale.process is not None
        stale.process.send_signal(signal.SIGSTOP)
        try:
            with Client(fresh.address, timeout=20.0) as client:
                wait_change_done(cluster, client.add_group())
                client.put_many({key: b"moved" for key in moved[:12]})
        except BaseException:
            stale.process.send_signal(signal.SIGCONT)
            raise

        async def use_stale() -> tuple[dict[bytes, bytes | None], list[None]]:
            assert stale.process is not None
            async with AsyncClient(stale.address, timeout=20.0) as client:
                reads = asyncio.gather(*(client.get(key) for key in moved[:12]))
                writes = asyncio.gather(*(client.put(key, b"after") for key in moved[12:]))
                # The requests wait in the socket: the router meets them as it wakes up,
                # before its next poll of the map can answer.
                await asyncio.sleep(0.5)
                stale.process.send_signal(signal.SIGCONT)
                return dict(zip(moved[:12], await reads, strict=True)), await writes

        reads, _ = asyncio.run(use_stale())
        with Client(fresh.address, timeout=20.0) as client:
            written = client.get_many(moved[12:])
        log = stale.log_path.read_text(errors="replace")
        errors = unhandled_errors(stale, fresh)
    finally:
        stale.close()
        fresh.close()
    assert not errors, "\n".join(errors[:10])
    assert reads == dict.fromkeys(moved[:12], b"moved")
    assert written == dict.fromkeys(moved[12:], b"after")
    refusals = re.findall(r"group \d+ does not own the key in epoch \d+", log)
    assert refusals, "the paused router was never refused: it did not use its stale map"
    print(f"the stale router was refused {len(refusals)} times, e.g. {refusals[0]}")


# -- 5. transactions across a move ----------------------------------------------------------------

ACCOUNTS = 20
INITIAL_BALANCE = 100
# Long enough that the readers check their floor of reads while transfers run
# (most reads abort on a transfer's lock: 2-11 checked in 12 s, in 8 runs).
BANK_SECONDS = 20.0


def test_a_bank_conserves_its_total_while_a_group_is_added(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(SETTINGS)
    cluster.start_all()
    routers = [RouterProcess(cluster, "router-1"), RouterProcess(cluster, "router-2")]
    target = with_group(cluster.ring, NEW_GROUP)
    # Half the accounts move to the new group; all four old groups hold some.
    keys = [
        *keys_named("account-moving", ACCOUNTS // 2, lambda k: target.group_for(k) == NEW_GROUP),
        *keys_named("account-staying", ACCOUNTS // 2, lambda k: target.group_for(k) != NEW_GROUP),
    ]
    assert {cluster.ring.group_for(key) for key in keys} == set(cluster.group_ids)
    try:
        for router in routers:
            router.start()
        bank = Bank(keys, INITIAL_BALANCE)
        bank.setup(routers[1].stub())
        done_at: list[float] = []

        async def add_group(stop_at: float) -> None:
            await asyncio.sleep(BANK_SECONDS * 0.25)
            async with AsyncClient(routers[0].address, timeout=20.0) as admin:
                change = await admin.add_group()
            await asyncio.to_thread(wait_change_done, cluster, change)
            done_at.append(stop_at - time.monotonic())

        async def scenario() -> BankReport:
            stop_at = time.monotonic() + BANK_SECONDS
            report, _ = await asyncio.gather(
                bank.run(
                    [router.address for router in routers],
                    transferers=4,
                    readers=2,
                    seconds=BANK_SECONDS,
                    seed=7,
                ),
                add_group(stop_at),
            )
            return report

        report = asyncio.run(scenario())
        final = bank.final_balances(routers[0].stub())
        errors = unhandled_errors(*routers)
    finally:
        for router in routers:
            router.close()
    print(report.summary(), f"; the move was done {done_at} s before the bank stopped")
    assert done_at and done_at[0] > 0, "the move was not done while the bank ran"
    # Every problem at once: calls that failed unhandled, wrong answers during the run, and
    # final balances the transfers do not explain.
    problems = [*errors, *bank.problems(report, final)]
    assert problems == [], "\n".join(problems)
    assert len(report.committed) >= 20, report.summary()
    assert report.reads_checked >= 5, report.summary()


# -- 6. latency of keys that stay; arcs served as they arrive -------------------------------------

LATENCY_KEYS = 8000
LATENCY_BOUND = 1.0
# How long the moved keys may be unwritable (issue 6: well under a second).
FROZEN_BOUND_MS = 1000


def test_during_a_move_staying_keys_keep_their_latency_and_arrived_keys_are_served(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    cluster.start_all()
    router = RouterProcess(cluster, "router-1")
    target = with_group(cluster.ring, NEW_GROUP)
    data = {b"bulk/%05d" % n: b"x" * 200 for n in range(LATENCY_KEYS)}
    staying = keys_named("still", 16, lambda key: target.group_for(key) != NEW_GROUP)
    latencies: list[float] = []
    frozen_ms: dict[str, int] = {}
    moving = threading.Event()
    # One key per move, read from the new group as soon as its move is active.
    arriving = {
        cluster.ring.group_for(key): key for key in data if target.group_for(key) == NEW_GROUP
    }
    reader = ClusterClient(cluster, client_id=0xA11)
    served_early: list[str] = []

    def read_an_arrived_key(current: cluster_pb2.ClusterMap) -> None:
        """If a move is active while another is not yet, read its key at the target.

        It counts only if the migration was still under way after the read.
        """
        moves = current.migration.moves
        active = [m.source for m in moves if m.phase >= cluster_pb2.MOVE_ACTIVE]
        if not active or all(m.phase >= cluster_pb2.MOVE_ACTIVE for m in moves):
            return
        key = arriving[active[0]]
        found = reader.read(NEW_GROUP, [key])
        assert key in found and found[key].value == data[key], (
            f"group {NEW_GROUP} does not serve {key!r} though its move is active: {found}"
        )
        after = cluster.newest_map()
        if after is not None and after.ring.epoch == current.ring.epoch:
            served_early.append(f"{key!r} from {active[0]} at {phases(current)}")

    try:
        router.start()

        def put_steadily() -> None:
            rng = random.Random(3)
            with Client(router.address, timeout=20.0) as client:
                for step in range(100_000):
                    if not moving.is_set():
                        return
                    started = time.monotonic()
                    client.put(rng.choice(staying), b"%d" % step)
                    latencies.append(time.monotonic() - started)

        with Client(router.address, timeout=20.0) as client:
            client.put_many(data, batch_size=500)
            client.put_many(dict.fromkeys(staying, b"0"))
            moving.set()
            writer = threading.Thread(target=put_steadily)
            writer.start()
            try:
                change = client.add_group()
                epoch = change.migration.target.epoch

                def finished() -> bool:
                    current = cluster.newest_map()
                    for move in [] if current is None else current.migration.moves:
                        if move.phase >= cluster_pb2.MOVE_ACTIVE:
                            frozen_ms[f"{move.source}->{move.target}"] = move.frozen_ms
                    if current is not None and not served_early:
                        read_an_arrived_key(current)
                    return current is not None and current.ring.epoch >= epoch

                wait_until("the move to finish", finished, timeout=CHANGE_TIMEOUT)
            finally:
                moving.clear()
                writer.join(CHANGE_TIMEOUT)
    finally:
        router.close()
    assert not writer.is_alive()
    assert len(latencies) >= 20, latencies
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(
        f"{len(latencies)} puts of keys that stay during the move: p50 "
        f"{statistics.median(latencies):.4f} s, p99 {p99:.4f} s, max {max(latencies):.4f} s; "
        f"frozen ms per move (as seen) {frozen_ms}"
    )
    assert p99 < LATENCY_BOUND
    assert frozen_ms and all(value < FROZEN_BOUND_MS for value in frozen_ms.values()), frozen_ms
    # Arcs are served as soon as they arrive, not once the whole change is done.
    assert served_early, "no move was seen active while another was not"
    print(f"served before the change was done: {served_early[0]}")


# -- 7. the operator's limit ----------------------------------------------------------------------

LIMITED_KEYS = 12_000
LIMIT = 100  # keys/s, over all the moves
LIMITED_SECONDS = 3.0
# Once lifted: the rest goes as fast as the nodes go (about a second here),
# where the limit would have held it back for about half a minute.
LIFTED_TIMEOUT = 15.0


def test_a_limited_change_copies_no_faster_than_its_limit_until_it_is_lifted(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    cluster.start_all()
    router = RouterProcess(cluster, "router-1")
    data = {b"limited/%05d" % n: b"value-%d" % n for n in range(LIMITED_KEYS)}
    try:
        router.start()
        with Client(router.address, timeout=20.0) as client:
            client.put_many(data)
            change = client.add_group(max_keys_per_second=LIMIT)
            assert change.migration.max_keys_per_second == LIMIT
            moving = sum(
                1 for key in data if build_ring(change.migration.target).group_for(key) == NEW_GROUP
            )
            started = time.monotonic()
            time.sleep(LIMITED_SECONDS)
            # The target counts the copies it holds (it does not serve them yet).
            copied = key_counts(cluster)[NEW_GROUP]
            elapsed = time.monotonic() - started
            limited = cluster.newest_map()
            assert limited is not None and limited.HasField("migration"), "done despite the limit"
            # The first step goes at once: one bulk chunk, all of one move's
            # keys here (about a quarter of them; twice that, for the moves'
            # uneven shares); each later one once its predecessor's keys kept
            # to the limit.
            first_step = max(moving // len(cluster.group_ids) * 2, 1000)
            assert 0 < copied <= first_step + LIMIT * elapsed, (copied, moving, elapsed)
            lifted = client.set_move_rate(0)
            assert lifted.migration.max_keys_per_second == 0
            finished = wait_change_done(cluster, change, LIFTED_TIMEOUT)
            wait_all_caught_up(cluster)
            mismatched = read_back(client, data)
            after = key_counts(cluster)
    finally:
        router.close()
    print(f"{copied} of {moving} moving keys copied in {elapsed:.1f} s at {LIMIT} keys/s")
    assert finished.ring.epoch == change.migration.target.epoch
    assert after[NEW_GROUP] == moving, (after, moving)
    assert sum(after.values()) == LIMITED_KEYS
    assert not mismatched, dict(list(mismatched.items())[:10])
