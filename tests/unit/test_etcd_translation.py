"""How router.etcd turns etcd's requests into the router's operations, with a fake router."""

from __future__ import annotations

from typing import Any

import pytest

from router.etcd import (
    COMPACTED,
    FUTURE,
    EtcdIdentity,
    EtcdKV,
    LeaseNotFound,
    OutOfRange,
    Unimplemented,
    key_range,
)
from router.service import RouterService
from shardkv.errors import InvalidArgument
from shardkv.etcd import rpc_pb2
from shardkv.leases import LeaseRecord, attached_key, lease_key
from shardkv.revisions import GROUP_BITS
from shardkv.v1 import kv_pb2, router_pb2


def kv(key: bytes, value: bytes, version: int, create: int, mod: int) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=key, value=value, version=version, create_revision=create, mod_revision=mod
    )


STORE = [
    kv(b"a/1", b"x", 3, 10, 50),
    kv(b"a/2", b"yy", 1, 40, 40),
    kv(b"a/3", b"z", 2, 20, 30),
    kv(b"b/1", b"w", 1, 60, 60),
]


class FakeTopology:
    def __init__(self) -> None:
        self.nodes = {1: "127.0.0.1:1"}


class FakeRouter:
    """The RouterService helpers router.etcd uses, over a fixed list of keys."""

    def __init__(self) -> None:
        self.topology = FakeTopology()
        self.txns: list[router_pb2.TxnRequest] = []
        self.answer = router_pb2.TxnResponse(succeeded=True)
        self.scans = 0
        # Keys the answered transactions put, at the answer's revision.
        self.written: dict[bytes, kv_pb2.KeyValue] = {}

    async def get_kv(self, key: bytes, deadline: float) -> kv_pb2.KeyValue | None:
        if key in self.written:
            return self.written[key]
        return next((item for item in STORE if item.key == key), None)

    async def scan(
        self, start: bytes, end: bytes | None, page: int, deadline: float
    ) -> router_pb2.ScanKeysResponse:
        self.scans += 1
        found = [item for item in STORE if item.key >= start and (end is None or item.key < end)]
        # Pages of two, to exercise the paging.
        response = router_pb2.ScanKeysResponse(kvs=found[:2])
        if len(found) > 2:
            response.continuation = found[1].key + b"\x00"
        return response

    async def scan_all(
        self, start: bytes, end: bytes | None, deadline: float
    ) -> list[kv_pb2.KeyValue]:
        # The router's own paging, over the fake's pages of two.
        return await RouterService.scan_all(self, start, end, deadline)  # type: ignore[arg-type]

    async def txn(self, request: router_pb2.TxnRequest, deadline: float) -> router_pb2.TxnResponse:
        self.txns.append(request)
        branch = request.success if self.answer.succeeded else request.failure
        for operation in branch:
            if operation.HasField("put"):
                put = operation.put
                # Another group than the primary's: its own revision.
                self.written[put.key] = kv_pb2.KeyValue(
                    key=put.key, value=put.value, mod_revision=self.answer.revision + 1
                )
        return self.answer

    async def write(
        self, key: bytes, operation: kv_pb2.Operation, deadline: float
    ) -> kv_pb2.CommandResult:
        raise AssertionError("not expected here")


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def etcd(router: FakeRouter) -> EtcdKV:
    service: Any = router
    return EtcdKV(service, EtcdIdentity(service, "127.0.0.1:2379"))


def test_key_ranges_as_etcd_means_them() -> None:
    assert key_range(b"a", b"b") == (b"a", b"b")
    assert key_range(b"a", b"\x00") == (b"a", None), "--from-key"
    assert key_range(b"\x00", b"\x00") == (b"", None), "every key"


