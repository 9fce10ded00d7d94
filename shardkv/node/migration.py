"""The migration driver: the meta group's leader moves keys for a ring change, step by step.

A ring change (``shardkv.node.ring_change``) writes a ``Migration`` into the
cluster map: the target ring and one ``Move`` per (source, target) pair of
groups. ``MigrationDriver`` (a ``MapDriver``: one task per move, where this
node leads the meta group) does each move's next step and records every
phase in the map (compare-and-set through the meta group) before going on, so
a new leader, or this one after a crash, resumes where the map says:

1. ``MOVE_PENDING``: ``begin`` in the source and the target (the source starts
   marking changes of moving keys); record ``MOVE_COPYING``.
2. ``MOVE_COPYING``: copy every moving key (``Node.Export`` from the source's
   leader, ``copy`` steps into the target, a few in flight), then copy what
   changed since, round after round, until a round is small; wait for the
   switch's turn (below), copy what changed meanwhile; ``freeze`` the
   source; record ``MOVE_FROZEN``.
3. ``MOVE_FROZEN``: ``seal`` the source (it waits until no lock is left on a
   moving key; the freeze seals in its own entry when none is held,
   ``seal_when_free``), copy the last changes with the sessions and the moved
   transaction records, ``activate`` the target; record ``MOVE_ACTIVE``
   (routers now send the moved keys to the target) with how long the keys
   were frozen.
4. ``MOVE_ACTIVE``: ``release`` the source (with the number of moving keys
   it holds, when this driver saw every copy), drop the moved keys there
   (``collect``, in chunks, the last one also dropping marks and records:
   the keys this driver copied, when it remembers them, else what an
   ``EXPORT_KEYS`` scan of the source finds); record ``MOVE_DONE``.

When every move is done, the map takes the target ring (a new epoch; groups
then apply it and forget the migration) and retired groups leave it.

Decisions:

- **Fencing.** Each step carries the driver's token (``MapDriver.token``).
  The groups refuse lower tokens, so a deposed leader that still runs a task
  cannot write into a move its successor took over.
- **Resuming** a move in ``MOVE_FROZEN`` copies every change marked since the
  move began (the watermark of the earlier copy was in a memory that is
  gone); in ``MOVE_COPYING`` it copies everything again, and its first
  catch-up also takes every change since the move began (a key an earlier
  copy brought over and the source deleted since is only in the marks). A
  target found active already (activated, the record lost) is not copied into.
- **A step that fails** (a group without a leader, a refusal) is retried
  after a back-off; what failed is written into the move (``Move.stuck``),
  so that ``shardkv status`` can say why a move does not progress.
- Progress (keys and bytes copied) is written into the map at most every
  ``_PROGRESS_INTERVAL`` seconds.
- **A switch goes first, on a quiet machine.** Switches take turns, one
  turn at a time; a turn takes every move waiting for one and switches them
  side by side (moves whose copies end while another switches share the
  next turn, not one turn each). A turn first stops the other moves' copies
  and collects from starting, waits (at most ``_QUIET_WAIT``) until the
  bulk steps in flight have applied, copies what changed meanwhile, and
  only then freezes: its few rounds, the keys' unwritable window, do not
  queue behind chunks of thousands of keys on every node. The bulk work
  resumes once the turn's targets are active; each move records its own
  activation as soon as its switch ends. A move found frozen already does
  not wait for quiet: its keys are unwritable from the start. Each move
  keeps ``_IMPORTS_IN_FLIGHT`` copy steps in flight, and a target group
  takes at most ``_TARGET_IMPORTS`` at once over all the moves into it, so
  the wait is short.
- **A switch waiting for locks leaves its turn.** A source not sealed
  ``_SEAL_IN_TURN`` after its freeze (transactions hold locks on its moving
  keys) goes on waiting alone, its reason in ``Move.stuck``, and the turn
  ends without it. Held in the turn, it could wait for ever: a lock's
  transaction whose primary key moved with another switch of the same turn
  is decided by its record at that move's target, and the nodes' resolvers
  look for it there only once the map says that move is active.
- **A limit the operator sets** (``Migration.max_keys_per_second``, given
  with the ring change or changed while it runs): the copy steps of every
  move take turns on one schedule (``_Pace``), each holding it for its keys
  over the rate, the first at once; the collects take turns on another at
  the same rate, so the copies of N moving keys take about N over the
  limit, and the collects as long again, overlapping the copies of the
  moves still copying. The copies of a switch (its turn, from the wait for
  quiet to the activation) are never held back, nor are those of a source
  found frozen already (``ExportChunk.frozen``: a switch whose record a
  crash lost), nor a step already sent. A step takes its turn only while no
  switch runs, so the schedule is not handed out to steps that cannot go.
  The limit is read from the map at every step, so a new one applies from
  the next chunk (a step waiting looks again at least every
  ``_PACE_RECHECK``). The source's scan runs only about two chunks ahead of
  the paced driver (the driver's channels keep HTTP/2's 64 KiB window,
  ``shardkv.node.resolver``). What it does not bound: a step is still a whole
  chunk, catch-up rounds under writes faster than the limit end after
  ``_MAX_ROUNDS`` and the switch copies the rest at full speed, and a
  throttled bulk pass keeps its consistent iterator at the source open for
  as long as it lasts (RocksDB keeps the files it reads meanwhile).
  Without a limit a move takes every core it can get, and the writes
  sharing the nodes wait behind its rounds; a limit trades the move's speed
  for their latency, as CockroachDB's snapshot rate and TiKV's
  ``snap-max-write-bytes-per-sec`` do (figures in docs/design.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shardkv.errors import ShardKVError
from shardkv.failpoints import failpoint
from shardkv.node.cluster import ClusterAgent
from shardkv.node.driving import MapDriver, StepFailed
from shardkv.node.resolver import NodeGroupCalls
from shardkv.node.ring_change import finish_migration
from shardkv.ring import build_ring, moving_keys, moving_shares
from shardkv.txn_protocol import now_ms
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2

__all__ = ["MigrationDriver"]

_log = logging.getLogger(__name__)

# A catch-up round this small ends the copying: the freeze follows.
_SMALL_ROUND = 500
_MAX_ROUNDS = 8
_IMPORTS_IN_FLIGHT = 2
# Bulk copies in flight into one target group, over all its moves.
_TARGET_IMPORTS = 4
# Keys per chunk of the bulk copy (EXPORT_ALL): every step is a Raft entry, a
# round and a gRPC call, so not small; but a node's round applies every
# group's entries in one go, and a copy chunk applied in a round delays the
# writes of all the node's groups. At 4,000 keys (~0.5 MiB of 100-byte values)
# against 16,000, in 6 runs of each of bench.rebalance, interleaved, the
# longest write of a moving key during the move fell from a median of 865 ms
# to 573 ms, at the cost of about 11% of the rate (46.0k against 51.7k
# keys/s); at 8,000 the longest writes stayed as at 16,000, and 2,000-3,000
# cost more of the rate.
_BULK_CHUNK_KEYS = 4_000
# Keys per collect step (keys only, no records; after the target serves them).
_COLLECT_CHUNK_KEYS = 16_000
# The most moved keys a move remembers to drop them at the source without a scan.
_REMEMBERED_KEYS = 2_000_000
_PROGRESS_INTERVAL = 1.0
# Keys hashed between two chances for the event loop.
_CHECK_SLICE = 4096
_SEAL_POLL = 0.02
# A switch whose source is not sealed this long after its freeze (locks on its
# keys) leaves its turn and polls at _SEAL_POLL_ALONE (``MigrationDriver._seal``).
_SEAL_IN_TURN = 0.5
_SEAL_POLL_ALONE = 0.2
# The longest a switch waits for the bulk steps in flight to apply.
_QUIET_WAIT = 2.0

# The longest a paced step sleeps before it looks at the limit again (a
# raised one applies soon).
_PACE_RECHECK = 0.5

_Pair = tuple[int, int]


class _Pace:
    """Bulk steps in turn at ``rate_of()`` keys per second (0: at once).

    A step goes when the schedule is free, then holds it for its keys over
    the rate as the rate is while it waits: the first goes at once, and a
    changed rate applies to the step holding the schedule too.
    """

    def __init__(
        self,
        rate_of: Callable[[], int],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate_of = rate_of
        self._clock = clock
        self._sleep = sleep
        self._held_since = 0.0
        self._held_keys = 0

    async def take(self, keys: int) -> None:
        """Wait until ``keys`` more keys keep within the rate, and count them in."""
        while True:
            rate, now = self._rate_of(), self._clock()
            if rate > 0 and self._held_keys:
                free_at = self._held_since + self._held_keys / rate
                if free_at > now:
                    await self._sleep(min(free_at - now, _PACE_RECHECK))
                    continue
            self._held_since, self._held_keys = now, keys if rate > 0 else 0
            return


class _Pipeline:
    """At most ``limit`` steps in flight at once, in the order they were submitted."""

    def __init__(self, limit: int, tracked: set[asyncio.Task[Any]] | None = None) -> None:
        self.limit = limit
        self._in_flight: set[asyncio.Task[Any]] = set()
        # Where every step is also kept while it runs (the driver's bulk steps).
        self._tracked = tracked

    async def submit(self, step: Awaitable[Any]) -> None:
        """Start ``step`` once fewer than ``limit`` run; a failed one raises here."""
        while len(self._in_flight) >= self.limit:
            done, self._in_flight = await asyncio.wait(
                self._in_flight, return_when=asyncio.FIRST_COMPLETED
            )
            failures = [task.exception() for task in done if not task.cancelled()]
            failure = next((error for error in failures if error is not None), None)
            if failure is not None:
                raise failure
        task = asyncio.ensure_future(step)
        self._in_flight.add(task)
        if self._tracked is not None:
            self._tracked.add(task)
            task.add_done_callback(self._tracked.discard)

    async def drain(self) -> None:
        """Until every step submitted ended; the first failure raises."""
        for pending in asyncio.as_completed(self._in_flight):
            await pending
        self._in_flight.clear()

    def cancel(self) -> None:
        for task in self._in_flight:
            task.cancel()
        self._in_flight.clear()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.debug("recording a phase failed (the next one records it): %s", task.exception())


class _TargetActive(StepFailed):
    """A copy refused because the target serves the keys already."""


@dataclass(slots=True)
class _Progress:
    keys: int = 0
    nbytes: int = 0
    estimate: int = 0
    # The source revision the last copy read at (changes after it are still to copy).
    watermark: int | None = None
    frozen_at: float | None = None
    recorded_at: float = 0.0
    # The moving keys the source holds, as every copy since the first found
    # them: so the source can drop them without another scan of the group,
    # and count them out at its release. None past _REMEMBERED_KEYS, or when
    # this driver did not see every copy (a restart).
    copied: set[bytes] | None = None

    def remember(self, data: kv_pb2.MigrateImport) -> None:
        if self.copied is None:
            return
        self.copied.update(data.keys)
        self.copied.difference_update(data.deleted)
        if len(self.copied) > _REMEMBERED_KEYS:
            self.copied = None


def _new_outcome() -> asyncio.Future[int]:
    outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    # Retrieved here too: a task cancelled while its switch ran never awaits it.
    outcome.add_done_callback(lambda done: done.cancelled() or done.exception())
    return outcome


@dataclass(slots=True)
class _Switch:
    """A move waiting for its switch's turn, and what the switch came to."""

    epoch: int
    pair: _Pair
    progress: _Progress
    record_frozen: bool
    # The frozen ms, or why the switch failed; set by its steps.
    outcome: asyncio.Future[int] = field(default_factory=_new_outcome)
    # Set once the switch is out of its turn: ended, or waiting for its seal on its own.
    left: asyncio.Event = field(default_factory=asyncio.Event)
    # Its steps, from the moment a turn took the move along.
    steps: asyncio.Task[None] | None = None


