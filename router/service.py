"""The router's gRPC service (``shardkv.v1.Router``): the cluster as one keyspace.

For each key: ring -> group -> cached leader (``Topology``), through a
per-group ``GroupBatcher`` so that concurrent requests for a group share one
node call. Multi-key requests are split by group and sent in parallel. Scans
go to every group and merge in key order.

Status codes a caller sees:

- INVALID_ARGUMENT: an empty or oversized key or value, too many items in one
  call, a bad continuation token; checked here before any node is asked.
- UNAVAILABLE: a group had no reachable leader before the deadline; the
  message names the group and what was tried. Retry (a write with the same
  session: exactly-once).
- DEADLINE_EXCEEDED: the caller's deadline passed (a write may still apply).
  A call without a deadline gets ``limits.default_deadline``; a longer one is
  cut to ``limits.max_deadline`` (``router.limits``).
- RESOURCE_EXHAUSTED: a group's queue at the router is full; nothing of the
  call was sent, and the trailing metadata ``retry-after-ms`` says when to
  try again (``router.limits``).

Writes carry the client's ``Session`` (client_id, seq, acked_seq) down to the
groups, so a retry, by this router or by the client through another router,
applies at most once. A request without a session gets one from the router
(exactly-once then covers the router's own retries only).

A write a group refuses as WRONG_GROUP (the ring moved) is routed again with
the newer map, keeping its session when it is one key. A multi-key part
routed again goes out under a fresh router session instead, since the new
group may already hold the same seq for other keys of the request; so does a
write a group answers ``reused`` (it keeps another command's result under
that seq: the sessions of moved keys move with them). During a ring change
those keys are at-least-once.

During a ring change (``ClusterMap.migration``) a key goes to its move's
target once the move is active, to its source before (``shardkv.ring.Routing``).
A group refuses a key in transit (frozen at the source, not yet served by
the target) with WRONG_GROUP naming the migration's target epoch, while the
map only changes its version as the moves advance; so after any WRONG_GROUP
the router asks for the map at once and routes again as soon as a newer one
arrives, or after a backoff (``_after_reroute``). Scans do the same when a
group answers a page with WRONG_GROUP, until the deadline. A refusal that
names the target (``moved_to``: the source sealed the key) sends the key
there at once, and keeps sending it there for the rest of the migration,
also with newer maps that do not show the move active yet
(``Routing.keeping``); such a key goes in a call of its own, which the
target holds until it serves the key (``shardkv.node.service``), instead
of a refusal, a backoff and another try, each a trip through a node busy
with the move.

``ChangeRing`` and ``ChangePlacement`` (admin) are forwarded to the meta
group's leader, one way for both (``_at_meta_leader``). Their refusals keep
their status code: INVALID_ARGUMENT, FAILED_PRECONDITION (a migration or a
replica move is under way, ...), NOT_FOUND, ALREADY_EXISTS, ABORTED,
UNIMPLEMENTED; a dry run changes nothing, and the map it answers is never
taken as the router's own.

The service's ``metrics`` (``router.metrics``) are shared by its parts; the
server counts its calls with ``metrics.interceptor``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from router.client import SessionNumbers
from router.groups import (
    DeadlineExceeded,
    GroupBatcher,
    GroupChannel,
    InvalidRequest,
    Locked,
    NodeError,
    Overloaded,
    Reroute,
    RouteError,
    SessionReused,
)
from router.limits import DEFAULT_LIMITS, RETRY_AFTER_KEY, RouterLimits
from router.metrics import RouterMetrics
from router.topology import Topology
from router.txn import Coordinator, ReadLocked
from shardkv.errors import InvalidArgument
from shardkv.leases import lease_key
from shardkv.limits import check_command, check_key
from shardkv.storage.keys import prefix_end
from shardkv.txn_protocol import Settled
from shardkv.v1 import kv_pb2, node_pb2, node_pb2_grpc, router_pb2, router_pb2_grpc

__all__ = ["RouterService"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

_DEADLINE_PASSED = "the deadline passed before the cluster answered; a write may still apply"
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
# The meta group: it holds the cluster map and plans ring and placement changes.
META_GROUP = 0
# What the meta group's refusal of a ChangeRing or ChangePlacement may say,
# passed on as is (an INVALID_ARGUMENT is passed on by GroupChannel; other
# codes are retried there).
_ADMIN_REFUSALS = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


class _Sessions:
    """The router's own session, for requests that bring none (numbered as a client's)."""

    def __init__(self) -> None:
        self._numbers = SessionNumbers(random.getrandbits(63) | 1)

    def issue(self) -> router_pb2.Session:
        session = router_pb2.Session()
        self._numbers.stamp(session, self._numbers.begin())
        return session

    def finish(self, session: router_pb2.Session) -> None:
        if session.client_id == self._numbers.client_id:
            self._numbers.finish(session.seq)


class _Passed(RouteError):
    """A node's refusal of an admin call, passed on with its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# The longest wait before trying again a key refused as moving (its move is
