"""etcd's v3 gRPC API on the router: etcd clients (etcdctl, client libraries) over shards.

The router serves ``etcdserverpb.KV``, ``Watch``, ``Lease``, ``Maintenance.Status``,
``Cluster.MemberList`` and ``Auth.Authenticate`` on the router's port, beside
``shardkv.v1.Router``, with etcd's wire format (``proto/shardkv/etcd``, etcd
v3.5's field numbers). Each call becomes the router's own operations:

- **Range** of one key is a linearizable read of its group. A range
  (``range_end``, a prefix, ``--from-key``) reads every group and merges in
  key order, page by page. ``limit``, ``count_only``, ``keys_only``, sorting
  by any target and the min/max mod and create revision filters are
  applied at the router, after reading the whole range (``count`` is every
  key of the range, as etcd's: a limit does not make a range cheaper). A
  range is not a snapshot across groups: each group is read at its own
  moment (a key's own history is never torn).
- **Put** is a single-key write; with ``prev_kv`` or a lease it is a
  transaction (that reads the key before writing it; that checks the lease).
- **DeleteRange** of one key is a delete; a range is read first and its
  keys are deleted one by one: not atomic across the range (a key written
  into the range meanwhile may survive).
- **Txn**: compares (value, version, create and mod revision, lease of single keys)
  and single-key puts, deletes and reads become one of the store's
  transactions (atomic and serializable across groups; one group: one Raft
  entry). Ranges over several keys, range deletes, and reads of a key the
  branch wrote before them run after the transaction commits, in order; a
  single-key put or delete after such an op in a branch is refused
  (UNIMPLEMENTED), since it would apply first. etcd's lock and election
  recipes put their prefix reads last.
- **Compact** succeeds and does nothing: the store keeps no history, so
  every revision before the current one is already compacted. A Range at a
  ``revision`` other than the one it would read at is answered OUT_OF_RANGE
  with etcd's message: compacted for a past one, future for a later one.
- **Revisions** are the store's (``shardkv.revisions``): unique across
  groups, in real-time order, not consecutive. A write's header revision is
  its revision (a transaction's: its commit revision). A read's header
  revision is a revision no data group assigns, taken on the router's clock
  before the read began: every write the read did not see has a higher
  revision, so a watch from it misses nothing (it may repeat what the read
  saw). That needs the router's clock to be the nodes' (one host, or clocks
  in step).
- **Real-time order across groups** holds for single-key writes and for
  transactions of one group (one Raft entry each). A transaction over several
  groups answers once its primary committed; the other groups write their
  parts when the commit reaches them, at revisions that may rank above a
  write that started after the answer.
- **Leases** (``router.leases``): a put with a lease, in a Put or a Txn's
  success branch, compares in the same transaction that the lease lives and
  writes an index entry beside the key. A Txn whose failure branch writes,
  or that puts with a lease in its failure branch, is refused
  (UNIMPLEMENTED); a Txn whose compares fail while its lease is gone is
  answered "lease not found" (etcd would answer the failure branch).
- **Watch** (``router.watch``): many watches per stream, from now or a
  revision, with the NOPUT/NODELETE filters; ``prev_kv`` is refused (the
  watch is canceled, saying so); progress requests and notifications and
  fragmenting are not served. A write's header revision is its keys'
  revision (read back after the transaction: etcd's lock and election
  recipes take it as their key's create revision).
- **Identity**: the cluster id is the crc of the first node's address in
  the map, the member id the crc of the router's address; MemberList names
  this router only (clients that sync endpoints stay on routers).

Errors keep the router's status codes (``router.service``); their messages
are the router's, not etcd's, except where etcd clients match on etcd's
(the compacted revision, a lease not found).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from router.auth import AuthInterceptor
from router.groups import RouteError
from router.leases import LeaseNotFound, Leases, attach_compare
from router.service import RouterService
from router.watch import Compacted, MergedWatch
from shardkv.errors import InvalidArgument
from shardkv.etcd import kv_pb2 as mvcc_pb2
from shardkv.etcd import rpc_pb2, rpc_pb2_grpc
from shardkv.leases import (
    RESERVED_PREFIX,
    LeaseRecord,
    LeaseState,
    attached_key,
    is_reserved,
    lease_key,
)
from shardkv.limits import check_key
from shardkv.revisions import clock_revision
from shardkv.v1 import kv_pb2, router_pb2

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

    _Context = grpc.aio.ServicerContext[Any, Any]
    # A branch of the store's TxnRequest, which _Branch.plan fills.
    _Operations = RepeatedCompositeFieldContainer[kv_pb2.Operation]
else:
    _Context = grpc.aio.ServicerContext

__all__ = ["ETCD_SERVICES", "EtcdIdentity", "add_etcd_services"]

# The etcd services the router answers (etcdserverpb.<name>).
ETCD_SERVICES = ("KV", "Watch", "Lease", "Maintenance", "Cluster", "Auth")

# etcd's messages, which its clients match on.
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE = "etcdserver: mvcc: required revision is a future revision"
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
AUTH_FAILED = "etcdserver: authentication failed, invalid user ID or password"
# The etcd API version this router speaks (its protos are v3.5's).
ETCD_VERSION = "3.5.0"
# Keys deleted at once by a range delete.
_DELETE_WIDTH = 64

_COMPARE_TARGETS = {
    rpc_pb2.Compare.VALUE: kv_pb2.Compare.VALUE,
    rpc_pb2.Compare.VERSION: kv_pb2.Compare.VERSION,
    rpc_pb2.Compare.CREATE: kv_pb2.Compare.CREATE_REVISION,
    rpc_pb2.Compare.MOD: kv_pb2.Compare.MOD_REVISION,
    rpc_pb2.Compare.LEASE: kv_pb2.Compare.LEASE,
}
_COMPARE_OPERATORS = {
    rpc_pb2.Compare.EQUAL: kv_pb2.Compare.EQUAL,
    rpc_pb2.Compare.NOT_EQUAL: kv_pb2.Compare.NOT_EQUAL,
    rpc_pb2.Compare.GREATER: kv_pb2.Compare.GREATER,
    rpc_pb2.Compare.LESS: kv_pb2.Compare.LESS,
}
_SORT_KEYS: dict[int, Callable[[kv_pb2.KeyValue], Any]] = {
    rpc_pb2.RangeRequest.KEY: lambda kv: kv.key,
    rpc_pb2.RangeRequest.VERSION: lambda kv: kv.version,
    rpc_pb2.RangeRequest.CREATE: lambda kv: kv.create_revision,
    rpc_pb2.RangeRequest.MOD: lambda kv: kv.mod_revision,
    rpc_pb2.RangeRequest.VALUE: lambda kv: kv.value,
}


class Unimplemented(RouteError):
    code = grpc.StatusCode.UNIMPLEMENTED


class OutOfRange(RouteError):
    code = grpc.StatusCode.OUT_OF_RANGE


class EtcdIdentity:
    """The ids and address an etcd client sees in headers, Status and MemberList."""

    def __init__(self, service: RouterService, address: str) -> None:
        self.service = service
        self.address = address
        self.member_id = zlib.crc32(address.encode()) or 1

    @property
    def cluster_id(self) -> int:
        topology = self.service.topology
        first = min(topology.nodes.items(), default=(0, ""))[1]
        return zlib.crc32(first.encode()) or 1

    def header(self, revision: int) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id, member_id=self.member_id, revision=revision
        )


def read_revision() -> int:
    """The header revision of a read that starts now (see the module docstring): its
    low bits are 0, the meta group's, so no data group's write has it."""
    return clock_revision()


def etcd_kv(kv: kv_pb2.KeyValue, keys_only: bool = False) -> mvcc_pb2.KeyValue:
    return mvcc_pb2.KeyValue(
        key=kv.key,
        value=b"" if keys_only else kv.value,
        version=kv.version,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        lease=kv.lease,
    )


def key_range(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """etcd's ``[key, range_end)`` as a scan's ``[start, end)``: ``range_end`` ``\\0``
    is "to the end", and ``key`` ``\\0`` with it is every key. An end not after the
    key is an empty range, as in etcd."""
    if range_end == b"\x00":
        return (b"" if key == b"\x00" else key), None
    return key, range_end


def _filtered(
    request: rpc_pb2.RangeRequest, kvs: Iterable[kv_pb2.KeyValue]
) -> list[kv_pb2.KeyValue]:
    def keep(kv: kv_pb2.KeyValue) -> bool:
        return not (
            (request.min_mod_revision and kv.mod_revision < request.min_mod_revision)
            or (request.max_mod_revision and kv.mod_revision > request.max_mod_revision)
            or (request.min_create_revision and kv.create_revision < request.min_create_revision)
            or (request.max_create_revision and kv.create_revision > request.max_create_revision)
        )

    return [kv for kv in kvs if keep(kv)]


def _sorted(request: rpc_pb2.RangeRequest, kvs: list[kv_pb2.KeyValue]) -> list[kv_pb2.KeyValue]:
    order, target = request.sort_order, request.sort_target
    if order == rpc_pb2.RangeRequest.NONE and target != rpc_pb2.RangeRequest.KEY:
        order = rpc_pb2.RangeRequest.ASCEND  # as etcd does
    if order == rpc_pb2.RangeRequest.NONE:
        return kvs  # key order already
    sort_key = _SORT_KEYS.get(target)
    if sort_key is None:
        raise InvalidArgument(f"unknown sort target {target}")
    # Stable: ties stay in key order.
    return sorted(kvs, key=sort_key, reverse=order == rpc_pb2.RangeRequest.DESCEND)


class EtcdKV(rpc_pb2_grpc.KVServicer):
    def __init__(self, service: RouterService, identity: EtcdIdentity) -> None:
        self.service = service
        self.identity = identity

    # -- Range ------------------------------------------------------------------------

    async def Range(
        self, request: rpc_pb2.RangeRequest, context: _Context
    ) -> rpc_pb2.RangeResponse:
        return await self.service.serve(context, lambda deadline: self.range(request, deadline))

    async def range(self, request: rpc_pb2.RangeRequest, deadline: float) -> rpc_pb2.RangeResponse:
        revision = read_revision()
        if request.revision and request.revision != revision:
            raise OutOfRange(COMPACTED if request.revision < revision else FUTURE)
        if request.limit < 0:
            raise InvalidArgument(f"limit {request.limit} is negative")
        if not request.key:
            raise InvalidArgument("etcdserver: key is not provided")
        if not request.range_end:
            kv = (
                None
                if is_reserved(request.key)
                else await self.service.get_kv(request.key, deadline)
            )
            read = [kv] if kv is not None else []
        else:
            start, end = key_range(request.key, request.range_end)
            # Every key of the range is read, even with a limit: `count` is all of them.
            read = await self._scan_all(start, end, deadline)
        count = len(read)  # before the revision filters, as etcd counts
        more = False
        chosen = _sorted(request, _filtered(request, read))
        if request.limit and len(chosen) > request.limit:
            chosen = chosen[: request.limit]
            more = True
        response = rpc_pb2.RangeResponse(
            header=self.identity.header(revision), more=more, count=count
        )
        if not request.count_only:
            response.kvs.extend(etcd_kv(kv, request.keys_only) for kv in chosen)
        return response

    async def _scan_all(
        self, start: bytes, end: bytes | None, deadline: float
    ) -> list[kv_pb2.KeyValue]:
        """Every key of ``[start, end)``, in key order (the store's own keys left out)."""
        found = await self.service.scan_all(start, end, deadline)
        return [kv for kv in found if not is_reserved(kv.key)]

    # -- Put ----------------------------------------------------------------------------

    async def Put(self, request: rpc_pb2.PutRequest, context: _Context) -> rpc_pb2.PutResponse:
        return await self.service.serve(context, lambda deadline: self.put(request, deadline))

    async def put(self, request: rpc_pb2.PutRequest, deadline: float) -> rpc_pb2.PutResponse:
        _check_put(request)
        if not request.prev_kv and not request.lease:
            result = await self.service.write(request.key, _put_of(request), deadline)
            return rpc_pb2.PutResponse(header=self.identity.header(result.revision))
        ours = router_pb2.TxnRequest()
        if request.prev_kv:
            ours.success.append(kv_pb2.Operation(get=kv_pb2.Get(key=request.key)))
        _append_put(request, ours.success)
        if request.lease:
            ours.compares.append(attach_compare(request.lease))
        txn = await self.service.txn(ours, deadline)
        if not txn.succeeded:
            raise LeaseNotFound(LEASE_NOT_FOUND)
        revision = await self._written_revision([request.key], txn.revision, deadline)
        response = rpc_pb2.PutResponse(header=self.identity.header(revision))
        before = txn.results[0] if txn.results and request.prev_kv else None
        if before is not None and before.succeeded:
            response.prev_kv.CopyFrom(etcd_kv(before.previous))
        return response

    # -- DeleteRange ------------------------------------------------------------------

    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: _Context
    ) -> rpc_pb2.DeleteRangeResponse:
        return await self.service.serve(
            context, lambda deadline: self.delete_range(request, deadline)
        )

    async def delete_range(
        self, request: rpc_pb2.DeleteRangeRequest, deadline: float
    ) -> rpc_pb2.DeleteRangeResponse:
        # A delete that deletes nothing answers as a read would.
        revision = read_revision()
        if not request.key:
            raise InvalidArgument("etcdserver: key is not provided")
        if request.range_end:
            start, end = key_range(request.key, request.range_end)
            targets = [kv.key for kv in await self._scan_all(start, end, deadline)]
        else:
            _check_writable(request.key)
            targets = [request.key]
        response = rpc_pb2.DeleteRangeResponse()
        for first in range(0, len(targets), _DELETE_WIDTH):
            chunk = targets[first : first + _DELETE_WIDTH]
            results = await asyncio.gather(
                *(
                    self.service.write(
                        key, kv_pb2.Operation(delete=kv_pb2.Delete(key=key)), deadline
                    )
                    for key in chunk
                )
            )
            for result in results:
                outcome = result.results[0] if result.results else None
                if outcome is None or not outcome.succeeded:
                    continue
                revision = max(revision, result.revision)
                response.deleted += 1
                if request.prev_kv:
                    response.prev_kvs.append(etcd_kv(outcome.previous))
        response.header.CopyFrom(self.identity.header(revision))
        return response

    # -- Txn ----------------------------------------------------------------------------

    async def Txn(self, request: rpc_pb2.TxnRequest, context: _Context) -> rpc_pb2.TxnResponse:
        return await self.service.serve(context, lambda deadline: self.txn(request, deadline))

    async def txn(self, request: rpc_pb2.TxnRequest, deadline: float) -> rpc_pb2.TxnResponse:
        revision = read_revision()
        ours = router_pb2.TxnRequest(compares=[_compare(c) for c in request.compare])
        plans = {
            True: _Branch.plan(request.success, ours.success),
            False: _Branch.plan(request.failure, ours.failure),
        }
        leases = plans[True].leases
        if plans[False].leases:
            raise Unimplemented("a put with a lease in a Txn's failure branch is not served")
        if leases and plans[False].writes:
            raise Unimplemented(
                "a Txn that puts with a lease in its success branch and writes in its failure "
                "branch is not served"
            )
        # The leases must be alive: compared in the same transaction (the
        # failure branch only reads, so choosing it for a lease is harmless).
        ours.compares.extend(attach_compare(lease) for lease in sorted(leases))
        answer = await self.service.txn(ours, deadline)
        if not answer.succeeded and leases:
            await self._check_alive(leases, deadline)
        branch = plans[answer.succeeded]
        wrote = branch.writes > 0
        response = rpc_pb2.TxnResponse(succeeded=answer.succeeded)
        for op, position in zip(branch.ops, branch.positions, strict=True):
            if position is None:
                answered = await self._run_after(op, deadline)
            elif answer.results:
                answered = _from_result(op, answer.results[position])
            elif op.WhichOneof("request") == "request_range":
                # results_unknown (an earlier attempt committed it): read now.
                answered = await self._run_after(op, deadline)
            else:
                answered = _unknown_result(op)
            response.responses.append(answered)
        if wrote and answer.revision:
            put = [op.request_put.key for op in branch.ops if op.HasField("request_put")]
            revision = await self._written_revision(put, answer.revision, deadline)
        for answered in response.responses:
            if answered.WhichOneof("response") == "response_delete_range":  # run after
                revision = max(revision, answered.response_delete_range.header.revision)
        header = self.identity.header(revision)
        response.header.CopyFrom(header)
        for answered in response.responses:
            kind = answered.WhichOneof("response") or "response_range"
            getattr(answered, kind).header.CopyFrom(header)
        return response

    async def _written_revision(
        self, written: Sequence[bytes], revision: int, deadline: float
    ) -> int:
        """A write's header revision: its keys' revision. A transaction over several
        groups answers with its primary's commit revision; its other groups write at
        their own, and etcd's lock and election recipes take the header revision as
        their key's create revision: so the keys put are read back (the reads finish
        the transaction where it has not reached yet)."""
        if not written:
            return revision
        found = await asyncio.gather(*(self.service.get_kv(key, deadline) for key in written))
        return max((kv.mod_revision for kv in found if kv is not None), default=revision)

    async def _check_alive(self, leases: Iterable[int], deadline: float) -> None:
        for lease in leases:
            kv = await self.service.get_kv(lease_key(lease), deadline)
            record = LeaseRecord.of(kv.value if kv is not None else None)
            if record is None or record.state != LeaseState.ALIVE:
                raise LeaseNotFound(LEASE_NOT_FOUND)

    async def _run_after(self, op: rpc_pb2.RequestOp, deadline: float) -> rpc_pb2.ResponseOp:
        """An op outside the transaction (a range, a range delete, a re-read), run now."""
        if op.WhichOneof("request") == "request_range":
            return rpc_pb2.ResponseOp(response_range=await self.range(op.request_range, deadline))
        return rpc_pb2.ResponseOp(
            response_delete_range=await self.delete_range(op.request_delete_range, deadline)
        )

    # -- Compact ------------------------------------------------------------------------

    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: _Context
    ) -> rpc_pb2.CompactionResponse:
        return rpc_pb2.CompactionResponse(header=self.identity.header(read_revision()))