async def test_a_range_counts_everything_and_limits_after_sorting(etcd: EtcdKV) -> None:
    everything = await etcd.range(rpc_pb2.RangeRequest(key=b"a/", range_end=b"a0"), 0.0)
    assert [item.key for item in everything.kvs] == [b"a/1", b"a/2", b"a/3"]
    assert (everything.count, everything.more) == (3, False)
    assert everything.header.revision % (1 << GROUP_BITS) == 0
    newest = await etcd.range(
        rpc_pb2.RangeRequest(
            key=b"a/",
            range_end=b"a0",
            limit=1,
            sort_target=rpc_pb2.RangeRequest.MOD,
            sort_order=rpc_pb2.RangeRequest.DESCEND,
        ),
        0.0,
    )
    assert [item.key for item in newest.kvs] == [b"a/1"]
    assert (newest.count, newest.more) == (3, True)
    # A sort target without an order ascends, as etcd's does.
    by_version = await etcd.range(
        rpc_pb2.RangeRequest(
            key=b"\x00", range_end=b"\x00", sort_target=rpc_pb2.RangeRequest.VERSION
        ),
        0.0,
    )
    assert [item.version for item in by_version.kvs] == [1, 1, 2, 3]
    filtered = await etcd.range(
        rpc_pb2.RangeRequest(
            key=b"\x00", range_end=b"\x00", min_create_revision=20, max_create_revision=40
        ),
        0.0,
    )
    assert [item.key for item in filtered.kvs] == [b"a/2", b"a/3"]
    only = await etcd.range(
        rpc_pb2.RangeRequest(key=b"a/", range_end=b"a0", keys_only=True, count_only=False), 0.0
    )
    assert [item.value for item in only.kvs] == [b"", b"", b""]
    counted = await etcd.range(
        rpc_pb2.RangeRequest(key=b"a/", range_end=b"a0", count_only=True), 0.0
    )
    assert (list(counted.kvs), counted.count) == ([], 3)


async def test_a_limited_range_still_counts_every_key(etcd: EtcdKV, router: FakeRouter) -> None:
    first = await etcd.range(rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", limit=1), 0.0)
    assert [item.key for item in first.kvs] == [b"a/1"]
    assert (first.count, first.more) == (4, True)
    assert router.scans == 2, "both pages of the range were read"


async def test_a_read_at_another_revision_is_refused_as_etcd_refuses_it(etcd: EtcdKV) -> None:
    with pytest.raises(OutOfRange, match=COMPACTED):
        await etcd.range(rpc_pb2.RangeRequest(key=b"a/1", revision=5), 0.0)
    with pytest.raises(OutOfRange, match=FUTURE):
        await etcd.range(rpc_pb2.RangeRequest(key=b"a/1", revision=1 << 62), 0.0)


async def test_a_negative_limit_is_refused(etcd: EtcdKV) -> None:
    with pytest.raises(InvalidArgument):
        await etcd.range(rpc_pb2.RangeRequest(key=b"a/1", limit=-1), 0.0)


def put_op(key: bytes, value: bytes, prev_kv: bool = False) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, prev_kv=prev_kv))


def get_op(key: bytes, range_end: bytes = b"") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key, range_end=range_end))


def delete_op(key: bytes, prev_kv: bool = False) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(
        request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, prev_kv=prev_kv)
    )


async def test_a_txn_becomes_one_transaction_and_answers_each_op(
    etcd: EtcdKV, router: FakeRouter
) -> None:
    previous = kv(b"a/1", b"x", 3, 10, 50)
    router.answer = router_pb2.TxnResponse(
        succeeded=True,
        revision=(1_000 << GROUP_BITS) | 2,
        results=[
            kv_pb2.OperationResult(succeeded=True, previous=previous),  # the put's prev read
            kv_pb2.OperationResult(succeeded=True),  # the put
            kv_pb2.OperationResult(succeeded=True, previous=STORE[1]),  # the delete
            kv_pb2.OperationResult(succeeded=True, previous=STORE[2]),  # get a/3
        ],
    )
    request = rpc_pb2.TxnRequest(
        compare=[
            rpc_pb2.Compare(
                key=b"a/1",
                target=rpc_pb2.Compare.MOD,
                result=rpc_pb2.Compare.LESS,
                mod_revision=60,
            )
        ],
        success=[
            put_op(b"a/1", b"new", prev_kv=True),
            delete_op(b"a/2", prev_kv=True),
            get_op(b"a/3"),
            get_op(b"a/1"),  # written above: read after the transaction
            get_op(b"a/", b"a0"),  # a range: read after
        ],
        failure=[put_op(b"a/9", b"no")],
    )
    response = await etcd.txn(request, 0.0)
    (sent,) = router.txns
    assert list(sent.compares) == [
        kv_pb2.Compare(
            key=b"a/1",
            target=kv_pb2.Compare.MOD_REVISION,
            operator=kv_pb2.Compare.LESS,
            number=60,
        )
    ]
    assert list(sent.success) == [
        kv_pb2.Operation(get=kv_pb2.Get(key=b"a/1")),
        kv_pb2.Operation(put=kv_pb2.Put(key=b"a/1", value=b"new")),
        kv_pb2.Operation(delete=kv_pb2.Delete(key=b"a/2")),
        kv_pb2.Operation(get=kv_pb2.Get(key=b"a/3")),
    ]
    assert list(sent.failure) == [kv_pb2.Operation(put=kv_pb2.Put(key=b"a/9", value=b"no"))]
    assert response.succeeded
    # The put key's revision (read back; here its group wrote after the primary).
    assert response.header.revision == router.answer.revision + 1
    put, deleted, read, reread, ranged = response.responses
    assert put.response_put.prev_kv.value == b"x"
    assert deleted.response_delete_range.deleted == 1
    assert deleted.response_delete_range.prev_kvs[0].key == b"a/2"
    assert [item.key for item in read.response_range.kvs] == [b"a/3"]
    assert [item.key for item in reread.response_range.kvs] == [b"a/1"]
    assert ranged.response_range.count == 3
    assert all(op.response_range.header == response.header for op in (read, ranged))


