"""The client (``router.Client``, ``router.AsyncClient``) against a fake router.

``FakeRouter`` is a ``RouterServicer`` that keeps keys in a dict (with etcd's
versions and revisions), runs transactions on it, deduplicates writes by
``(client_id, seq)`` as the cluster does, records every request, and fails or
delays calls on demand; it answers the transaction admin calls with what a
test puts in ``txns`` and ``shown``, and plans ring changes (``ChangeRing``)
on the map of ``status`` as the meta group would: the next free group id,
one change at a time, and with ``dry_run`` nothing kept; placement changes
(``ChangePlacement``) it plans with the node's own rules
(``shardkv.node.placement_change``). ``RouterThread`` serves it from its own
event loop in a thread, so that the blocking ``Client`` (which waits on the
calling thread) and the ``AsyncClient`` (on the test's loop) both reach it.
The CLI tests use them too.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from router import (
    Aborted,
    AsyncClient,
    Client,
    ClientError,
    ClusterError,
    DeadlineExceeded,
    DeleteResult,
    GetResult,
    InvalidArgument,
    KeyValue,
    NotFound,
    PutResult,
    RetryPolicy,
    TransactionConflict,
    TxnResult,
    Unavailable,
)
from router.client import SessionNumbers
from router.transactions import absent, delete, get, put, value
from shardkv.errors import FailedPrecondition
from shardkv.errors import InvalidArgument as NodeInvalidArgument
from shardkv.node.placement_change import plan_placement
from shardkv.node.ring_change import plan_change
from shardkv.ring import ring_of
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, router_pb2, router_pb2_grpc
from tests.ports import free_ports

# Retries in these tests back off for milliseconds, not the default 50 ms .. 1 s.
FAST_RETRY = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class FakeRouter(router_pb2_grpc.RouterServicer):
    """A router with one dict for a cluster. Exactly-once by (client_id, seq), like a group."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        # Method name -> every request received, in order (retries included).
        self.requests: dict[str, list[Any]] = defaultdict(list)
        # Method name -> errors to answer the next calls with, first first. With
        # ``after_apply`` the call is applied before it fails (a lost answer).
        self.failures: dict[str, list[tuple[grpc.StatusCode, str, bool]]] = defaultdict(list)
        self.delays: dict[str, float] = {}
        # Keys whose Put waits until the event is set.
        self.holds: dict[bytes, threading.Event] = {}
        self.status = router_pb2.ClusterStatusResponse()
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self._applied: dict[tuple[int, int], Any] = {}
        self.applied_count = 0
        # Key -> how many more writes of it apply and then fail with UNAVAILABLE.
        self.lost_answers: dict[bytes, int] = {}
        # Requests that came inside Batch calls (they are in ``requests`` too).
        self.batched = 0
        # Per key: (version, create_revision, mod_revision), as a group keeps
        # them; one revision per write (a transaction's writes share one).
        self.revision = 0
        self.versions: dict[bytes, tuple[int, int, int]] = {}
        # What ListTransactions and ShowTxn answer.
        self.txns: list[router_pb2.TxnSummary] = []
        self.shown: dict[tuple[int, int], router_pb2.ShowTxnResponse] = {}

    def fail(
        self,
        method: str,
        code: grpc.StatusCode,
        details: str,
        *,
        times: int = 1,
        after_apply: bool = False,
    ) -> None:
        self.failures[method].extend([(code, details, after_apply)] * times)

    # -- the keys, with versions and revisions --

    def kv(self, key: bytes) -> kv_pb2.KeyValue | None:
        if key not in self.data:
            return None
        # A key a test put straight into ``data`` has version 1 and revisions 0.
        version, created, modified = self.versions.get(key, (1, 0, 0))
        return kv_pb2.KeyValue(
            key=key,
            value=self.data[key],
            version=version,
            create_revision=created,
            mod_revision=modified,
        )

    def set(self, key: bytes, value: bytes, revision: int | None = None) -> None:
        if revision is None:
            self.revision += 1
            revision = self.revision
        version, created, _ = self.versions.get(key, (0, revision, 0))
        self.data[key] = value
        self.versions[key] = (version + 1, created, revision)

    def remove(self, key: bytes) -> bool:
        self.versions.pop(key, None)
        return self.data.pop(key, None) is not None

    def _holds(self, compare: kv_pb2.Compare) -> bool:
        kv = self.kv(compare.key)
        if compare.target == kv_pb2.Compare.VALUE:
            if kv is None:
                return False
            mine: bytes | int = kv.value
            theirs: bytes | int = compare.value
        else:
            field = kv_pb2.Compare.Target.Name(compare.target).lower()
            mine = 0 if kv is None else getattr(kv, field)
            theirs = compare.number
        return {
            kv_pb2.Compare.EQUAL: mine == theirs,
            kv_pb2.Compare.NOT_EQUAL: mine != theirs,
            kv_pb2.Compare.LESS: mine < theirs,  # type: ignore[operator]
            kv_pb2.Compare.GREATER: mine > theirs,  # type: ignore[operator]
        }[compare.operator]

    def _run_txn(self, request: router_pb2.TxnRequest) -> router_pb2.TxnResponse:
        succeeded = all(self._holds(compare) for compare in request.compares)
        operations = request.success if succeeded else request.failure
        response = router_pb2.TxnResponse(succeeded=succeeded)
        before: dict[bytes, kv_pb2.KeyValue | None] = {}
        for operation in operations:
            kind = operation.WhichOneof("kind")
            assert kind in ("put", "delete", "get")
            key = getattr(operation, kind).key
            before.setdefault(key, self.kv(key))
        if any(operation.WhichOneof("kind") != "get" for operation in operations):
            self.revision += 1
        for operation in operations:
            kind = operation.WhichOneof("kind")
            key = getattr(operation, str(kind)).key
            previous = before[key]
            result = response.results.add(succeeded=kind == "put" or previous is not None)
            if previous is not None:
                result.previous.CopyFrom(previous)
            if kind == "put":
                self.set(key, operation.put.value, self.revision)
            elif kind == "delete":
                self.remove(key)
        return response

    async def _enter(
        self, method: str, request: Any, context: Any
    ) -> tuple[grpc.StatusCode, str] | None:
        """Record the call; the (code, details) to fail with after applying, if any."""
        self.requests[method].append(request)
        hold = self.holds.get(getattr(request, "key", b""))
        if hold is not None:
            await asyncio.to_thread(hold.wait, 5)
        delay = self.delays.get(method)
        if delay:
            await asyncio.sleep(delay)
        if self.failures[method]:
            code, details, after_apply = self.failures[method].pop(0)
            if not after_apply:
                await context.abort(code, details)
            return code, details
        return None

    async def _write(self, method: str, request: Any, context: Any, apply: Any) -> Any:
        self.in_flight[method] += 1
        self.max_in_flight[method] = max(self.max_in_flight[method], self.in_flight[method])
        try:
            failure = await self._enter(method, request, context)
            key = getattr(request, "key", b"")
            if self.lost_answers.get(key):
                self.lost_answers[key] -= 1
                failure = (grpc.StatusCode.UNAVAILABLE, "answer lost")
            session = request.session
            assert session.client_id != 0 and session.acked_seq < session.seq
            dedup_key = (session.client_id, session.seq)
            if dedup_key not in self._applied:
                self._applied[dedup_key] = apply()
                self.applied_count += 1
            if failure is not None:
                await context.abort(*failure)
            return self._applied[dedup_key]
        finally:
            self.in_flight[method] -= 1

    async def Get(self, request: Any, context: Any) -> router_pb2.GetResponse:
        await self._enter("Get", request, context)
        return router_pb2.GetResponse(kv=self.kv(request.key))

    async def Put(self, request: Any, context: Any) -> router_pb2.PutResponse:
        def apply() -> router_pb2.PutResponse:
            self.set(request.key, request.value)
            return router_pb2.PutResponse(kv=self.kv(request.key))

        response: router_pb2.PutResponse = await self._write("Put", request, context, apply)
        return response

    async def Delete(self, request: Any, context: Any) -> router_pb2.DeleteResponse:
        def apply() -> router_pb2.DeleteResponse:
            return router_pb2.DeleteResponse(deleted=self.remove(request.key))

        response: router_pb2.DeleteResponse = await self._write("Delete", request, context, apply)
        return response

    async def CompareAndSet(self, request: Any, context: Any) -> router_pb2.CompareAndSetResponse:
        def apply() -> router_pb2.CompareAndSetResponse:
            current = self.data.get(request.key)
            expected = request.expected if request.HasField("expected") else None
            if current != expected:
                return router_pb2.CompareAndSetResponse(succeeded=False)
            self.set(request.key, request.value)
            return router_pb2.CompareAndSetResponse(succeeded=True)

        response: router_pb2.CompareAndSetResponse = await self._write(
            "CompareAndSet", request, context, apply
        )
        return response

    async def PutMany(self, request: Any, context: Any) -> router_pb2.PutManyResponse:
        def apply() -> router_pb2.PutManyResponse:
            for kv in request.items:
                self.set(kv.key, kv.value)
            return router_pb2.PutManyResponse(written=len(request.items))

        response: router_pb2.PutManyResponse = await self._write("PutMany", request, context, apply)
        return response

    async def GetMany(self, request: Any, context: Any) -> router_pb2.GetManyResponse:
        await self._enter("GetMany", request, context)
        return router_pb2.GetManyResponse(
            kvs=[
                kv_pb2.KeyValue(key=key, value=self.data[key])
                for key in request.keys
                if key in self.data
            ]
        )

    async def ScanKeys(self, request: Any, context: Any) -> router_pb2.ScanKeysResponse:
        await self._enter("ScanKeys", request, context)
        keys = sorted(self.data)
        if request.HasField("prefix"):
            keys = [key for key in keys if key.startswith(request.prefix)]
        else:
            keys = [
                key
                for key in keys
                if key >= request.start and (not request.end or key < request.end)
            ]
        if request.continuation:
            keys = keys[bisect.bisect_right(keys, request.continuation) :]
        limit = request.limit or 1000
        page = keys[:limit]
        continuation = page[-1] if len(keys) > limit else b""
        return router_pb2.ScanKeysResponse(
            kvs=[kv_pb2.KeyValue(key=key, value=self.data[key]) for key in page],
            continuation=continuation,
        )

    async def ClusterStatus(self, request: Any, context: Any) -> router_pb2.ClusterStatusResponse:
        await self._enter("ClusterStatus", request, context)
        return self.status

    async def Txn(self, request: Any, context: Any) -> router_pb2.TxnResponse:
        response: router_pb2.TxnResponse = await self._write(
            "Txn", request, context, lambda: self._run_txn(request)
        )
        return response

    async def ListTransactions(
        self, request: Any, context: Any
    ) -> router_pb2.ListTransactionsResponse:
        await self._enter("ListTransactions", request, context)
        return router_pb2.ListTransactionsResponse(txns=self.txns)

    async def ShowTxn(self, request: Any, context: Any) -> router_pb2.ShowTxnResponse:
        await self._enter("ShowTxn", request, context)
        shown = self.shown.get((request.txn.client_id, request.txn.seq))
        if shown is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no group knows the transaction")
            raise AssertionError("unreachable")
        return shown

    async def ResolveTxn(self, request: Any, context: Any) -> router_pb2.ResolveTxnResponse:
        await self._enter("ResolveTxn", request, context)
        state = kv_pb2.TXN_COMMITTED if request.commit else kv_pb2.TXN_ABORTED
        return router_pb2.ResolveTxnResponse(
            record=kv_pb2.TxnRecord(txn=request.txn, state=state, finished=True)
        )

    async def ChangeRing(self, request: Any, context: Any) -> node_pb2.ChangeRingResponse:
        """The node's own planner (shardkv.node.ring_change), as the meta leader answers."""
        await self._enter("ChangeRing", request, context)
        return node_pb2.ChangeRingResponse(map=await self._plan(plan_change, request, context))

    async def ChangePlacement(self, request: Any, context: Any) -> node_pb2.ChangePlacementResponse:
        await self._enter("ChangePlacement", request, context)
        return node_pb2.ChangePlacementResponse(
            map=await self._plan(plan_placement, request, context)
        )

    async def _plan(self, planner: Any, request: Any, context: Any) -> cluster_pb2.ClusterMap:
        """Run the node's planner on the map; refusals answer as the meta leader's would."""
        try:
            changed: cluster_pb2.ClusterMap = planner(self.status.map, request, 1_700_000_000_000)
        except FailedPrecondition as refused:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(refused))
            raise AssertionError("unreachable") from None
        except NodeInvalidArgument as refused:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(refused))
            raise AssertionError("unreachable") from None
        if not request.dry_run:
            self.status.map.CopyFrom(changed)
        return changed

    async def Batch(self, request: Any, context: Any) -> router_pb2.BatchResponse:
        """Each request through its single method, as the real router answers a batch."""
        await self._enter("Batch", request, context)
        self.batched += len(request.requests)
        handlers = {
            "get": self.Get,
            "put": self.Put,
            "delete": self.Delete,
            "compare_and_set": self.CompareAndSet,
        }

        async def one(item: router_pb2.Request) -> router_pb2.Response:
            kind = item.WhichOneof("kind")
            assert kind is not None
            response = router_pb2.Response()
            try:
                answer = await handlers[kind](getattr(item, kind), _ItemContext())
            except _ItemAborted as aborted:
                response.code = aborted.code.value[0]
                response.message = aborted.details
            else:
                getattr(response, kind).CopyFrom(answer)
            return response

        answers = await asyncio.gather(*(one(item) for item in request.requests))
        return router_pb2.BatchResponse(responses=answers)


