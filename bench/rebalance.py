"""Rebalancing a loaded cluster while a client writes the keys that move: ``make bench-rebalance``.

Issue 6's benchmark: add a group to 4 holding ``--keys`` keys, and measure
how fast the keys move and how long any moved key could not be written.
Targets: >= 100,000 keys/s and < 500 ms.

1. Starts 3 nodes with 4 data groups and one router on 127.0.0.1 (the
   processes ``shardkv up`` starts, as ``bench.compare`` does), in a fresh
   temporary folder.
2. Loads ``--keys`` keys of ``--value-size`` bytes through ``put_many``
   (``--loaders`` concurrent calls, each ``--batch`` keys per PutMany and
   ``--concurrency`` PutMany in flight): the load rate.
3. Asks for the plan of ``add_group(weight=1)`` (nothing changes) and, from
   the ring and the plan's target ring, which loaded keys change owner (the
   moved keys, per source group), then picks ``--writer-keys`` of them
   spread over every source group.
4. Starts the writer: ``--writers`` tasks, each putting its share of those
   keys in turn, one put at a time, with a new value each time, through its
   own ``AsyncClient``; every put's issue and acknowledgement times are kept
   (a put's time includes the router's and client's retries). It writes
   ``--warmup`` seconds before the change (the baseline) and
   ``--tail`` seconds after it.
5. Adds the group (``add_group``, weight 1; with ``--max-rate K`` the
   change is held to K keys/s, ``max_keys_per_second``: then the writer's
   latency beside that rate is the point, not the targets) and polls the
   router's ClusterStatus every ``--poll`` seconds until the migration has
   left the map, keeping the last state of every move (phases,
   keys_copied, started_ms, finished_ms, frozen_ms).
6. Checks: ``--verify-keys`` keys (every writer key included; half of the
   rest moved keys) read back with the value last acknowledged (for a writer
   key whose last put had no answer, that put's value is accepted too); the
   new group holds exactly the moved keys and every source group lost
   exactly its moved keys (group leaders' key counts; the collection at the
   source is part of the move); the ring is the plan's target ring.

Reported:

- keys moved per second: the moved keys (from the ring, not keys_copied,
  which counts a key again in a catch-up round) over the time from the
  ``add_group`` call to the migration leaving the map, by the driver's log
  line (the status polls see it up to a poll interval and a ClusterStatus
  call later: that time and rate are shown too); and the copy rate,
  over the first move's start to the last move's finish (``started_ms`` to
  ``finished_ms``, which includes the freeze and the collection at the
  source);
- for the writer's keys, per key: the longest single put (issue to
  acknowledgement) and the longest gap between two consecutive acknowledged
  puts of the key, over puts in the move's window; max and p99 over keys,
  beside the same before the change (a key's gap includes the puts to the
  writer's other keys, so compare it with the baseline);
- ``frozen_ms`` of every move, as the driver logged it at the activation
  (else as the map said), and each move's timeline; the node log lines
  about the move.

The run fails (exit 1) when a check fails, and stops every process at the
end, also on an error or Ctrl-C. Every loop is bounded in time and count.
The load, the writer and the cluster share this machine's cores, so the
figures are a floor.

    make bench-rebalance KEYS=1000000
    .venv/bin/python -m bench.rebalance --keys 50000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc

from bench.compare import shardkv_cluster, wait_ready
from bench.load import _percentile
from router import AsyncClient, ClientError
from shardkv.ring import KeyRing, build_ring, moving_shares, ring_position
from shardkv.v1 import cluster_pb2, router_pb2

PREFIX = b"bench/rebalance/"
GROUPS = 4
STATUS_TIMEOUT = 10.0
# Status calls failing in a row that end the watch (the router or the cluster is gone).
STATUS_FAILURES = 3
READ_BATCH = 1000
# How long the key counts may take to settle once the migration is done.
COUNT_SETTLE_SECONDS = 20.0
LOG_LINE = re.compile(r"move \d+->\d+ (began|frozen|active|done)|ring change done")
# The text log's time, and a migration driver's line about a move.
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
LOG_MOVE = re.compile(r"move (\d+)->(\d+) (began|frozen|active|done)")
LOG_FROZEN_MS = re.compile(r"move (\d+)->(\d+) active: .*\(frozen (\d+) ms\)")


def key_of(number: int) -> bytes:
    return PREFIX + b"%08d" % number


def pad(text: bytes, size: int) -> bytes:
    return text.ljust(size, b".")[: max(size, len(text))]


def initial_value(number: int, size: int) -> bytes:
    return pad(b"load-%08d-" % number, size)


def since(start: float) -> float:
    return time.monotonic() - start


# -- the cluster's view ----------------------------------------------------------------


def leaders(status: router_pb2.ClusterStatusResponse) -> dict[int, int]:
    """Each group's leader (the newest term's node), the meta group (0) included."""
    best: dict[int, tuple[int, int]] = {}
    for node in status.nodes:
        for group in node.status.groups if not node.error else ():
            known = best.get(group.group_id)
            if group.role == "leader" and (known is None or group.term > known[0]):
                best[group.group_id] = (group.term, node.node_id)
    return {group_id: node_id for group_id, (_, node_id) in sorted(best.items())}


def leader_key_counts(status: router_pb2.ClusterStatusResponse) -> dict[int, int]:
    """Each group's key count as its leader (the newest term's) reports it."""
    best: dict[int, tuple[int, int]] = {}
    for node in status.nodes:
        if node.error:
            continue
        for group in node.status.groups:
            if group.role != "leader" or group.group_id == 0:
                continue
            known = best.get(group.group_id)
            if known is None or group.term > known[0]:
                best[group.group_id] = (group.term, group.key_count)
    return {group_id: count for group_id, (_, count) in best.items()}


# -- the load --------------------------------------------------------------------------


async def load(client: AsyncClient, arguments: argparse.Namespace) -> float:
    """Write every key once; the elapsed seconds."""
    keys, loaders = arguments.keys, arguments.loaders
    size = arguments.value_size
    done = [0] * loaders
    reported = time.monotonic()
    started = time.monotonic()

    def items(first: int, last: int) -> Iterator[tuple[bytes, bytes]]:
        for number in range(first, last):
            yield key_of(number), initial_value(number, size)

    def progress(part: int) -> Callable[[int, int | None], None]:
        def report(count: int, _total: int | None) -> None:
            nonlocal reported
            done[part] = count
            if time.monotonic() - reported >= 5.0:
                reported = time.monotonic()
                print(
                    f"  loading: {sum(done):,} of {keys:,} keys, "
                    f"{sum(done) / since(started):,.0f} keys/s",
                    flush=True,
                )

        return report

    bounds = [keys * part // loaders for part in range(loaders + 1)]
    written = await asyncio.gather(
        *(
            client.put_many(
                items(bounds[part], bounds[part + 1]),
                batch_size=arguments.batch,
                concurrency=arguments.concurrency,
                progress=progress(part),
                timeout=60.0,
            )
            for part in range(loaders)
        )
    )
    if sum(written) != keys:
        raise SystemExit(f"put_many wrote {sum(written):,} keys, not {keys:,}")
    return since(started)


@dataclass
class Plan:
    """Which loaded keys change owner, from the ring and the plan's target ring."""

    ring: KeyRing
    target: KeyRing
    new_group: int
    moved: dict[tuple[int, int], int]
    loaded_per_group: dict[int, int]
    # Numbers of moved keys, by source group.
    moved_numbers: dict[int, list[int]]
    moved_set: set[int]

    @property
    def moved_total(self) -> int:
        return sum(self.moved.values())


