"""The background resolver: a node finishes the transactions whose coordinator went quiet.

A router that dies in the middle of a two-phase commit leaves locks in its
participants (and perhaps a record at the primary that nobody finishes).
Readers and writers that meet such a lock settle it, but keys nobody touches
would stay locked for ever. So every node runs a ``TxnResolver``; every
``interval`` seconds, for each data group this node leads:

1. every lock whose deadline has passed (by this node's clock) is settled
   (``settle_lock``: the primary's record, or ABORTED written there first,
   then this group finished as the record says);
2. every record this group keeps as a primary that is not finished and whose
   deadline has passed is driven to the end (``finish_everywhere``: every
   participant finished, then the record marked forgettable).

Both follow ``shardkv.txn_protocol``, the protocol the router follows, and
every step is a transaction step that is idempotent in the state machine
(decide writes only if no record exists, finish and forget are no-ops the
second time), so the resolver may race a live router, a reader, or the
resolver of another node and still do no harm. A transaction is resolved by
one task at a time on this node, at most ``max_in_flight`` at once (the
oldest deadlines first); one that fails is retried on a later pass, after a
back-off that grows with each failure, so a primary that cannot be reached
does not hold the others up. Failures are logged and never end the loop.
Outcomes and failures are counted in the runtime's metrics
(``shardkv_resolver_txns_resolved_total{outcome}``,
``shardkv_resolver_failures_total``).

The failpoint ``txn.resolver`` fires after the record at the primary is
known and before this group is finished (``shardkv.failpoints``).

``NodeGroupCalls`` is the node's side of ``GroupCalls``: the ring comes from
the cluster map this node knows; a command or a read of a group this node
leads runs here (the read after a ReadIndex barrier), anything else goes by
gRPC (``Node.Write``, ``Node.ListTxns``) to the group's leader, found from
the local replica's view or the map's replicas, following NOT_LEADER hints
and retrying UNAVAILABLE with back-off, for at most ``timeout`` seconds.
Retrying is safe for the same reason as above: transaction steps are
idempotent. An export (``NodeGroupCalls.export``, the driver's stream of a
move's chunks) that sends nothing for ``_CHUNK_TIMEOUT`` fails: a source
that scans sends an empty chunk every ``EXPORT_HEARTBEAT``, so such a
stream is one to a paused process or behind a dropping network, which would
otherwise hold the driver's step for as long as TCP keeps the connection.
The channels run without gRPC's bandwidth-delay probing
(``_CHANNEL_OPTIONS``): an export stream's window stays at HTTP/2's 64 KiB,
so its source scans about two chunks ahead of the driver, not as far as a
window grown to megabytes lets it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import grpc.aio

from shardkv.errors import NotLeader, OutcomeUnknown, ProposalFailed, UnknownGroup
from shardkv.failpoints import failpoint
from shardkv.fsm.migration import Access
from shardkv.node.cluster import META_GROUP
from shardkv.node.membership import reconfigure
from shardkv.node.passes import Passes
from shardkv.node.runtime import NodeRuntime
from shardkv.node.service import EXPORT_HEARTBEAT, txn_listing
from shardkv.raft import Role
from shardkv.ring import Routing
from shardkv.tls import TlsMaterial, open_channel
from shardkv.txn_protocol import finish_everywhere, now_ms, settle_lock, txn_name
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, node_pb2_grpc

__all__ = ["DEFAULT_INTERVAL", "NodeGroupCalls", "TxnResolver"]

_log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5
_MAX_IN_FLIGHT = 64
_CALL_TIMEOUT = 5.0
_ATTEMPT_TIMEOUT = 2.0
# The longest an export stream goes without a chunk: a source that scans sends
# an empty one every EXPORT_HEARTBEAT, so one silent for this long is paused or
# cut off (a TCP connection to a peer behind a dropping firewall stays open for
# many minutes), and the driver's step fails and starts over, not waits.
_CHUNK_TIMEOUT = 10 * EXPORT_HEARTBEAT
# No bandwidth-delay probing: an export stream's receive window stays at HTTP/2's
# 64 KiB and its source scans about two chunks ahead of the driver. With probing
# the window grew to megabytes, and in a move held to 10,000 keys/s each source
# had scanned 36,000-40,000 moving keys (9-10 chunks) within 2.7 s while the
# driver had taken 4,000-12,000: the writes sharing the cores waited behind those
# scans (the longest put in a move's first 2 s, 3 runs each: 1.2-2.1 s, against
# 0.4-0.6 s without probing). The other calls on these channels are small.
_CHANNEL_OPTIONS = (("grpc.http2.bdp_probe", 0),)
_FIRST_BACKOFF = 0.02
_MAX_BACKOFF = 0.5
# A transaction that failed to resolve waits this long times 2**failures, up to the cap.
_RETRY_BASE = 1.0
_RETRY_CAP = 30.0

_T = TypeVar("_T")
_TxnKey = tuple[int, int]
ClusterMapSource = Callable[[], cluster_pb2.ClusterMap | None]


class _Silent(Exception):
    """An export stream sent nothing for ``_CHUNK_TIMEOUT``."""


async def _next_chunk(
    stream: grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    chunks: AsyncIterator[node_pb2.ExportChunk],
) -> node_pb2.ExportChunk | None:
    """The stream's next chunk (None at its end); ``_Silent`` if none comes in time."""
    try:
        async with asyncio.timeout(_CHUNK_TIMEOUT):
            return await anext(chunks, None)
    except TimeoutError:
        stream.cancel()
        raise _Silent from None


