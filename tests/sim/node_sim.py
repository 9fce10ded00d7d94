"""The whole node stack under a seeded nemesis, checked for linearizability.

``run_node_seed(seed)`` draws everything from the seed and runs the real
``NodeRuntime``, ``Peer``, ``GroupStorage`` and ``KeyValueStateMachine`` of
3 (sometimes 5) nodes hosting 2 to 4 groups (``node_cluster``), under
concurrent clients (``node_workload``) and a nemesis, then checks what the
clients saw. The same seed gives the same run (``NodeSimResult.digest``).

What a seed draws: placement (every group on all 3 nodes; of 5 nodes, on 3
or all), ``PeerOptions`` (heartbeat, lease reads, message size and in-flight
window; on half the seeds a snapshot every few entries, little log kept
behind it and chunks of tens of bytes, so that followers catch up by chunked
snapshots), rounds per tick, keys, clients and their patience, and the
length of the fault phase.

The nemesis, while the faults last: message drops (of all groups or one; up
to half of all messages, or some or all of one message type), delays with
jitter (which reorder), partitions (two halves, the isolated leader of a
group, one-way cuts), each lifted after a while; leadership transfers; crashes
of one node (often a leader) or of every node at once, each a power loss
that keeps a seeded prefix of the writes made since the last synced one
(``crash_engine``), and restarts on the same disk.
Then the faults stop: the network heals, the rules go, every node restarts.

Checked:

1. Election safety at every step: one leader per group and term.
2. Liveness: after the faults, every group elects a leader and every client
   operation completes within ``liveness_bound`` steps; then a final read of
   every key, and every replica applied all its group committed.
3. The history with the final reads is linearizable, key by key
   (``tests.checkers``: registers with put, get, cas and delete).
4. No acknowledged write was lost: a key whose last write is certain (it
   returned before any other write of the key was called) holds its value.
5. Exactly once: a group's count of commands that wrote lies between the
   acknowledged writes and those plus the writes of unknown outcome.
6. Every replica of a group applied the same index and holds the same image
   (keys, versions, revision, client sessions).
7. No proposal is left unanswered once its node applied past its index
   (a node may propose again at an index a later term reuses; both
   proposals must be answered).

NOT modelled: gRPC (``NodeService``, ``GrpcTransport``: requests and
messages are function calls); duplicated messages (``MemoryNetwork`` has no
rule for them); ``NodeRuntime.run`` with its wall-clock tick and gather
window (the harness calls ``tick`` and ``round``); RocksDB, and torn,
corrupt or failed writes; clock drift (every node ticks each step,
which lease reads rely on); a slow node or disk; membership changes, the
meta group, the router, rebalancing, transactions and scans.

Replay one seed: ``python -m tests.sim.node_sim --seed N``; run a batch:
``python -m tests.sim.node_sim --seeds START COUNT [--jobs J]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import random
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shardkv.node.peer import PeerOptions
from shardkv.node.transport_memory import Filter
from shardkv.raft import Message, MessageType, ProposalDropped
from tests.checkers import Operation, check_history
from tests.sim.node_cluster import NodeCluster, SimulationError
from tests.sim.node_workload import Workload

__all__ = [
    "Nemesis",
    "NodeSimResult",
    "check_last_writes",
    "check_write_counts",
    "main",
    "replay_command",
    "run_node_seed",
]


def replay_command(seed: int) -> str:
    return f"python -m tests.sim.node_sim --seed {seed}"


# -- the nemesis ----------------------------------------------------------------------


# Every message type a peer sends.
_DROPPABLE = tuple(message_type for message_type in MessageType if message_type != MessageType.NONE)


class Nemesis:
    """Seeded faults during the fault phase, and their undoing when it ends."""

    def __init__(self, cluster: NodeCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.rate = rng.choice((0.02, 0.05, 0.1))
        # Drop and delay rules, each with the step it expires at.
        self.filters: list[tuple[int, Filter]] = []
        self.heal_at = 0
        self.restart_at: dict[int, int] = {}
        self.events = 0

    async def step(self) -> None:
        cluster, rng = self.cluster, self.rng
        now = cluster.clock.now
        if self.heal_at and now >= self.heal_at:
            self.heal_at = 0
            cluster.network.heal()
            cluster.log("heal the network")
        for expiry, network_filter in [rule for rule in self.filters if rule[0] <= now]:
            self.filters.remove((expiry, network_filter))
            network_filter.remove()
            cluster.log("a drop or delay rule expires")
        for node_id, when in sorted(self.restart_at.items()):
            if now >= when:
                del self.restart_at[node_id]
                cluster.start(node_id)
        if rng.random() >= self.rate:
            return
        self.events += 1
        roll = rng.random()
        if roll < 0.3:
            self._partition()
        elif roll < 0.5:
            await self._crash()
        elif roll < 0.7:
            self._lossy()
        elif roll < 0.85:
            self._slow()
        else:
            self._transfer()

    def _partition(self) -> None:
        cluster, rng = self.cluster, self.rng
        network = cluster.network
        network.heal()
        node_ids = sorted(cluster.nodes)
        kind = rng.random()
        group_id = rng.choice(sorted(cluster.placement))
        leader = cluster.leader(group_id)
        if kind < 0.35 and leader is not None:
            network.isolate(leader[0].node_id)
            cluster.log(f"isolate node {leader[0].node_id}, leader of group {group_id}")
        elif kind < 0.75:
            rng.shuffle(node_ids)
            cut = rng.randint(1, len(node_ids) - 1)
            network.partition(node_ids[:cut], node_ids[cut:])
            cluster.log(f"partition {sorted(node_ids[:cut])} | {sorted(node_ids[cut:])}")
        else:
            for _ in range(rng.randint(1, 3)):
                a, b = rng.sample(node_ids, 2)
                network.cut(a, b)
                cluster.log(f"cut {a} -> {b}")
        self.heal_at = cluster.clock.now + rng.randint(10, 80)

    async def _crash(self) -> None:
        cluster, rng = self.cluster, self.rng
        live = [node.node_id for node in cluster.live_nodes()]
        if not live:
            return
        if rng.random() < 0.1:
            victims = live
            cluster.log("crash every node")
        else:
            group_id = rng.choice(sorted(cluster.placement))
            leader = cluster.leader(group_id)
            victims = [leader[0].node_id if leader and rng.random() < 0.5 else rng.choice(live)]
        for node_id in victims:
            unsynced = cluster.nodes[node_id].disk.unsynced_batches
            mode = rng.random()
            # Lose every unsynced batch, none (a process crash), or a prefix survives.
            keep = 0 if mode < 0.4 else unsynced if mode < 0.6 else rng.randint(0, unsynced)
            await cluster.crash(node_id, keep)
            self.restart_at[node_id] = cluster.clock.now + rng.randint(1, 60)

    def _lossy(self) -> None:
        """Drop some of the messages: of every group or one, of every type or one."""
        cluster, rng = self.cluster, self.rng
        probability = rng.choice((0.05, 0.2, 0.5, 1.0))
        drops = random.Random(rng.randrange(1 << 30))
        group_id = rng.choice((None, *sorted(cluster.placement)))
        message_type = rng.choice((None, None, None, *_DROPPABLE))
        if message_type is None:
            probability = min(probability, 0.5)

        def lose(from_node: int, to_node: int, message_group: int, message: Message) -> bool:
            return (
                group_id in (None, message_group)
                and message_type in (None, message.type)
                and drops.random() < probability
            )

        self._add(cluster.network.drop(lose))
        cluster.log(
            f"drop {probability:.0%} of the {message_type.name if message_type else 'all'} "
            f"messages of group {group_id or 'any'}"
        )

    def _slow(self) -> None:
        cluster, rng = self.cluster, self.rng
        delay, jitter = rng.choice((1, 2, 4)), rng.choice((0.0, 2.0, 5.0))
        self._add(cluster.network.delay(delay, jitter=jitter))
        cluster.log(f"delay messages by {delay} steps, jitter {jitter}")

    def _add(self, network_filter: Filter) -> None:
        self.filters.append((self.cluster.clock.now + self.rng.randint(20, 100), network_filter))
        # At most two rules at once: the oldest goes.
        if len(self.filters) > 2:
            self.filters.pop(0)[1].remove()

    def _transfer(self) -> None:
        cluster, rng = self.cluster, self.rng
        group_id = rng.choice(sorted(cluster.placement))
        leader = cluster.leader(group_id)
        if leader is None:
            return
        node, peer = leader
        targets = sorted(set(cluster.placement[group_id]) - {node.node_id})
        target = rng.choice(targets)
        try:
            peer.raw.transfer_leadership(target)
        except ProposalDropped:
            return
        cluster.log(f"transfer leadership of group {group_id}: {node.node_id} -> {target}")

    def stop(self) -> None:
        cluster = self.cluster
        cluster.network.heal()
        for _, network_filter in self.filters:
            network_filter.remove()
        self.filters.clear()
        self.heal_at = 0
        self.restart_at.clear()
        for node in cluster.nodes.values():
            if not node.live:
                cluster.start(node.node_id)
        cluster.log("faults stop")


# -- checks --------------------------------------------------------------------------


def _writes(op: Operation) -> bool:
    """Whether ``op`` may have written (an unknown outcome may have)."""
    if op.kind == "get":
        return False
    if op.ret is None or op.kind == "put":
        return True
    return op.output is True


def check_last_writes(history: Sequence[Operation], state: dict[bytes, bytes | None]) -> list[str]:
    """Keys whose last write is certain but whose final value is not that write's."""
    lost = []
    writes_by_key: dict[bytes, list[Operation]] = {}
    for op in history:
        if _writes(op):
            writes_by_key.setdefault(op.key, []).append(op)
    for key, writes in sorted(writes_by_key.items()):
        for write in writes:
            if write.ret is None:
                continue
            others = [other for other in writes if other is not write]
            if all(other.ret is not None and other.ret < write.call for other in others):
                expected = None if write.kind == "delete" else write.value
                if state.get(key) != expected:
                    lost.append(
                        f"key {key!r}: the last write, {write.kind} {write.value!r} by client "
                        f"{write.client_id} at [{write.call}, {write.ret}], was acknowledged, "
                        f"but the key holds {state.get(key)!r}"
                    )
    return lost


