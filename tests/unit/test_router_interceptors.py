"""``shardkv.interceptors.DecodeInterceptor``: requests that do not decode are INVALID_ARGUMENT.

Found by tests/fault/test_fuzz.py: without it, gRPC answers bytes that are
not a message of the method's request type with UNKNOWN.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from router.limits import InFlightInterceptor
from shardkv.interceptors import DecodeInterceptor
from shardkv.v1 import router_pb2, router_pb2_grpc

GET = "/shardkv.v1.Router/Get"


class EchoRouter(router_pb2_grpc.RouterServicer):
    async def Get(self, request: Any, context: Any) -> router_pb2.GetResponse:
        return router_pb2.GetResponse(kv={"key": request.key})


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, InFlightInterceptor]]:
    limiter = InFlightInterceptor(4)
    server = grpc.aio.server(interceptors=[limiter, DecodeInterceptor()])
    router_pb2_grpc.add_RouterServicer_to_server(EchoRouter(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", limiter
    await server.stop(None)


@pytest.mark.parametrize("data", [b"\x00", b"\xff" * 4, b"\x0a\x05ab", b"\x08"])
async def test_undecodable_requests_are_invalid_argument(
    served: tuple[str, InFlightInterceptor], data: bytes
) -> None:
    address, limiter = served
    async with grpc.aio.insecure_channel(address) as channel:
        get = channel.unary_unary(GET, None, None)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get(data, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert GET in details and "not a valid message" in details
    # Refused inside the other interceptors: its place in flight is given back.
    # gRPC sends the status from inside ``abort``, before the error unwinds
    # through the limiter, so the client may hear it a moment before that.
    for _ in range(200):
        if limiter.in_flight == 0:
            break
        await asyncio.sleep(0.005)
    assert limiter.in_flight == 0


async def test_requests_that_decode_are_served(served: tuple[str, InFlightInterceptor]) -> None:
    address, _ = served
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(2):  # the second call takes the kept handler
            response = await stub.Get(router_pb2.GetRequest(key=b"k"), timeout=5)
            assert response.kv.key == b"k"
        empty = await channel.unary_unary(GET, None, None)(b"", timeout=5)
        assert router_pb2.GetResponse.FromString(empty) == router_pb2.GetResponse(kv={})
