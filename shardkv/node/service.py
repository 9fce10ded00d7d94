"""The node's gRPC service (``shardkv.v1.Node``): KV operations on its groups.

``NodeService`` answers from the node's ``NodeRuntime``. The one place where
shardkv's errors become gRPC answers:

- routing errors travel in the response body as ``GroupError``: NOT_LEADER
  (with the leader's id and address, when known) and UNKNOWN_GROUP, so the
  router refreshes its cache and retries without parsing strings;
- ``InvalidArgument`` (an empty or oversized key, ...) is INVALID_ARGUMENT;
- ``ProposalFailed`` (the write lost its place in the log: never applied) and
  ``OutcomeUnknown`` (the node stopped first) are UNAVAILABLE, each saying
  how to retry; a retry with the same (client_id, seq) is exactly-once;
- the caller's deadline is gRPC's: when it passes, the call ends with
  DEADLINE_EXCEEDED and a write may still apply (retry with the same seq).

Reads are linearizable: each waits for a ReadIndex barrier (or the leader's
lease, when enabled) and then reads the applied state. A read of a key the
group's applied ring gives another group answers WRONG_GROUP (writes get it
in their ``CommandResult``, decided when they apply). Scans return one page
at a time and say whether more may follow. A read or write all of whose keys
the group imports and does not serve yet (their move switching over: the
router came on the source's word) is held by the leader until the move is
active, at most ``IMPORT_HOLD`` (``_until_served``). Reads and scans also return the
transaction locks on the keys they cover: the value read is the one before
that transaction, current only while it has not committed, which the router
finds out from the transaction's primary (``router.txn``).

``Export`` streams a move's chunks from the source's leader
(``shardkv.node.export``); a scan that finds nothing to send for
``EXPORT_HEARTBEAT`` sends an empty chunk, so the driver can take a stream
silent for much longer for a source paused or cut off, rather than wait on it
for ever.

``WriteBatch`` is the router's path: many commands for one group in one
call, all proposed before the next round (so they share its fsync and its
messages), each answered on its own. Commands carrying a ``ring`` are the
node's own and are refused from callers, and so is any write to the meta
group: its nodes change the cluster map in-process (``ClusterAgent``), and
a caller's write there could replace the map with bytes no node can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, NoReturn

import grpc

from shardkv.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotLeader,
    OutcomeUnknown,
    ProposalFailed,
    ShardKVError,
    UnknownGroup,
)
from shardkv.fsm.kv import KeyValueStateMachine
from shardkv.fsm.migration import Access
from shardkv.leases import LeaseRecord, LeaseState, lease_key
from shardkv.limits import check_command, check_key
from shardkv.node.config import META_GROUP_ID
from shardkv.node.export import export_steps
from shardkv.node.leases import LeaseDeadlines
from shardkv.node.membership import reconfigure
from shardkv.node.runtime import NodeRuntime
from shardkv.node.watch import watch_group
from shardkv.raft import Role
from shardkv.revisions import commit_wait_seconds
from shardkv.txn_protocol import now_ms
from shardkv.v1 import kv_pb2, node_pb2, node_pb2_grpc

if TYPE_CHECKING:
    from shardkv.node.cluster import ClusterAgent

__all__ = ["DEFAULT_SCAN_PAGE", "EXPORT_HEARTBEAT", "NodeService", "txn_listing"]

DEFAULT_SCAN_PAGE = 1000
_log = logging.getLogger(__name__)

# The longest a write waits for this node's clock to pass its revision's time
# (past it, real-time order across groups is given up for that write, and logged).
COMMIT_WAIT_CAP = 0.5

# How far ahead of this node's clock a prepare's lock deadline may be: a lock
# that never expires would block its keys forever if its coordinator died.
# Generous: the deadline is on the coordinator's clock, which may run ahead.
MAX_LOCK_AHEAD_MS = 60 * 60 * 1000

# The longest a leader holds a request for a key it imports and does not serve
# yet, waiting for its move's activation (``NodeService._until_served``); a
# switch takes a few rounds, about 100-200 ms on a loaded 2-core machine.
IMPORT_HOLD = 1.0
_HOLD_RECHECK = 0.1
# The longest an export scans without sending: then an empty chunk goes, so a
# stream silent for long (``NodeGroupCalls.export``) is a source paused or cut off.
EXPORT_HEARTBEAT = 1.0
_MAX_SCAN_PAGE = 10_000


class NodeService(node_pb2_grpc.NodeServicer):
    def __init__(
        self,
        runtime: NodeRuntime,
        addresses: Mapping[int, str],
        agent: ClusterAgent | None = None,
        leases: LeaseDeadlines | None = None,
    ) -> None:
        self.runtime = runtime
        self.addresses = dict(addresses)
        self.agent = agent
        self.leases = leases if leases is not None else LeaseDeadlines()
        # Per group, an event set when it next applies entries (_until_served).
        self._applied: dict[int, asyncio.Event] = {}
        self._listening: set[int] = set()

    # -- errors --------------------------------------------------------------------

    async def _routing_error(
        self,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
        error: ShardKVError,
    ) -> node_pb2.GroupError:
        """The routing error to answer with; any other error ends the call."""
        group_error = self._group_error(error)
        if group_error is None:
            await self._abort(context, error)
        return group_error

    def _group_error(self, error: ShardKVError) -> node_pb2.GroupError | None:
        if isinstance(error, NotLeader):
            return node_pb2.GroupError(
                not_leader=node_pb2.NotLeader(
                    group_id=error.group_id,
                    leader_id=error.leader_id,
                    leader_address=self.addresses.get(error.leader_id, ""),
                )
            )
        if isinstance(error, UnknownGroup):
            return node_pb2.GroupError(unknown_group=node_pb2.UnknownGroup(group_id=error.group_id))
        return None

    async def _abort(self, context: grpc.aio.ServicerContext, error: ShardKVError) -> NoReturn:  # type: ignore[type-arg]
        if isinstance(error, InvalidArgument):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if isinstance(error, FailedPrecondition):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        if isinstance(error, ProposalFailed):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{error}; it was not applied: retry")
        if isinstance(error, OutcomeUnknown):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{error}; it may still apply: retry with the same client_id and seq",
            )
        await context.abort(grpc.StatusCode.INTERNAL, str(error))
        raise AssertionError("unreachable")  # abort raises

    # -- KV ---------------------------------------------------------------------------

    async def Write(
        self,
        request: node_pb2.WriteRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.WriteResponse:
        try:
            _refuse_meta(request.group_id)
            _refuse_internal(request.command)
            if self._leader_machine(request.group_id, lambda m: m.importing(request.command)):
                check_command(request.command)  # refused now, not after the wait
                await self._until_served(
                    request.group_id,
                    lambda m: m.importing(request.command, every=False),
                    context,
                )
            future = self.runtime.propose(request.group_id, request.command)
            result = await future
        except ShardKVError as error:
            return node_pb2.WriteResponse(error=await self._routing_error(context, error))
        await _commit_wait(result.revision)
        return node_pb2.WriteResponse(result=result)

    async def WriteBatch(
        self,
        request: node_pb2.WriteBatchRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.WriteBatchResponse:
        try:
            _refuse_meta(request.group_id)
            for command in request.commands:
                _refuse_internal(command)
            if request.commands and self._leader_machine(
                request.group_id, lambda m: all(m.importing(c) for c in request.commands)
            ):
                # Every key of every command is one this group is about to serve
                # (a router sends those alone): in once it does, see _until_served.
                for command in request.commands:
                    check_command(command)  # refused now, not after the wait
                await self._until_served(
                    request.group_id,
                    lambda m: any(m.importing(c, every=False) for c in request.commands),
                    context,
                )
            # Commands that would only be refused for a lock are answered so
            # at once: under contention, waiting writers poll, and each poll
            # through the log would cost a Raft round.
            peer = self.runtime.peer(request.group_id)
            held = [
                peer.machine.lock_against(command) if peer.role == Role.LEADER else None
                for command in request.commands
            ]
            proposed = [c for c, lock in zip(request.commands, held, strict=True) if lock is None]
            futures = iter(
                self.runtime.propose_many(request.group_id, proposed) if proposed else []
            )
        except InvalidArgument as error:
            await self._abort(context, error)
        except ShardKVError as error:
            return node_pb2.WriteBatchResponse(error=await self._routing_error(context, error))
        response = node_pb2.WriteBatchResponse()
        for lock in held:
            outcome = response.outcomes.add()
            if lock is not None:
                outcome.result.locked.CopyFrom(lock)
                outcome.result.revision = peer.machine.revision
                continue
            try:
                outcome.result.CopyFrom(await next(futures))
            except ShardKVError as error:
                outcome.code, outcome.message = _unavailable(error)
        await _commit_wait(max((o.result.revision for o in response.outcomes), default=0))
        return response

    def _leader_machine(
        self, group_id: int, waiting: Callable[[KeyValueStateMachine], bool]
    ) -> bool:
        """Whether this node leads ``group_id`` and ``waiting`` holds for its state."""
        peer = self.runtime.peers.get(group_id)
        return peer is not None and peer.role == Role.LEADER and waiting(peer.machine)

    async def _until_served(
        self,
        group_id: int,
        waiting: Callable[[KeyValueStateMachine], bool],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> None:
        """Wait while this node leads ``group_id`` and ``waiting`` says a key of the
        request is one the group imports and does not serve yet, at most
        ``IMPORT_HOLD`` seconds and half the caller's time left.

        Such a request comes when the key's move switches over: its source
        sealed the key and named this group (``moved_to``), and the router came
        here before the activation applied. Refused at once, it would go back
        to the router and come again after a backoff, each time a trip through
        a node that may be busy copying; held here, it goes into the log as
        soon as the activation has applied. Applying still decides whether it
        is served: after the hold the request is proposed as it is. Only a
        request all of whose keys wait is held (the router sends those alone):
        a batch that also carries keys served now is answered as before, not
        held with them.
        """
        loop = asyncio.get_running_loop()
        hold = IMPORT_HOLD
        remaining = context.time_remaining()
        if remaining is not None:
            hold = min(hold, remaining / 2)
        until = loop.time() + hold
        while (left := until - loop.time()) > 0:
            if not self._leader_machine(group_id, waiting):
                return
            applied = self._applied_event(group_id)
            with contextlib.suppress(TimeoutError):
                # Woken by entries applied; a lead lost without any is seen
                # within _HOLD_RECHECK.
                async with asyncio.timeout(min(left, _HOLD_RECHECK)):
                    await applied.wait()

    def _applied_event(self, group_id: int) -> asyncio.Event:
        """An event set the next time ``group_id`` applies entries here."""
        if group_id not in self._listening:
            self._listening.add(group_id)
            self.runtime.on_applied(group_id, lambda: self._applied_now(group_id))
        event = self._applied.get(group_id)
        if event is None:
            event = self._applied[group_id] = asyncio.Event()
        return event

    def _applied_now(self, group_id: int) -> None:
        event = self._applied.pop(group_id, None)
        if event is not None:  # someone waits: the next one is made when asked for
            event.set()

    async def _read_barrier(
        self,
        group_id: int,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.GroupError | None:
        try:
            await self.runtime.read_barrier(group_id)
        except ShardKVError as error:
            return await self._routing_error(context, error)
        return None

    async def Read(
        self,
        request: node_pb2.ReadRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.ReadResponse:
        try:
            for key in request.keys:
                check_key(key)
        except InvalidArgument as error:
            await self._abort(context, error)

        if self._leader_machine(request.group_id, lambda m: m.migration.importing(request.keys)):
            await self._until_served(
                request.group_id,
                lambda m: m.migration.importing(request.keys, every=False),
                context,
            )
        group_error = await self._read_barrier(request.group_id, context)
        if group_error is not None:
            return node_pb2.ReadResponse(error=group_error)
        machine = self.runtime.peer(request.group_id).machine
        for key in request.keys:
            wrong_group = machine.wrong_group(key)
            if wrong_group is not None:
                return node_pb2.ReadResponse(error=node_pb2.GroupError(wrong_group=wrong_group))
        found = (machine.get(key) for key in request.keys)
        response = node_pb2.ReadResponse(kvs=[kv for kv in found if kv is not None])
        locks = machine.txns.locks
        if locks:
            response.locks.extend(locks[key] for key in request.keys if key in locks)
        return response

    async def Scan(
        self,
        request: node_pb2.ScanRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.ScanResponse:
        if request.limit > _MAX_SCAN_PAGE:
            await self._abort(
                context,
                InvalidArgument(
                    f"limit {request.limit} is over the page size of {_MAX_SCAN_PAGE}: "
                    "page with smaller limits"
                ),
            )
        group_error = await self._read_barrier(request.group_id, context)
        if group_error is not None:
            return node_pb2.ScanResponse(error=group_error)
        page = request.limit or DEFAULT_SCAN_PAGE
        machine = self.runtime.peer(request.group_id).machine
        in_transit = machine.scan_refusal(request.epoch, request.groups)
        if in_transit is not None:
            return node_pb2.ScanResponse(error=node_pb2.GroupError(wrong_group=in_transit))
        prefix = request.prefix if request.HasField("prefix") else None
        end = request.end or None
        kvs: list[kv_pb2.KeyValue] = list(
            machine.scan(request.start, end, prefix=prefix, limit=page + 1)
        )
        more = len(kvs) > page
        response = node_pb2.ScanResponse(kvs=kvs[:page], more=more)
        locks = machine.txns.locks
        if locks:
            # The page covers [start, last key] (or the whole range when complete).
            low = prefix if prefix is not None else request.start
            high = kvs[page - 1].key if more else None
            for key, lock in sorted(locks.items()):
                if key < low or (high is not None and key > high):
                    continue
                if prefix is not None and not key.startswith(prefix):
                    continue
                if prefix is None and end is not None and key >= end:
                    continue
                response.locks.append(lock)
        return response

    async def ListTxns(
        self,
        request: node_pb2.ListTxnsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.ListTxnsResponse:
        group_error = await self._read_barrier(request.group_id, context)
        if group_error is not None:
            return node_pb2.ListTxnsResponse(error=group_error)
        machine = self.runtime.peer(request.group_id).machine
        if request.key:
            wrong_group = machine.wrong_group(request.key, Access.DECIDE)
            if wrong_group is not None:
                return node_pb2.ListTxnsResponse(error=node_pb2.GroupError(wrong_group=wrong_group))
        if request.HasField("txn"):
            return txn_listing(machine, request.txn)
        txns = machine.txns
        return node_pb2.ListTxnsResponse(prepared=txns.prepared(), records=txns.records())

    async def Lease(
        self,
        request: node_pb2.LeaseRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.LeaseResponse:
        group_error = await self._read_barrier(request.group_id, context)
        if group_error is not None:
            return node_pb2.LeaseResponse(error=group_error)
        peer = self.runtime.peer(request.group_id)
        if peer.role != Role.LEADER:  # deadlines are the leader's
            error = NotLeader(request.group_id, peer.leader_id)
            return node_pb2.LeaseResponse(error=await self._routing_error(context, error))
        key = lease_key(request.lease_id)
        wrong_group = peer.machine.wrong_group(key)
        if wrong_group is not None:
            return node_pb2.LeaseResponse(error=node_pb2.GroupError(wrong_group=wrong_group))
        kv = peer.machine.get(key)
        record = LeaseRecord.of(kv.value if kv is not None else None)
        if kv is None or record is None or record.state != LeaseState.ALIVE:
            return node_pb2.LeaseResponse(found=False)
        left = self.leases.touch(peer, request.lease_id, kv.value, record.ttl, request.renew)
        if left is None:
            return node_pb2.LeaseResponse(found=False)
        return node_pb2.LeaseResponse(
            found=True, ttl=record.ttl, remaining_ms=max(0, int(left * 1000))
        )

    async def Watch(
        self,
        request: node_pb2.WatchRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[node_pb2.WatchBatch]:
        async def group_error(error: ShardKVError) -> node_pb2.GroupError:
            return await self._routing_error(context, error)

        async for batch in watch_group(self.runtime, request, group_error):
            yield batch

    # -- status ------------------------------------------------------------------------

    async def Status(
        self,
        request: node_pb2.StatusRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.StatusResponse:
        stats = self.runtime.stats
        response = node_pb2.StatusResponse(
            node_id=self.runtime.node_id,
            counters=node_pb2.RuntimeCounters(
                rounds=stats.rounds,
                synced_writes=stats.synced_writes,
                unsynced_writes=stats.unsynced_writes,
                messages_sent=stats.messages_sent,
                messages_stepped=stats.messages_stepped,
                entries_applied=stats.entries_applied,
            ),
        )
        for group_id, peer in sorted(self.runtime.peers.items()):
            status = peer.raw.status()
            response.groups.append(
                node_pb2.GroupStatus(
                    group_id=group_id,
                    role=status.role.name.lower(),
                    leader_id=status.leader_id,
                    term=status.term,
                    commit=status.commit,
                    applied=peer.applied,
                    first_index=status.first_index,
                    last_index=status.last_index,
                    key_count=peer.machine.key_count,
                    voters=list(status.conf_state.voters),
                    learners=list(status.conf_state.learners),
                    epoch=peer.machine.epoch,
                )
            )
        return response

    async def GetClusterMap(
        self,
        request: node_pb2.GetClusterMapRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.GetClusterMapResponse:
        response = node_pb2.GetClusterMapResponse(node_id=self.runtime.node_id)
        if self.agent is not None and self.agent.map is not None:
            response.map.CopyFrom(self.agent.map)
        return response

    async def Join(
        self,
        request: node_pb2.JoinRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.JoinResponse:
        if request.node_id <= 0 or not request.address:
            await self._abort(context, InvalidArgument("a joining node needs an id and an address"))
        if self.agent is None:
            await self._abort(context, UnknownGroup(0))
        assert self.agent is not None
        try:
            cluster_map = await self.agent.add_node(
                request.node_id, request.address, request.cluster_id
            )
        except ShardKVError as error:
            return node_pb2.JoinResponse(error=await self._routing_error(context, error))
        return node_pb2.JoinResponse(map=cluster_map)

    # -- ring changes ------------------------------------------------------------------

    async def ChangeRing(
        self,
        request: node_pb2.ChangeRingRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.ChangeRingResponse:
        if self.agent is None:
            await self._abort(context, UnknownGroup(0))
        assert self.agent is not None
        try:
            cluster_map = await self.agent.change_ring(request)
        except ShardKVError as error:
            return node_pb2.ChangeRingResponse(error=await self._routing_error(context, error))
        return node_pb2.ChangeRingResponse(map=cluster_map)

    async def ChangePlacement(
        self,
        request: node_pb2.ChangePlacementRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.ChangePlacementResponse:
        if self.agent is None:
            await self._abort(context, UnknownGroup(0))
        assert self.agent is not None
        try:
            cluster_map = await self.agent.change_placement(request)
        except ShardKVError as error:
            return node_pb2.ChangePlacementResponse(error=await self._routing_error(context, error))
        return node_pb2.ChangePlacementResponse(map=cluster_map)

    async def Reconfigure(
        self,
        request: node_pb2.ReconfigureRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.ReconfigureResponse:
        try:
            return await reconfigure(self.runtime, request)
        except ShardKVError as error:
            return node_pb2.ReconfigureResponse(error=await self._routing_error(context, error))

    async def Export(
        self,
        request: node_pb2.ExportRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[node_pb2.ExportChunk]:
        """The source side of a move (``shardkv.node.export``), at the group's leader."""
        group_error = await self._read_barrier(request.group_id, context)
        if group_error is not None:
            yield node_pb2.ExportChunk(error=group_error)
            return
        peer = self.runtime.peer(request.group_id)
        machine = peer.machine
        state = machine.migration.state
        if state is None or state.epoch != request.epoch or request.target not in state.outgoing:
            await self._abort(
                context,
                FailedPrecondition(
                    f"group {request.group_id} has no move to group {request.target} in the "
                    f"migration to epoch {request.epoch}"
                ),
            )
        # Read together, with no await between: the export's moment.
        revision, key_count = machine.revision, machine.key_count
        frozen = machine.migration.frozen(request.target)
        sent = False
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        for chunk in export_steps(machine, request):
            if chunk is not None or loop.time() - sent_at >= EXPORT_HEARTBEAT:
                # A chunk, or an empty one after a long scan found none: the
                # caller tells a source that scans from one that went silent.
                sent, sent_at = True, loop.time()
                yield node_pb2.ExportChunk(
                    data=chunk, revision=revision, key_count=key_count, frozen=frozen
                )
            else:
                await asyncio.sleep(0)  # a long scan lets the node's rounds run
            # The rounds that ran meanwhile may have dropped this replica (moved
            # away): its keys would read as deleted. The driver exports again.
            if self.runtime.peers.get(request.group_id) is not peer:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"group {request.group_id} left node {self.runtime.node_id} during the "
                    "export: export again at its leader",
                )
        if not sent:
            yield node_pb2.ExportChunk(revision=revision, key_count=key_count, frozen=frozen)