def check_write_counts(
    history: Sequence[Operation], group_of: dict[bytes, int], writes: dict[int, int]
) -> list[str]:
    """Exactly once: each group counted as many commands that wrote as the history allows."""
    certain = dict.fromkeys(writes, 0)
    possible = dict.fromkeys(writes, 0)
    for op in history:
        if not _writes(op):
            continue
        group_id = group_of[op.key]
        possible[group_id] += 1
        if op.ret is not None:
            certain[group_id] += 1
    return [
        f"group {group_id}: {count} commands wrote, but {certain[group_id]} writes were "
        f"acknowledged and {possible[group_id] - certain[group_id]} more may have applied"
        for group_id, count in sorted(writes.items())
        if not certain[group_id] <= count <= possible[group_id]
    ]


# -- one seed -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSimResult:
    seed: int
    ok: bool
    # Empty when ok; else what failed, the replay command and the last events.
    failure: str
    nodes: int
    groups: int
    steps: int
    completed_ops: int
    unknown_ops: int
    withdrawn_ops: int
    crashes: int
    lost_unsynced_batches: int
    snapshots_installed: int
    snapshot_chunks: int
    leaders_elected: int
    nemesis_events: int
    messages_sent: int
    messages_dropped: int
    orphaned_proposals: int
    # A hash of every logged event: the same seed gives the same digest.
    digest: str