def _from_result(op: rpc_pb2.RequestOp, result: kv_pb2.OperationResult) -> rpc_pb2.ResponseOp:
    """An op's response from its result in the transaction (a put with prev_kv: its read's)."""
    kind = op.WhichOneof("request")
    if kind == "request_put":
        response = rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse())
        if op.request_put.prev_kv and result.succeeded:
            response.response_put.prev_kv.CopyFrom(etcd_kv(result.previous))
        return response
    if kind == "request_delete_range":
        deleted = rpc_pb2.DeleteRangeResponse(deleted=int(result.succeeded))
        if result.succeeded and op.request_delete_range.prev_kv:
            deleted.prev_kvs.append(etcd_kv(result.previous))
        return rpc_pb2.ResponseOp(response_delete_range=deleted)
    ranged = rpc_pb2.RangeResponse()
    read = op.request_range
    if result.succeeded:
        kvs = _filtered(read, [result.previous])
        ranged.count = len(kvs)
        if not read.count_only:
            ranged.kvs.extend(etcd_kv(kv, read.keys_only) for kv in kvs)
    return rpc_pb2.ResponseOp(response_range=ranged)


def _unknown_result(op: rpc_pb2.RequestOp) -> rpc_pb2.ResponseOp:
    """A write's response when an earlier attempt committed the transaction (results_unknown):
    it applied, but what it replaced is not known here."""
    if op.WhichOneof("request") == "request_put":
        return rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse())
    return rpc_pb2.ResponseOp(response_delete_range=rpc_pb2.DeleteRangeResponse())