def txn_listing(machine: KeyValueStateMachine, txn: kv_pb2.TxnRef) -> node_pb2.ListTxnsResponse:
    """One transaction in a group's applied state: its prepare, its record, its client's floor.

    Read at once (no await), so the three come from one applied state.
    """
    prepared, record = machine.txns.find(txn)
    response = node_pb2.ListTxnsResponse(session_floor=machine.session_floor(txn.client_id))
    if prepared is not None:
        response.prepared.append(prepared)
    if record is not None:
        response.records.append(record)
    return response


async def _commit_wait(revision: int) -> None:
    """Answer a write only once this node's clock passed its revision's time
    (shardkv.revisions: what keeps revisions in real-time order across groups).

    Almost always no wait: a group's time runs ahead of the clock only while it
    writes faster than a command a microsecond, or after a leader with a clock
    ahead. The wait is capped (COMMIT_WAIT_CAP): a clock that far behind is
    logged rather than slowing every write by it.
    """
    delay = commit_wait_seconds(revision, time.time())
    if delay <= 0:
        return
    if delay > COMMIT_WAIT_CAP:
        _log.warning(
            "revision %d is %.3f s ahead of this node's clock: is it behind the other nodes'?",
            revision,
            delay,
        )
        delay = COMMIT_WAIT_CAP
    await asyncio.sleep(delay)