def plan_moves(ring: KeyRing, target: KeyRing, new_group: int, keys: int) -> Plan:
    moved: dict[tuple[int, int], int] = defaultdict(int)
    loaded: dict[int, int] = defaultdict(int)
    numbers: dict[int, list[int]] = defaultdict(list)
    for number in range(keys):
        position = ring_position(key_of(number))
        source = ring.owner_at(position)
        loaded[source] += 1
        destination = target.owner_at(position)
        if destination != source:
            moved[(source, destination)] += 1
            numbers[source].append(number)
    moved_set = {number for pool in numbers.values() for number in pool}
    return Plan(ring, target, new_group, dict(moved), dict(loaded), dict(numbers), moved_set)


def pick_writer_keys(plan: Plan, count: int, rng: random.Random) -> list[int]:
    """``count`` moved keys, taken in turn from every source group."""
    pools = [
        rng.sample(pool, min(len(pool), count)) for _, pool in sorted(plan.moved_numbers.items())
    ]
    picked: list[int] = []
    for index in range(count):
        for pool in pools:
            if index < len(pool) and len(picked) < count:
                picked.append(pool[index])
    return picked


# -- the writer ------------------------------------------------------------------------


@dataclass
class Put:
    started: float
    ended: float
    ok: bool
    value: bytes