class _Branch:
    """A branch of an etcd Txn: which of its ops ride in the store's transaction."""

    def __init__(self, ops: Sequence[rpc_pb2.RequestOp]) -> None:
        self.ops = list(ops)
        # Per op: its index among the transaction's operations, or None (run after).
        self.positions: list[int | None] = []
        self.writes = 0
        # The leases its puts attach keys to.
        self.leases: set[int] = set()

    @classmethod
    def plan(cls, ops: Sequence[rpc_pb2.RequestOp], into: _Operations) -> _Branch:
        branch = cls(ops)
        written: set[bytes] = set()
        deferred = False  # an op before this one runs after the transaction
        for op in ops:
            kind = op.WhichOneof("request")
            operation: kv_pb2.Operation | None = None
            if kind == "request_put":
                _check_put(op.request_put)
                put = op.request_put
                if put.prev_kv:
                    # The previous value rides in a read before the put.
                    into.append(kv_pb2.Operation(get=kv_pb2.Get(key=put.key)))
                operation = _put_of(put)
                written.add(put.key)
                branch.writes += 1
                if put.lease:
                    branch.leases.add(put.lease)
            elif kind == "request_delete_range":
                delete = op.request_delete_range
                if delete.range_end:
                    branch.writes += 1
                else:
                    # Its result carries the previous key and value (for prev_kv).
                    _check_writable(delete.key)
                    operation = kv_pb2.Operation(delete=kv_pb2.Delete(key=delete.key))
                    written.add(delete.key)
                    branch.writes += 1
            elif kind == "request_range":
                read = op.request_range
                if read.revision:
                    raise OutOfRange(COMPACTED)
                if not read.range_end and read.key not in written:
                    operation = kv_pb2.Operation(get=kv_pb2.Get(key=read.key))
            elif kind == "request_txn":
                raise Unimplemented("a Txn inside a Txn is not served: flatten it into one")
            else:
                raise InvalidArgument("a Txn op names no request")
            if operation is None:
                branch.positions.append(None)
                deferred = True
                continue
            if deferred and not operation.HasField("get"):
                # It would apply before the range op written ahead of it.
                raise Unimplemented(
                    "a put or delete after a range read or range delete in the same Txn branch "
                    "is not served: put the range ops last"
                )
            # A put with prev_kv answers from the read just before it.
            prev_read = kind == "request_put" and op.request_put.prev_kv
            branch.positions.append(len(into) - 1 if prev_read else len(into))
            into.append(operation)
            if kind == "request_put" and op.request_put.lease:
                into.append(_index_of(op.request_put))
        return branch