def _refuse_meta(group_id: int) -> None:
    if group_id == META_GROUP_ID:
        raise InvalidArgument(
            f"group {group_id} is the meta group: the cluster map changes only through Join, "
            "ChangeRing and ChangePlacement; write keys through a router"
        )


def _refuse_internal(command: kv_pb2.Command) -> None:
    if command.HasField("ring") or command.batch:
        raise InvalidArgument(
            "ring and batch commands are the node's own; a caller cannot send one"
        )
    if command.txn.WhichOneof("kind") == "prepare":
        ahead = command.txn.prepare.deadline_ms - now_ms()
        if ahead > MAX_LOCK_AHEAD_MS:
            raise InvalidArgument(
                f"a prepare's deadline_ms may be at most {MAX_LOCK_AHEAD_MS} ms ahead of this "
                f"node's clock, not {ahead}: its locks would outlive any coordinator (a "
                "router's TTL is seconds); if it is the router's clock that runs ahead, fix it"
            )


def _unavailable(error: ShardKVError) -> tuple[int, str]:
    """A per-command outcome for an error after proposing: UNAVAILABLE and how to retry."""
    code = grpc.StatusCode.UNAVAILABLE.value[0]
    if isinstance(error, ProposalFailed):
        return code, f"{error}; it was not applied: retry"
    if isinstance(error, OutcomeUnknown):
        return code, f"{error}; it may still apply: retry with the same client_id and seq"
    if isinstance(error, NotLeader):
        return code, f"{error}; it was not proposed: retry"
    return grpc.StatusCode.INTERNAL.value[0], str(error)