def _steps_ended(switch: _Switch, steps: asyncio.Task[None]) -> None:
    """A switch's steps ended, however: it is out of its turn, with an outcome."""
    switch.left.set()
    if not switch.outcome.done():
        switch.outcome.set_exception(StepFailed("the switch was cancelled"))


class MigrationDriver(MapDriver[_Pair, tuple[cluster_pb2.Migration, cluster_pb2.Move]]):
    name = "migration"

    def __init__(self, agent: ClusterAgent, calls: NodeGroupCalls, *, interval: float = 0.2):
        super().__init__(agent, calls, interval=interval)
        self._progress: dict[_Pair, _Progress] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Moves in their switch (their turn: the wait for quiet, freeze to
        # active); meanwhile the others' copies and collects wait, so that the
        # keys unwritable now get the machine. One turn at a time, taking
        # every move waiting for it (_switch), so the event is clear exactly
        # while a turn runs.
        self._no_switch = asyncio.Event()
        self._no_switch.set()
        # The turn running (it ends once each of its switches left it), or None.
        self._turn: asyncio.Task[None] | None = None
        # The moves waiting for a turn, and what their switch came to.
        self._switch_waiting: dict[_Pair, _Switch] = {}
        self._target_slots: dict[int, asyncio.Semaphore] = {}
        # The copies and collects in flight (submitted, not yet answered).
        self._bulk: set[asyncio.Task[Any]] = set()
        # Copies and collects each at the migration's limit, if it has one.
        self._copy_pace = _Pace(self._rate_limit, self._clock)
        self._collect_pace = _Pace(self._rate_limit, self._clock)

    @staticmethod
    def _clock() -> float:
        return asyncio.get_running_loop().time()

    def _rate_limit(self) -> int:
        """The migration's limit as the map says now (0: none)."""
        cluster_map = self.agent.map
        if cluster_map is None or not cluster_map.HasField("migration"):
            return 0
        return cluster_map.migration.max_keys_per_second

    def pending(self, cluster_map: cluster_pb2.ClusterMap) -> list[_Pair]:
        if not cluster_map.HasField("migration"):
            return []
        return [
            (move.source, move.target)
            for move in cluster_map.migration.moves
            if move.phase != cluster_pb2.MOVE_DONE
        ]

    def item(
        self, cluster_map: cluster_pb2.ClusterMap, key: _Pair
    ) -> tuple[cluster_pb2.Migration, cluster_pb2.Move] | None:
        if not cluster_map.HasField("migration"):
            return None
        for move in cluster_map.migration.moves:
            if (move.source, move.target) == key and move.phase != cluster_pb2.MOVE_DONE:
                return cluster_map.migration, move
        return None

    def forget(self) -> None:
        self._progress.clear()

    async def record_stuck(self, key: _Pair, why: str) -> None:
        await self._record(key, stuck=why)

    async def settle(self, cluster_map: cluster_pb2.ClusterMap) -> None:
        """Every move is done: the map takes the target ring."""
        if not cluster_map.HasField("migration"):
            return

        def change(current: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap | None:
            if not current.HasField("migration") or any(
                move.phase != cluster_pb2.MOVE_DONE for move in current.migration.moves
            ):
                return None
            return finish_migration(current)

        finished = await self.agent.update_map(change)
        if not finished.HasField("migration"):
            _log.info(
                "node %d: ring change done: epoch %d",
                self.runtime.node_id,
                finished.ring.epoch,
                extra={"node_id": self.runtime.node_id},
            )
            self._progress.clear()
            self.agent.wake()

    async def advance(
        self, key: _Pair, item: tuple[cluster_pb2.Migration, cluster_pb2.Move]
    ) -> None:
        migration, move = item
        await self._advance(migration, move, self._progress.setdefault(key, _Progress()))

    async def _advance(
        self, migration: cluster_pb2.Migration, move: cluster_pb2.Move, progress: _Progress
    ) -> None:
        pair = (move.source, move.target)
        epoch = migration.target.epoch
        if move.phase == cluster_pb2.MOVE_PENDING:
            begin = self._step(epoch, pair, begin=migration.target)
            cluster_map = self.agent.map
            if cluster_map is not None and cluster_map.ring.epoch == epoch - 1:
                begin.migrate.base.CopyFrom(cluster_map.ring)
            await asyncio.gather(self._apply(move.source, begin), self._apply(move.target, begin))
            failpoint("migration.after_begin")
            _log.info(
                "node %d: move %d->%d began (epoch %d)",
                self.runtime.node_id,
                *pair,
                epoch,
                extra={"node_id": self.runtime.node_id, "group_id": move.source},
            )
            await self._record(pair, phase=cluster_pb2.MOVE_COPYING, started_ms=now_ms())
        elif move.phase == cluster_pb2.MOVE_COPYING:
            progress.watermark = None
            progress.keys = progress.nbytes = 0
            progress.copied = set()
            progress.recorded_at = asyncio.get_running_loop().time()
            # _TargetActive: activated before a crash, unrecorded; nothing to copy,
            # and the keys to collect are not all known here.
            try:
                await self._copy(epoch, pair, node_pb2.EXPORT_ALL, 0, progress)
                failpoint("migration.after_copy")
                # The first catch-up takes every change since the move began,
                # not only since this copy: a key an earlier, interrupted copy
                # brought over and the source deleted since is absent from
                # this copy, and only its mark says it must go.
                since = 0
                for _ in range(_MAX_ROUNDS):
                    before = progress.keys
                    await self._copy(epoch, pair, node_pb2.EXPORT_CHANGES, since, progress)
                    assert progress.watermark is not None
                    since = progress.watermark
                    if progress.keys - before < _SMALL_ROUND:
                        break
            except _TargetActive:
                progress.copied = None
            await self._switch(epoch, pair, progress, record_frozen=True)
        elif move.phase == cluster_pb2.MOVE_FROZEN:
            await self._switch(epoch, pair, progress, record_frozen=False)
        elif move.phase == cluster_pb2.MOVE_ACTIVE:
            release = self._step(epoch, pair, release=True)
            await self._check_copied(migration, pair, progress)
            if progress.copied is not None:
                release.migrate.released_keys = len(progress.copied)
            await self._apply(move.source, release)
            failpoint("migration.before_collect")
            collected = await self._collect(epoch, pair, progress.copied)
            await self._record(pair, phase=cluster_pb2.MOVE_DONE, finished_ms=now_ms())
            _log.info(
                "node %d: move %d->%d done: %d keys dropped at the source",
                self.runtime.node_id,
                *pair,
                collected,
                extra={"node_id": self.runtime.node_id, "group_id": move.source},
            )

    async def _switch(
        self, epoch: int, pair: _Pair, progress: _Progress, *, record_frozen: bool
    ) -> None:
        """Freeze, seal, copy the last changes and activate: the keys' unwritable window.

        Nothing in it waits for the map: the freeze is recorded beside it (a
        crash before that record resumes in MOVE_COPYING, whose steps are all
        idempotent on a frozen source), and the last copy activates the
        target in its own entry.

        Switches take turns; a turn switches every move waiting for it, side by
        side (``_start_turn``): moves whose copies end while another switches
        then share one wait for quiet and one unwritable window, where one
        after the other would each wait their own. Each move records its own
        activation as soon as its switch ends, not when its turn does.
        """
        switch = _Switch(epoch, pair, progress, record_frozen)
        self._switch_waiting[pair] = switch
        try:
            while switch.steps is None:
                turn = self._turn
                if turn is None or turn.done():
                    self._start_turn()  # takes this move along
                else:
                    # Until it ends (this task cancelled does not cancel it).
                    await asyncio.wait({turn})
            frozen_ms = await asyncio.shield(switch.outcome)
        except asyncio.CancelledError:
            # The steps are this task's: cancelled with it (a new term: every
            # task of the driver is, at once), and over before it ends.
            steps = switch.steps
            if steps is not None and not steps.done():
                steps.cancel()
                await asyncio.wait({steps})
            if switch.outcome.done() and not switch.outcome.cancelled():
                switch.outcome.exception()  # read: no one else waits for it (no warning)
            raise
        finally:
            if self._switch_waiting.get(pair) is switch:
                del self._switch_waiting[pair]
        # The target serves the keys: the bulk work goes on while the map records it.
        await self._record(pair, phase=cluster_pb2.MOVE_ACTIVE, frozen_ms=frozen_ms)
        self.runtime.metrics.migration_frozen_seconds.observe(frozen_ms / 1000)
        _log.info(
            "node %d: move %d->%d active: group %d serves the moved keys (frozen %d ms)",
            self.runtime.node_id,
            *pair,
            pair[1],
            frozen_ms,
            extra={"node_id": self.runtime.node_id, "group_id": pair[1]},
        )

    def _start_turn(self) -> None:
        """A turn for every move waiting for one: their steps start side by side, and
        the wait for quiet is one for them all. The bulk work waits until each
        switch left the turn: ended, or gone on waiting for its seal (``_seal``)."""
        switches = list(self._switch_waiting.values())
        self._switch_waiting.clear()
        self._no_switch.clear()
        quiet: asyncio.Future[None] | None = None
        if any(switch.record_frozen for switch in switches):
            quiet = asyncio.ensure_future(self._quiet())
        for switch in switches:
            switch.steps = asyncio.create_task(
                self._run_switch(switch, quiet), name=f"switch-{switch.pair}"
            )
            # Also when cancelled before it began (its move's task cancelled at once).
            switch.steps.add_done_callback(functools.partial(_steps_ended, switch))
        self._turn = asyncio.create_task(self._end_turn(switches, quiet), name="switch-turn")

    async def _end_turn(self, switches: list[_Switch], quiet: asyncio.Future[None] | None) -> None:
        try:
            await asyncio.gather(*(switch.left.wait() for switch in switches))
        finally:
            self._no_switch.set()
            if quiet is not None:
                quiet.cancel()

    async def _run_switch(self, switch: _Switch, quiet: asyncio.Future[None] | None) -> None:
        """One move's switch; its outcome (frozen ms, or why it failed) goes to its
        move's task."""
        try:
            frozen_ms = await self._switch_turn_steps(switch, quiet)
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # its move's task cancelled it (a new term): _steps_ended
            # A call inside the switch was cancelled, not the switch: a failure.
            switch.outcome.set_exception(StepFailed(f"a step was cancelled: {error!r}"))
        except Exception as error:
            switch.outcome.set_exception(error)
        else:
            switch.outcome.set_result(frozen_ms)

    async def _switch_turn_steps(self, switch: _Switch, quiet: Awaitable[None] | None) -> int:
        """One move's switch in its turn; how long its keys were frozen (ms). A move
        found frozen already (``record_frozen`` False) does not wait for quiet: its
        keys are unwritable from the start."""
        epoch, pair, progress = switch.epoch, switch.pair, switch.progress
        if switch.record_frozen:
            assert quiet is not None
            await asyncio.shield(quiet)
            if progress.watermark is not None:
                # What changed while the bulk steps drained, before the keys freeze.
                try:
                    await self._copy(
                        epoch,
                        pair,
                        node_pb2.EXPORT_CHANGES,
                        progress.watermark,
                        progress,
                        switching=True,
                    )
                except _TargetActive:
                    progress.copied = None  # as in MOVE_COPYING
        return await self._switch_steps(
            epoch, pair, progress, record_frozen=switch.record_frozen, leave=switch.left.set
        )

    async def _quiet(self) -> None:
        """Until the bulk copies and collects in flight have applied (new ones wait
        for the switch), or ``_QUIET_WAIT`` seconds: the switch's few rounds then
        do not queue behind chunks of thousands of keys on every node."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _QUIET_WAIT
        while self._bulk and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._bulk), timeout=remaining)

    async def _switch_steps(
        self,
        epoch: int,
        pair: _Pair,
        progress: _Progress,
        *,
        record_frozen: bool,
        leave: Callable[[], None],
    ) -> int:
        source = pair[0]
        loop = asyncio.get_running_loop()
        frozen = await self._apply(
            source, self._step(epoch, pair, freeze=True, seal_when_free=True)
        )
        failpoint("migration.after_freeze")
        if progress.frozen_at is None:
            progress.frozen_at = loop.time()
        _log.info(
            "node %d: move %d->%d frozen after copying %d keys",
            self.runtime.node_id,
            *pair,
            progress.keys,
            extra={"node_id": self.runtime.node_id, "group_id": source},
        )
        if record_frozen:
            recording = asyncio.create_task(self._record(pair, phase=cluster_pb2.MOVE_FROZEN))
            self._background.add(recording)
            recording.add_done_callback(self._background.discard)
            recording.add_done_callback(_retrieve)
        if not frozen.sealed:  # a lock held on a moving key: the seal waits for it
            await self._seal(epoch, pair, leave)
        failpoint("migration.after_seal")
        since = progress.watermark if progress.watermark is not None else 0
        try:
            await self._copy(epoch, pair, node_pb2.EXPORT_CHANGES, since, progress, activate=True)
        except _TargetActive:
            # Activated before a crash, unrecorded: its copy was complete then;
            # which keys to collect is not all known here.
            progress.copied = None
        # The last copy activated the target in its own entry (or _TargetActive said
        # an earlier attempt had): no separate activate step in the unwritable window.
        failpoint("migration.after_activate")
        return int((loop.time() - progress.frozen_at) * 1000)

    def _step(self, epoch: int, pair: _Pair, **kind: object) -> kv_pb2.Command:
        step = kv_pb2.MigrateStep(epoch=epoch, source=pair[0], target=pair[1], driver=self.token)
        for name, value in kind.items():
            if isinstance(value, bool):
                setattr(step, name, value)
            else:
                getattr(step, name).CopyFrom(value)
        return kv_pb2.Command(migrate=step)

    async def _apply(self, group_id: int, command: kv_pb2.Command) -> kv_pb2.MigrateResult:
        result = await self.calls.propose(group_id, command)
        if not result.migrate.applied:
            kind = command.migrate.WhichOneof("kind")
            if kind == "copy" and result.migrate.target_active:
                raise _TargetActive(result.migrate.reason)
            raise StepFailed(f"group {group_id} did not apply {kind}: {result.migrate.reason}")
        return result.migrate

    async def _limited(self, target: int, command: kv_pb2.Command) -> kv_pb2.MigrateResult:
        """``_apply`` of a bulk copy, at most ``_TARGET_IMPORTS`` at a time per target
        group over every move into it: a switch's last copy then waits behind few."""
        slots = self._target_slots.get(target)
        if slots is None:
            slots = self._target_slots[target] = asyncio.Semaphore(_TARGET_IMPORTS)
        async with slots:
            return await self._apply(target, command)

    async def _seal(self, epoch: int, pair: _Pair, leave: Callable[[], None]) -> None:
        """Until the source seals (no lock is left on a moving key).

        Past ``_SEAL_IN_TURN`` the switch leaves its turn (``leave``) and waits
        on its own, polling less often, with why in the map: the other moves'
        switches and bulk work go on meanwhile. One of them may be what the
        wait needs: a lock's transaction whose primary key moved with another
        switch of the same turn is decided by its record at that move's
        target, which the resolvers find once the map says the move is active.
        """
        command = self._step(epoch, pair, seal=True)
        loop = asyncio.get_running_loop()
        leave_at = loop.time() + _SEAL_IN_TURN
        poll = _SEAL_POLL
        while True:
            result = await self.calls.propose(pair[0], command)
            if result.migrate.applied:
                return
            if not result.migrate.wait:
                raise StepFailed(f"group {pair[0]} did not seal: {result.migrate.reason}")
            if poll == _SEAL_POLL and loop.time() >= leave_at:
                poll = _SEAL_POLL_ALONE
                leave()
                why = f"frozen, not sealed: group {pair[0]} is {result.migrate.reason}"
                _log.info(
                    "node %d: move %d->%d %s; the other moves go on",
                    self.runtime.node_id,
                    *pair,
                    why,
                    extra={"node_id": self.runtime.node_id, "group_id": pair[0]},
                )
                with contextlib.suppress(ShardKVError):
                    await self.record_stuck(pair, why)
            await asyncio.sleep(poll)

    async def _copy(
        self,
        epoch: int,
        pair: _Pair,
        kind: node_pb2.ExportKind,
        since: int,
        progress: _Progress,
        *,
        activate: bool = False,
        switching: bool = False,
    ) -> None:
        """Export from the source, import into the target, a few imports in flight.

        With ``activate``, the last chunk goes alone once every other one
        applied, and activates the target in the same entry. A copy of the
        move's own switch (``switching``, or ``activate``) does not wait for it.
        """
        switching = switching or activate
        source, target = pair
        request = node_pb2.ExportRequest(
            group_id=source,
            epoch=epoch,
            target=target,
            kind=kind,
            since_revision=since,
            chunk_keys=_BULK_CHUNK_KEYS if kind == node_pb2.EXPORT_ALL else 0,
        )
        # A switch's own copies are not bulk steps a switch waits for.
        pipeline = _Pipeline(_IMPORTS_IN_FLIGHT, None if switching else self._bulk)
        revision: int | None = None
        held: kv_pb2.MigrateImport | None = None
        # This pass's own number: its chunks are new keys at the target (fsm.migration).
        bulk_pass = random.getrandbits(63) | 1 if kind == node_pb2.EXPORT_ALL else 0

        def send(data: kv_pb2.MigrateImport) -> Awaitable[kv_pb2.MigrateResult]:
            copied_keys = len(data.keys) + len(data.deleted)
            copied_bytes = sum(len(record) for record in data.records)
            progress.keys += copied_keys
            progress.nbytes += copied_bytes
            progress.remember(data)
            metrics = self.runtime.metrics
            metrics.migration_keys.inc(copied_keys)
            metrics.migration_bytes.inc(copied_bytes)
            command = self._step(epoch, pair, copy=data)
            if switching:
                return self._apply(target, command)  # the switch's own: not queued
            return self._limited(target, command)

        try:
            async for chunk in self.calls.export(request):
                # A source frozen already (a switch whose record was lost to a
                # crash, resumed as a copy): its keys are unwritable, so no limit.
                paced = not switching and not chunk.frozen
                if revision is None:
                    revision = chunk.revision
                    if not progress.estimate:
                        progress.estimate = _estimate(self.agent.map, pair, chunk.key_count)
                data: kv_pb2.MigrateImport | None = chunk.data
                assert data is not None
                data.bulk_pass = bulk_pass
                if not (data.keys or data.deleted or data.sessions or data.txn_records):
                    continue
                if activate:
                    data, held = held, data  # the last one waits for the others
                    if data is None:
                        continue
                if not switching:
                    await self._no_switch.wait()  # another move is switching: let it
                if paced:
                    # Its turn only once no switch runs (turns are not handed
                    # out while steps cannot go), then whatever began meanwhile.
                    await self._copy_pace.take(len(data.keys) + len(data.deleted))
                    await self._no_switch.wait()
                await pipeline.submit(send(data))
                await self._maybe_record_progress(pair, progress)
            await pipeline.drain()
            if activate:
                final = held if held is not None else kv_pb2.MigrateImport()
                final.activate = True
                await send(final)
        finally:
            pipeline.cancel()
        if revision is not None:
            progress.watermark = revision

    async def _check_copied(
        self, migration: cluster_pb2.Migration, pair: _Pair, progress: _Progress
    ) -> None:
        """Forget the remembered keys unless every one moves from the source to the
        target: the source counts them out and drops them without checking."""
        cluster_map, copied = self.agent.map, progress.copied
        if copied is None:
            return
        if cluster_map is None or cluster_map.ring.epoch != migration.target.epoch - 1:
            progress.copied = None
            return
        moving = moving_keys(build_ring(cluster_map.ring), build_ring(migration.target), *pair)
        remembered = list(copied)
        strays = 0
        for start in range(0, len(remembered), _CHECK_SLICE):
            checked = remembered[start : start + _CHECK_SLICE]
            strays += len(checked) - len(moving(checked))
            await asyncio.sleep(0)  # millions of keys: the node's rounds go on
        if strays:
            _log.error(
                "node %d: move %d->%d: %d copied keys do not move; the source finds its own",
                self.runtime.node_id,
                *pair,
                strays,
            )
            progress.copied = None

    async def _collect(self, epoch: int, pair: _Pair, copied: set[bytes] | None) -> int:
        """Drop the moved keys at the source: the ones this driver copied when it
        remembers them all, else what a scan of the source finds moving."""
        source = pair[0]
        collected = 0
        pipeline = _Pipeline(_IMPORTS_IN_FLIGHT, self._bulk)
        try:
            async for moved in self._moved_keys(epoch, pair, copied):
                await self._no_switch.wait()  # a switch goes first here too
                await self._collect_pace.take(len(moved))
                await self._no_switch.wait()
                collect = self._step(epoch, pair, collect=kv_pb2.MigrateCollect(keys=moved))
                await pipeline.submit(self._apply(source, collect))
                collected += len(moved)
                self.runtime.metrics.migration_keys_collected.inc(len(moved))
            await pipeline.drain()
        finally:
            pipeline.cancel()
        await self._apply(source, self._step(epoch, pair, collect=kv_pb2.MigrateCollect(last=True)))
        return collected

    async def _moved_keys(
        self, epoch: int, pair: _Pair, copied: set[bytes] | None
    ) -> AsyncIterator[list[bytes]]:
        if copied is not None:
            moved = sorted(copied)
            for start in range(0, len(moved), _COLLECT_CHUNK_KEYS):
                yield moved[start : start + _COLLECT_CHUNK_KEYS]
            return
        source, target = pair
        request = node_pb2.ExportRequest(
            group_id=source,
            epoch=epoch,
            target=target,
            kind=node_pb2.EXPORT_KEYS,
            chunk_keys=_COLLECT_CHUNK_KEYS,
        )
        async for chunk in self.calls.export(request):
            if chunk.data.keys:
                yield list(chunk.data.keys)

    # -- recording in the map ----------------------------------------------------------

    async def _maybe_record_progress(self, pair: _Pair, progress: _Progress) -> None:
        now = asyncio.get_running_loop().time()
        if now - progress.recorded_at >= _PROGRESS_INTERVAL:
            progress.recorded_at = now
            try:
                await self._record(pair)
            except ShardKVError as error:  # progress only: the copy goes on
                _log.debug("recording the progress of move %s failed: %s", pair, error)

    async def _record(self, pair: _Pair, **fields: object) -> None:
        """Write the move's phase, progress and ``fields`` into the map."""
        progress = self._progress.get(pair, _Progress())

        def change(current: cluster_pb2.ClusterMap) -> cluster_pb2.ClusterMap | None:
            if not current.HasField("migration"):
                return None
            changed = cluster_pb2.ClusterMap()
            changed.CopyFrom(current)
            for move in changed.migration.moves:
                if (move.source, move.target) != pair:
                    continue
                if "phase" in fields and move.phase >= fields["phase"]:  # type: ignore[operator]
                    return None  # recorded already (by a predecessor, or a repeat)
                move.keys_copied = max(move.keys_copied, progress.keys)
                move.bytes_copied = max(move.bytes_copied, progress.nbytes)
                move.keys_estimate = progress.estimate or move.keys_estimate
                if "stuck" not in fields:
                    move.stuck = ""
                for name, value in fields.items():
                    setattr(move, name, value)
                if "phase" in fields:
                    move.phase_started_ms = now_ms()
                changed.version = current.version + 1
                return changed
            return None

        await self.agent.update_map(change)


def _estimate(cluster_map: cluster_pb2.ClusterMap | None, pair: _Pair, source_keys: int) -> int:
    """About how many keys the move carries: the source's keys times the share that moves."""
    if cluster_map is None or not cluster_map.HasField("migration") or not source_keys:
        return 0
    ring = build_ring(cluster_map.ring)
    moving = moving_shares(ring, build_ring(cluster_map.migration.target)).get(pair, 0.0)
    owned = ring.shares().get(pair[0], 0.0)
    return round(source_keys * moving / owned) if owned else 0