def _check_put(request: rpc_pb2.PutRequest) -> None:
    _check_writable(request.key)
    if request.lease < 0:
        raise LeaseNotFound(LEASE_NOT_FOUND)
    if request.lease:
        check_key(attached_key(request.lease, request.key))
    if request.ignore_value or request.ignore_lease:
        raise Unimplemented("ignore_value and ignore_lease are not served: send the value")


def _check_writable(key: bytes) -> None:
    if is_reserved(key):
        raise InvalidArgument(f"keys under {RESERVED_PREFIX!r} are the store's own")


def _put_of(request: rpc_pb2.PutRequest) -> kv_pb2.Operation:
    return kv_pb2.Operation(
        put=kv_pb2.Put(key=request.key, value=request.value, lease=request.lease)
    )


def _index_of(request: rpc_pb2.PutRequest) -> kv_pb2.Operation:
    """The index entry a put with a lease writes beside the key (``shardkv.leases``)."""
    return kv_pb2.Operation(put=kv_pb2.Put(key=attached_key(request.lease, request.key)))


def _append_put(request: rpc_pb2.PutRequest, into: _Operations) -> None:
    into.append(_put_of(request))
    if request.lease:
        into.append(_index_of(request))


def _compare(compare: rpc_pb2.Compare) -> kv_pb2.Compare:
    if compare.range_end:
        raise Unimplemented("compares over a range are not served: compare single keys")
    target = _COMPARE_TARGETS.get(compare.target)
    if target is None:
        raise InvalidArgument(f"unknown compare target {compare.target}")
    operator = _COMPARE_OPERATORS.get(compare.result)
    if operator is None:
        raise InvalidArgument(f"unknown compare result {compare.result}")
    ours = kv_pb2.Compare(key=compare.key, target=target, operator=operator)
    if target == kv_pb2.Compare.VALUE:
        ours.value = compare.value
    elif target == kv_pb2.Compare.VERSION:
        ours.number = max(compare.version, 0)
    elif target == kv_pb2.Compare.CREATE_REVISION:
        ours.number = max(compare.create_revision, 0)
    elif target == kv_pb2.Compare.LEASE:
        ours.number = max(compare.lease, 0)
    else:
        ours.number = max(compare.mod_revision, 0)
    return ours