# The counters the command line adds up over a batch of seeds.
_TOTALS = (
    "completed_ops",
    "unknown_ops",
    "withdrawn_ops",
    "crashes",
    "lost_unsynced_batches",
    "snapshots_installed",
    "snapshot_chunks",
    "orphaned_proposals",
)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a seed draws before anything runs."""

    placement: dict[int, tuple[int, ...]]
    options: PeerOptions
    rounds_per_tick: int
    group_of: dict[bytes, int]
    clients: int
    request_timeout: int
    patience: int
    fault_steps: int


def _plan(rng: random.Random, steps: int | None) -> _Plan:
    node_count = rng.choices((3, 5), weights=(0.8, 0.2))[0]
    node_ids = tuple(range(1, node_count + 1))
    group_ids = tuple(range(1, rng.randint(2, 4) + 1))
    placement = {}
    for group_id in group_ids:
        if node_count == 3 or rng.random() < 0.3:
            placement[group_id] = node_ids
        else:
            placement[group_id] = tuple(sorted(rng.sample(node_ids, 3)))
    snapshots = rng.random() < 0.5
    options = PeerOptions(
        election_ticks=10,
        heartbeat_ticks=rng.choice((1, 2, 3)),
        lease_reads=rng.random() < 0.25,
        max_size_per_msg=rng.choice((128, 1024, 1 << 20)),
        max_inflight=rng.choice((1, 4, 256)),
        snapshot_chunk_size=rng.choice((32, 128, 1024)) if snapshots else 1 << 20,
        snapshot_interval=rng.choice((4, 10, 30)) if snapshots else 10_000,
        compaction_lag=rng.choice((0, 2, 5)) if snapshots else 1_000,
    )
    key_count = len(group_ids) + rng.randint(0, 3)
    group_of = {b"k%d" % index: group_ids[index % len(group_ids)] for index in range(key_count)}
    return _Plan(
        placement=placement,
        options=options,
        rounds_per_tick=rng.choice((1, 2, 3)),
        group_of=group_of,
        clients=rng.randint(3, 6),
        request_timeout=rng.choice((15, 30, 60)),
        patience=rng.choice((1 << 30, 2, 4)),
        fault_steps=steps if steps is not None else rng.randint(150, 400),
    )


async def _simulate(
    seed: int, steps: int | None, liveness_bound: int, fail_on_orphans: bool
) -> NodeSimResult:
    rng = random.Random(seed)
    plan = _plan(rng, steps)
    cluster = NodeCluster(
        plan.placement,
        plan.options,
        seed=rng.randrange(1 << 30),
        rounds_per_tick=plan.rounds_per_tick,
    )
    cluster.log(f"seed {seed}: {plan}")
    ops_rng = random.Random(rng.randrange(1 << 30))
    workload = Workload(
        cluster,
        plan.group_of,
        random.Random(rng.randrange(1 << 30)),
        clients=plan.clients,
        ops_per_client=lambda: ops_rng.randint(8, 25),
        request_timeout=plan.request_timeout,
        patience=plan.patience,
    )
    nemesis = Nemesis(cluster, random.Random(rng.randrange(1 << 30)))
    failure = ""
    orphans: list[str] = []
    try:
        for node_id in cluster.nodes:
            cluster.start(node_id)
        workload.start()
        for _ in range(plan.fault_steps):
            await nemesis.step()
            await cluster.step()
            _raise_client_errors(workload)
        nemesis.stop()
        workload.stop_faults()
        await _check_liveness(cluster, workload, liveness_bound)
        await _converge(cluster, workload, liveness_bound)
        orphans = workload.orphaned_proposals()
        for orphan in orphans:
            cluster.log(f"orphaned proposal: {orphan}")
        _check_final_state(cluster, workload, orphans if fail_on_orphans else [])
    except SimulationError as error:
        failure = str(error)
    except Exception:
        failure = f"the node stack raised:\n{traceback.format_exc()}"
    if failure:
        tail = "\n".join(cluster.trace)
        failure = f"seed {seed}: {failure}\nreplay: {replay_command(seed)}\nlast events:\n{tail}"
    network = cluster.network.stats
    return NodeSimResult(
        seed=seed,
        ok=not failure,
        failure=failure,
        nodes=len(cluster.nodes),
        groups=len(plan.placement),
        steps=cluster.clock.now,
        completed_ops=workload.completed,
        unknown_ops=workload.unknown,
        withdrawn_ops=workload.withdrawn,
        crashes=cluster.crashes,
        lost_unsynced_batches=cluster.lost_batches,
        snapshots_installed=cluster.snapshots_installed,
        snapshot_chunks=cluster.snapshot_chunks,
        leaders_elected=cluster.leaders_elected,
        nemesis_events=nemesis.events,
        messages_sent=network.sent,
        messages_dropped=network.dropped,
        orphaned_proposals=len(orphans),
        digest=cluster.digest(),
    )


def _raise_client_errors(workload: Workload) -> None:
    if workload.errors:
        raise SimulationError(workload.errors[0])


def _leaderless(cluster: NodeCluster) -> list[int]:
    return [group_id for group_id in sorted(cluster.placement) if cluster.leader(group_id) is None]


async def _check_liveness(cluster: NodeCluster, workload: Workload, bound: int) -> None:
    def live() -> bool:
        _raise_client_errors(workload)
        return workload.idle() and not _leaderless(cluster)

    if not await cluster.run_until(live, bound):
        raise SimulationError(
            f"liveness: {bound} steps after the faults stopped, groups without a leader: "
            f"{_leaderless(cluster)}, clients idle: {workload.idle()}"
        )


async def _converge(cluster: NodeCluster, workload: Workload, bound: int) -> None:
    """Read every key once more, then wait until every replica applied all it committed."""
    reads = asyncio.get_running_loop().create_task(workload.final_reads())
    if not await cluster.run_until(reads.done, bound):
        raise SimulationError(f"liveness: the final reads did not finish in {bound} steps")
    reads.result()
    groups = sorted(cluster.placement)
    if not await cluster.run_until(lambda: all(map(cluster.converged, groups)), bound):
        unsettled = [g for g in groups if not cluster.converged(g)]
        raise SimulationError(f"groups {unsettled} did not converge in {bound} steps")


def _check_final_state(cluster: NodeCluster, workload: Workload, orphans: list[str]) -> None:
    """Checks 3 to 7 of the module docstring, on a converged cluster."""
    groups = sorted(cluster.placement)
    problems: list[str] = []
    for group_id in groups:
        problems += cluster.replicas_differ(group_id)
    verdict = check_history(workload.history)
    if not verdict.ok:
        problems.append(
            ("linearizability check gave up: " if verdict.timed_out else "not linearizable: ")
            + verdict.explanation
        )
    state = {}
    writes = {}
    for group_id in groups:
        leader = cluster.leader(group_id)
        assert leader is not None
        machine = leader[1].machine
        writes[group_id] = machine.writes
        for key, key_group in workload.group_of.items():
            if key_group == group_id:
                kv = machine.get(key)
                state[key] = kv.value if kv is not None else None
    problems += check_last_writes(workload.history, state)
    problems += check_write_counts(workload.history, workload.group_of, writes)
    problems += orphans
    if problems:
        raise SimulationError("\n".join(problems))


def run_node_seed(
    seed: int,
    *,
    steps: int | None = None,
    liveness_bound: int = 600,
    fail_on_orphans: bool = True,
) -> NodeSimResult:
    """One seeded run of the whole node stack; see the module docstring.

    ``steps`` is the length of the fault phase (drawn from the seed if
    None); ``liveness_bound`` the steps allowed for each phase after it;
    ``fail_on_orphans=False`` only counts unanswered proposals (check 7).
    """
    return asyncio.run(_simulate(seed, steps, liveness_bound, fail_on_orphans))


# -- command line ---------------------------------------------------------------------


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Seeded fault simulation of the whole node stack (tests/sim/node_sim.py)."
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="run one seed and print its result")
    which.add_argument("--seeds", type=int, nargs=2, metavar=("START", "COUNT"))
    parser.add_argument("--jobs", type=int, default=1, help="processes for --seeds")
    parser.add_argument(
        "--allow-orphans",
        action="store_true",
        help="count unanswered proposals instead of failing the seed on them",
    )
    arguments = parser.parse_args(None if argv is None else list(argv))
    run = functools.partial(run_node_seed, fail_on_orphans=not arguments.allow_orphans)
    if arguments.seed is not None:
        result = run(arguments.seed)
        if not result.ok:
            print(result.failure, file=sys.stderr)
            return 1
        print(result)
        return 0
    start, count = arguments.seeds
    started = time.monotonic()
    failures: list[NodeSimResult] = []
    orphaned: list[int] = []
    totals = dict.fromkeys(_TOTALS, 0)
    with multiprocessing.Pool(arguments.jobs) as pool:
        for result in pool.imap_unordered(run, range(start, start + count)):
            if not result.ok:
                failures.append(result)
                print(f"FAIL {result.failure.splitlines()[0]}", file=sys.stderr, flush=True)
            if result.orphaned_proposals:
                orphaned.append(result.seed)
            for name in _TOTALS:
                totals[name] += getattr(result, name)
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{value} {name}" for name, value in totals.items())
    print(f"{count} seeds from {start} in {elapsed:.0f}s: {len(failures)} failed; {summary}")
    if orphaned:
        print(f"seeds with orphaned proposals: {sorted(orphaned)}")
    for result in sorted(failures, key=lambda failed: failed.seed):
        print(f"seed {result.seed}: {result.failure.splitlines()[0]}")
        print(f"  replay: {replay_command(result.seed)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