def _backoff(attempt: int) -> float:
    return min(_MAX_BACKOFF, _FIRST_BACKOFF * (1 << min(attempt, 10))) * random.uniform(0.5, 1.0)


class NodeGroupCalls:
    """``GroupCalls`` for a node: here when this node leads the group, else to its leader."""

    def __init__(
        self,
        runtime: NodeRuntime,
        cluster_map: ClusterMapSource,
        *,
        timeout: float = _CALL_TIMEOUT,
        tls: TlsMaterial | None = None,
    ) -> None:
        self.runtime = runtime
        self.cluster_map = cluster_map
        self.timeout = timeout
        self._tls = tls
        self._ring: tuple[cluster_pb2.ClusterMap, Routing] | None = None
        self._leaders: dict[int, int] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closed = False

    async def close(self) -> None:
        """Close the channels; closing twice is harmless."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)

    # -- GroupCalls ------------------------------------------------------------------

    def group_for(self, key: bytes) -> int:
        return self._key_ring().group_for(key)

    async def propose(self, group_id: int, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        """The command's result. A refusal as WRONG_GROUP (a key moving, frozen for
        its switch) is retried at this group until ``timeout`` passes; a key that
        moved for good keeps being refused, and the caller, which re-resolves its
        groups on its next pass (``group_for``), sends it to the new owner then."""

        async def here() -> kv_pb2.CommandResult:
            return _owned(group_id, await self.runtime.propose(group_id, command))

        request = node_pb2.WriteRequest(group_id=group_id, command=command)

        async def there(
            stub: node_pb2_grpc.NodeStub, timeout: float
        ) -> tuple[node_pb2.GroupError | None, kv_pb2.CommandResult]:
            response: node_pb2.WriteResponse = await stub.Write(request, timeout=timeout)
            if response.HasField("error"):
                return response.error, response.result
            return None, _owned(group_id, response.result)

        return await self._call(group_id, here, there)

    async def find(
        self, group_id: int, txn: kv_pb2.TxnRef, key: bytes = b""
    ) -> node_pb2.ListTxnsResponse:
        async def here() -> node_pb2.ListTxnsResponse:
            await self.runtime.read_barrier(group_id)
            machine = self.runtime.peer(group_id).machine
            if key and machine.wrong_group(key, Access.DECIDE) is not None:
                raise ProposalFailed(f"group {group_id} does not keep the records of {key!r} now")
            return txn_listing(machine, txn)

        request = node_pb2.ListTxnsRequest(group_id=group_id, txn=txn, key=key)

        async def there(
            stub: node_pb2_grpc.NodeStub, timeout: float
        ) -> tuple[node_pb2.GroupError | None, node_pb2.ListTxnsResponse]:
            response: node_pb2.ListTxnsResponse = await stub.ListTxns(request, timeout=timeout)
            return (response.error if response.HasField("error") else None), response

        return await self._call(group_id, here, there)

    async def reconfigure(
        self, request: node_pb2.ReconfigureRequest
    ) -> node_pb2.ReconfigureResponse:
        """One membership change at the group's leader (``shardkv.node.membership``)."""

        async def here() -> node_pb2.ReconfigureResponse:
            return await reconfigure(self.runtime, request)

        async def there(
            stub: node_pb2_grpc.NodeStub, timeout: float
        ) -> tuple[node_pb2.GroupError | None, node_pb2.ReconfigureResponse]:
            response: node_pb2.ReconfigureResponse = await stub.Reconfigure(
                request, timeout=timeout
            )
            return (response.error if response.HasField("error") else None), response

        return await self._call(request.group_id, here, there)

    async def export(self, request: node_pb2.ExportRequest) -> AsyncIterator[node_pb2.ExportChunk]:
        """The chunks of ``Node.Export`` from the group's leader (found as ``_call`` does).

        Only opening the stream is retried: once chunks came, a failure is the
        caller's to handle (it starts its step over).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        group_id = request.group_id
        target = self._first_target(group_id)
        problem = "no attempt"
        for attempt in itertools.count():
            if loop.time() >= deadline:
                break
            address = self._address(target)
            if address is None:
                problem = f"node {target} is not in the map"
                target = self._next_target(group_id, target)
                continue
            stream = self._stub(address).Export(request)
            chunks: AsyncIterator[node_pb2.ExportChunk] = stream.__aiter__()
            hint = 0
            streaming = False
            try:
                first = await _next_chunk(stream, chunks)
                if first is None:
                    return
                if first.HasField("error"):
                    error = first.error
                    hint = error.not_leader.leader_id if error.HasField("not_leader") else 0
                    problem = f"node {target}: {error}"
                    stream.cancel()
                else:
                    self._leaders[group_id] = target
                    streaming = True
                    yield first
                    while (chunk := await _next_chunk(stream, chunks)) is not None:
                        yield chunk
                    return
            except _Silent:
                if streaming:
                    raise OutcomeUnknown(
                        f"group {group_id}: node {target} sent nothing of its export for "
                        f"{_CHUNK_TIMEOUT:g} s: paused or cut off; export again"
                    ) from None
                problem = f"node {target}: no chunk in {_CHUNK_TIMEOUT:g} s"
            except grpc.aio.AioRpcError as rpc_error:
                code = rpc_error.code()
                retried = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if streaming or code not in retried:
                    raise
                problem = f"node {target}: {code.name} {rpc_error.details() or ''}".strip()
            self._leaders.pop(group_id, None)
            target = hint if hint and hint != target else self._next_target(group_id, target)
            await asyncio.sleep(min(max(0.0, deadline - loop.time()), _backoff(attempt)))
        raise OutcomeUnknown(
            f"group {group_id}: no leader exported within {self.timeout:g} s; last: {problem}"
        )

    # -- finding the leader ----------------------------------------------------------

    def _key_ring(self) -> Routing:
        cluster_map = self.cluster_map()
        if cluster_map is None:
            raise LookupError("this node knows no cluster map yet")
        if self._ring is None or self._ring[0] is not cluster_map:
            # The map object changes whenever the agent learns a newer one.
            self._ring = (cluster_map, Routing(cluster_map))
        return self._ring[1]

    def _replicas(self, group_id: int) -> list[int]:
        cluster_map = self.cluster_map()
        if cluster_map is not None:
            for group in cluster_map.groups:
                if group.group_id == group_id and group.replicas:
                    return sorted(group.replicas)
        peer = self.runtime.peers.get(group_id)
        return sorted(peer.conf_state.voters) if peer is not None else []

    def _address(self, node_id: int) -> str | None:
        cluster_map = self.cluster_map()
        for node in cluster_map.nodes if cluster_map is not None else ():
            if node.node_id == node_id:
                return node.address
        return None

    def _first_target(self, group_id: int) -> int:
        known = self._leaders.get(group_id)
        if known:
            return known
        peer = self.runtime.peers.get(group_id)
        if peer is not None:
            if peer.role == Role.LEADER:
                return self.runtime.node_id
            leader_id = peer.raw.status().leader_id
            if leader_id:
                return leader_id
        replicas = self._replicas(group_id)
        return replicas[0] if replicas else self.runtime.node_id

    def _next_target(self, group_id: int, target: int) -> int:
        replicas = self._replicas(group_id)
        if not replicas:
            return self.runtime.node_id
        if target not in replicas:
            return replicas[0]
        return replicas[(replicas.index(target) + 1) % len(replicas)]

    def _stub(self, address: str) -> node_pb2_grpc.NodeStub:
        if self._closed:
            raise OutcomeUnknown("the resolver is stopping")
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(
                address, self._tls, options=_CHANNEL_OPTIONS
            )
        return node_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]

    async def _call(
        self,
        group_id: int,
        here: Callable[[], Awaitable[_T]],
        there: Callable[
            [node_pb2_grpc.NodeStub, float], Awaitable[tuple[node_pb2.GroupError | None, _T]]
        ],
    ) -> _T:
        """Run the call at the group's leader: here, or by gRPC; retry until ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        target = self._first_target(group_id)
        problem = "no attempt"
        for attempt in itertools.count():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            hint = 0
            try:
                if target == self.runtime.node_id:
                    async with asyncio.timeout(remaining):
                        value = await here()
                else:
                    address = self._address(target)
                    if address is None:
                        raise UnknownGroup(group_id)  # not in the map: try another replica
                    error, value = await there(
                        self._stub(address), min(remaining, _ATTEMPT_TIMEOUT)
                    )
                    if error is not None:
                        if error.HasField("not_leader"):
                            raise NotLeader(group_id, error.not_leader.leader_id)
                        if error.HasField("unknown_group"):
                            raise UnknownGroup(group_id)
                        if error.HasField("wrong_group"):
                            raise ProposalFailed(
                                f"group {group_id} does not serve {error.wrong_group.key!r} now"
                            )
                        raise ProposalFailed(f"group {group_id} answered {error}")
            except NotLeader as not_leader:
                problem = f"node {target}: {not_leader}"
                hint = not_leader.leader_id
            except UnknownGroup as unknown:
                problem = f"node {target}: {unknown}"
            except (ProposalFailed, OutcomeUnknown, TimeoutError) as failed:
                problem = f"node {target}: {str(failed) or 'timed out'}"
            except grpc.aio.AioRpcError as rpc_error:
                code = rpc_error.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                problem = f"node {target}: {code.name} {rpc_error.details() or ''}".strip()
            else:
                self._leaders[group_id] = target
                return value
            self._leaders.pop(group_id, None)
            if hint and hint != target:
                target = hint  # straight to the leader the group named
                continue
            target = self._next_target(group_id, target)
            await asyncio.sleep(min(max(0.0, deadline - loop.time()), _backoff(attempt)))
        raise OutcomeUnknown(
            f"group {group_id}: no leader answered within {self.timeout:g} s; last: {problem}"
        )