class _ItemAborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _ItemContext:
    """What a single method needs of a context, for one request of a batch."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _ItemAborted(code, details)


class RouterThread:
    """Serves a ``FakeRouter`` on 127.0.0.1:<free port> from an event loop in its own thread."""

    def __init__(self, servicer: FakeRouter) -> None:
        self.servicer = servicer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: grpc.aio.Server | None = None
        self.port = self._run(self._start())
        self.address = f"127.0.0.1:{self.port}"

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start(self) -> int:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ]
        )
        router_pb2_grpc.add_RouterServicer_to_server(self.servicer, self._server)  # type: ignore[no-untyped-call]
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def stop(self) -> None:
        assert self._server is not None
        self._run(self._server.stop(None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def fake() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def router_thread(fake: FakeRouter) -> Iterator[RouterThread]:
    server = RouterThread(fake)
    yield server
    server.stop()


@pytest.fixture
def address(router_thread: RouterThread) -> str:
    return router_thread.address


@pytest.fixture
def dead_address() -> str:
    """An address nothing listens on: connecting is refused, gRPC says UNAVAILABLE."""
    return f"127.0.0.1:{free_ports(1)[0]}"


@pytest.fixture
async def client(address: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(address, retry=FAST_RETRY) as async_client:
        yield async_client


@pytest.fixture
def sync_client(address: str) -> Iterator[Client]:
    with Client(address, retry=FAST_RETRY) as blocking_client:
        yield blocking_client


# -- single keys ----------------------------------------------------------------------


async def test_put_get_delete_round_trip(client: AsyncClient, fake: FakeRouter) -> None:
    assert await client.get(b"k") is None
    await client.put(b"k", b"v")
    assert fake.data == {b"k": b"v"}
    assert await client.get(b"k") == b"v"
    assert await client.delete(b"k") is True
    assert await client.delete(b"k") is False
    assert await client.get(b"k") is None


async def test_str_is_utf8_and_values_come_back_as_bytes(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put("ключ", "значение")
    assert fake.data == {"ключ".encode(): "значение".encode()}
    assert await client.get("ключ") == "значение".encode()


async def test_empty_value_is_a_value_not_absence(client: AsyncClient) -> None:
    await client.put(b"k", b"")
    assert await client.get(b"k") == b""


async def test_obviously_bad_keys_fail_before_any_call(
    client: AsyncClient, fake: FakeRouter
) -> None:
    with pytest.raises(InvalidArgument, match="empty") as excinfo:
        await client.put(b"", b"v")
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(TypeError, match="int"):
        await client.get(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a value"):
        await client.put(b"k", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await client.get_many([b"a", None])  # type: ignore[list-item]
    assert not fake.requests


async def test_cas_expected_none_means_absent_and_empty_bytes_is_a_value(
    client: AsyncClient, fake: FakeRouter
) -> None:
    assert await client.cas(b"k", None, b"1") is True
    assert not fake.requests["CompareAndSet"][0].HasField("expected")
    assert await client.cas(b"k", None, b"2") is False
    assert await client.cas(b"k", b"1", b"2") is True
    assert await client.cas(b"k", b"1", b"3") is False
    assert await client.get(b"k") == b"2"
    assert await client.cas(b"k", b"", b"4") is False
    assert fake.requests["CompareAndSet"][-1].HasField("expected")


# -- sessions ---------------------------------------------------------------------------


def test_sessions_acked_floor_waits_for_every_seq_below() -> None:
    sessions = SessionNumbers(client_id=7)
    seqs = [sessions.begin() for _ in range(4)]
    assert seqs == [1, 2, 3, 4]
    sessions.finish(2)
    sessions.finish(3)
    assert sessions.acked_seq == 0
    sessions.finish(1)
    assert sessions.acked_seq == 3
    sessions.finish(4)
    assert sessions.acked_seq == 4


async def test_writes_carry_one_client_id_and_rising_seqs(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put(b"a", b"1")
    await client.delete(b"a")
    await client.cas(b"a", None, b"2")
    sessions = [fake.requests[method][0].session for method in ("Put", "Delete", "CompareAndSet")]
    assert {session.client_id for session in sessions} == {client.client_id}
    assert 0 < client.client_id < 1 << 63
    assert [(session.seq, session.acked_seq) for session in sessions] == [(1, 0), (2, 1), (3, 2)]


async def test_client_ids_differ_between_clients(address: str) -> None:
    ids = {AsyncClient(address).client_id for _ in range(5)}
    assert len(ids) == 5


async def test_acked_seq_stays_below_a_write_in_flight(
    client: AsyncClient, fake: FakeRouter
) -> None:
    hold = threading.Event()
    fake.holds[b"slow"] = hold
    slow = asyncio.create_task(client.put(b"slow", b"1"))  # seq 1, held by the router
    while not any(request.key == b"slow" for request in fake.requests["Put"]):
        await asyncio.sleep(0.001)
    await client.put(b"b", b"2")  # seq 2, finished
    await client.put(b"c", b"3")  # seq 3: 2 finished, 1 not
    hold.set()
    await slow
    await client.put(b"d", b"4")  # seq 4: 1..3 finished
    sessions = {request.key: request.session for request in fake.requests["Put"]}
    assert (sessions[b"c"].seq, sessions[b"c"].acked_seq) == (3, 0)
    assert (sessions[b"d"].seq, sessions[b"d"].acked_seq) == (4, 3)


async def test_a_retried_write_reuses_its_seq_and_applies_once(
    client: AsyncClient, fake: FakeRouter
) -> None:
    # The router applies the write, then its answer is lost (UNAVAILABLE).
    fake.fail("PutMany", grpc.StatusCode.UNAVAILABLE, "answer lost", after_apply=True)
    await client.put_many({b"a": b"1"})
    attempts = fake.requests["PutMany"]
    assert len(attempts) == 2
    assert attempts[0].session.seq == attempts[1].session.seq == 1
    assert attempts[0].session.client_id == attempts[1].session.client_id
    assert fake.applied_count == 1


# -- retries, deadlines, errors ---------------------------------------------------------


async def test_unavailable_is_retried_at_the_next_router(
    dead_address: str, address: str, fake: FakeRouter
) -> None:
    async with AsyncClient([dead_address, address], retry=FAST_RETRY) as client:
        await client.put(b"k", b"v")
        assert await client.get(b"k") == b"v"
    assert len(fake.requests["Put"]) == 1


class StuckRouter(FakeRouter):
    """A router that takes calls and never answers them (paused, wedged)."""

    async def Put(self, request: Any, context: Any) -> router_pb2.PutResponse:
        self.requests["Put"].append(request)
        await asyncio.sleep(30)
        raise AssertionError("unreachable")


async def test_a_router_that_does_not_answer_is_left_after_one_attempt(
    address: str, fake: FakeRouter
) -> None:
    stuck = RouterThread(StuckRouter())
    try:
        retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, attempt_timeout=0.3)
        async with AsyncClient([stuck.address, address], retry=retry, timeout=5) as client:
            started = time.monotonic()
            await client.put(b"k", b"v")
            assert time.monotonic() - started < 2.0
        assert stuck.servicer.requests["Put"][0].session.seq == 1
        assert [request.session.seq for request in fake.requests["Put"]] == [1]
        assert fake.data == {b"k": b"v"}
    finally:
        stuck.stop()


async def test_router_unavailable_is_retried_until_it_answers(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.fail("Get", grpc.StatusCode.UNAVAILABLE, "group 3 has no leader", times=3)
    await client.put(b"k", b"v")
    assert await client.get(b"k") == b"v"
    assert len(fake.requests["Get"]) == 4


async def test_a_read_out_of_time_raises_unavailable_with_the_router_message(
    address: str, fake: FakeRouter
) -> None:
    fake.fail("Get", grpc.StatusCode.UNAVAILABLE, "group 3 has no leader", times=1000)
    async with AsyncClient(address, timeout=0.2, retry=FAST_RETRY) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="group 3 has no leader") as excinfo:
            await client.get(b"k")
    assert 0.1 < time.monotonic() - started < 1.0
    assert excinfo.value.code is grpc.StatusCode.UNAVAILABLE
    assert excinfo.value.details == "group 3 has no leader"
    assert len(fake.requests["Get"]) > 2
    assert isinstance(excinfo.value.__cause__, grpc.aio.AioRpcError)


async def test_a_write_out_of_time_says_it_may_have_applied(address: str, fake: FakeRouter) -> None:
    fake.fail("Put", grpc.StatusCode.UNAVAILABLE, "group 3 has no leader", times=1000)
    async with AsyncClient(address, timeout=5, retry=FAST_RETRY) as client:
        with pytest.raises(DeadlineExceeded, match="may or may not have applied") as excinfo:
            await client.put(b"k", b"v", timeout=0.2)  # the call's timeout wins
        assert "group 3 has no leader" in str(excinfo.value)
        assert excinfo.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert {request.session.seq for request in fake.requests["Put"]} == {1}
        # Given up: the next write acknowledges it.
        fake.failures["Put"].clear()
        await client.put(b"k", b"v")
    assert fake.requests["Put"][-1].session.acked_seq == 1


async def test_a_slow_router_runs_into_the_call_deadline(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.delays["Get"] = 2.0
    fake.delays["Delete"] = 2.0
    with pytest.raises(DeadlineExceeded) as read_error:
        await client.get(b"k", timeout=0.1)
    assert "may or may not" not in str(read_error.value)
    with pytest.raises(DeadlineExceeded, match="may or may not have applied"):
        await client.delete(b"k", timeout=0.1)


async def test_no_router_at_all_is_unavailable(dead_address: str) -> None:
    async with AsyncClient([dead_address], timeout=0.2, retry=FAST_RETRY) as client:
        with pytest.raises(Unavailable, match="gave up after"):
            await client.status()


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ABORTED, Aborted),
        (grpc.StatusCode.INTERNAL, ClusterError),
        (grpc.StatusCode.UNKNOWN, ClusterError),
        (grpc.StatusCode.FAILED_PRECONDITION, ClusterError),
    ],
)
async def test_other_errors_are_typed_and_never_retried(
    client: AsyncClient, fake: FakeRouter, code: grpc.StatusCode, error_class: type[ClientError]
) -> None:
    fake.fail("Put", code, "the value is 2000000 bytes; at most 1048576")
    with pytest.raises(error_class) as excinfo:
        await client.put(b"k", b"v")
    assert type(excinfo.value) is error_class
    assert excinfo.value.code is code
    assert excinfo.value.details == "the value is 2000000 bytes; at most 1048576"
    assert "Put" in str(excinfo.value)
    assert len(fake.requests["Put"]) == 1


async def test_messages_up_to_64_mib_pass(client: AsyncClient) -> None:
    value = b"x" * (5 * 1024 * 1024)  # above gRPC's default 4 MiB receive limit
    await client.put(b"big", value)
    assert await client.get(b"big") == value


# -- many keys --------------------------------------------------------------------------


async def test_put_many_sends_batches_each_its_own_seq(
    client: AsyncClient, fake: FakeRouter
) -> None:
    items = {f"k{index:05}": f"v{index}" for index in range(2500)}
    reports: list[tuple[int, int | None]] = []
    written = await client.put_many(
        items, batch_size=1000, progress=lambda done, total: reports.append((done, total))
    )
    assert written == 2500
    assert fake.data == {key.encode(): value.encode() for key, value in items.items()}
    requests = fake.requests["PutMany"]
    assert sorted(len(request.items) for request in requests) == [500, 1000, 1000]
    assert sorted(request.session.seq for request in requests) == [1, 2, 3]
    assert sorted(done for done, _ in reports) == [done for done, _ in reports]
    assert reports[-1] == (2500, 2500)
    assert len(reports) == 3


async def test_put_many_takes_a_generator_and_bounds_concurrency(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.delays["PutMany"] = 0.02
    pairs = ((b"k%03d" % index, b"v") for index in range(100))
    totals: list[int | None] = []
    written = await client.put_many(
        pairs, batch_size=10, concurrency=3, progress=lambda _, total: totals.append(total)
    )
    assert written == 100
    assert len(fake.data) == 100
    assert fake.max_in_flight["PutMany"] == 3
    assert set(totals) == {None}


async def test_put_many_stops_at_the_first_failure(client: AsyncClient, fake: FakeRouter) -> None:
    fake.fail("PutMany", grpc.StatusCode.INVALID_ARGUMENT, "value too large")
    with pytest.raises(InvalidArgument, match="value too large"):
        await client.put_many(
            [(b"k%03d" % index, b"v") for index in range(100)], batch_size=10, concurrency=1
        )
    assert len(fake.requests["PutMany"]) == 1


async def test_put_many_progress_line_on_stderr(
    client: AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.put_many([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "3 / 3 keys" in err
    assert "keys/s" in err


async def test_get_many_returns_the_keys_that_exist(client: AsyncClient, fake: FakeRouter) -> None:
    fake.data.update({b"a": b"1", b"c": b"3", b"e": b"5"})
    found = await client.get_many(["a", b"b", b"c", b"d", b"e"], batch_size=2)
    assert found == {b"a": b"1", b"c": b"3", b"e": b"5"}
    assert sorted(list(request.keys) for request in fake.requests["GetMany"]) == [
        [b"a", b"b"],
        [b"c", b"d"],
        [b"e"],
    ]


async def test_scan_pages_with_the_continuation_in_key_order(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.data.update({b"k%02d" % index: b"v%d" % index for index in range(25)})
    fake.data[b"other"] = b"x"
    pairs = [pair async for pair in client.scan(prefix=b"k", page_size=10)]
    assert pairs == [(b"k%02d" % index, b"v%d" % index) for index in range(25)]
    requests = fake.requests["ScanKeys"]
    assert len(requests) == 3
    assert [request.continuation for request in requests] == [b"", b"k09", b"k19"]


async def test_scan_limit_and_range(client: AsyncClient, fake: FakeRouter) -> None:
    fake.data.update({b"k%02d" % index: b"v" for index in range(25)})
    limited = [key async for key, _ in client.scan(limit=15, page_size=10)]
    assert limited == [b"k%02d" % index for index in range(15)]
    assert [request.limit for request in fake.requests["ScanKeys"]] == [10, 5]
    ranged = [key async for key, _ in client.scan(start=b"k05", end=b"k08")]
    assert ranged == [b"k05", b"k06", b"k07"]
    assert [pair async for pair in client.scan(limit=0)] == []


async def test_scan_arguments_are_checked_when_called(client: AsyncClient) -> None:
    with pytest.raises(ValueError, match="not both"):
        client.scan(prefix=b"a", start=b"b")
    with pytest.raises(ValueError, match="limit"):
        client.scan(limit=-1)
    with pytest.raises(ValueError, match="page_size"):
        client.scan(page_size=0)


async def test_status_returns_the_router_answer(client: AsyncClient, fake: FakeRouter) -> None:
    fake.status.map.cluster_id = "test"
    fake.status.shares.add(group_id=1, share=1.0)
    status = await client.status()
    assert status.map.cluster_id == "test"
    assert [(share.group_id, share.share) for share in status.shares] == [(1, 1.0)]


# -- transactions (one request) ---------------------------------------------------------


async def test_txn_runs_the_then_branch_when_every_compare_holds(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put(b"a", b"1")
    result = await client.txn(
        [value("a") == b"1", absent("b")],
        [put("b", "2"), delete("a"), get("a")],
        [get("a")],
    )
    assert result.succeeded
    a_before = KeyValue(b"a", b"1", 1, 1, 1)
    assert result.results == [
        PutResult(b"b", None),
        DeleteResult(b"a", True, a_before),
        GetResult(b"a", a_before),  # as it was before the transaction
    ]
    assert fake.data == {b"b": b"2"}
    request = fake.requests["Txn"][0]
    assert list(request.compares) == [value("a") == b"1", absent("b")]
    assert list(request.failure) == [get("a")]
    assert (request.session.client_id, request.session.seq) == (client.client_id, 2)


async def test_txn_runs_the_else_branch_when_a_compare_fails(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put(b"a", b"1")
    result = await client.txn([value("a") == b"2"], [put("a", "3")], [get("a"), get("zz")])
    assert not result.succeeded
    assert result.results == [
        GetResult(b"a", KeyValue(b"a", b"1", 1, 1, 1)),
        GetResult(b"zz", None),
    ]
    first = result.results[0]
    assert isinstance(first, GetResult) and first.value == b"1"
    assert fake.data == {b"a": b"1"}


async def test_txn_aborted_is_retried_with_a_new_seq(client: AsyncClient, fake: FakeRouter) -> None:
    fake.fail("Txn", grpc.StatusCode.ABORTED, "key b'a' is held by transaction 1:1", times=2)
    result = await client.txn([absent("a")], [put("a", "1")])
    assert result.succeeded
    sessions = [request.session for request in fake.requests["Txn"]]
    # Each conflict is finished (nothing applied) and its seq acked by the next attempt.
    assert [(session.seq, session.acked_seq) for session in sessions] == [(1, 0), (2, 1), (3, 2)]
    assert fake.applied_count == 1
    assert fake.data == {b"a": b"1"}


async def test_txn_gives_up_after_conflict_retries_with_transaction_conflict(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.fail("Txn", grpc.StatusCode.ABORTED, "key b'a' is held", times=100)
    with pytest.raises(TransactionConflict, match="is held") as excinfo:
        await client.txn([absent("a")], [put("a", "1")], conflict_retries=3)
    assert isinstance(excinfo.value, Aborted)
    assert excinfo.value.code is grpc.StatusCode.ABORTED
    assert "gave up after 4 attempts" in "".join(excinfo.value.__notes__)
    assert [request.session.seq for request in fake.requests["Txn"]] == [1, 2, 3, 4]
    assert not fake.data
    with pytest.raises(TransactionConflict):
        await client.txn([absent("a")], [put("a", "1")], conflict_retries=0)
    assert len(fake.requests["Txn"]) == 5


async def test_txn_unavailable_is_retried_with_the_same_seq_and_applies_once(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put(b"n", b"0")
    # The router applies the transaction, then its answer is lost.
    fake.fail("Txn", grpc.StatusCode.UNAVAILABLE, "answer lost", after_apply=True, times=2)
    result = await client.txn([value("n") == b"0"], [put("n", "1")], [put("n", "x")])
    assert result.succeeded, "the retry finds the first outcome, not the else branch"
    assert {request.session.seq for request in fake.requests["Txn"]} == {2}
    assert len(fake.requests["Txn"]) == 3
    assert fake.data == {b"n": b"1"}


async def test_txn_out_of_time_is_unknown_and_never_started_anew(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.fail("Txn", grpc.StatusCode.UNAVAILABLE, "group 2 has no leader", times=1000)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="may or may not have applied"):
        await client.txn([], [put("a", "1")], timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert len(fake.requests["Txn"]) > 2
    assert {request.session.seq for request in fake.requests["Txn"]} == {1}


async def test_txn_other_errors_are_raised_at_once(client: AsyncClient, fake: FakeRouter) -> None:
    fake.fail("Txn", grpc.StatusCode.INVALID_ARGUMENT, "the success branch writes b'a' twice")
    with pytest.raises(InvalidArgument, match="twice"):
        await client.txn([], [put("a", "1"), put("a", "2")])
    fake.fail("Txn", grpc.StatusCode.INTERNAL, "boom")
    with pytest.raises(ClusterError, match="boom"):
        await client.txn([], [put("a", "1")])
    assert [request.session.seq for request in fake.requests["Txn"]] == [1, 2]


async def test_txn_arguments_are_checked_before_anything_is_sent(
    client: AsyncClient, fake: FakeRouter
) -> None:
    with pytest.raises(ValueError, match="conflict_retries"):
        await client.txn([], [put("a", "1")], conflict_retries=-1)
    with pytest.raises(TypeError, match="conflict_retries"):
        await client.txn([], [put("a", "1")], conflict_retries=True)
    with pytest.raises(TypeError):
        await client.txn([], [(b"a", b"1")])  # type: ignore[list-item]
    assert not fake.requests


def test_blocking_txn(sync_client: Client, fake: FakeRouter) -> None:
    fake.fail("Txn", grpc.StatusCode.ABORTED, "held", times=1)
    result = sync_client.txn([absent("k")], [put("k", "v")])
    assert result == TxnResult(True, [PutResult(b"k", None)])
    assert sync_client.get_kv("k") == KeyValue(b"k", b"v", 1, 1, 1)
    assert [request.session.seq for request in fake.requests["Txn"]] == [1, 2]


# -- transactions, for operators ---------------------------------------------------------


async def test_admin_calls_name_transactions_by_hex_client_and_seq(
    client: AsyncClient, fake: FakeRouter
) -> None:
    ref = kv_pb2.TxnRef(client_id=0x3F2A, seq=17)
    fake.txns = [router_pb2.TxnSummary(txn=ref, state=kv_pb2.TXN_PREPARED)]
    fake.shown[(0x3F2A, 17)] = router_pb2.ShowTxnResponse(txn=fake.txns[0])
    assert [summary.txn for summary in await client.list_transactions()] == [ref]
    assert (await client.show_transaction("3f2a:17")).txn.txn == ref
    record = await client.resolve_transaction("3F2A:17", commit=False)
    assert record.state == kv_pb2.TXN_ABORTED
    assert fake.requests["ResolveTxn"][0] == router_pb2.ResolveTxnRequest(txn=ref, commit=False)
    with pytest.raises(NotFound):
        await client.show_transaction("3f2a:18")


async def test_admin_calls_refuse_bad_ids_and_a_commit_that_is_not_a_bool(
    client: AsyncClient, fake: FakeRouter
) -> None:
    for bad in ("", "3f2a", "3f2a:", ":17", "xyz:1", "0:1", "1:0", "0x3f:1", "1:-1"):
        with pytest.raises(InvalidArgument, match="not a transaction id"):
            await client.show_transaction(bad)
    with pytest.raises(TypeError, match="bool"):
        await client.resolve_transaction("1:1", "abort")  # type: ignore[arg-type]
    assert not fake.requests


# -- ring changes -------------------------------------------------------------------------


def four_groups(the_map: cluster_pb2.ClusterMap) -> None:
    """Make ``the_map`` one of four data groups of weight 1 on nodes 1, 2 and 3 (up), in
    ring epoch 3."""
    the_map.version = 10
    the_map.ring.CopyFrom(ring_of(3, dict.fromkeys((1, 2, 3, 4), 1)))
    the_map.groups.add(group_id=0, replicas=[1, 2, 3])
    for group_id in (1, 2, 3, 4):
        the_map.groups.add(group_id=group_id, replicas=[1, 2, 3], weight=1)
    for node_id in (1, 2, 3):
        the_map.nodes.add(node_id=node_id, address=f"127.0.0.1:710{node_id}", state="up")


async def test_a_dry_run_returns_the_plan_and_changes_nothing(
    client: AsyncClient, fake: FakeRouter
) -> None:
    four_groups(fake.status.map)
    before = cluster_pb2.ClusterMap()
    before.CopyFrom(fake.status.map)
    plan = await client.add_group(weight=2, nodes=[1, 2, 3], dry_run=True)
    assert [entry.group_id for entry in plan.migration.target.groups] == [1, 2, 3, 4, 5]
    assert plan.migration.target.epoch == 4
    assert {(move.source, move.target) for move in plan.migration.moves} == {
        (1, 5),
        (2, 5),
        (3, 5),
        (4, 5),
    }
    assert fake.status.map == before
    assert fake.requests["ChangeRing"] == [
        node_pb2.ChangeRingRequest(
            add_group=node_pb2.AddGroup(weight=2, nodes=[1, 2, 3]), dry_run=True
        )
    ]


async def test_add_group_without_an_id_adds_the_id_its_plan_gave(
    client: AsyncClient, fake: FakeRouter
) -> None:
    # So that a retry of the change cannot add a second group.
    four_groups(fake.status.map)
    changed = await client.add_group()
    assert changed.migration.reason == "add-group 5"
    assert fake.status.map.HasField("migration")
    assert [(r.add_group.group_id, r.dry_run) for r in fake.requests["ChangeRing"]] == [
        (0, True),
        (5, False),
    ]


async def test_remove_group_and_set_weight_send_their_change(
    client: AsyncClient, fake: FakeRouter
) -> None:
    four_groups(fake.status.map)
    plan = await client.remove_group(2, dry_run=True)
    assert list(plan.migration.retiring) == [2]
    assert {move.source for move in plan.migration.moves} == {2}
    plan = await client.set_weight(3, 0, dry_run=True)
    assert [entry.group_id for entry in plan.migration.target.groups] == [1, 2, 4]
    assert fake.requests["ChangeRing"] == [
        node_pb2.ChangeRingRequest(remove_group=2, dry_run=True),
        node_pb2.ChangeRingRequest(
            set_weight=node_pb2.SetWeight(group_id=3, weight=0), dry_run=True
        ),
    ]
    changed = await client.set_weight(3, 2)
    assert changed.migration.reason == "set-weight 3 2"
    # One change at a time: the meta group refuses the next one.
    with pytest.raises(ClusterError) as refused:
        await client.remove_group(1)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "under way (set-weight 3 2, to epoch 4)" in refused.value.details


async def test_ring_changes_refuse_bad_arguments_before_any_call(
    client: AsyncClient, fake: FakeRouter
) -> None:
    with pytest.raises(ValueError, match="weight"):
        await client.add_group(weight=0)
    with pytest.raises(ValueError, match="node id"):
        await client.add_group(nodes=[1, 0])
    with pytest.raises(TypeError, match="group_id"):
        await client.remove_group("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_id"):
        await client.remove_group(0)
    with pytest.raises(ValueError, match="weight"):
        await client.set_weight(1, -1)
    with pytest.raises(TypeError, match="dry_run"):
        await client.set_weight(1, 1, dry_run="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_keys_per_second"):
        await client.add_group(max_keys_per_second=-1)
    with pytest.raises(ValueError, match="max_keys_per_second"):
        await client.set_move_rate(-5)
    with pytest.raises(TypeError, match="max_keys_per_second"):
        await client.remove_group(2, max_keys_per_second=1.5)  # type: ignore[arg-type]
    assert not fake.requests


async def test_a_ring_change_carries_its_limit_and_set_move_rate_changes_it(
    client: AsyncClient, fake: FakeRouter
) -> None:
    four_groups(fake.status.map)
    with pytest.raises(ClusterError, match="no ring change is under way") as refused:
        await client.set_move_rate(1_000)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    changed = await client.remove_group(2, max_keys_per_second=30_000)
    assert changed.migration.max_keys_per_second == 30_000
    assert fake.requests["ChangeRing"][-1].max_keys_per_second == 30_000
    changed = await client.set_move_rate(1_000)
    assert changed.migration.max_keys_per_second == 1_000
    assert fake.requests["ChangeRing"][-1] == node_pb2.ChangeRingRequest(move_rate=1_000)
    assert fake.status.map.migration.max_keys_per_second == 1_000
    assert changed.migration.reason == "remove-group 2", "the change under way, limited"


def test_ring_changes_from_the_blocking_client(sync_client: Client, fake: FakeRouter) -> None:
    four_groups(fake.status.map)
    with pytest.raises(ClusterError, match="there is no group 9") as refused:
        sync_client.remove_group(9)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert sync_client.add_group(group_id=7, dry_run=True).migration.reason == "add-group 7"
    planned = sync_client.add_group(group_id=7, dry_run=True, max_keys_per_second=9)
    assert planned.migration.max_keys_per_second == 9
    assert sync_client.set_weight(1, 3).migration.reason == "set-weight 1 3"
    assert fake.status.map.migration.target.epoch == 4
    assert sync_client.set_move_rate(500).migration.max_keys_per_second == 500


# -- placement changes --------------------------------------------------------------------


def four_nodes(the_map: cluster_pb2.ClusterMap) -> None:
    """``four_groups`` on nodes 1, 2 and 3, and node 4 up and empty (it just joined)."""
    four_groups(the_map)
    the_map.nodes.add(node_id=4, address="127.0.0.1:7104", state="up")


async def test_placement_changes_send_their_change_and_a_dry_run_keeps_nothing(
    client: AsyncClient, fake: FakeRouter
) -> None:
    four_nodes(fake.status.map)
    before = cluster_pb2.ClusterMap()
    before.CopyFrom(fake.status.map)
    plan = await client.move_replica(2, 3, 4, dry_run=True)
    assert [(m.group_id, m.from_node, m.to_node) for m in plan.replica_moves] == [(2, 3, 4)]
    assert list(plan.groups[2].learners) == [4]
    plan = await client.remove_node(1, dry_run=True)
    assert next(node.state for node in plan.nodes if node.node_id == 1) == "leaving"
    assert {move.from_node for move in plan.replica_moves} == {1}
    plan = await client.transfer_leader(0, 2, dry_run=True)
    assert plan.groups[0].preferred_leader == 2
    plan = await client.rebalance_replicas(dry_run=True)
    assert {move.to_node for move in plan.replica_moves} == {4}
    assert fake.status.map == before
    assert fake.requests["ChangePlacement"] == [
        node_pb2.ChangePlacementRequest(
            move_replica=node_pb2.MoveReplica(group_id=2, from_node=3, to_node=4), dry_run=True
        ),
        node_pb2.ChangePlacementRequest(remove_node=1, dry_run=True),
        node_pb2.ChangePlacementRequest(
            transfer_leader=node_pb2.TransferLeader(group_id=0, to_node=2), dry_run=True
        ),
        node_pb2.ChangePlacementRequest(rebalance=True, dry_run=True),
    ]
    changed = await client.move_replica(2, 3, 4)
    assert fake.status.map == changed
    assert changed.replica_moves[0].phase == cluster_pb2.REPLICA_PENDING
    # A repeat (a retry whose first answer was lost) is refused, never applied twice.
    with pytest.raises(ClusterError) as refused:
        await client.move_replica(2, 3, 4)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "node 4 holds a replica of group 2 already" in refused.value.details
    assert len(fake.status.map.replica_moves) == 1


async def test_placement_changes_refuse_bad_arguments_before_any_call(
    client: AsyncClient, fake: FakeRouter
) -> None:
    with pytest.raises(ValueError, match="from_node"):
        await client.move_replica(1, 0, 2)
    with pytest.raises(ValueError, match="to_node"):
        await client.move_replica(1, 2, -1)
    with pytest.raises(TypeError, match="group_id"):
        await client.move_replica("1", 2, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="node_id"):
        await client.remove_node(0)
    with pytest.raises(TypeError, match="to_node"):
        await client.transfer_leader(1, True)
    with pytest.raises(TypeError, match="dry_run"):
        await client.rebalance_replicas(dry_run=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        await client.transfer_leader(1, 2, timeout=-5)
    with pytest.raises(ValueError, match="timeout"):
        await client.remove_group(3, timeout=0)
    assert not fake.requests


def test_placement_changes_from_the_blocking_client(sync_client: Client, fake: FakeRouter) -> None:
    four_nodes(fake.status.map)
    assert sync_client.move_replica(1, 1, 4, dry_run=True).replica_moves[0].to_node == 4
    assert sync_client.transfer_leader(1, 3).groups[1].preferred_leader == 3
    assert sync_client.remove_node(4).nodes[3].state == "removed", "it held nothing"
    with pytest.raises(ClusterError, match="not an up member"):
        sync_client.move_replica(1, 1, 4)
    assert sync_client.rebalance_replicas().version == fake.status.map.version


# -- lifecycle and the blocking face ----------------------------------------------------


async def test_async_client_after_close_is_a_clear_error(address: str) -> None:
    client = AsyncClient(address)
    await client.put(b"k", b"v")
    await client.close()
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get(b"k")


async def test_closing_ends_calls_in_flight_with_a_clear_error(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.delays["Get"] = 5.0
    call = asyncio.create_task(client.get(b"k"))
    while not fake.requests["Get"]:
        await asyncio.sleep(0.001)
    await client.close()
    with pytest.raises(RuntimeError, match="closed during the call"):
        await call


async def test_cancelling_the_caller_still_cancels(client: AsyncClient, fake: FakeRouter) -> None:
    fake.delays["Put"] = 5.0
    call = asyncio.create_task(client.put(b"k", b"v"))
    while not fake.requests["Put"]:
        await asyncio.sleep(0.001)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    del fake.delays["Put"]
    await client.put(b"k2", b"v")  # the cancelled write counts as finished
    assert fake.requests["Put"][-1].session.acked_seq == 1


def test_constructor_checks_addresses_and_timeout() -> None:
    with pytest.raises(ValueError, match="host:port"):
        AsyncClient("localhost")
    with pytest.raises(ValueError, match="host:port"):
        Client(["127.0.0.1:7000", "127.0.0.1:x"])
    with pytest.raises(TypeError):
        AsyncClient(7000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        AsyncClient("127.0.0.1:7000", timeout=0)
    assert AsyncClient("a:1, b:2").addresses == ("a:1", "b:2")


def test_blocking_client_does_everything_the_async_one_does(
    sync_client: Client, fake: FakeRouter
) -> None:
    sync_client.put("a", "1")
    assert sync_client.get("a") == b"1"
    assert sync_client.cas("a", "1", "2") is True
    assert sync_client.put_many({b"b": b"2", b"c": b"3"}) == 2
    assert sync_client.get_many([b"a", b"b", b"zz"]) == {b"a": b"2", b"b": b"2"}
    assert list(sync_client.scan()) == [(b"a", b"2"), (b"b", b"2"), (b"c", b"3")]
    assert sync_client.delete("a") is True
    fake.status.map.cluster_id = "sync"
    assert sync_client.status().map.cluster_id == "sync"
    sessions = [fake.requests[method][0].session for method in ("Put", "CompareAndSet", "PutMany")]
    assert [session.seq for session in sessions] == [1, 2, 3]


def test_blocking_client_raises_the_same_errors(sync_client: Client, fake: FakeRouter) -> None:
    fake.fail("Get", grpc.StatusCode.INTERNAL, "boom")
    with pytest.raises(ClusterError, match="boom"):
        sync_client.get("a")


def test_blocking_scan_fetches_pages_as_it_goes(sync_client: Client, fake: FakeRouter) -> None:
    fake.data.update({b"k%02d" % index: b"v" for index in range(30)})
    scan = sync_client.scan(page_size=10)
    first = [next(scan) for _ in range(3)]
    assert first == [(b"k00", b"v"), (b"k01", b"v"), (b"k02", b"v")]
    scan.close()
    assert len(fake.requests["ScanKeys"]) == 1


def test_blocking_client_close_stops_its_thread(address: str) -> None:
    before = threading.active_count()
    client = Client(address)
    client.put("k", "v")
    assert threading.active_count() == before + 1
    client.close()
    client.close()
    assert threading.active_count() == before
    with pytest.raises(RuntimeError, match="closed"):
        client.get("k")


def test_blocking_client_works_inside_a_running_loop(address: str) -> None:
    async def main() -> bytes | None:
        with Client(address) as client:
            client.put("k", "v")
            return client.get("k")

    assert asyncio.run(main()) == b"v"


# -- coalescing of single-key calls --


async def test_concurrent_single_key_calls_share_few_rpcs_and_apply_once(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.delays["Put"] = 0.02  # so that calls pile up behind the first few
    await asyncio.gather(*(client.put(b"k%d" % n, b"v%d" % n) for n in range(200)))
    alone = len(fake.requests["Put"]) - fake.batched
    rpcs = alone + len(fake.requests["Batch"])
    assert rpcs <= 40, f"200 puts took {rpcs} calls"
    assert fake.requests["Batch"], "calls made while others were out left in batches"
    assert fake.applied_count == 200
    assert fake.data == {b"k%d" % n: b"v%d" % n for n in range(200)}
    sessions = [request.session.seq for request in fake.requests["Put"]]
    assert sorted(sessions) == list(range(1, 201)), "each write its own seq, sent once"
    values = await asyncio.gather(*(client.get(b"k%d" % n) for n in range(200)))
    assert values == [b"v%d" % n for n in range(200)]


async def test_a_lone_call_goes_as_its_own_rpc(client: AsyncClient, fake: FakeRouter) -> None:
    await client.put(b"a", b"1")
    assert await client.get(b"a") == b"1"
    assert len(fake.requests["Put"]) == len(fake.requests["Get"]) == 1
    assert not fake.requests["Batch"]


async def test_a_call_of_a_batch_is_retried_alone_and_errors_stay_its_own(
    client: AsyncClient, fake: FakeRouter
) -> None:
    fake.delays["Put"] = 0.02
    # The first 16 puts go alone, the rest wait and leave in a batch. Four of
    # the batched ones apply and then fail with UNAVAILABLE (answers lost):
    # each is retried on its own, in a later batch, and answered from its
    # session, not applied again.
    for n in range(30, 34):
        fake.lost_answers[b"p%d" % n] = 1
    fake.fail("CompareAndSet", grpc.StatusCode.FAILED_PRECONDITION, "no way")
    calls = [client.put(b"p%d" % n, b"v") for n in range(40)]
    results = await asyncio.gather(*calls, client.cas(b"c", None, b"v"), return_exceptions=True)
    assert results[:40] == [None] * 40
    assert isinstance(results[40], ClientError) and "no way" in str(results[40])
    batched = [len(batch.requests) for batch in fake.requests["Batch"]]
    assert len(batched) >= 2 and sum(batched) == 25 + 4, batched
    assert len(fake.requests["Put"]) == 44, "four retried, each once"
    assert fake.applied_count == 40