async def test_a_txn_committed_by_an_earlier_attempt_answers_without_results(
    etcd: EtcdKV, router: FakeRouter
) -> None:
    router.answer = router_pb2.TxnResponse(succeeded=True, results_unknown=True)
    response = await etcd.txn(
        rpc_pb2.TxnRequest(
            success=[put_op(b"a/1", b"v", prev_kv=True), delete_op(b"a/2"), get_op(b"a/3")]
        ),
        0.0,
    )
    put, deleted, read = response.responses
    assert put.WhichOneof("response") == "response_put"
    assert not put.response_put.HasField("prev_kv"), "what it replaced is not known"
    assert deleted.WhichOneof("response") == "response_delete_range"
    assert [item.key for item in read.response_range.kvs] == [b"a/3"], "read now"


@pytest.mark.parametrize(
    ("compare", "error"),
    [
        (rpc_pb2.Compare(key=b"a", range_end=b"b", target=rpc_pb2.Compare.VERSION), Unimplemented),
        (rpc_pb2.Compare(key=b"a", target=99), InvalidArgument),  # type: ignore[arg-type]
    ],
)
async def test_compares_not_served_are_refused(
    etcd: EtcdKV, router: FakeRouter, compare: rpc_pb2.Compare, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await etcd.txn(rpc_pb2.TxnRequest(compare=[compare]), 0.0)
    assert router.txns == [], "nothing ran"


async def test_a_lease_compare_reads_the_keys_lease(etcd: EtcdKV, router: FakeRouter) -> None:
    compare = rpc_pb2.Compare(key=b"a", target=rpc_pb2.Compare.LEASE, lease=7)
    await etcd.txn(rpc_pb2.TxnRequest(compare=[compare]), 0.0)
    assert list(router.txns[0].compares) == [
        kv_pb2.Compare(key=b"a", target=kv_pb2.Compare.LEASE, number=7)
    ]


async def test_a_nested_txn_is_refused(etcd: EtcdKV) -> None:
    nested = rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest())
    with pytest.raises(Unimplemented):
        await etcd.txn(rpc_pb2.TxnRequest(success=[nested]), 0.0)