def _owned(group_id: int, result: kv_pb2.CommandResult) -> kv_pb2.CommandResult:
    if result.HasField("wrong_group"):
        raise ProposalFailed(
            f"group {group_id} does not serve {result.wrong_group.key!r} now (epoch "
            f"{result.wrong_group.epoch})"
        )
    return result


@dataclass(slots=True)
class _Job:
    """What this node resolves of one transaction in one pass."""

    txn: kv_pb2.TxnRef
    deadline_ms: int
    # group -> one expired lock of the transaction there (settling one finishes the group).
    locks: dict[int, kv_pb2.LockInfo] = field(default_factory=dict)
    # (the primary group, its record), when this node leads the primary.
    record: tuple[int, kv_pb2.TxnRecord] | None = None


class TxnResolver(Passes):
    """Finishes transactions left behind by their coordinator; see the module docstring."""

    def __init__(
        self,
        runtime: NodeRuntime,
        cluster_map: ClusterMapSource,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_in_flight: int = _MAX_IN_FLIGHT,
        calls: NodeGroupCalls | None = None,
        tls: TlsMaterial | None = None,
    ) -> None:
        super().__init__(interval)
        self.runtime = runtime
        self.cluster_map = cluster_map
        self.max_in_flight = max_in_flight
        self.calls = calls if calls is not None else NodeGroupCalls(runtime, cluster_map, tls=tls)
        self._running: dict[_TxnKey, asyncio.Task[None]] = {}
        # txn -> (failures so far, loop time before which it is not retried)
        self._retry: dict[_TxnKey, tuple[int, float]] = {}

    def describe(self) -> str:
        return f"node {self.runtime.node_id}: transaction resolver"

    async def stop(self) -> None:
        """Stop passing, cancel what is in flight, close the channels; twice is harmless."""
        self.halt()
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.calls.close()

    def step(self) -> list[asyncio.Task[None]]:
        """One pass: start resolving what has expired; the tasks started (for tests)."""
        if self.stopping or self.cluster_map() is None:
            return []
        jobs = self._expired()
        now = asyncio.get_running_loop().time()
        self._retry = {key: retry for key, retry in self._retry.items() if key in jobs}
        started = []
        for key, job in sorted(jobs.items(), key=lambda item: (item[1].deadline_ms, item[0])):
            if len(self._running) >= self.max_in_flight:
                break
            if key in self._running or self._retry.get(key, (0, 0.0))[1] > now:
                continue
            task = asyncio.create_task(
                self._resolve(key, job), name=f"node-{self.runtime.node_id}-resolve-{key}"
            )
            self._running[key] = task
            task.add_done_callback(functools.partial(self._done, key))
            started.append(task)
        return started

    def _done(self, key: _TxnKey, _: asyncio.Task[None]) -> None:
        self._running.pop(key, None)

    def _expired(self) -> dict[_TxnKey, _Job]:
        """Every transaction with an expired lock or record in a group this node leads."""
        now = now_ms()
        jobs: dict[_TxnKey, _Job] = {}

        def job(txn: kv_pb2.TxnRef, deadline_ms: int) -> _Job:
            key = (txn.client_id, txn.seq)
            found = jobs.get(key)
            if found is None:
                found = jobs[key] = _Job(txn, deadline_ms)
            return found

        for group_id, peer in sorted(self.runtime.peers.items()):
            if group_id == META_GROUP or peer.role != Role.LEADER:
                continue
            transactions = peer.machine.txns
            for lock in transactions.locks.values():
                if now > lock.deadline_ms:
                    job(lock.txn, lock.deadline_ms).locks.setdefault(group_id, lock)
            for record in transactions.open_records.values():
                if now > record.deadline_ms:
                    job(record.txn, record.deadline_ms).record = (group_id, record)
        return jobs

    async def _resolve(self, key: _TxnKey, job: _Job) -> None:
        name = txn_name(job.txn)
        outcome: str | None = None
        try:
            for group_id, lock in sorted(job.locks.items()):
                settled = await settle_lock(self.calls, group_id, lock, after_record=_after_record)
                outcome = settled.value
                _log.info(
                    "node %d: transaction %s's lock in group %d settled: %s",
                    self.runtime.node_id,
                    name,
                    group_id,
                    settled.value,
                    extra={"group_id": group_id, "node_id": self.runtime.node_id, "txn": name},
                )
            if job.record is not None:
                primary, record = job.record
                await finish_everywhere(self.calls, record, primary)
                outcome = "committed" if record.state == kv_pb2.TXN_COMMITTED else "aborted"
                _log.info(
                    "node %d: transaction %s (%s, primary group %d) finished everywhere",
                    self.runtime.node_id,
                    name,
                    "committed" if record.state == kv_pb2.TXN_COMMITTED else "aborted",
                    primary,
                    extra={"group_id": primary, "node_id": self.runtime.node_id, "txn": name},
                )
        except Exception as error:  # logged and retried on a later pass
            failures = self._retry.get(key, (0, 0.0))[0] + 1
            self.runtime.metrics.resolve_failures.inc()
            wait = min(_RETRY_CAP, _RETRY_BASE * (1 << min(failures - 1, 10)))
            self._retry[key] = (failures, asyncio.get_running_loop().time() + wait)
            _log.warning(
                "node %d: resolving transaction %s failed (%s: %s); retrying in %.0f s",
                self.runtime.node_id,
                name,
                type(error).__name__,
                error,
                wait,
                extra={"node_id": self.runtime.node_id, "txn": name},
            )
        else:
            self._retry.pop(key, None)
            if outcome is not None:
                self.runtime.metrics.txns_resolved.labels(outcome).inc()


def _after_record() -> None:
    failpoint("txn.resolver")
