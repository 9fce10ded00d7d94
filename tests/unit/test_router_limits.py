"""The router's limits (``router.limits``): calls in flight, queued requests per group,
keys per call, deadlines, and the client's retry of RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from router import AsyncClient, ResourceExhausted, RetryPolicy
from router.groups import GroupBatcher, Overloaded
from router.limits import RETRY_AFTER_KEY, InFlightInterceptor, RouterLimits
from router.service import RouterService
from router.topology import Topology
from shardkv.limits import MAX_OPERATIONS
from shardkv.v1 import router_pb2, router_pb2_grpc

FAST_RETRY = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)


class HeldRouter(router_pb2_grpc.RouterServicer):
    """Get waits for ``release``; Put fails ``refusals`` times with RESOURCE_EXHAUSTED first."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.refusals = 0
        self.hint: str | None = "30"
        self.puts = 0

    async def Get(self, request: Any, context: Any) -> router_pb2.GetResponse:
        await self.release.wait()
        return router_pb2.GetResponse()

    async def Put(self, request: Any, context: Any) -> router_pb2.PutResponse:
        self.puts += 1
        if self.refusals:
            self.refusals -= 1
            if self.hint is not None:
                context.set_trailing_metadata(((RETRY_AFTER_KEY, self.hint),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        return router_pb2.PutResponse()


async def _serve(servicer: Any, *interceptors: Any) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=list(interceptors))
    router_pb2_grpc.add_RouterServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def held() -> AsyncIterator[tuple[HeldRouter, InFlightInterceptor, str]]:
    servicer = HeldRouter()
    limiter = InFlightInterceptor(2)
    server, address = await _serve(servicer, limiter)
    yield servicer, limiter, address
    servicer.release.set()
    await server.stop(None)


async def test_calls_beyond_max_in_flight_are_refused_with_a_retry_hint(
    held: tuple[HeldRouter, InFlightInterceptor, str],
) -> None:
    servicer, limiter, address = held
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        holding = [
            asyncio.ensure_future(stub.Get(router_pb2.GetRequest(key=b"k"), timeout=5))
            for _ in range(2)
        ]
        while limiter.in_flight < 2:
            await asyncio.sleep(0.005)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Get(router_pb2.GetRequest(key=b"k"), timeout=5)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry after" in (refused.value.details() or "")
        trailing: list[object] = list(refused.value.trailing_metadata() or ())
        assert (RETRY_AFTER_KEY, "50") in trailing
        servicer.release.set()
        await asyncio.gather(*holding)
        # Places are given back: calls are served again.
        await stub.Get(router_pb2.GetRequest(key=b"k"), timeout=5)
    # The server gives the place back after the reply is on its way: a busy
    # machine can show the client its answer first.
    for _ in range(400):
        if limiter.in_flight == 0:
            break
        await asyncio.sleep(0.005)
    assert limiter.in_flight == 0


async def test_the_client_retries_resource_exhausted_after_the_hint(
    held: tuple[HeldRouter, InFlightInterceptor, str],
) -> None:
    servicer, _, address = held
    servicer.refusals = 3
    async with AsyncClient(address, retry=FAST_RETRY, timeout=5) as client:
        started = asyncio.get_running_loop().time()
        await client.put("k", "v")
        # Three waits of at least the 30 ms hint each.
        assert asyncio.get_running_loop().time() - started >= 0.09
    assert servicer.puts == 4


async def test_the_client_does_not_retry_resource_exhausted_without_a_hint(
    held: tuple[HeldRouter, InFlightInterceptor, str],
) -> None:
    servicer, _, address = held
    servicer.refusals, servicer.hint = 3, None
    async with AsyncClient(address, retry=FAST_RETRY, timeout=5) as client:
        with pytest.raises(ResourceExhausted) as raised:
            await client.put("k", "v")
    assert raised.value.retry_after is None
    assert servicer.puts == 1


async def test_the_client_gives_up_when_the_router_stays_busy(
    held: tuple[HeldRouter, InFlightInterceptor, str],
) -> None:
    servicer, _, address = held
    servicer.refusals = 1_000_000
    async with AsyncClient(address, retry=FAST_RETRY, timeout=0.3) as client:
        with pytest.raises(ResourceExhausted) as raised:
            await client.put("k", "v")
    assert raised.value.retry_after == pytest.approx(0.03)


async def test_a_group_queue_refuses_beyond_max_queued() -> None:
    release = asyncio.Event()

    async def send(items: list[int], deadline: float) -> list[int | BaseException]:
        await release.wait()
        return list(items)

    batcher: GroupBatcher[int, int] = GroupBatcher(send, max_in_flight=1, max_queued=3, group_id=7)
    first = asyncio.ensure_future(batcher.call(0, 0.0))
    await asyncio.sleep(0)
    queued = [batcher.submit(n, 0.0) for n in (1, 2, 3)]
    assert batcher.overloaded() is not None
    refused = batcher.submit(4, 0.0)
    with pytest.raises(Overloaded, match="group 7 has 3 requests waiting"):
        await refused
    assert Overloaded.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    assert await first == 0
    assert await asyncio.gather(*queued) == [1, 2, 3]
    # Room again once the queue has left.
    assert batcher.overloaded() is None
    assert await batcher.submit(5, 0.0) == 5
    await batcher.close()


def test_deadlines_default_and_are_cut_to_the_maximum() -> None:
    limits = RouterLimits(default_deadline=5.0, max_deadline=60.0)
    assert limits.deadline_for(None) == 5.0
    assert limits.deadline_for(10.0) == 10.0
    assert limits.deadline_for(3600.0) == 60.0


@pytest.mark.parametrize(
    "settings",
    [
        {"max_in_flight": 0},
        {"max_in_flight_per_group": 0},
        {"max_request_bytes": 0},
        {"max_keys_per_call": MAX_OPERATIONS + 1},
        {"default_deadline": 0.0},
        {"default_deadline": 10.0, "max_deadline": 5.0},
    ],
)
def test_limits_out_of_range_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"max_|deadline"):
        RouterLimits(**settings)


async def test_the_router_refuses_more_keys_than_max_keys_per_call() -> None:
    # No node is asked: the check comes first (the address is never dialed).
    service = RouterService(Topology(["127.0.0.1:1"]), limits=RouterLimits(max_keys_per_call=2))
    server, address = await _serve(service)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            calls = [
                stub.GetMany(router_pb2.GetManyRequest(keys=[b"a", b"b", b"c"]), timeout=5),
                stub.PutMany(
                    router_pb2.PutManyRequest(items=[{"key": b"a"}, {"key": b"b"}, {"key": b"c"}]),
                    timeout=5,
                ),
                stub.Batch(
                    router_pb2.BatchRequest(
                        requests=[{"get": {"key": b"a"}}, {"get": {"key": b"b"}}] * 2
                    ),
                    timeout=5,
                ),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "at most 2" in (refused.value.details() or "")
    finally:
        await server.stop(None)
        await service.close()
