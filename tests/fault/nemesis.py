"""The nemesis: a fault schedule drawn from a seed, and the thread that carries it out.

``plan(seed, seconds, ...)`` draws the whole schedule before anything runs:
faults one after another, each held for a while and then healed, with
quiet gaps between them. The same seed gives the same schedule, which
``describe`` prints, so a failing run can be replayed (``python -m
tests.fault.run --seed S``). What the cluster does with the faults is
not deterministic (real processes, real clocks); the faults are.

The faults:

- ``kill``: kill -9 a node, restart it when the fault ends.
- ``kill-all``: kill -9 every node at once (a power cut), restart them all
  at the end: every acknowledged write must survive it.
- ``pause``: SIGSTOP a node (the leader of some group, when one is known),
  SIGCONT at the end.
- ``partition``: the nodes split in two sides that hear nothing from each
  other (a minority and a majority).
- ``isolate-leader``: the leader of a group hears nothing from any other
  node and no other node hears it; clients can still reach it.
- ``one-way``: one node stops hearing another; the other direction works.
- ``loss``: every node drops a share of what it receives and delays the
  rest by up to some tens of milliseconds.
- ``kill-router``: kill -9 a router, restart it at the end.
- ``transfer-leader``: an admin call moves a group's leadership.
- ``ring-change``: an admin call adds a group (or removes the one added).
- ``move-replica``: an admin call moves a group's replica to a node without
  one (only with more nodes than replicas).

On top, ``failpoint`` may name one failpoint (``shardkv.failpoints``) armed
to fire on its N-th hit: a crash (exit) or a pause (sleep) at exactly that
point. A point every round reaches is armed in one node; the others (a
driver's, a snapshot's, a coordinator's, which run wherever leadership
happens to be) in every node or every router, where each process may fire
it once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from router import AsyncClient, ClientError
from shardkv.failpoints import POINTS
from shardkv.v1 import cluster_pb2
from tests.fault.harness import FaultCluster

__all__ = [
    "ALL_NODES",
    "ALL_ROUTERS",
    "FAULTS",
    "Failpoint",
    "Fault",
    "NemesisLog",
    "Schedule",
    "describe",
    "plan",
    "run_schedule",
]

_log = logging.getLogger(__name__)

# Ends a fault.
Undo = Callable[[], None]

FAULTS = (
    "kill",
    "kill-all",
    "pause",
    "partition",
    "isolate-leader",
    "one-way",
    "loss",
    "kill-router",
    "transfer-leader",
    "ring-change",
    "move-replica",
)
ROUTER_POINTS = ("txn.after_prepare", "txn.after_record", "txn.between_commits")
# Points hit in almost every round of a busy node, and the N-th hit to fire on.
ALL_NODES = -1
ALL_ROUTERS = 0
FREQUENT_POINTS = (
    "raft.before_persist",
    "raft.after_persist",
    "fsm.before_apply",
    "fsm.after_apply",
)


@dataclass(frozen=True, slots=True)
class Fault:
    at: float
    kind: str
    hold: float
    # Drawn numbers the fault resolves when it runs (which node, which group...).
    pick: int

    def __str__(self) -> str:
        return f"t={self.at:5.1f}s {self.kind:<15} hold {self.hold:.1f}s pick {self.pick}"


@dataclass(frozen=True, slots=True)
class Failpoint:
    name: str
    action: str
    hit: int
    # A node id, ALL_NODES or ALL_ROUTERS.
    where: int

    @property
    def spec(self) -> str:
        return f"{self.name}={self.hit}*{self.action}"

    def __str__(self) -> str:
        where = {ALL_NODES: "every node", ALL_ROUTERS: "every router"}.get(
            self.where, f"node {self.where}"
        )
        return f"failpoint {self.spec} in {where}"


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    faults: tuple[Fault, ...]
    failpoint: Failpoint | None


@dataclass(slots=True)
class NemesisLog:
    """What the nemesis did, in order, and what it could not do."""

    done: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # Faults the schedule got through, of them those not refused (admin calls
    # a cluster may refuse); the error that stopped the nemesis, if one did.
    completed: int = 0
    inflicted: int = 0
    error: str = ""

    def note(self, started: float, text: str) -> None:
        self.done.append(f"t={time.monotonic() - started:5.1f}s {text}")


def plan(
    seed: int,
    seconds: float,
    *,
    nodes: int,
    replicas: int,
    kinds: Sequence[str] = FAULTS,
    failpoint: bool = True,
    transactions: bool = True,
) -> Schedule:
    """The schedule of ``seed``; without ``transactions`` (the workload runs none) no
    coordinator's or resolver's failpoint is drawn: it could never fire."""
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        named = ", ".join(sorted(unknown))
        raise ValueError(f"no such fault: {named} (known: {', '.join(FAULTS)})")
    rng = random.Random(seed)
    usable = [kind for kind in kinds if kind != "move-replica" or nodes > replicas]
    faults: list[Fault] = []
    at = rng.uniform(1.0, 2.0)
    while at < seconds - 1.0:
        kind = rng.choice(usable)
        hold = min(rng.uniform(1.0, 4.0), max(seconds - at - 0.5, 0.5))
        faults.append(Fault(round(at, 2), kind, round(hold, 2), rng.randrange(1 << 30)))
        at += hold + rng.uniform(0.5, 2.5)
    point: Failpoint | None = None
    if failpoint:
        points = [
            point
            for point in POINTS
            if transactions or not (point in ROUTER_POINTS or point == "txn.resolver")
        ]
        name = rng.choice(points)
        action = rng.choice(("exit", "exit", "sleep(1.5)"))
        if name in FREQUENT_POINTS:
            # A busy node runs tens of rounds a second, not all with entries to apply.
            point = Failpoint(name, action, rng.randint(50, 600), rng.randint(1, nodes))
        else:
            # Hit where a driver, a snapshot or a coordinator happens to run: armed everywhere.
            point = Failpoint(
                name, action, rng.randint(1, 3), ALL_ROUTERS if name in ROUTER_POINTS else ALL_NODES
            )
        if name.startswith("migration.") and faults and "ring-change" in usable:
            # Its point is only reached if a ring change happens: make the first fault one.
            first = faults[0]
            faults[0] = Fault(first.at, "ring-change", first.hold, first.pick)
    return Schedule(seed, tuple(faults), point)


def describe(schedule: Schedule) -> str:
    lines = [f"nemesis seed {schedule.seed}: {len(schedule.faults)} faults"]
    lines += [f"  {fault}" for fault in schedule.faults]
    lines.append(f"  {schedule.failpoint or 'no failpoint'}")
    return "\n".join(lines)


def run_schedule(
    cluster: FaultCluster, schedule: Schedule, stop: threading.Event, log: NemesisLog
) -> None:
    """Carry the schedule out (in a thread of its own); heals after each fault, and at the end.

    An exception ends it, recorded in ``log.error`` (the run reports it as an anomaly).
    """
    started = time.monotonic()
    added_groups: list[int] = []
    try:
        for fault in schedule.faults:
            for _ in range(_ticks(fault.at - (time.monotonic() - started))):
                if time.monotonic() - started >= fault.at:
                    break
                if stop.wait(_TICK):
                    return
                cluster.check_processes()
            rng = random.Random(fault.pick)
            refused_before = len(log.refused)
            undo = _inflict(cluster, fault, rng, log, started, added_groups)
            ends = time.monotonic() + fault.hold
            for _ in range(_ticks(fault.hold)):
                if time.monotonic() >= ends or stop.is_set():
                    break
                cluster.check_processes()
                time.sleep(_TICK)
            undo()
            log.completed += 1
            log.inflicted += len(log.refused) == refused_before
            cluster.check_processes()
    except Exception:
        log.error = traceback.format_exc()
    finally:
        cluster.heal()
        log.note(started, "healed")


# How often the nemesis looks at the processes while it waits.
_TICK = 0.1


def _ticks(seconds: float) -> int:
    """A bound on the polls of a wait of ``seconds`` (with room for slow polls)."""
    return max(int(seconds / _TICK) * 2, 0) + 2


def _nothing() -> None:
    return None


def _undo(action: Callable[[], None], log: NemesisLog, started: float, text: str) -> Undo:
    def undo() -> None:
        action()
        log.note(started, text)

    return undo


def _inflict(
    cluster: FaultCluster,
    fault: Fault,
    rng: random.Random,
    log: NemesisLog,
    started: float,
    added_groups: list[int],
) -> Undo:
    """Start ``fault``; what it returns ends it."""
    node_ids = cluster.node_ids()
    leaders = cluster.leaders()
    kind = fault.kind

    def a_leader() -> int:
        groups = sorted(leaders)
        return leaders[rng.choice(groups)] if groups else rng.choice(node_ids)

    if kind == "kill-all":
        cluster.kill_all_nodes()
        log.note(started, "kill -9 every node at once")
        return _undo(cluster.start_all_nodes, log, started, "restart every node")
    if kind in ("kill", "pause"):
        node_id = a_leader() if rng.random() < 0.7 else rng.choice(node_ids)
        if kind == "kill":
            cluster.kill_node(node_id)
            log.note(started, f"kill -9 node {node_id}")
            restart = f"restart node {node_id}"
            return _undo(lambda: cluster.start_node(node_id), log, started, restart)
        cluster.pause_node(node_id)
        log.note(started, f"SIGSTOP node {node_id}")
        return _undo(lambda: cluster.resume_node(node_id), log, started, f"SIGCONT node {node_id}")
    heal = _undo(cluster.heal_network, log, started, "heal network")
    if kind == "partition":
        shuffled = rng.sample(node_ids, len(node_ids))
        # A minority against a majority, or (with an even count) two halves: no majority.
        cut = rng.randint(1, len(shuffled) // 2)
        sides = [set(shuffled[:cut]), set(shuffled[cut:])]
        cluster.partition(sides)
        log.note(started, f"partition {sorted(sides[0])} | {sorted(sides[1])}")
        return heal
    if kind == "isolate-leader":
        node_id = a_leader()
        cluster.partition([{node_id}, set(node_ids) - {node_id}])
        log.note(started, f"isolate node {node_id} (a leader)")
        return heal
    if kind == "one-way":
        sender, receiver = rng.sample(node_ids, 2)
        cluster.cut_one_way(sender, receiver)
        log.note(started, f"one-way cut: node {receiver} stops hearing node {sender}")
        return heal
    if kind == "loss":
        loss = round(rng.uniform(0.05, 0.3), 2)
        delay = (0, rng.randint(5, 60))
        for node_id in node_ids:
            cluster.set_network(node_id, loss=loss, delay_ms=delay)
        log.note(started, f"loss {loss:.0%}, delay up to {delay[1]} ms on every node")
        return heal
    if kind == "kill-router":
        index = rng.randrange(len(cluster.routers))
        cluster.kill_router(index)
        log.note(started, f"kill -9 router {index + 1}")
        return _undo(
            lambda: cluster.start_router(index), log, started, f"restart router {index + 1}"
        )
    # Admin calls, through a router that is up.
    text = asyncio.run(_admin(cluster, kind, rng, leaders, added_groups))
    (log.done if not text.startswith("refused") else log.refused).append(
        f"t={time.monotonic() - started:5.1f}s {text}"
    )
    return _nothing


async def _admin(
    cluster: FaultCluster,
    kind: str,
    rng: random.Random,
    leaders: dict[int, int],
    added_groups: list[int],
) -> str:
    addresses = [router.address for router in cluster.routers if router.process is not None]
    if not addresses:
        return f"refused {kind}: no router up"
    node_ids = cluster.node_ids()
    try:
        async with AsyncClient(addresses, timeout=10.0) as client:
            if kind == "transfer-leader":
                groups = sorted(group for group in leaders if group > 0)
                if not groups:
                    return "refused transfer-leader: no group has a leader"
                group_id = rng.choice(groups)
                current = cluster.cluster_map()
                replicas = _replicas(current, group_id) or node_ids
                to_node = rng.choice(
                    [node for node in replicas if node != leaders[group_id]] or replicas
                )
                await client.transfer_leader(group_id, to_node)
                return f"transfer-leader group {group_id} to node {to_node}"
            if kind == "ring-change":
                if added_groups and rng.random() < 0.6:
                    group_id = added_groups[-1]
                    await client.remove_group(group_id)
                    added_groups.pop()
                    return f"remove-group {group_id}"
                new_map = await client.add_group()
                group_id = max(group.group_id for group in new_map.groups)
                added_groups.append(group_id)
                return f"add-group {group_id}"
            if kind == "move-replica":
                current = cluster.cluster_map()
                if current is None:
                    return "refused move-replica: no cluster map"
                choices = [
                    (group.group_id, source, target)
                    for group in current.groups
                    if group.group_id > 0 and not group.retired
                    for source in group.replicas
                    for target in node_ids
                    if target not in group.replicas
                ]
                if not choices:
                    return "refused move-replica: every node holds every group"
                group_id, source, target = rng.choice(choices)
                await client.move_replica(group_id, source, target)
                return f"move-replica group {group_id} from node {source} to node {target}"
    except ClientError as error:
        return f"refused {kind}: {type(error).__name__}: {error}"
    return f"refused {kind}: unknown fault"


def _replicas(cluster_map: cluster_pb2.ClusterMap | None, group_id: int) -> list[int]:
    if cluster_map is None:
        return []
    for group in cluster_map.groups:
        if group.group_id == group_id:
            return list(group.replicas)
    return []
