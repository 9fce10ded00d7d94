"""One seeded simulation run: faults under load, then quiet, then the verdicts.

``run_seed(seed)`` draws everything from the seed: cluster size (3, 5 or 7),
Raft options (pre-vote, check-quorum, lease reads, flow-control windows,
message sizes, snapshot chunk size and frequency), network behaviour, and a
fault schedule: partitions (halves, a lone leader, one-way cuts), drops,
duplicates, crashes (losing what was not persisted, at random points of the
Ready cycle, sometimes every node at once), restarts, membership changes and
leadership transfers, all while clients put, get and compare-and-set.

Then faults stop: the network heals and crashed members restart. Liveness
requires a leader and every client operation finished within a bounded number
of ticks. Safety is checked throughout (see ``cluster``), and at the end the
client history must be linearizable and every member's log must agree.

A failure raises ``SimulationFailure`` whose message names the seed and the
command that replays it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shardkv.raft import ConfChange, ConfChangeType, ProposalDropped
from tests.checkers import check_history
from tests.sim.cluster import Cluster, ClusterOptions, SafetyViolation

__all__ = ["RunResult", "SimulationFailure", "replay_command", "run_seed"]


def replay_command(seed: int) -> str:
    return f"python -m tests.sim.replay --seed {seed}"


class SimulationFailure(AssertionError):
    def __init__(self, seed: int, reason: str, trace: list[str]) -> None:
        self.seed = seed
        self.reason = reason
        tail = "\n".join(trace[-40:])
        super().__init__(
            f"seed {seed}: {reason}\nreplay: {replay_command(seed)}\nlast events:\n{tail}"
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    seed: int
    voters: int
    steps: int
    completed_ops: int
    abandoned_ops: int
    leaders: int
    crashes: int
    snapshots_installed: int
    conf_changes: int
    transfers: int
    messages: int


def _options(rng: random.Random) -> ClusterOptions:
    check_quorum = rng.random() < 0.8
    return ClusterOptions(
        election_tick=10,
        heartbeat_tick=rng.choice((1, 2, 3)),
        pre_vote=rng.random() < 0.8,
        check_quorum=check_quorum,
        lease_reads=check_quorum and rng.random() < 0.4,
        max_inflight=rng.choice((1, 2, 4, 16)),
        max_size_per_msg=rng.choice((64, 256, 4096, 1 << 20)),
        snapshot_chunk_size=rng.choice((32, 128, 1024, 1 << 20)),
        snapshot_interval=rng.choice((0, 8, 20, 50)),
        compaction_lag=rng.choice((0, 2, 10)),
        max_delay=rng.choice((1, 2, 3)),
        wire_format=rng.random() < 0.2,
    )


class _Nemesis:
    """Schedules and undoes faults during the fault phase."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.heal_at = 0
        self.event_rate = rng.choice((0.01, 0.03, 0.06))

    def members(self) -> set[int]:
        return {node_id for node_id in self.cluster.nodes if node_id not in self.cluster.removed}

    def step(self) -> None:
        cluster, rng = self.cluster, self.rng
        now = cluster.now
        if self.heal_at and now >= self.heal_at:
            cluster.network.heal()
            cluster.log("heal")
            self.heal_at = 0
        if rng.random() >= self.event_rate:
            return
        roll = rng.random()
        if roll < 0.30:
            self.partition()
        elif roll < 0.50:
            self.crash()
        elif roll < 0.62:
            self.transfer()
        elif roll < 0.77:
            self.change_membership()
        elif roll < 0.87:
            cluster.network.drop_rate = rng.choice((0.0, 0.0, 0.05, 0.2))
            cluster.network.duplicate_rate = rng.choice((0.0, 0.02, 0.1))
            cluster.log(
                f"network drop={cluster.network.drop_rate} dup={cluster.network.duplicate_rate}"
            )
        else:
            cluster.crash_probability = rng.choice((0.0, 0.0, 0.002, 0.01))

    def partition(self) -> None:
        cluster, rng = self.cluster, self.rng
        members = sorted(self.members())
        cluster.network.heal()
        kind = rng.random()
        leader = cluster.leader()
        if kind < 0.35 and leader is not None:
            cluster.network.isolate(leader.node_id, cluster.nodes)
            cluster.log(f"isolate leader {leader.node_id}")
        elif kind < 0.75:
            rng.shuffle(members)
            cut = rng.randint(1, len(members) - 1)
            cluster.network.partition(members[:cut], members[cut:])
            cluster.log(f"partition {sorted(members[:cut])} | {sorted(members[cut:])}")
        else:
            for _ in range(rng.randint(1, 3)):
                a, b = rng.sample(members, 2)
                cluster.network.cut_one_way(a, b)
                cluster.log(f"cut {a} -> {b}")
        self.heal_at = cluster.now + rng.randint(10, 120)

    def crash(self) -> None:
        cluster, rng = self.cluster, self.rng
        running = [node.node_id for node in cluster.running_nodes()]
        if not running:
            return
        if rng.random() < 0.08:
            victims = running
            cluster.log("crash everything")
        else:
            leader = cluster.leader()
            victim = (
                leader.node_id if leader is not None and rng.random() < 0.5 else rng.choice(running)
            )
            victims = [victim]
        for node_id in victims:
            cluster.crash(node_id)
            cluster.restart_at[node_id] = cluster.now + rng.randint(1, 80)

    def transfer(self) -> None:
        cluster, rng = self.cluster, self.rng
        leader = cluster.leader()
        if leader is None or leader.raw is None:
            return
        voters = sorted(leader.raw.raft.voters - {leader.node_id})
        if not voters:
            return
        target = rng.choice(voters)
        try:
            leader.raw.transfer_leadership(target)
        except ProposalDropped:
            return
        cluster.stats.transfers += 1
        cluster.log(f"transfer {leader.node_id} -> {target}")

    def change_membership(self) -> None:
        cluster, rng = self.cluster, self.rng
        leader = cluster.leader()
        if leader is None or leader.raw is None:
            return
        raft = leader.raw.raft
        learners = sorted(raft.learners)
        voters = sorted(raft.voters)
        outsiders = [
            node.node_id
            for node in cluster.nodes.values()
            if node.node_id not in raft.voters
            and node.node_id not in raft.learners
            and node.node_id not in cluster.removed
            and node.storage.last_index() == 0
        ]
        choice = rng.random()
        if learners and choice < 0.4:
            change = ConfChange(ConfChangeType.ADD_VOTER, rng.choice(learners))
        elif len(voters) > 3 and choice < 0.7:
            change = ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(voters))
        elif len(cluster.nodes) < 10:
            if not outsiders:
                outsiders = [cluster.add_spare().node_id]
                cluster.restart(outsiders[0])
            change = ConfChange(ConfChangeType.ADD_LEARNER, outsiders[0])
        else:
            return
        try:
            leader.raw.propose_conf_change(change)
        except ProposalDropped:
            return
        cluster.stats.conf_changes += 1
        cluster.log(f"propose {change.type.name} {change.node_id} via {leader.node_id}")

    def stop(self) -> None:
        cluster = self.cluster
        cluster.network.heal()
        cluster.network.drop_rate = 0.0
        cluster.network.duplicate_rate = 0.0
        cluster.crash_probability = 0.0
        cluster.restart_all()
        cluster.log("faults stop")