class EtcdLease(rpc_pb2_grpc.LeaseServicer):
    """Grant, revoke, keep-alive, time-to-live and the list (``router.leases``)."""

    def __init__(self, service: RouterService, identity: EtcdIdentity, leases: Leases) -> None:
        self.service = service
        self.identity = identity
        self.leases = leases

    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: _Context
    ) -> rpc_pb2.LeaseGrantResponse:
        async def grant(deadline: float) -> rpc_pb2.LeaseGrantResponse:
            lease_id, ttl = await self.leases.grant(request.ID, request.TTL, deadline)
            return rpc_pb2.LeaseGrantResponse(
                header=self.identity.header(read_revision()), ID=lease_id, TTL=ttl
            )

        return await self.service.serve(context, grant)

    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: _Context
    ) -> rpc_pb2.LeaseRevokeResponse:
        async def revoke(deadline: float) -> rpc_pb2.LeaseRevokeResponse:
            revision = await self.leases.revoke(request.ID, deadline)
            return rpc_pb2.LeaseRevokeResponse(
                header=self.identity.header(revision or read_revision())
            )

        return await self.service.serve(context, revoke)

    async def LeaseKeepAlive(
        self, requests: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest], context: _Context
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        # One answer per request, in order; a lease not found is TTL 0, as etcd's.
        async for request in requests:

            async def renew(
                deadline: float, lease_id: int = request.ID
            ) -> rpc_pb2.LeaseKeepAliveResponse:
                ttl = await self.leases.keep_alive(lease_id, deadline)
                return rpc_pb2.LeaseKeepAliveResponse(
                    header=self.identity.header(read_revision()), ID=lease_id, TTL=ttl or 0
                )

            yield await self.service.serve(context, renew)

    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: _Context
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        async def ask(deadline: float) -> rpc_pb2.LeaseTimeToLiveResponse:
            lease = await self.leases.time_to_live(request.ID, request.keys, deadline)
            header = self.identity.header(read_revision())
            if lease is None:  # etcd answers a lease not found with TTL -1
                return rpc_pb2.LeaseTimeToLiveResponse(header=header, ID=request.ID, TTL=-1)
            return rpc_pb2.LeaseTimeToLiveResponse(
                header=header,
                ID=request.ID,
                TTL=lease.remaining,
                grantedTTL=lease.ttl,
                keys=list(lease.keys),
            )

        return await self.service.serve(context, ask)

    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: _Context
    ) -> rpc_pb2.LeaseLeasesResponse:
        async def listing(deadline: float) -> rpc_pb2.LeaseLeasesResponse:
            found = await self.leases.leases(deadline)
            return rpc_pb2.LeaseLeasesResponse(
                header=self.identity.header(read_revision()),
                leases=[rpc_pb2.LeaseStatus(ID=lease_id) for lease_id in found],
            )

        return await self.service.serve(context, listing)