# switching over: unwritable for a moment, then served by its target).
_MOVING_BACKOFF = 0.05


def _reroute_backoff(attempt: int) -> float:
    """How long to wait for a newer map after the ``attempt``-th WRONG_GROUP of a request."""
    return min(0.5, 0.01 * 2.0 ** min(attempt, 10))


def _node_error(code: int, message: str) -> RouteError:
    """A node's per-command refusal as the error the caller gets (never retried as UNAVAILABLE)."""
    if code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
        return InvalidRequest(message)
    return NodeError(message)


class RouterService(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        topology: Topology,
        metrics: RouterMetrics | None = None,
        limits: RouterLimits = DEFAULT_LIMITS,
    ) -> None:
        self.topology = topology
        self.limits = limits
        self.metrics = metrics if metrics is not None else RouterMetrics()
        self.groups = GroupChannel(topology, self.metrics)
        self._writers: dict[int, GroupBatcher[kv_pb2.Command, kv_pb2.CommandResult]] = {}
        self._readers: dict[int, GroupBatcher[bytes, kv_pb2.KeyValue | None]] = {}
        self._sessions = _Sessions()
        self.coordinator = Coordinator(
            topology, self.groups, self._writer, self._after_reroute, metrics=self.metrics
        )

    async def close(self) -> None:
        await self.coordinator.close()
        for writer in self._writers.values():
            await writer.close()
        for reader in self._readers.values():
            await reader.close()

    # -- plumbing -----------------------------------------------------------------------

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:  # type: ignore[type-arg]
        budget = self.limits.deadline_for(context.time_remaining())
        return asyncio.get_running_loop().time() + budget

    async def serve(
        self,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
        work: Callable[[float], Awaitable[_T]],
    ) -> _T:
        """Run ``work(deadline)``; turn what fails into the status the module docstring gives."""
        deadline = self._deadline(context)
        try:
            async with asyncio.timeout_at(deadline):
                return await work(deadline)
        except TimeoutError:
            await _abort(context, DeadlineExceeded(_DEADLINE_PASSED))
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except RouteError as error:
            await _abort(context, error)
        raise AssertionError("unreachable")

    async def _wait_for_map(self) -> None:
        if self.topology.ring is None:
            await self.topology.ready()

    def _writer(self, group_id: int) -> GroupBatcher[kv_pb2.Command, kv_pb2.CommandResult]:
        writer = self._writers.get(group_id)
        if writer is None:

            async def send(
                commands: list[kv_pb2.Command], deadline: float
            ) -> list[kv_pb2.CommandResult | BaseException]:
                return await self._write_batch(group_id, commands, deadline)

            writer = self._writers[group_id] = GroupBatcher(
                send, max_queued=self.limits.max_in_flight_per_group, group_id=group_id
            )
        return writer

    def _reader(self, group_id: int) -> GroupBatcher[bytes, kv_pb2.KeyValue | None]:
        reader = self._readers.get(group_id)
        if reader is None:

            async def send(
                keys: list[bytes], deadline: float
            ) -> list[kv_pb2.KeyValue | BaseException | None]:
                return await self._read_batch(group_id, keys, deadline)

            reader = self._readers[group_id] = GroupBatcher(
                send, max_queued=self.limits.max_in_flight_per_group, group_id=group_id
            )
        return reader

    async def _write_batch(
        self, group_id: int, commands: list[kv_pb2.Command], deadline: float
    ) -> list[kv_pb2.CommandResult | BaseException]:
        """One WriteBatch with retries; per-command UNAVAILABLE outcomes are retried too."""
        self.metrics.batch_items.labels("write").observe(len(commands))
        loop = asyncio.get_running_loop()
        outcomes: list[kv_pb2.CommandResult | BaseException | None] = [None] * len(commands)
        todo = list(range(len(commands)))
        attempt = 0
        while todo:
            request = node_pb2.WriteBatchRequest(
                group_id=group_id, commands=[commands[index] for index in todo]
            )

            async def invoke(
                stub: node_pb2_grpc.NodeStub,
                timeout: float,
                request: node_pb2.WriteBatchRequest = request,
            ) -> node_pb2.WriteBatchResponse:
                response: node_pb2.WriteBatchResponse = await stub.WriteBatch(
                    request, timeout=timeout
                )
                return response

            try:
                response = await self.groups.call(
                    group_id, invoke, lambda r: r.error if r.HasField("error") else None, deadline
                )
            except (RouteError, Reroute) as error:
                # Only the commands still open fail; the settled keep their outcome.
                for index in todo:
                    outcomes[index] = error
                break
            retry: list[int] = []
            for index, outcome in zip(todo, response.outcomes, strict=True):
                if outcome.code == 0:
                    result = outcome.result
                    if result.HasField("wrong_group"):
                        outcomes[index] = Reroute(result.wrong_group)
                    elif result.reused:
                        outcomes[index] = SessionReused(result)
                    elif result.HasField("locked"):
                        outcomes[index] = Locked(result.locked)
                    else:
                        outcomes[index] = result
                elif outcome.code == grpc.StatusCode.UNAVAILABLE.value[0]:
                    retry.append(index)
                else:
                    outcomes[index] = _node_error(outcome.code, outcome.message)
            todo = retry
            if todo:
                attempt += 1
                if loop.time() >= deadline:
                    for index in todo:
                        outcomes[index] = DeadlineExceeded(
                            f"group {group_id} did not settle the write before the deadline; "
                            "it may still apply"
                        )
                    break
                await asyncio.sleep(min(0.2, 0.005 * 2**attempt))
        settled = [outcome for outcome in outcomes if outcome is not None]
        assert len(settled) == len(commands), "every command has an outcome"
        return settled

    async def _read_batch(
        self, group_id: int, keys: list[bytes], deadline: float
    ) -> list[kv_pb2.KeyValue | BaseException | None]:
        """The keys' values; a locked key's outcome is ``ReadLocked`` with the value under it."""
        self.metrics.batch_items.labels("read").observe(len(keys))
        request = node_pb2.ReadRequest(group_id=group_id, keys=list(dict.fromkeys(keys)))

        async def invoke(stub: node_pb2_grpc.NodeStub, timeout: float) -> node_pb2.ReadResponse:
            response: node_pb2.ReadResponse = await stub.Read(request, timeout=timeout)
            return response

        try:
            response = await self.groups.call(
                group_id, invoke, lambda r: r.error if r.HasField("error") else None, deadline
            )
        except Reroute as reroute:
            # One key of the batch moved: every key of it is routed again on its own.
            return [reroute] * len(keys)
        found = {kv.key: kv for kv in response.kvs}
        locks = {lock.key: lock for lock in response.locks}
        return [
            ReadLocked(locks[key], found.get(key)) if key in locks else found.get(key)
            for key in keys
        ]

    async def _after_reroute(self, reroute: Reroute, attempt: int) -> None:
        """Wait until routing again may go elsewhere: the next map, or a backoff.

        The refusal's epoch cannot say whether our map is behind: during a
        migration a move advancing changes only the map's version (the epoch
        rises once every move is done), and a group may as well lag behind
        our map. So ask for the map now and go again as soon as a newer one
        arrives, or once the backoff has passed (the group catching up). A
        refusal that names where the key moved (``moved_to``: the source
        sealed it) is routed there at once; one naming a newer epoch (a key
        moving) waits at most ``_MOVING_BACKOFF``.
        """
        _log.debug("%s (attempt %d): routing again with the next map", reroute, attempt)
        self.topology.refresh()
        wrong_group = reroute.wrong_group
        if wrong_group.moved_to and self.topology.moved(
            wrong_group.group_id, wrong_group.moved_to, wrong_group.epoch
        ):
            # The source sealed the key's move and names its target: go there
            # now; it serves the key as soon as the move is active.
            return
        if wrong_group.epoch > self.topology.epoch:
            # A migration is under way (or done) that our map may not show yet:
            # its moving keys are unwritable only briefly, so look again soon.
            await self.topology.changed(min(_MOVING_BACKOFF, _reroute_backoff(attempt)))
            return
        await self.topology.changed(_reroute_backoff(attempt))

    def _session(self, session: router_pb2.Session) -> router_pb2.Session:
        if session.client_id:
            if session.acked_seq >= session.seq:
                raise InvalidArgument(
                    f"session seq {session.seq} must be above acked_seq {session.acked_seq}"
                )
            return session
        return self._sessions.issue()

    async def _write_key(
        self, key: bytes, command: kv_pb2.Command, deadline: float
    ) -> kv_pb2.CommandResult:
        await self._wait_for_map()
        fresh: router_pb2.Session | None = None
        try:
            for attempt in itertools.count():
                ring = self.topology.current_ring()
                group_id, switching = ring.route(key)
                command.epoch = ring.epoch  # routed with this ring: see Command.epoch
                try:
                    if switching:
                        return await self._write_alone(group_id, command, deadline)
                    return await self._writer(group_id).call(command, deadline)
                except Reroute as reroute:
                    await self._after_reroute(reroute, attempt)
                except SessionReused:
                    if fresh is not None:
                        raise  # a session of our own cannot have been used before
                    # See the module docstring: the seq answered another part of
                    # the request here; this key goes out under a fresh session.
                    fresh = self._sessions.issue()
                    command.client_id, command.seq = fresh.client_id, fresh.seq
                    command.acked_seq = fresh.acked_seq
                except Locked as locked:
                    # Not applied (nor recorded): the same seq applies once the lock is gone.
                    await self.coordinator.wait_for_lock(group_id, locked.lock, attempt, deadline)
        finally:
            if fresh is not None:
                self._sessions.finish(fresh)
        raise AssertionError("unreachable")

    # A key whose move is switching over (the source named the target, the map
    # does not say the move is active yet) goes to the target in a call of its
    # own, not in the group's batch: the target holds a call all of whose keys
    # it is about to serve until it does (shardkv.node.service), which would
    # hold the answers of a whole batch; and it does not take one of the
    # batch's calls in flight meanwhile.

    async def _write_alone(
        self, group_id: int, command: kv_pb2.Command, deadline: float
    ) -> kv_pb2.CommandResult:
        overloaded = self._writer(group_id).overloaded()
        if overloaded is not None:  # the group's own limit, as in its batch
            raise overloaded
        [outcome] = await self._write_batch(group_id, [command], deadline)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _read_alone(
        self, group_id: int, key: bytes, deadline: float
    ) -> kv_pb2.KeyValue | None:
        overloaded = self._reader(group_id).overloaded()
        if overloaded is not None:
            raise overloaded
        [outcome] = await self._read_batch(group_id, [key], deadline)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _read_key(self, key: bytes, deadline: float) -> kv_pb2.KeyValue | None:
        await self._wait_for_map()
        for attempt in itertools.count():
            group_id, switching = self.topology.current_ring().route(key)
            try:
                if switching:
                    return await self._read_alone(group_id, key, deadline)
                return await self._reader(group_id).call(key, deadline)
            except Reroute as reroute:
                await self._after_reroute(reroute, attempt)
            except ReadLocked as locked:
                # The value under a lock is the one before its transaction;
                # it stands while the transaction runs (see router.txn).
                settled = await self.coordinator.settle(group_id, locked.lock, attempt, deadline)
                if settled is Settled.RUNNING:
                    return locked.kv
        raise AssertionError("unreachable")

    async def _write_one(
        self, key: bytes, session: router_pb2.Session, operation: kv_pb2.Operation, deadline: float
    ) -> kv_pb2.CommandResult:
        """One single-key write: validated, given a session, routed and retried."""
        check_key(key)
        resolved = self._session(session)
        try:
            command = kv_pb2.Command(
                client_id=resolved.client_id,
                seq=resolved.seq,
                acked_seq=resolved.acked_seq,
                operations=[operation],
            )
            check_command(command)
            return await self._write_key(key, command, deadline)
        finally:
            self._sessions.finish(resolved)

    async def _get(self, request: router_pb2.GetRequest, deadline: float) -> router_pb2.GetResponse:
        check_key(request.key)
        kv = await self._read_key(request.key, deadline)
        return router_pb2.GetResponse(kv=kv) if kv is not None else router_pb2.GetResponse()

    async def _put(self, request: router_pb2.PutRequest, deadline: float) -> router_pb2.PutResponse:
        operation = kv_pb2.Operation(put=kv_pb2.Put(key=request.key, value=request.value))
        result = await self._write_one(request.key, request.session, operation, deadline)
        previous = (
            result.results[0].previous
            if result.results and result.results[0].HasField("previous")
            else None
        )
        kv = kv_pb2.KeyValue(
            key=request.key,
            value=request.value,
            version=previous.version + 1 if previous is not None else 1,
            create_revision=previous.create_revision if previous is not None else result.revision,
            mod_revision=result.revision,
        )
        return router_pb2.PutResponse(kv=kv)

    async def _delete(
        self, request: router_pb2.DeleteRequest, deadline: float
    ) -> router_pb2.DeleteResponse:
        operation = kv_pb2.Operation(delete=kv_pb2.Delete(key=request.key))
        result = await self._write_one(request.key, request.session, operation, deadline)
        return router_pb2.DeleteResponse(
            deleted=bool(result.results and result.results[0].succeeded)
        )

    async def _compare_and_set(
        self, request: router_pb2.CompareAndSetRequest, deadline: float
    ) -> router_pb2.CompareAndSetResponse:
        cas = kv_pb2.CompareAndSet(key=request.key, value=request.value)
        if request.HasField("expected"):
            cas.expected = request.expected
        operation = kv_pb2.Operation(compare_and_set=cas)
        result = await self._write_one(request.key, request.session, operation, deadline)
        response = router_pb2.CompareAndSetResponse()
        if result.results:
            response.succeeded = result.results[0].succeeded
            if result.results[0].HasField("previous"):
                response.previous.CopyFrom(result.results[0].previous)
        return response

    # -- single keys ----------------------------------------------------------------------

    async def Get(
        self,
        request: router_pb2.GetRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.GetResponse:
        return await self.serve(context, lambda deadline: self._get(request, deadline))

    async def Put(
        self,
        request: router_pb2.PutRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.PutResponse:
        return await self.serve(context, lambda deadline: self._put(request, deadline))

    async def Delete(
        self,
        request: router_pb2.DeleteRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.DeleteResponse:
        return await self.serve(context, lambda deadline: self._delete(request, deadline))

    async def CompareAndSet(
        self,
        request: router_pb2.CompareAndSetRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.CompareAndSetResponse:
        return await self.serve(context, lambda deadline: self._compare_and_set(request, deadline))

    async def Batch(
        self,
        request: router_pb2.BatchRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.BatchResponse:
        if len(request.requests) > self.limits.max_keys_per_call:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.requests)} requests in one batch; "
                f"at most {self.limits.max_keys_per_call}",
            )
        deadline = self._deadline(context)
        responses = await asyncio.gather(*(self._one(item, deadline) for item in request.requests))
        return router_pb2.BatchResponse(responses=responses)

    async def _one(self, item: router_pb2.Request, deadline: float) -> router_pb2.Response:
        """One request of a batch, answered as the single call would be."""
        response = router_pb2.Response()
        kind = item.WhichOneof("kind")
        try:
            async with asyncio.timeout_at(deadline):
                if kind == "get":
                    response.get.CopyFrom(await self._get(item.get, deadline))
                elif kind == "put":
                    response.put.CopyFrom(await self._put(item.put, deadline))
                elif kind == "delete":
                    response.delete.CopyFrom(await self._delete(item.delete, deadline))
                elif kind == "compare_and_set":
                    response.compare_and_set.CopyFrom(
                        await self._compare_and_set(item.compare_and_set, deadline)
                    )
                else:
                    raise InvalidArgument("a request of the batch names no kind")
        except TimeoutError:
            response.code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            response.message = _DEADLINE_PASSED
        except InvalidArgument as error:
            response.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.message = str(error)
        except RouteError as error:
            response.code = error.code.value[0]
            response.message = str(error)
        return response

    # -- transactions ---------------------------------------------------------------------

    async def Txn(
        self,
        request: router_pb2.TxnRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.TxnResponse:
        return await self.serve(context, lambda deadline: self.txn(request, deadline))

    # -- what the etcd API (router.etcd) is served with ------------------------------------

    async def txn(self, request: router_pb2.TxnRequest, deadline: float) -> router_pb2.TxnResponse:
        session = self._session(request.session)
        try:
            await self._wait_for_map()
            return await self.coordinator.run(request, session, deadline)
        finally:
            self._sessions.finish(session)

    async def get_kv(self, key: bytes, deadline: float) -> kv_pb2.KeyValue | None:
        check_key(key)
        return await self._read_key(key, deadline)

    async def write(
        self, key: bytes, operation: kv_pb2.Operation, deadline: float
    ) -> kv_pb2.CommandResult:
        """One single-key write under a session of the router's."""
        return await self._write_one(key, router_pb2.Session(), operation, deadline)

    async def lease(self, lease_id: int, renew: bool, deadline: float) -> node_pb2.LeaseResponse:
        """A lease's TTL and time left at its owner group's leader, renewed first if
        ``renew`` (``Node.Lease``; ``shardkv.leases``)."""
        await self._wait_for_map()
        key = lease_key(lease_id)
        for attempt in itertools.count():
            group_id = self.topology.current_ring().group_for(key)
            request = node_pb2.LeaseRequest(group_id=group_id, lease_id=lease_id, renew=renew)

            async def invoke(
                stub: node_pb2_grpc.NodeStub,
                timeout: float,
                request: node_pb2.LeaseRequest = request,
            ) -> node_pb2.LeaseResponse:
                response: node_pb2.LeaseResponse = await stub.Lease(request, timeout=timeout)
                return response

            try:
                return await self.groups.call(
                    group_id, invoke, lambda r: r.error if r.HasField("error") else None, deadline
                )
            except Reroute as reroute:
                await self._after_reroute(reroute, attempt)
        raise AssertionError("unreachable")

    async def ListTransactions(
        self,
        request: router_pb2.ListTransactionsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.ListTransactionsResponse:
        async def work(deadline: float) -> router_pb2.ListTransactionsResponse:
            await self._wait_for_map()
            return router_pb2.ListTransactionsResponse(txns=await self.coordinator.list(deadline))

        return await self.serve(context, work)

    async def ShowTxn(
        self,
        request: router_pb2.ShowTxnRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.ShowTxnResponse:
        async def work(deadline: float) -> router_pb2.ShowTxnResponse:
            await self._wait_for_map()
            return await self.coordinator.show(request.txn, deadline)

        return await self.serve(context, work)

    async def ResolveTxn(
        self,
        request: router_pb2.ResolveTxnRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.ResolveTxnResponse:
        async def work(deadline: float) -> router_pb2.ResolveTxnResponse:
            await self._wait_for_map()
            return await self.coordinator.resolve(request.txn, request.commit, deadline)

        return await self.serve(context, work)

    # -- ring and placement changes (admin) ----------------------------------------------

    async def ChangeRing(
        self,
        request: node_pb2.ChangeRingRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.ChangeRingResponse:
        response: node_pb2.ChangeRingResponse = await self.serve(
            context, lambda deadline: self._at_meta_leader("ChangeRing", request, deadline)
        )
        return response

    async def ChangePlacement(
        self,
        request: node_pb2.ChangePlacementRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> node_pb2.ChangePlacementResponse:
        response: node_pb2.ChangePlacementResponse = await self.serve(
            context, lambda deadline: self._at_meta_leader("ChangePlacement", request, deadline)
        )
        return response

    async def _at_meta_leader(
        self,
        method: str,
        request: node_pb2.ChangeRingRequest | node_pb2.ChangePlacementRequest,
        deadline: float,
    ) -> Any:
        """The meta group leader's answer to ``method``; its refusals keep their code
        (module docstring). Typed by the caller: the node stub's methods are untyped."""
        await self._wait_for_map()

        async def invoke(stub: node_pb2_grpc.NodeStub, timeout: float) -> Any:
            try:
                return await getattr(stub, method)(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                if error.code() in _ADMIN_REFUSALS:
                    raise _Passed(error.code(), error.details() or error.code().name) from error
                raise

        response = await self.groups.call(
            META_GROUP, invoke, lambda r: r.error if r.HasField("error") else None, deadline
        )
        if not request.dry_run:
            # The change is in the map now: route with it soon. (A dry run's
            # map is only a plan, never learnt.)
            self.topology.refresh()
        return response

    # -- many keys ----------------------------------------------------------------------

    async def PutMany(
        self,
        request: router_pb2.PutManyRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.PutManyResponse:
        items = list(request.items)
        if not items:
            return router_pb2.PutManyResponse()
        try:
            if len(items) > self.limits.max_keys_per_call:
                raise InvalidArgument(
                    f"{len(items)} items in one call; at most {self.limits.max_keys_per_call}: "
                    "send several"
                )
            check_command(kv_pb2.Command(puts=items))
            session = self._session(request.session)
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        async def work(deadline: float) -> int:
            try:
                await self._put_many(items, session, deadline, reroutes=0)
            finally:
                self._sessions.finish(session)
            return len(items)

        return router_pb2.PutManyResponse(written=await self.serve(context, work))

    async def _put_many(
        self,
        items: Sequence[kv_pb2.KeyValue],
        session: router_pb2.Session,
        deadline: float,
        reroutes: int,
    ) -> None:
        """The items as one command per group (its ``puts``: no result per key), in parallel."""
        await self._wait_for_map()
        ring = self.topology.current_ring()
        by_group: dict[int, list[kv_pb2.KeyValue]] = defaultdict(list)
        for item in items:
            by_group[ring.group_for(item.key)].append(item)
        # All groups or none: a call refused at a limit applies nothing (no
        # await between this check and the submits below).
        for group_id in by_group:
            overloaded = self._writer(group_id).overloaded()
            if overloaded is not None:
                raise overloaded
        futures = [
            self._writer(group_id).submit(
                kv_pb2.Command(
                    client_id=session.client_id,
                    seq=session.seq,
                    acked_seq=session.acked_seq,
                    puts=group_items,
                    epoch=ring.epoch,
                ),
                deadline,
            )
            for group_id, group_items in by_group.items()
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        moved: list[kv_pb2.KeyValue] = []
        waiting: list[kv_pb2.KeyValue] = []
        for group_id, group_items, result in zip(
            by_group.keys(), by_group.values(), results, strict=True
        ):
            if isinstance(result, Reroute):
                await self._after_reroute(result, reroutes)
                moved.extend(group_items)
            elif isinstance(result, SessionReused):
                moved.extend(group_items)  # another part kept this seq here: a fresh one
            elif isinstance(result, Locked):
                # Not applied nor recorded: the same session applies it later.
                await self.coordinator.wait_for_lock(group_id, result.lock, reroutes, deadline)
                waiting.extend(group_items)
            elif isinstance(result, BaseException):
                raise result
        if waiting:
            await self._put_many(waiting, session, deadline, reroutes + 1)
        if moved:
            # See the module docstring: a fresh session for the moved part.
            fresh = self._sessions.issue()
            try:
                await self._put_many(moved, fresh, deadline, reroutes + 1)
            finally:
                self._sessions.finish(fresh)

    async def GetMany(
        self,
        request: router_pb2.GetManyRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.GetManyResponse:
        keys = list(request.keys)
        try:
            if len(keys) > self.limits.max_keys_per_call:
                raise InvalidArgument(
                    f"{len(keys)} keys in one call; at most {self.limits.max_keys_per_call}"
                )
            for key in keys:
                check_key(key)
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        async def work(deadline: float) -> list[kv_pb2.KeyValue | None]:
            return await asyncio.gather(*(self._read_key(key, deadline) for key in keys))

        found = await self.serve(context, work)
        return router_pb2.GetManyResponse(kvs=[kv for kv in found if kv is not None])

    # -- scans ----------------------------------------------------------------------------

    async def ScanKeys(
        self,
        request: router_pb2.ScanKeysRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.ScanKeysResponse:
        try:
            if request.limit > MAX_PAGE:
                raise InvalidArgument(f"limit {request.limit} is over the page size of {MAX_PAGE}")
            start, end = _scan_range(request)
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        page = request.limit or DEFAULT_PAGE

        async def work(deadline: float) -> router_pb2.ScanKeysResponse:
            return await self.scan(start, end, page, deadline)

        return await self.serve(context, work)

    async def scan(
        self, start: bytes, end: bytes | None, page: int, deadline: float
    ) -> router_pb2.ScanKeysResponse:
        """One page of keys in ``[start, end)`` (None: to the end), across every group."""
        await self._wait_for_map()
        request = node_pb2.ScanRequest(start=start, end=end or b"", limit=page)

        async def scan_group(group_id: int) -> node_pb2.ScanResponse:
            group_request = node_pb2.ScanRequest()
            group_request.CopyFrom(request)
            group_request.group_id = group_id

            async def invoke(stub: node_pb2_grpc.NodeStub, timeout: float) -> node_pb2.ScanResponse:
                response: node_pb2.ScanResponse = await stub.Scan(group_request, timeout=timeout)
                return response

            return await self.groups.call(
                group_id, invoke, lambda r: r.error if r.HasField("error") else None, deadline
            )

        # Locks in a page: as for a single read (see _read_key), the values
        # under locks of running transactions stand; other locks are
        # settled (finished here) and the page is read again. A group that
        # answers WRONG_GROUP holds keys in transit (a ring change): every
        # group is asked again once the map moved on or after a backoff.
        for attempt in itertools.count():
            routing = self.topology.current_ring()
            groups = routing.groups
            # The groups check the scan knows where their moved keys went.
            request.epoch = routing.epoch
            request.groups[:] = groups
            answers = await asyncio.gather(
                *(scan_group(group_id) for group_id in groups), return_exceptions=True
            )
            try:
                pages = _pages_or_raise(answers)
            except Reroute as reroute:
                await self._after_reroute(reroute, attempt)
                continue
            locked = [
                (group_id, lock)
                for group_id, page_of_group in zip(groups, pages, strict=True)
                for lock in page_of_group.locks
            ]
            settled = await asyncio.gather(
                *(
                    self.coordinator.settle(group_id, lock, attempt, deadline)
                    for group_id, lock in locked
                )
            )
            if all(state is Settled.RUNNING for state in settled):
                break
        merged = list(
            itertools.islice(heapq.merge(*(p.kvs for p in pages), key=lambda kv: kv.key), page + 1)
        )
        more = len(merged) > page or any(p.more for p in pages)
        kvs = merged[:page]
        response = router_pb2.ScanKeysResponse(kvs=kvs)
        if more and kvs:
            response.continuation = kvs[-1].key + b"\x00"
        return response

    async def scan_all(
        self, start: bytes, end: bytes | None, deadline: float
    ) -> list[kv_pb2.KeyValue]:
        """Every key of ``[start, end)`` (None: to the end), in key order, page by page."""
        found: list[kv_pb2.KeyValue] = []
        while end is None or start < end:
            page = await self.scan(start, end, MAX_PAGE, deadline)
            found.extend(page.kvs)
            if not page.continuation:
                break
            start = page.continuation
        return found

    # -- status ---------------------------------------------------------------------------

    async def ClusterStatus(
        self,
        request: router_pb2.ClusterStatusRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.ClusterStatusResponse:
        async def work(deadline: float) -> router_pb2.ClusterStatusResponse:
            await self._wait_for_map()
            topology = self.topology
            assert topology.map is not None and topology.ring is not None
            response = router_pb2.ClusterStatusResponse(map=topology.map)
            nodes = sorted(topology.nodes.items())
            reports = await asyncio.gather(*(self._node_report(n, a) for n, a in nodes))
            response.nodes.extend(reports)
            for group_id, share in sorted(topology.ring.shares().items()):
                response.shares.add(group_id=group_id, share=share)
            return response

        return await self.serve(context, work)

    async def _node_report(self, node_id: int, address: str) -> router_pb2.NodeReport:
        report = router_pb2.NodeReport(node_id=node_id, address=address)
        try:
            status: node_pb2.StatusResponse = await self.topology.stub_at(address).Status(
                node_pb2.StatusRequest(), timeout=2.0
            )
        except grpc.aio.AioRpcError as error:
            report.error = f"{error.code().name}: {error.details()}"
        else:
            report.status.CopyFrom(status)
        return report


def _pages_or_raise(
    answers: Sequence[node_pb2.ScanResponse | BaseException],
) -> list[node_pb2.ScanResponse]:
    """Every group's page; raises a group's error, ``Reroute`` only when no other error."""
    errors = [answer for answer in answers if isinstance(answer, BaseException)]
    for error in errors:
        if not isinstance(error, Reroute):
            raise error
    if errors:
        raise errors[0]
    return [answer for answer in answers if not isinstance(answer, BaseException)]


def _scan_range(request: router_pb2.ScanKeysRequest) -> tuple[bytes, bytes | None]:
    """``[start, end)`` of the page: the prefix as a range, from the continuation on."""
    if request.HasField("prefix"):
        start, end = request.prefix, prefix_end(request.prefix)
    else:
        start, end = request.start, request.end or None
    if request.continuation:
        if request.continuation < start or (end is not None and request.continuation > end):
            raise InvalidArgument("the continuation token does not belong to this scan")
        start = request.continuation
    return start, end


async def _abort(context: grpc.aio.ServicerContext, error: RouteError) -> NoReturn:  # type: ignore[type-arg]
    if isinstance(error, Overloaded):
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(error.retry_after_ms)),))
    await context.abort(error.code, str(error))
    raise AssertionError("unreachable")