@dataclass
class Writer:
    """Tasks that put the moved keys they were given, in turn, until told to stop."""

    address: str
    numbers: list[int]
    tasks: int
    value_size: int
    put_timeout: float
    max_puts: int
    deadline: float
    puts: dict[int, list[Put]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0

    def keep_going(self) -> bool:
        return (
            not self.stop.is_set()
            and self.count < self.max_puts
            and time.monotonic() < self.deadline
        )

    async def task(self, mine: Sequence[int]) -> None:
        # A client of its own: one client's calls from many tasks are coalesced
        # into Batch calls answered together, so a put would wait for others.
        async with AsyncClient(self.address, timeout=self.put_timeout) as client:
            await self._write(client, mine)

    async def _write(self, client: AsyncClient, mine: Sequence[int]) -> None:
        sequence = 0
        while self.keep_going():
            for number in mine:
                if not self.keep_going():
                    return
                sequence += 1
                self.count += 1
                value = pad(b"write-%08d-%09d-" % (number, sequence), self.value_size)
                started = time.monotonic()
                ok = True
                try:
                    await client.put(key_of(number), value, timeout=self.put_timeout)
                except ClientError as error:
                    ok = False
                    self.errors[f"{type(error).__name__} {error.code.name}"] += 1
                self.puts[number].append(Put(started, time.monotonic(), ok, value))

    async def run(self) -> None:
        for number in self.numbers:
            self.puts[number] = []
        shares = [self.numbers[index :: self.tasks] for index in range(self.tasks)]
        async with asyncio.TaskGroup() as group:
            for share in shares:
                if share:
                    group.create_task(self.task(share))


@dataclass
class KeyStats:
    """Per key, over one window: the longest put, and the longest gap between two acks."""

    longest_put: list[float]
    longest_gap: list[float]
    puts: int
    failed: int
    all_latencies: list[float]
    worst: tuple[float, int, float] | None  # (latency, key number, started)


def window_stats(puts: dict[int, list[Put]], start: float, end: float) -> KeyStats:
    """Puts that overlap [start, end]; gaps between consecutive acks that overlap it."""
    longest_put: list[float] = []
    longest_gap: list[float] = []
    latencies: list[float] = []
    total = failed = 0
    worst: tuple[float, int, float] | None = None
    for number, history in puts.items():
        key_put = 0.0
        key_gap = 0.0
        previous_ack: float | None = None
        for put in history:
            if put.started <= end and put.ended >= start:
                latency = put.ended - put.started
                latencies.append(latency)
                total += 1
                failed += not put.ok
                key_put = max(key_put, latency)
                if worst is None or latency > worst[0]:
                    worst = (latency, number, put.started)
            if put.ok:
                if previous_ack is not None and previous_ack <= end and put.ended >= start:
                    key_gap = max(key_gap, put.ended - previous_ack)
                previous_ack = put.ended
        if history:
            longest_put.append(key_put)
            longest_gap.append(key_gap)
    longest_put.sort()
    longest_gap.sort()
    latencies.sort()
    return KeyStats(longest_put, longest_gap, total, failed, latencies, worst)


@dataclass(frozen=True)
class SwitchPut:
    """The longest put of one move's keys that overlapped the move's switch."""

    latency: float
    number: int
    before_freeze: float  # issued this long before the freeze (negative: after it)
    after_active: float  # acknowledged this long after the activation


def switch_stats(
    puts: dict[int, list[Put]],
    plan: Plan,
    new_group: int,
    steps: dict[tuple[int, int], dict[str, float]],
    add_wall: float,
    add_started: float,
) -> dict[tuple[int, int], SwitchPut]:
    """Per move, the longest put that overlapped its own key's switch (its move
    frozen, then active, by the driver's log): the time a moved key was unwritable."""
    worst: dict[tuple[int, int], SwitchPut] = {}
    for number, history in puts.items():
        move = (plan.ring.group_for(key_of(number)), new_group)
        times = steps.get(move, {})
        if not times.get("frozen") or not times.get("active"):
            continue
        # Log times are wall clock; puts are timed on the monotonic clock.
        frozen = times["frozen"] - add_wall + add_started
        active = times["active"] - add_wall + add_started
        for put in history:
            if put.started <= active and put.ended >= frozen:
                latency = put.ended - put.started
                if move not in worst or latency > worst[move].latency:
                    worst[move] = SwitchPut(
                        latency, number, frozen - put.started, put.ended - active
                    )
    return worst


def expected_values(puts: list[Put], initial: bytes) -> set[bytes]:
    """What the key may hold: the last acknowledged value, or a later put's without an answer."""
    accepted = {initial}
    for put in puts:
        if put.ok:
            accepted = {put.value}
        else:
            accepted.add(put.value)
    return accepted


# -- watching the migration -------------------------------------------------------------


@dataclass
class MoveLog:
    """What the map said about one move, as last seen, and when each phase was first seen."""

    last: cluster_pb2.Move
    phase_seen: dict[int, int] = field(default_factory=dict)  # phase -> phase_started_ms


async def watch_migration(
    client: AsyncClient, target_epoch: int, timeout: float, poll: float
) -> tuple[dict[tuple[int, int], MoveLog], int, float]:
    """Poll until the map has the target ring and no migration: the moves, polls, seconds."""
    moves: dict[tuple[int, int], MoveLog] = {}
    started = time.monotonic()
    reported = started
    polls = failed = 0
    while since(started) < timeout:
        polls += 1
        try:
            status = await client.status(timeout=STATUS_TIMEOUT)
        except ClientError as error:
            # Each failure is already STATUS_TIMEOUT seconds of the client's retries.
            failed += 1
            if failed >= STATUS_FAILURES:
                raise
            print(f"  status failed ({error.code.name}); polling on", flush=True)
            await asyncio.sleep(poll)
            continue
        failed = 0
        cluster_map = status.map
        if cluster_map.HasField("migration"):
            for move in cluster_map.migration.moves:
                pair = (move.source, move.target)
                copy = cluster_pb2.Move()
                copy.CopyFrom(move)
                log = moves.setdefault(pair, MoveLog(copy))
                log.last = copy
                log.phase_seen.setdefault(move.phase, move.phase_started_ms)
            if time.monotonic() - reported >= 5.0:
                reported = time.monotonic()
                parts = [
                    f"{s}->{t} {cluster_pb2.MovePhase.Name(log.last.phase)[5:].lower()} "
                    f"{log.last.keys_copied:,}/{log.last.keys_estimate:,}"
                    + (f" stuck: {log.last.stuck}" if log.last.stuck else "")
                    for (s, t), log in sorted(moves.items())
                ]
                print(f"  {since(started):5.1f}s: " + "; ".join(parts), flush=True)
        elif cluster_map.ring.epoch >= target_epoch:
            return moves, polls, since(started)
        await asyncio.sleep(poll)
    raise SystemExit(f"the migration was not done within {timeout:.0f}s")


async def settled_counts(
    client: AsyncClient, expected: dict[int, int], seconds: float
) -> dict[int, int]:
    """The leaders' key counts, polled until they are ``expected`` or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    counts: dict[int, int] = {}
    while True:
        counts = leader_key_counts(await client.status(timeout=STATUS_TIMEOUT))
        if all(counts.get(group) == count for group, count in expected.items()):
            return counts
        if time.monotonic() >= deadline:
            return counts
        await asyncio.sleep(0.5)


def move_log_lines(folder: Path) -> list[str]:
    lines: list[str] = []
    for path in sorted((folder / "logs").glob("node-*.log")):
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if LOG_LINE.search(line):
                    lines.append(f"{path.stem}: {line}")
    return lines


def log_tails(folder: Path, lines: int = 8) -> str:
    """The last lines of every child's log, for a run that failed."""
    parts: list[str] = []
    for path in sorted((folder / "logs").glob("*.log")):
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


def stamped(
    lines: Sequence[str], pattern: re.Pattern[str]
) -> Iterator[tuple[float, re.Match[str]]]:
    """The wall time and the match of each node log line ``pattern`` is found in."""
    for line in lines:
        text = line.split(": ", 1)[1]
        stamp, found = LOG_TIME.match(text), pattern.search(text)
        if stamp is not None and found is not None:
            wall = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            yield wall, found


def log_timeline(lines: Sequence[str]) -> dict[tuple[int, int], dict[str, float]]:
    """Per move, the wall time of each step the drivers logged (the first began, the last
    of the others: a new meta leader may repeat a step)."""
    timeline: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    for wall, move in stamped(lines, LOG_MOVE):
        steps = timeline[(int(move.group(1)), int(move.group(2)))]
        step = move.group(3)
        if step == "began":
            steps[step] = min(steps.get(step, wall), wall)
        else:
            steps[step] = max(steps.get(step, wall), wall)
    return dict(timeline)


def logged_frozen_ms(lines: Sequence[str]) -> dict[tuple[int, int], int]:
    """Per move, the frozen ms its driver logged at the activation (the latest, when
    a new meta leader logged it again). The map holds it too, but the router's
    map, which the polls read, may go from before the activation straight to the
    migration's end."""
    frozen: dict[tuple[int, int], tuple[float, int]] = {}
    for wall, found in stamped(lines, LOG_FROZEN_MS):
        pair = (int(found.group(1)), int(found.group(2)))
        if pair not in frozen or wall >= frozen[pair][0]:
            frozen[pair] = (wall, int(found.group(3)))
    return {pair: ms for pair, (_, ms) in frozen.items()}


def ring_change_done(lines: Sequence[str], epoch: int) -> float | None:
    """When the map took the target ring (epoch ``epoch``), by the driver's log line: the
    wall time the migration ended, not when a status poll next saw it."""
    done = re.compile(f"ring change done: epoch {epoch}$")
    return min((wall for wall, _ in stamped(lines, done)), default=None)


# -- the run ---------------------------------------------------------------------------


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


async def run(arguments: argparse.Namespace, folder: Path) -> Report:
    report = Report()
    rng = random.Random(arguments.seed)
    size = arguments.value_size
    with shardkv_cluster(folder, GROUPS) as router_address:
        async with (
            AsyncClient(router_address, timeout=30.0) as client,
        ):
            await wait_ready(client, GROUPS)
            status = await client.status(timeout=STATUS_TIMEOUT)
            baseline_counts = leader_key_counts(status)
            print(
                f"shardkv, 3 nodes, {GROUPS} groups, 1 router on 127.0.0.1 (data in {folder}); "
                f"{arguments.keys:,} keys of {size} bytes; load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                flush=True,
            )

            # 2. The load.
            load_seconds = await load(client, arguments)
            load_rate = arguments.keys / load_seconds
            print(
                f"loaded {arguments.keys:,} keys in {load_seconds:.1f}s: {load_rate:,.0f} keys/s "
                f"({arguments.loaders} put_many x {arguments.concurrency} calls of "
                f"{arguments.batch} keys)",
                flush=True,
            )

            # 3. The plan, and what moves.
            status = await client.status(timeout=STATUS_TIMEOUT)
            ring = build_ring(status.map.ring)
            plan_map = await client.add_group(weight=1, dry_run=True, timeout=30.0)
            target = build_ring(plan_map.migration.target)
            added = set(target.groups) - set(ring.groups)
            if len(added) != 1:
                raise SystemExit(f"the plan adds groups {sorted(added)}, not one")
            new_group = added.pop()
            planned = time.monotonic()
            plan = plan_moves(ring, target, new_group, arguments.keys)
            counts_before = leader_key_counts(status)
            for group, count in plan.loaded_per_group.items():
                got = counts_before.get(group, 0) - baseline_counts.get(group, 0)
                if got != count:
                    report.failures.append(
                        f"after the load group {group} holds {got:,} more keys, not {count:,}"
                    )
            shares = moving_shares(ring, target)
            print(
                f"plan: add group {new_group} (weight 1), ring epoch {ring.epoch} -> "
                f"{target.epoch}; {plan.moved_total:,} of {arguments.keys:,} keys move "
                f"({100 * plan.moved_total / arguments.keys:.1f}%, ring share "
                f"{100 * sum(shares.values()):.1f}%): "
                + ", ".join(f"{s}->{t} {n:,}" for (s, t), n in sorted(plan.moved.items()))
                + f" (found in {since(planned):.1f}s)",
                flush=True,
            )
            writer_numbers = pick_writer_keys(plan, arguments.writer_keys, rng)

            # 4. The writer, then 5. the change.
            writer = Writer(
                router_address,
                writer_numbers,
                arguments.writers,
                size,
                arguments.put_timeout,
                arguments.max_puts,
                time.monotonic() + arguments.warmup + arguments.move_timeout + arguments.tail + 60,
            )
            writer_task = asyncio.create_task(writer.run())
            try:
                writer_started = time.monotonic()
                await asyncio.sleep(arguments.warmup)
                if writer_task.done():
                    writer_task.result()
                    raise SystemExit("the writer stopped before the change")
                limit = f" at most {arguments.max_rate:,} keys/s" if arguments.max_rate else ""
                print(
                    f"writer: {len(writer_numbers)} moved keys, {arguments.writers} tasks, "
                    f"{writer.count:,} puts in the {arguments.warmup:g}s warm-up; adding group "
                    f"{new_group}{limit}",
                    flush=True,
                )
                add_wall = time.time()
                add_started = time.monotonic()
                changed = await client.add_group(
                    weight=1,
                    group_id=new_group,
                    max_keys_per_second=arguments.max_rate,
                    timeout=arguments.move_timeout,
                )
                add_returned = since(add_started)
                if build_ring(changed.migration.target).weights != target.weights:
                    report.failures.append(
                        f"the change's target ring {changed.migration.target} is not the plan's"
                    )
                moves, polls, _ = await watch_migration(
                    client, target.epoch, arguments.move_timeout, arguments.poll
                )
                move_seconds = since(add_started)
                move_end = time.monotonic()
                print(
                    f"migration done {move_seconds:.1f}s after add_group "
                    f"(the call answered in {add_returned:.2f}s; {polls} status polls)",
                    flush=True,
                )
                await asyncio.sleep(arguments.tail)
            finally:
                writer.stop.set()
                try:
                    await asyncio.wait_for(writer_task, arguments.put_timeout + 10)
                except TimeoutError:
                    report.failures.append("the writer did not stop")

            # 6. Checks.
            status = await client.status(timeout=STATUS_TIMEOUT)
            print(
                "leaders after the move (group: node; 0 is the meta group, its leader "
                "drives the moves): "
                + ", ".join(f"{group}: {node}" for group, node in leaders(status).items()),
                flush=True,
            )
            if status.map.HasField("migration") or build_ring(status.map.ring).weights != (
                target.weights
            ):
                report.failures.append(f"the ring is {status.map.ring}, not the target ring")
            expected_counts = {
                group: counts_before.get(group, 0)
                - sum(n for (s, _), n in plan.moved.items() if s == group)
                + sum(n for (_, t), n in plan.moved.items() if t == group)
                for group in target.groups
            }
            settle_started = time.monotonic()
            counts_after = await settled_counts(client, expected_counts, COUNT_SETTLE_SECONDS)
            settle_seconds = since(settle_started)
            for group, count in expected_counts.items():
                if counts_after.get(group) != count:
                    report.failures.append(
                        f"group {group} holds {counts_after.get(group, 0):,} keys, "
                        f"not {count:,} (before the move {counts_before.get(group, 0):,})"
                    )

            writing = set(writer_numbers)
            budget = max(0, arguments.verify_keys - len(writing))
            movable = sorted(plan.moved_set - writing)
            moved_pool = rng.sample(movable, min(budget // 2, len(movable)))
            chosen = set(moved_pool)
            unmoved = budget - len(moved_pool)
            rest: set[int] = set()
            for _ in range(unmoved * 20):  # bounded: keys drawn at random, repeats skipped
                if len(rest) >= unmoved or len(rest) + len(writing) + len(chosen) >= arguments.keys:
                    break
                number = rng.randrange(arguments.keys)
                if number not in writing and number not in chosen:
                    rest.add(number)
            sample = sorted(writing | set(moved_pool) | rest)
            found = await client.get_many([key_of(n) for n in sample], batch_size=READ_BATCH)
            wrong = 0
            examples: list[str] = []
            for number in sample:
                initial = initial_value(number, size)
                accepted = (
                    expected_values(writer.puts[number], initial)
                    if number in writer.puts
                    else {initial}
                )
                read = found.get(key_of(number))
                if read not in accepted:
                    wrong += 1
                    if len(examples) < 5:
                        shown = None if read is None else read[:40]
                        examples.append(f"{key_of(number)!r}: {shown!r}")
            moved_checked = sum(1 for n in sample if n in plan.moved_set)
            if wrong:
                report.failures.append(
                    f"{wrong:,} of {len(sample):,} keys read back wrong, e.g. "
                    + "; ".join(examples)
                )

    # -- the summary (the cluster is stopped) --
    during = window_stats(writer.puts, add_started, move_end)
    before = window_stats(writer.puts, writer_started + 0.5, add_started)
    lines = move_log_lines(folder)
    done_wall = ring_change_done(lines, target.epoch)
    # The migration's end by the driver's log; the polls see it up to a poll and a
    # ClusterStatus call (a fan-out to every node, slower under load) later.
    logged_seconds = done_wall - add_wall if done_wall is not None else None
    moved_rate = plan.moved_total / (logged_seconds or move_seconds)
    logged = log_timeline(lines)
    # Each move's steps in wall time: the drivers' log lines, else what the map said.
    steps: dict[tuple[int, int], dict[str, float]] = {}
    for pair, log in moves.items():
        from_map = {
            "began": log.last.started_ms / 1000,
            "frozen": log.phase_seen.get(cluster_pb2.MOVE_FROZEN, 0) / 1000,
            "active": log.phase_seen.get(cluster_pb2.MOVE_ACTIVE, 0) / 1000,
            "done": log.last.finished_ms / 1000,
        }
        steps[pair] = {
            step: logged.get(pair, {}).get(step, from_map[step])
            for step in ("began", "frozen", "active", "done")
        }
    began = [times["began"] for times in steps.values() if times["began"]]
    done = [times["done"] for times in steps.values() if times["done"]]
    copy_seconds = max(done) - min(began) if began and len(done) == len(steps) else None
    from_log = logged_frozen_ms(lines)
    frozen_ms = {pair: from_log.get(pair, log.last.frozen_ms) for pair, log in moves.items()}
    frozen = list(frozen_ms.values())

    print()
    print(f"{'phase':<44} {'value':>14}")
    print("-" * 59)
    print(f"{'load: keys/s':<44} {load_rate:>14,.0f}")
    print(f"{'load: seconds':<44} {load_seconds:>14.1f}")
    print(f"{'moved keys (from the rings)':<44} {plan.moved_total:>14,}")
    if logged_seconds is not None:
        print(f"{'add_group call to migration done (log): s':<44} {logged_seconds:>14.2f}")
        print(f"{'keys moved/s (over that)':<44} {moved_rate:>14,.0f}")
    print(f"{'add_group call to migration seen done: s':<44} {move_seconds:>14.2f}")
    print(f"{'keys moved/s (over that)':<44} {plan.moved_total / move_seconds:>14,.0f}")
    if began:
        print(f"{'add_group call to the first move began: s':<44} {min(began) - add_wall:>14.2f}")
    if copy_seconds:
        print(f"{'first move began to last move done: s':<44} {copy_seconds:>14.2f}")
        print(f"{'keys moved/s (over that)':<44} {plan.moved_total / copy_seconds:>14,.0f}")
    else:
        print(f"{'first move began to last move done':<44} {'(not seen)':>14}")
    print(f"{'frozen_ms per move: max':<44} {max(frozen, default=0):>14,}")
    print(f"{'key counts settled after done: s':<44} {settle_seconds:>14.1f}")
    print()
    print(
        "moves (s after the add_group call, and frozen ms, from the node logs; keys copied "
        "from the map):"
    )
    print(
        f"  {'move':<6} {'moved':>9} {'copied':>9} {'began':>7} {'frozen':>7} {'active':>7} "
        f"{'done':>7} {'frozen ms':>9} {'copy keys/s':>11}"
    )

    def at(wall: float) -> str:
        return f"{wall - add_wall:7.2f}" if wall else f"{'-':>7}"

    for pair, log in sorted(moves.items()):
        times = steps[pair]
        count = plan.moved.get(pair, 0)
        copying = times["frozen"] - times["began"] if times["frozen"] and times["began"] else 0
        print(
            f"  {pair[0]}->{pair[1]:<3} {count:>9,} {log.last.keys_copied:>9,} "
            f"{at(times['began'])} {at(times['frozen'])} {at(times['active'])} "
            f"{at(times['done'])} {frozen_ms[pair]:>9,} "
            f"{(count / copying if copying > 0 else 0):>11,.0f}"
        )
    print()
    print(
        f"writer: {len(writer_numbers)} moved keys, {arguments.writers} tasks, "
        f"{writer.count:,} puts in all"
        + (f", errors: {dict(writer.errors)}" if writer.errors else ", no errors")
    )
    print(
        f"  {'window':<26} {'puts':>7} {'failed':>6} {'put p50':>8} {'longest put ms':>21} "
        f"{'longest ack gap ms':>21}"
    )
    print(
        f"  {'':<26} {'':>7} {'':>6} {'ms':>8} "
        f"{'max':>10} {'p99 keys':>10} {'max':>10} {'p99 keys':>10}"
    )
    for name, stats in (("before the change", before), ("during the move", during)):
        print(
            f"  {name:<26} {stats.puts:>7,} {stats.failed:>6,} "
            f"{ms(_percentile(stats.all_latencies, 0.5)):>8} "
            f"{ms(stats.longest_put[-1] if stats.longest_put else 0):>10} "
            f"{ms(_percentile(stats.longest_put, 0.99)):>10} "
            f"{ms(stats.longest_gap[-1] if stats.longest_gap else 0):>10} "
            f"{ms(_percentile(stats.longest_gap, 0.99)):>10}"
        )
    switches = switch_stats(writer.puts, plan, new_group, steps, add_wall, add_started)
    switch = max(switches.values(), key=lambda put: put.latency, default=None)
    if switch is not None:
        print(
            f"  the longest put that met its key's switch (the move frozen until active): "
            f"{key_of(switch.number)!r}, {ms(switch.latency)} ms"
        )
        for (source, to), put in sorted(switches.items()):
            print(
                f"    move {source}->{to}: {ms(put.latency)} ms, issued "
                f"{ms(put.before_freeze)} ms before the freeze, acknowledged "
                f"{ms(put.after_active)} ms after the activation"
            )
    if during.worst is not None:
        latency, number, put_started = during.worst
        print(
            f"  the longest put: {key_of(number)!r} (group {plan.ring.group_for(key_of(number))}"
            f" -> {new_group}), {ms(latency)} ms, issued {put_started - add_started:.2f}s "
            "after the add_group call"
        )
    print()
    if lines:
        print("node log lines about the move:")
        for line in lines:
            print(f"  {line}")
        print()
    longest = during.longest_put[-1] if during.longest_put else 0.0
    met_switch = switch.latency if switch is not None else 0.0
    print("targets:")
    print(
        f"  keys moved/s >= 100,000: {moved_rate:,.0f} "
        f"({'met' if moved_rate >= 100_000 else 'missed'})"
    )
    print(
        f"  longest time a moved key was unwritable < 500 ms: longest put that met its "
        f"key's switch {ms(met_switch)} ms ({'met' if met_switch < 0.5 else 'missed'}); "
        f"longest put of all {ms(longest)} ms ({'met' if longest < 0.5 else 'missed'}); "
        "longest ack gap "
        f"{ms(during.longest_gap[-1] if during.longest_gap else 0)} ms; "
        f"node-reported frozen_ms max {max(frozen, default=0):,}"
    )
    print(
        f"checked: {len(sample):,} keys read back ({moved_checked:,} moved, "
        f"{len(writer_numbers)} written during the move); key counts of groups "
        f"{', '.join(map(str, sorted(expected_counts)))}; the ring"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--loaders", type=int, default=4, help="concurrent put_many calls")
    parser.add_argument("--batch", type=int, default=2000, help="keys per PutMany")
    parser.add_argument("--concurrency", type=int, default=2, help="PutMany in flight per loader")
    parser.add_argument("--writer-keys", type=int, default=200, help="moved keys the writer puts")
    parser.add_argument("--writers", type=int, default=40, help="writer tasks")
    parser.add_argument("--max-puts", type=int, default=2_000_000, help="writer puts, at most")
    parser.add_argument("--put-timeout", type=float, default=30.0, help="seconds per put")
    parser.add_argument("--warmup", type=float, default=3.0, help="writer seconds before")
    parser.add_argument("--tail", type=float, default=2.0, help="writer seconds after")
    parser.add_argument("--poll", type=float, default=0.1, help="status poll interval, seconds")
    parser.add_argument(
        "--move-timeout", type=float, default=900.0, help="seconds the migration may take"
    )
    parser.add_argument("--verify-keys", type=int, default=20_000, help="keys read back after")
    parser.add_argument(
        "--max-rate",
        type=int,
        default=0,
        help="the ring change's limit, keys/s (add_group's max_keys_per_second; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--data-dir", type=Path, help="keep the cluster's data and logs here (a new folder)"
    )
    arguments = parser.parse_args(argv)
    if arguments.keys < 1 or arguments.loaders < 1 or arguments.writers < 1:
        parser.error("--keys, --loaders and --writers must be at least 1")
    if not 0 <= arguments.max_rate < 1 << 32:
        parser.error("--max-rate must be from 0 (no limit) to 4294967295")
    started = time.monotonic()

    def run_in(folder: Path) -> Report | int:
        try:
            return asyncio.run(run(arguments, folder))
        except (ClientError, grpc.aio.AioRpcError) as exc:
            print(f"bench-rebalance: {exc}", file=sys.stderr)
            print(log_tails(folder), file=sys.stderr)
            return 1
        except SystemExit as exc:
            print(f"bench-rebalance: {exc}", file=sys.stderr)
            print(log_tails(folder), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench-rebalance: interrupted; the cluster was stopped", file=sys.stderr)
            return 130

    if arguments.data_dir is not None:
        arguments.data_dir.mkdir(parents=True, exist_ok=False)
        report = run_in(arguments.data_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="shardkv-bench-rebalance-") as folder:
            report = run_in(Path(folder))
    if isinstance(report, int):
        return report
    print(
        f"took {time.monotonic() - started:.0f}s; load average now {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    if report.failures:
        print("FAILED:", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print("checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