class EtcdWatch(rpc_pb2_grpc.WatchServicer):
    """Watches over every group (``router.watch``), many per stream, as etcd's."""

    def __init__(self, service: RouterService, identity: EtcdIdentity) -> None:
        self.service = service
        self.identity = identity

    async def Watch(
        self, requests: AsyncIterator[rpc_pb2.WatchRequest], context: _Context
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        out: asyncio.Queue[rpc_pb2.WatchResponse | None] = asyncio.Queue()
        watches: dict[int, asyncio.Task[None]] = {}
        next_id = 0

        def created(create: rpc_pb2.WatchCreateRequest) -> None:
            nonlocal next_id
            header = self.identity.header(read_revision())
            watch_id = create.watch_id
            if watch_id == 0:  # etcd's AutoWatchID: the next free id, from 0
                while next_id in watches:
                    next_id += 1
                watch_id = next_id
                next_id += 1
            if watch_id in watches or watch_id < 0:
                out.put_nowait(
                    rpc_pb2.WatchResponse(
                        header=header,
                        watch_id=watch_id,
                        created=True,
                        canceled=True,
                        cancel_reason=f"etcdserver: duplicate watch ID {watch_id}",
                    )
                )
                return
            out.put_nowait(rpc_pb2.WatchResponse(header=header, watch_id=watch_id, created=True))
            watches[watch_id] = asyncio.create_task(
                self._run(watch_id, create, header.revision, out),
                name=f"router-etcd-watch-{watch_id}",
            )

        async def read() -> None:
            # A client that stops sending keeps its watches (as etcd's): the
            # stream ends when the client goes away.
            async for request in requests:
                kind = request.WhichOneof("request_union")
                if kind == "create_request":
                    created(request.create_request)
                elif kind == "cancel_request":
                    watch_id = request.cancel_request.watch_id
                    task = watches.pop(watch_id, None)
                    if task is not None:
                        task.cancel()
                        out.put_nowait(
                            rpc_pb2.WatchResponse(
                                header=self.identity.header(read_revision()),
                                watch_id=watch_id,
                                canceled=True,
                            )
                        )

        reader = asyncio.create_task(read(), name="router-etcd-watch-requests")
        try:
            while (response := await out.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in [reader, *watches.values()]:
                task.cancel()
            await asyncio.gather(reader, *watches.values(), return_exceptions=True)

    async def _run(
        self,
        watch_id: int,
        create: rpc_pb2.WatchCreateRequest,
        now: int,
        out: asyncio.Queue[rpc_pb2.WatchResponse | None],
    ) -> None:
        def canceled(reason: str, compact_revision: int = 0) -> rpc_pb2.WatchResponse:
            return rpc_pb2.WatchResponse(
                header=self.identity.header(read_revision()),
                watch_id=watch_id,
                canceled=True,
                compact_revision=compact_revision,
                cancel_reason=reason,
            )

        if create.prev_kv:
            out.put_nowait(canceled("prev_kv is not served: read the key before the watch"))
            return
        skip = {
            mvcc_pb2.Event.PUT: rpc_pb2.WatchCreateRequest.NOPUT in create.filters,
            mvcc_pb2.Event.DELETE: rpc_pb2.WatchCreateRequest.NODELETE in create.filters,
        }
        # A start of 0 is "from now": after every write a read now would see.
        start = create.start_revision if create.start_revision > 0 else now
        watch = MergedWatch(self.service.topology, start, create.key, create.range_end)
        try:
            async for changes in watch.events():
                events = []
                for kv in changes:
                    kind = mvcc_pb2.Event.DELETE if kv.version == 0 else mvcc_pb2.Event.PUT
                    if skip[kind] or is_reserved(kv.key):
                        continue
                    events.append(mvcc_pb2.Event(type=kind, kv=etcd_kv(kv)))
                if events:
                    header = self.identity.header(changes[-1].mod_revision)
                    out.put_nowait(
                        rpc_pb2.WatchResponse(header=header, watch_id=watch_id, events=events)
                    )
        except Compacted as compacted:
            out.put_nowait(canceled(COMPACTED, compacted.revision))
        except Exception as error:  # the client hears why, and may watch again
            out.put_nowait(canceled(f"the watch failed: {error}"))
        finally:
            await watch.close()


class EtcdMaintenance(rpc_pb2_grpc.MaintenanceServicer):
    """Status, so that ``etcdctl endpoint status`` and clients' health checks work."""

    def __init__(self, service: RouterService, identity: EtcdIdentity) -> None:
        self.service = service
        self.identity = identity

    async def Status(
        self, request: rpc_pb2.StatusRequest, context: _Context
    ) -> rpc_pb2.StatusResponse:
        return rpc_pb2.StatusResponse(
            header=self.identity.header(read_revision()),
            version=ETCD_VERSION,
            # Every router answers as a leader would: any of them serves writes.
            leader=self.identity.member_id,
        )


class EtcdCluster(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, identity: EtcdIdentity) -> None:
        self.identity = identity

    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: _Context
    ) -> rpc_pb2.MemberListResponse:
        member = rpc_pb2.Member(
            ID=self.identity.member_id,
            name=f"shardkv-router-{self.identity.address}",
            clientURLs=[f"http://{self.identity.address}"],
        )
        return rpc_pb2.MemberListResponse(
            header=self.identity.header(read_revision()), members=[member]
        )


class EtcdAuth(rpc_pb2_grpc.AuthServicer):
    """Authenticate only: the password is a router token, answered as the token."""

    def __init__(self, auth: AuthInterceptor | None) -> None:
        self.auth = auth

    async def Authenticate(
        self, request: rpc_pb2.AuthenticateRequest, context: _Context
    ) -> rpc_pb2.AuthenticateResponse:
        if self.auth is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "etcdserver: authentication is not enabled (the router has no --tokens-file)",
            )
        if self.auth.role_of_token(request.password) is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, AUTH_FAILED)
        return rpc_pb2.AuthenticateResponse(token=request.password)


def add_etcd_services(
    server: grpc.aio.Server,
    service: RouterService,
    address: str,
    auth: AuthInterceptor | None = None,
    leases: Leases | None = None,
) -> EtcdIdentity:
    """Serve etcd's KV, Watch, Lease, Maintenance, Cluster and Auth on ``server`` (see the
    module docstring)."""
    identity = EtcdIdentity(service, address)
    rpc_pb2_grpc.add_KVServicer_to_server(EtcdKV(service, identity), server)  # type: ignore[no-untyped-call]
    rpc_pb2_grpc.add_WatchServicer_to_server(EtcdWatch(service, identity), server)  # type: ignore[no-untyped-call]
    rpc_pb2_grpc.add_LeaseServicer_to_server(  # type: ignore[no-untyped-call]
        EtcdLease(service, identity, leases if leases is not None else Leases(service)), server
    )
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(  # type: ignore[no-untyped-call]
        EtcdMaintenance(service, identity), server
    )
    rpc_pb2_grpc.add_ClusterServicer_to_server(EtcdCluster(identity), server)  # type: ignore[no-untyped-call]
    rpc_pb2_grpc.add_AuthServicer_to_server(EtcdAuth(auth), server)  # type: ignore[no-untyped-call]
    return identity
