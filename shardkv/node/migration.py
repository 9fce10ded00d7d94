"""The migration driver: the meta group's leader moves keys for a ring change, step by step.

A ring change (``shardkv.node.ring_change``) writes a ``Migration`` into the
cluster map: the target ring and one ``Move`` per (source, target) pair of
groups. ``MigrationDriver`` runs on every node and acts only where the meta
group's leader is. For each move not done it runs one task, which reads the
move's phase from the map and does the next step, recording every phase in
the map (compare-and-set through the meta group) before going on, so a new
leader, or this one after a crash, resumes where the map says:

1. ``MOVE_PENDING``: ``begin`` in the source and the target (the source starts
   marking changes of moving keys); record ``MOVE_COPYING``.
2. ``MOVE_COPYING``: copy every moving key (``Node.Export`` from the source's
   leader, ``copy`` steps into the target, a few in flight), then copy what
   changed since, round after round, until a round is small; ``freeze`` the
   source; record ``MOVE_FROZEN``.
3. ``MOVE_FROZEN``: ``seal`` the source (it waits until no lock is left on a
   moving key), copy the last changes with the sessions and the moved
   transaction records, ``activate`` the target; record ``MOVE_ACTIVE``
   (routers now send the moved keys to the target) with how long the keys
   were frozen.
4. ``MOVE_ACTIVE``: ``release`` the source, drop the moved keys there
   (``collect``, in chunks, the last one also dropping marks and records);
   record ``MOVE_DONE``.

When every move is done, the map takes the target ring (a new epoch; groups
then apply it and forget the migration) and retired groups leave it.

Decisions:

- **Fencing.** Each step carries the driver's token: the meta group's term
  when this node began to lead it. The groups refuse lower tokens, so a
  deposed leader that still runs a task cannot write into a move its
  successor took over. A task also stops as soon as this node stops leading.
- **Resuming** a move in ``MOVE_FROZEN`` copies every change marked since the
  move began (the watermark of the earlier copy was in a memory that is
  gone); in ``MOVE_COPYING`` it copies everything again. Both are safe
  because a copy writes records as the source holds them.
- **A step that fails** (a group without a leader, a refusal) is retried
  after a back-off growing to ``_MAX_RETRY`` seconds; what failed is written
  into the move (``Move.stuck``) so that ``shardkv status`` can say why a move
  does not progress.
- Progress (keys and bytes copied) is written into the map at most every
  ``_PROGRESS_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from shardkv.errors import ShardKVError
from shardkv.node.cluster import META_GROUP, ClusterAgent
from shardkv.node.resolver import NodeGroupCalls
from shardkv.node.ring_change import finish_migration
from shardkv.raft import Role
from shardkv.ring import build_ring, moving_shares
from shardkv.txn_protocol import now_ms
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2

__all__ = ["MigrationDriver"]

_log = logging.getLogger(__name__)

# A catch-up round this small ends the copying: the freeze follows.
_SMALL_ROUND = 500
_MAX_ROUNDS = 8
_IMPORTS_IN_FLIGHT = 4
_PROGRESS_INTERVAL = 1.0
_FIRST_RETRY = 0.1
_MAX_RETRY = 5.0
_SEAL_POLL = 0.02

_Pair = tuple[int, int]


class MoveFailed(ShardKVError):
    """A step of a move did not apply; the move is retried from its recorded phase."""


@dataclass(slots=True)
class _Progress:
    keys: int = 0
    bytes: int = 0
    estimate: int = 0
    # The source revision the last copy read at (changes after it are still to copy).
    watermark: int | None = None
    frozen_at: float | None = None
    recorded_at: float = 0.0


class MigrationDriver:
    def __init__(
        self,
        agent: ClusterAgent,
        calls: NodeGroupCalls,
        *,
        interval: float = 0.2,
    ) -> None:
        self.agent = agent
        self.runtime = agent.runtime
        self.calls = calls
        self.interval = interval
        self._tasks: dict[_Pair, asyncio.Task[None]] = {}
        self._token = 0
        self._progress: dict[_Pair, _Progress] = {}
        self._finishing = False
        self._stopping = False
        self._wake = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.step()
            except Exception:  # one bad pass must not end the driver
                _log.exception("node %d: migration driver pass failed", self.runtime.node_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await self._cancel()

    async def _cancel(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._progress.clear()

    async def step(self) -> None:
        meta = self.runtime.peers.get(META_GROUP)
        if meta is None or meta.role != Role.LEADER:
            if self._tasks:
                await self._cancel()
            return
        term = meta.raw.raft.term
        if term != self._token:
            await self._cancel()
            self._token = term
        cluster_map = self.agent.map
        if cluster_map is None or not cluster_map.HasField("migration"):
            return
        for pair, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[pair]
        moves = cluster_map.migration.moves
        if all(move.phase == cluster_pb2.MOVE_DONE for move in moves):
            await self._finish()
            return
        for move in moves:
            pair = (move.source, move.target)
            if move.phase != cluster_pb2.MOVE_DONE and pair not in self._tasks:
                self._tasks[pair] = asyncio.create_task(
                    self._drive(pair), name=f"move-{pair[0]}-{pair[1]}"
                )

    async def _finish(self) -> None:
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

    # -- one move ----------------------------------------------------------------------

    def _move(self, pair: _Pair) -> tuple[cluster_pb2.Migration, cluster_pb2.Move] | None:
        cluster_map = self.agent.map
        if cluster_map is None or not cluster_map.HasField("migration"):
            return None
        for move in cluster_map.migration.moves:
            if (move.source, move.target) == pair:
                return cluster_map.migration, move
        return None

    async def _drive(self, pair: _Pair) -> None:
        failures = 0
        progress = self._progress.setdefault(pair, _Progress())
        while True:
            found = self._move(pair)
            if found is None or found[1].phase == cluster_pb2.MOVE_DONE:
                return
            migration, move = found
            phase = move.phase
            try:
                await self._advance(migration, move, progress)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                why = (
                    f"{cluster_pb2.MovePhase.Name(phase)} step of move {pair[0]}->{pair[1]}: "
                    f"{type(error).__name__}: {error}"
                )
                _log.warning(
                    "node %d: %s (attempt %d)",
                    self.runtime.node_id,
                    why,
                    failures,
                    extra={"node_id": self.runtime.node_id, "group_id": pair[0]},
                )
                with contextlib.suppress(Exception):
                    await self._record(pair, stuck=why[:500])
                await asyncio.sleep(min(_MAX_RETRY, _FIRST_RETRY * 2 ** min(failures, 8)))
            else:
                failures = 0

    async def _advance(
        self, migration: cluster_pb2.Migration, move: cluster_pb2.Move, progress: _Progress
    ) -> None:
        pair = (move.source, move.target)
        epoch = migration.target.epoch
        loop = asyncio.get_running_loop()
        if move.phase == cluster_pb2.MOVE_PENDING:
            begin = self._step(epoch, pair, begin=migration.target)
            await asyncio.gather(self._apply(move.source, begin), self._apply(move.target, begin))
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
            progress.keys = progress.bytes = 0
            await self._copy(epoch, pair, node_pb2.EXPORT_ALL, 0, progress)
            for _ in range(_MAX_ROUNDS):
                before = progress.keys
                assert progress.watermark is not None
                await self._copy(epoch, pair, node_pb2.EXPORT_CHANGES, progress.watermark, progress)
                if progress.keys - before < _SMALL_ROUND:
                    break
            await self._apply(move.source, self._step(epoch, pair, freeze=True))
            progress.frozen_at = loop.time()
            _log.info(
                "node %d: move %d->%d frozen after copying %d keys",
                self.runtime.node_id,
                *pair,
                progress.keys,
                extra={"node_id": self.runtime.node_id, "group_id": move.source},
            )
            await self._record(pair, phase=cluster_pb2.MOVE_FROZEN)
        elif move.phase == cluster_pb2.MOVE_FROZEN:
            await self._seal(epoch, pair)
            since = progress.watermark if progress.watermark is not None else 0
            await self._copy(epoch, pair, node_pb2.EXPORT_CHANGES, since, progress)
            await self._apply(move.target, self._step(epoch, pair, activate=True))
            frozen_ms = (
                int((loop.time() - progress.frozen_at) * 1000)
                if progress.frozen_at is not None
                else 0
            )
            await self._record(pair, phase=cluster_pb2.MOVE_ACTIVE, frozen_ms=frozen_ms)
            _log.info(
                "node %d: move %d->%d active: group %d serves the moved keys (frozen %d ms)",
                self.runtime.node_id,
                *pair,
                move.target,
                frozen_ms,
                extra={"node_id": self.runtime.node_id, "group_id": move.target},
            )
        elif move.phase == cluster_pb2.MOVE_ACTIVE:
            await self._apply(move.source, self._step(epoch, pair, release=True))
            collected = await self._collect(epoch, pair)
            await self._record(pair, phase=cluster_pb2.MOVE_DONE, finished_ms=now_ms())
            _log.info(
                "node %d: move %d->%d done: %d keys dropped at the source",
                self.runtime.node_id,
                *pair,
                collected,
                extra={"node_id": self.runtime.node_id, "group_id": move.source},
            )

    def _step(self, epoch: int, pair: _Pair, **kind: object) -> kv_pb2.Command:
        step = kv_pb2.MigrateStep(epoch=epoch, source=pair[0], target=pair[1], driver=self._token)
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
            raise MoveFailed(f"group {group_id} did not apply {kind}: {result.migrate.reason}")
        return result.migrate

    async def _seal(self, epoch: int, pair: _Pair) -> None:
        command = self._step(epoch, pair, seal=True)
        while True:
            result = await self.calls.propose(pair[0], command)
            if result.migrate.applied:
                return
            if "waiting for" not in result.migrate.reason:
                raise MoveFailed(f"group {pair[0]} did not seal: {result.migrate.reason}")
            await asyncio.sleep(_SEAL_POLL)

    async def _copy(
        self,
        epoch: int,
        pair: _Pair,
        kind: node_pb2.ExportKind,
        since: int,
        progress: _Progress,
    ) -> None:
        """Export from the source, import into the target, a few imports in flight."""
        source, target = pair
        request = node_pb2.ExportRequest(
            group_id=source, epoch=epoch, target=target, kind=kind, since_revision=since
        )
        in_flight: set[asyncio.Task[kv_pb2.MigrateResult]] = set()
        revision: int | None = None
        try:
            async for chunk in self.calls.export(request):
                if revision is None:
                    revision = chunk.revision
                    if not progress.estimate:
                        progress.estimate = _estimate(self.agent.map, pair, chunk.key_count)
                data = chunk.data
                if not (data.keys or data.deleted or data.sessions or data.txn_records):
                    continue
                while len(in_flight) >= _IMPORTS_IN_FLIGHT:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()
                in_flight.add(
                    asyncio.create_task(self._apply(target, self._step(epoch, pair, copy=data)))
                )
                progress.keys += len(data.keys) + len(data.deleted)
                progress.bytes += sum(len(record) for record in data.records)
                await self._maybe_record_progress(pair, progress)
            for pending in asyncio.as_completed(in_flight):
                await pending
        finally:
            for task in in_flight:
                task.cancel()
        if revision is not None:
            progress.watermark = revision

    async def _collect(self, epoch: int, pair: _Pair) -> int:
        source, target = pair
        request = node_pb2.ExportRequest(
            group_id=source, epoch=epoch, target=target, kind=node_pb2.EXPORT_KEYS
        )
        collected = 0
        async for chunk in self.calls.export(request):
            if chunk.data.keys:
                collect = kv_pb2.MigrateCollect(keys=chunk.data.keys)
                await self._apply(source, self._step(epoch, pair, collect=collect))
                collected += len(chunk.data.keys)
        await self._apply(source, self._step(epoch, pair, collect=kv_pb2.MigrateCollect(last=True)))
        return collected

    # -- recording in the map ----------------------------------------------------------

    async def _maybe_record_progress(self, pair: _Pair, progress: _Progress) -> None:
        now = asyncio.get_running_loop().time()
        if now - progress.recorded_at >= _PROGRESS_INTERVAL:
            progress.recorded_at = now
            await self._record(pair)

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
                move.bytes_copied = max(move.bytes_copied, progress.bytes)
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