async def test_a_leased_put_compares_its_lease_and_writes_its_index(
    etcd: EtcdKV, router: FakeRouter
) -> None:
    # etcd's lock recipe: if the key is new, put it under the session's lease; else read it.
    new = rpc_pb2.Compare(key=b"lock/k", target=rpc_pb2.Compare.CREATE, create_revision=0)
    leased = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"lock/k", value=b"", lease=7))
    read = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"lock/k"))
    request = rpc_pb2.TxnRequest(compare=[new], success=[leased], failure=[read])
    router.answer = router_pb2.TxnResponse(succeeded=True, revision=4096 + 3)
    response = await etcd.txn(request, 0.0)
    [sent] = router.txns
    assert list(sent.compares) == [
        kv_pb2.Compare(key=b"lock/k", target=kv_pb2.Compare.CREATE_REVISION),
        kv_pb2.Compare(
            key=lease_key(7), target=kv_pb2.Compare.VERSION, operator=kv_pb2.Compare.EQUAL, number=1
        ),
    ]
    # The header is the key's revision (the recipe takes it as its create revision).
    assert response.header.revision == 4096 + 4
    assert [op.put for op in sent.success] == [
        kv_pb2.Put(key=b"lock/k", lease=7),
        kv_pb2.Put(key=attached_key(7, b"lock/k")),
    ]
    assert response.succeeded and len(response.responses) == 1
    # Another contender: the lease lives, the key exists: the failure branch's read.
    router.written[lease_key(7)] = kv_pb2.KeyValue(key=lease_key(7), value=LeaseRecord(5).encode())
    router.answer = router_pb2.TxnResponse(
        succeeded=False,
        results=[kv_pb2.OperationResult(succeeded=True, previous=kv_pb2.KeyValue(key=b"lock/k"))],
    )
    lost = await etcd.txn(request, 0.0)
    assert not lost.succeeded
    assert [kv.key for kv in lost.responses[0].response_range.kvs] == [b"lock/k"]
    # Not chosen, and the lease's record is not there: the lease is not found.
    del router.written[lease_key(7)]
    with pytest.raises(LeaseNotFound, match="requested lease not found"):
        await etcd.txn(request, 0.0)
    # A failure branch that writes cannot ride beside a lease compare.
    write = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"other"))
    with pytest.raises(Unimplemented):
        await etcd.txn(rpc_pb2.TxnRequest(success=[leased], failure=[write]), 0.0)
    with pytest.raises(Unimplemented):
        await etcd.txn(rpc_pb2.TxnRequest(failure=[leased]), 0.0)
    assert len(router.txns) == 3


async def test_the_stores_own_keys_are_neither_written_nor_listed(
    etcd: EtcdKV, router: FakeRouter
) -> None:
    reserved = lease_key(7)
    STORE.insert(0, kv(reserved, b"x", 1, 1, 1))
    try:
        everything = rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00")
        listed = await etcd.range(everything, 0.0)
        assert reserved not in [item.key for item in listed.kvs] and listed.count == 4
        one = await etcd.range(rpc_pb2.RangeRequest(key=reserved), 0.0)
        assert one.count == 0
    finally:
        STORE.pop(0)
    with pytest.raises(InvalidArgument, match="store's own"):
        await etcd.put(rpc_pb2.PutRequest(key=reserved, value=b"v"), 0.0)
    with pytest.raises(InvalidArgument, match="store's own"):
        await etcd.delete_range(rpc_pb2.DeleteRangeRequest(key=reserved), 0.0)


async def test_a_write_after_a_range_op_in_a_branch_is_refused(
    etcd: EtcdKV, router: FakeRouter
) -> None:
    # The range delete runs after the transaction: the put would apply first and be deleted.
    range_delete = rpc_pb2.RequestOp(
        request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"a/", range_end=b"a0")
    )
    for first in (range_delete, get_op(b"a/", b"a0")):
        with pytest.raises(Unimplemented, match="put the range ops last"):
            await etcd.txn(rpc_pb2.TxnRequest(success=[first, put_op(b"a/9", b"v")]), 0.0)
    assert router.txns == []
    # Reads after a range op are fine (the lock recipe's order is put, then the range).
    await etcd.txn(rpc_pb2.TxnRequest(success=[get_op(b"a/", b"a0"), get_op(b"b/1")]), 0.0)
    assert len(router.txns) == 1


async def test_count_is_taken_before_the_revision_filters(etcd: EtcdKV) -> None:
    newer = await etcd.range(
        rpc_pb2.RangeRequest(key=b"a/", range_end=b"a0", min_mod_revision=40), 0.0
    )
    assert [item.key for item in newer.kvs] == [b"a/1", b"a/2"]
    assert newer.count == 3, "etcd counts the range, then filters"
    with pytest.raises(InvalidArgument, match="key is not provided"):
        await etcd.range(rpc_pb2.RangeRequest(key=b"", range_end=b"z"), 0.0)
