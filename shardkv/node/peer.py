"""One replica of one group on this node: Raft, its storage, its state machine.

A ``Peer`` wires a ``RawNode`` to the group's ``GroupStorage`` and
``KeyValueStateMachine`` and keeps the callers waiting on it. It does no I/O
of its own: the node's runtime drives every peer through the same round
(``runtime``), handing each phase the batch all groups share:

1. ``take_ready(raft_batch)``: take the Ready and stage what must be durable
   (snapshot, entries, hard state) into the round's one synced batch.
2. The runtime writes that batch and sends ``ready.messages``.
3. ``apply(ready, apply_batch)``: install a received snapshot, apply the
   committed entries, record the applied index and configuration, all into
   the round's apply batch, written at once, so a crash never applies twice.
4. ``finish(ready)``: advance Raft, then answer the callers whose proposals
   or reads the round settled.

``propose_many`` puts several commands in ONE log entry (a ``Command`` with
``batch``), chunked at ``max_entry_bytes``: a router's batch then costs one
entry to append, replicate, persist and decode, not one per command. Each
command keeps its own session and gets its own result.

Outcomes a proposal can have (after hashicorp/raft: "the cluster failed" is
kept apart from "the state machine answered"): the ``CommandResult``; or
``ProposalFailed`` when another entry took its index (it never applies); or
``OutcomeUnknown`` when the node stops first. A proposal outlives a change of
leader: the entry may still commit, and its index settles it either way.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from shardkv.errors import InvalidArgument, NotLeader, OutcomeUnknown, ProposalFailed
from shardkv.failpoints import failpoint
from shardkv.fsm.kv import KeyValueStateMachine
from shardkv.fsm.snapshot import snapshot_source, stage_install_snapshot_data
from shardkv.limits import check_command
from shardkv.raft import (
    NONE,
    ConfChange,
    Config,
    Entry,
    EntryType,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
)
from shardkv.revisions import stamp_now
from shardkv.storage import Batch, GroupStorage, StorageEngine
from shardkv.v1 import kv_pb2

__all__ = ["Peer", "PeerOptions"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerOptions:
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    lease_reads: bool = False
    max_size_per_msg: int = 1 << 20
    max_inflight: int = 256
    snapshot_chunk_size: int = 1 << 20
    # propose_many starts a new entry past this many bytes of commands.
    max_entry_bytes: int = 1 << 20
    # Take a snapshot once this many entries, or this many bytes of entry
    # data, were applied since the last one (whichever comes first, once the
    # log holds a quarter of the last image: see _maybe_snapshot; TiKV's
    # raft_log_gc count and size limits), and keep compaction_lag entries
    # behind it for followers only a little behind.
    snapshot_interval: int = 10_000
    snapshot_log_bytes: int = 64 << 20
    compaction_lag: int = 1_000
    # The wall clock (unix seconds) that stamps proposals (shardkv.revisions);
    # the simulator passes its own.
    clock: Callable[[], float] = time.time


@dataclass(slots=True)
class _PendingProposal:
    term: int
    # One per command of the entry, in order.
    futures: list[asyncio.Future[kv_pb2.CommandResult]]
    # Loop time of the proposal, for the proposal-to-commit latency.
    proposed_at: float

    def fail(self, error: Callable[[], Exception]) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(error())


@dataclass(slots=True)
class _PendingRead:
    future: asyncio.Future[None]
    # Served once applied reaches the read index and this: the last entry in
    # the log when the read began (see read_barrier).
    floor: int
    index: int | None = None


class Peer:
    def __init__(
        self,
        engine: StorageEngine,
        group_id: int,
        node_id: int,
        options: PeerOptions,
        *,
        seed: int | None = None,
    ) -> None:
        self.group_id = group_id
        self.node_id = node_id
        self._engine = engine
        self.storage = GroupStorage(
            engine, group_id, snapshot_source=snapshot_source(engine, group_id)
        )
        self.options = options
        self.machine = KeyValueStateMachine(engine, group_id)
        applied, conf_state = self.storage.applied_state()
        self.applied = applied
        self.conf_state = conf_state
        self.raw = RawNode(
            Config(
                id=node_id,
                election_tick=options.election_ticks,
                heartbeat_tick=options.heartbeat_ticks,
                applied=applied,
                lease_reads=options.lease_reads,
                max_size_per_msg=options.max_size_per_msg,
                max_inflight=options.max_inflight,
                snapshot_chunk_size=options.snapshot_chunk_size,
                seed=seed,
            ),
            self.storage,
        )
        self.role = Role.FOLLOWER
        # The leader last heard of (0: none), and how often a new one was (metrics).
        self.leader_id = 0
        self.leader_changes = 0
        # The (leader, term) last logged: each new leader is logged once.
        self._logged_leader = (NONE, 0)
        # Entry bytes applied since the last snapshot. It starts from zero on
        # a restart: the size trigger may then fire later, never sooner.
        self.log_bytes = 0
        # Size of the last snapshot image this peer built (0: none since start).
        self.image_bytes = 0
        # By index, a list: after losing and regaining the lead, this node may
        # propose again at an index whose earlier entry (another term) was
        # cut from its log but may still commit from another node's.
        self._proposals: dict[int, list[_PendingProposal]] = {}
        self._reads: dict[bytes, _PendingRead] = {}
        self._read_ids = itertools.count(1)
        # Results of the round being applied, answered in finish().
        self._settled: list[tuple[int, int, list[kv_pb2.CommandResult] | None]] = []

    def __repr__(self) -> str:
        return f"Peer(group={self.group_id}, node={self.node_id}, {self.raw.raft!r})"

    # -- callers ---------------------------------------------------------------

    def propose(self, command: kv_pb2.Command) -> asyncio.Future[kv_pb2.CommandResult]:
        """Append ``command`` to the log; the future settles once its index is applied."""
        check_command(command)
        command.stamp = stamp_now(self.options.clock())
        try:
            index, term = self.raw.propose(command.SerializeToString())
        except ProposalDropped as dropped:
            raise NotLeader(self.group_id, dropped.leader_id) from dropped
        loop = asyncio.get_running_loop()
        future: asyncio.Future[kv_pb2.CommandResult] = loop.create_future()
        self._proposals.setdefault(index, []).append(_PendingProposal(term, [future], loop.time()))
        return future

    def propose_many(
        self, commands: Sequence[kv_pb2.Command]
    ) -> list[asyncio.Future[kv_pb2.CommandResult]]:
        """Append ``commands`` in as few entries as fit; one future per command.

        All are checked first, then every entry is appended at once
        (``propose_batch``): either all are proposed or ``NotLeader`` is raised.
        """
        stamp = stamp_now(self.options.clock())
        for command in commands:
            check_command(command)
            if command.HasField("ring") or command.batch:
                raise InvalidArgument("node-internal commands are proposed alone")
            command.stamp = stamp
        chunks = list(_chunks(commands, self.options.max_entry_bytes))
        payloads = [
            chunk[0].SerializeToString()
            if len(chunk) == 1
            else kv_pb2.Command(batch=chunk).SerializeToString()
            for chunk in chunks
        ]
        try:
            first, term = self.raw.propose_batch(payloads)
        except ProposalDropped as dropped:
            raise NotLeader(self.group_id, dropped.leader_id) from dropped
        loop = asyncio.get_running_loop()
        proposed_at = loop.time()
        futures: list[asyncio.Future[kv_pb2.CommandResult]] = []
        for index, chunk in enumerate(chunks, start=first):
            chunk_futures = [loop.create_future() for _ in chunk]
            self._proposals.setdefault(index, []).append(
                _PendingProposal(term, chunk_futures, proposed_at)
            )
            futures.extend(chunk_futures)
        return futures

    def propose_conf_change(self, change: ConfChange) -> asyncio.Future[kv_pb2.CommandResult]:
        """Append a membership change; the future settles (empty result) once it applied."""
        try:
            index, term = self.raw.propose_conf_change(change)
        except ProposalDropped as dropped:
            if dropped.leader_id == self.node_id:
                raise ProposalFailed(str(dropped)) from dropped  # the leader refused it
            raise NotLeader(self.group_id, dropped.leader_id) from dropped
        loop = asyncio.get_running_loop()
        future: asyncio.Future[kv_pb2.CommandResult] = loop.create_future()
        self._proposals.setdefault(index, []).append(_PendingProposal(term, [future], loop.time()))
        return future

    def read_barrier(self) -> asyncio.Future[None]:
        """§6.4: settles once this replica may serve a linearizable read.

        Beyond the read index (the commit index), the read also waits for every
        entry the log held when it began: those were proposed (and stamped)
        before the read, so a write the read does not see has a stamp, and a
        revision, above the read's start (shardkv.revisions: what keeps a
        later read from missing an earlier revision). It costs a read at
        most the commit of the writes in flight.
        """
        context = next(self._read_ids).to_bytes(8, "big")
        floor = self.raw.raft.log.last_index()
        try:
            self.raw.read_index(context)
        except ProposalDropped as dropped:
            raise NotLeader(self.group_id, dropped.leader_id) from dropped
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reads[context] = _PendingRead(future, floor)
        return future

    # -- the round ---------------------------------------------------------------

    def take_ready(self, raft_batch: Batch) -> Ready | None:
        self._maybe_snapshot(raft_batch)
        if not self.raw.has_ready():
            return None
        ready = self.raw.ready()
        if ready.snapshot is not None:
            failpoint("snapshot.install")
            # The log it replaces, the image and the applied index change in
            # one write: a crash between them would leave applied behind a
            # log that no longer holds what lies between.
            metadata = ready.snapshot.metadata
            self.storage.stage_snapshot(raft_batch, metadata, ready.snapshot.data)
            stage_install_snapshot_data(
                self._engine, raft_batch, self.group_id, ready.snapshot.data
            )
            self.storage.stage_applied(raft_batch, metadata.index, metadata.conf_state)
        if ready.entries:
            self.storage.stage_append(raft_batch, ready.entries)
        if ready.hard_state is not None:
            self.storage.stage_hard_state(raft_batch, ready.hard_state)
        return ready

    def proposal_ages(self, entries: Sequence[Entry], now: float) -> Iterator[float]:
        """How long ago this peer proposed each of ``entries`` it proposed (in this term)."""
        for entry in entries:
            for pending in self._proposals.get(entry.index, ()):
                if pending.term == entry.term:
                    yield now - pending.proposed_at

    def _maybe_snapshot(self, raft_batch: Batch) -> None:
        """Snapshot at the applied index and compact the log behind it.

        Called at the start of a round, when what the previous round applied
        is on disk, so the image matches the index exactly (GroupStorage
        requires it); it rides the round's synced batch.
        """
        snapshot_index = self.storage.snapshot_metadata().index
        if self.applied == snapshot_index or (
            self.applied - snapshot_index < self.options.snapshot_interval
            and self.log_bytes < self.options.snapshot_log_bytes
        ):
            return
        # Building an image costs as much as the group is large: wait until the
        # log holds a quarter of the last image, so that snapshot work stays
        # proportional to what is written, however large the group grows.
        if self.log_bytes < self.image_bytes // 4:
            return
        metadata = self.storage.stage_create_snapshot(raft_batch, self.applied, self.conf_state)
        self.image_bytes = len(self.storage.image_at(metadata.index))
        self.log_bytes = 0
        compact_to = self.applied - self.options.compaction_lag
        if compact_to >= self.storage.first_index():
            self.storage.stage_compact(raft_batch, compact_to)

    def apply(self, ready: Ready, apply_batch: Batch) -> None:
        if ready.snapshot is not None:
            # Installed and written with the Raft batch; read it afresh.
            self.machine = KeyValueStateMachine(self._engine, self.group_id)
            self.applied = ready.snapshot.metadata.index
            self.conf_state = ready.snapshot.metadata.conf_state
            self.log_bytes = 0
            self.image_bytes = len(ready.snapshot.data)
        for entry in ready.committed_entries:
            results: list[kv_pb2.CommandResult] | None = None
            if entry.type == EntryType.CONF_CHANGE:
                change = ConfChange.decode(entry.data)
                self.conf_state = self.raw.apply_conf_change(change)
                _log.info(
                    "group %d on node %d: membership change %s node %d at index %d: "
                    "voters %s, learners %s",
                    self.group_id,
                    self.node_id,
                    change.type.name,
                    change.node_id,
                    entry.index,
                    list(self.conf_state.voters),
                    list(self.conf_state.learners),
                    extra={"group_id": self.group_id, "node_id": self.node_id},
                )
            elif entry.data:
                command = kv_pb2.Command.FromString(entry.data)
                if command.batch:
                    results = [self.machine.apply(apply_batch, inner) for inner in command.batch]
                else:
                    results = [self.machine.apply(apply_batch, command)]
            self._settled.append((entry.index, entry.term, results))
            self.applied = entry.index
            self.log_bytes += len(entry.data)
        if ready.committed_entries:
            self.storage.stage_applied(apply_batch, self.applied, self.conf_state)
        for read_state in ready.read_states:
            read = self._reads.get(read_state.context)
            if read is not None:
                read.index = max(read_state.index, read.floor)

    def finish(self, ready: Ready) -> None:
        self.raw.advance(ready)
        if ready.soft_state is not None:
            was_leader = self.role == Role.LEADER
            self.role = ready.soft_state.role
            # Counted as etcd counts leader changes seen: each new known leader.
            if ready.soft_state.leader_id and ready.soft_state.leader_id != self.leader_id:
                self.leader_changes += 1
            self.leader_id = ready.soft_state.leader_id
            if was_leader and self.role != Role.LEADER:
                # Raft forgot the reads it had not confirmed.
                leader_id = ready.soft_state.leader_id
                self._fail_reads(lambda: NotLeader(self.group_id, leader_id))
            self._log_leader(ready.soft_state.leader_id, was_leader)
        for index, term, results in self._settled:
            for pending in self._proposals.pop(index, ()):
                if pending.term != term:
                    pending.fail(
                        functools.partial(
                            ProposalFailed,
                            f"another entry took index {index} of group {self.group_id}",
                        )
                    )
                elif results is not None:
                    for future, result in zip(pending.futures, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                else:  # a membership change: it took effect
                    for future in pending.futures:
                        if not future.done():
                            future.set_result(kv_pb2.CommandResult())
        self._settled.clear()
        if ready.snapshot is not None:
            # Entries a snapshot covered were never applied one by one here:
            # whether a proposal among them took effect is not known.
            for index in [index for index in self._proposals if index <= self.applied]:
                for pending in self._proposals.pop(index):
                    pending.fail(
                        functools.partial(
                            OutcomeUnknown,
                            f"group {self.group_id} caught up by a snapshot past index {index}",
                        )
                    )
        self._answer_reads()

    def _log_leader(self, leader_id: int, was_leader: bool) -> None:
        """Log this node stepping down, and each new leader once (by leader and term)."""
        term = self.raw.raft.term
        # leader_id: the leader now known (0: none), on every line.
        extra = {
            "group_id": self.group_id,
            "node_id": self.node_id,
            "term": term,
            "leader_id": leader_id,
        }
        if was_leader and self.role != Role.LEADER:
            _log.info(
                "group %d: node %d stepped down as leader in term %d",
                self.group_id,
                self.node_id,
                term,
                extra=extra,
            )
        if leader_id == NONE or (leader_id, term) == self._logged_leader:
            return
        self._logged_leader = (leader_id, term)
        if leader_id == self.node_id:
            message = "group %d: node %d became the leader in term %d"
            arguments: tuple[int, ...] = (self.group_id, self.node_id, term)
        else:
            message = "group %d: node %d follows leader node %d in term %d"
            arguments = (self.group_id, self.node_id, leader_id, term)
        _log.info(message, *arguments, extra=extra)

    def _answer_reads(self) -> None:
        for context, read in list(self._reads.items()):
            if read.future.done():
                del self._reads[context]
            elif read.index is not None and self.applied >= read.index:
                del self._reads[context]
                read.future.set_result(None)

    def _fail_reads(self, error: Callable[[], Exception]) -> None:
        for read in self._reads.values():
            if not read.future.done():
                read.future.set_exception(error())
        self._reads.clear()

    def stop(self) -> None:
        """The node is stopping: nobody will settle what is pending."""
        for pendings in self._proposals.values():
            for pending in pendings:
                pending.fail(
                    lambda: OutcomeUnknown(
                        f"the node stopped before group {self.group_id} applied it"
                    )
                )
        self._proposals.clear()
        self._fail_reads(lambda: OutcomeUnknown("the node stopped"))


def _chunks(commands: Sequence[kv_pb2.Command], max_bytes: int) -> Iterator[list[kv_pb2.Command]]:
    """Consecutive runs of ``commands`` of at most ``max_bytes`` each (at least one command)."""
    chunk: list[kv_pb2.Command] = []
    size = 0
    for command in commands:
        command_size = command.ByteSize()
        if chunk and size + command_size > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(command)
        size += command_size
    if chunk:
        yield chunk