def run_seed(seed: int, fault_steps: int | None = None) -> RunResult:
    rng = random.Random(seed)
    voters = rng.choices((3, 5, 7), weights=(0.5, 0.35, 0.15))[0]
    options = _options(rng)
    cluster = Cluster(seed=rng.randrange(1 << 30), voters=voters, options=options)
    cluster.key_count = rng.choice((1, 2, 3, 5))
    give_up = rng.choice((1 << 30, 1 << 30, 5, 10))
    for _ in range(rng.randint(2, 6)):
        cluster.add_client(ops=rng.randint(5, 25), give_up_after=give_up)
    nemesis = _Nemesis(cluster, random.Random(rng.randrange(1 << 30)))
    steps = fault_steps if fault_steps is not None else rng.randint(150, 500)
    liveness_bound = 60 * options.election_tick
    try:
        for _ in range(steps):
            nemesis.step()
            cluster.step()
            if cluster.now % 50 == 0:
                cluster.check_log_matching()
        nemesis.stop()
        for client in cluster.clients.values():
            client.give_up_after = 1 << 30
        cluster.accepting_new_ops = False
        quiet_since = cluster.now
        while True:
            cluster.step()
            if cluster.converged():
                break
            if cluster.now - quiet_since > liveness_bound:
                raise SafetyViolation(
                    f"liveness: {liveness_bound} ticks after faults stopped, "
                    f"leader={_leader_id(cluster)}, idle clients={cluster.clients_idle()}, "
                    f"applied={_applied(cluster)}"
                )
        cluster.check_log_matching()
        verdict = check_history(cluster.history)
        if verdict.timed_out:
            raise SafetyViolation(f"linearizability check gave up on key {verdict.key!r}")
        if not verdict.ok:
            raise SafetyViolation(f"history not linearizable:\n{verdict.explanation}")
    except (SafetyViolation, AssertionError) as failure:
        if isinstance(failure, SimulationFailure):
            raise
        raise SimulationFailure(seed, str(failure), list(cluster.trace)) from failure
    stats = cluster.stats
    return RunResult(
        seed=seed,
        voters=voters,
        steps=cluster.now,
        completed_ops=stats.completed_ops,
        abandoned_ops=stats.abandoned_ops,
        leaders=stats.leaders,
        crashes=stats.crashes,
        snapshots_installed=stats.snapshots_installed,
        conf_changes=stats.conf_changes,
        transfers=stats.transfers,
        messages=cluster.network.sent,
    )


def _leader_id(cluster: Cluster) -> int | None:
    leader = cluster.leader()
    return leader.node_id if leader is not None else None


def _applied(cluster: Cluster) -> dict[int, int]:
    return {node.node_id: node.applied for node in cluster.running_nodes()}
