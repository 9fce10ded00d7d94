"""Tokens and roles at the router (``router.auth``): every Router RPC, in-process.

A stub servicer answers every method of ``shardkv.v1.Router`` with an empty
response and records that its handler ran; the server has the router's real
interceptors (metrics, auth, in-flight). Each method is called by path with
no token, a bad one, a read-write one and an admin one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from router import AsyncClient, PermissionDenied, RetryPolicy, Unauthenticated
from router.auth import ADMIN_METHODS, AuthInterceptor, Role, TokensFileError, load_tokens
from router.etcd import EtcdAuth
from router.limits import InFlightInterceptor
from router.metrics import RouterMetrics
from shardkv.etcd import rpc_pb2, rpc_pb2_grpc
from shardkv.v1 import router_pb2, router_pb2_grpc

_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"]
METHODS = [method.name for method in _SERVICE.methods]
READ_WRITE = "rw-token"
ADMIN = "admin-token"
TOKENS = {READ_WRITE: Role.READ_WRITE, ADMIN: Role.ADMIN}


def _response_class(name: str) -> Any:
    # Some methods reuse the node's messages (ChangeRing): look them up by descriptor.
    return GetMessageClass(_SERVICE.methods_by_name[name].output_type)


def _request_class(name: str) -> Any:
    return GetMessageClass(_SERVICE.methods_by_name[name].input_type)


class StubRouter(router_pb2_grpc.RouterServicer):
    """Answers every method with its empty response; ``ran`` names the handlers that ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        for name in METHODS:
            setattr(self, name, self._answer(name))

    def _answer(self, name: str) -> Any:
        async def answer(request: Any, context: Any) -> Any:
            self.ran.append(name)
            return _response_class(name)()

        return answer


@pytest.fixture
def stub() -> StubRouter:
    return StubRouter()


@pytest.fixture
async def address(stub: StubRouter) -> AsyncIterator[str]:
    metrics = RouterMetrics()
    server = grpc.aio.server(
        interceptors=[metrics.interceptor, AuthInterceptor(TOKENS), InFlightInterceptor(100)]
    )
    router_pb2_grpc.add_RouterServicer_to_server(stub, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def _call(
    channel: grpc.aio.Channel, name: str, metadata: tuple[tuple[str, str], ...] | None
) -> grpc.StatusCode:
    call = channel.unary_unary(
        f"/{_SERVICE.full_name}/{name}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=_response_class(name).FromString,
    )
    try:
        await call(_request_class(name)(), metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_the_admin_methods_are_methods_of_the_service() -> None:
    assert set(METHODS) >= ADMIN_METHODS
    assert len(METHODS) > len(ADMIN_METHODS)


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", "Bearer not-a-token"),),
        (("authorization", f"Basic {ADMIN}"),),
        (("authorization", "Bearer "),),
        (("authorization", f"Bearer {ADMIN}x"),),
    ],
    ids=["none", "unknown", "not-bearer", "empty", "longer"],
)
async def test_every_method_refuses_a_caller_without_a_valid_token(
    address: str, stub: StubRouter, metadata: tuple[tuple[str, str], ...] | None
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        for name in METHODS:
            assert await _call(channel, name, metadata) is grpc.StatusCode.UNAUTHENTICATED, name
    assert stub.ran == []


async def test_a_read_write_token_may_call_all_but_the_admin_methods(
    address: str, stub: StubRouter
) -> None:
    metadata = (("authorization", f"Bearer {READ_WRITE}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        for name in METHODS:
            expected = (
                grpc.StatusCode.PERMISSION_DENIED if name in ADMIN_METHODS else grpc.StatusCode.OK
            )
            assert await _call(channel, name, metadata) is expected, name
    assert stub.ran == [name for name in METHODS if name not in ADMIN_METHODS]


async def test_an_admin_token_may_call_every_method(address: str, stub: StubRouter) -> None:
    # The scheme is case-insensitive (RFC 7235).
    metadata = (("authorization", f"bearer {ADMIN}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        for name in METHODS:
            assert await _call(channel, name, metadata) is grpc.StatusCode.OK, name
    assert stub.ran == METHODS


async def test_health_checking_needs_no_token(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_client_sends_its_token(address: str, stub: StubRouter) -> None:
    retry = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)
    async with AsyncClient(address, token=READ_WRITE, retry=retry, timeout=5) as client:
        assert await client.get("k") is None
        await client.put("k", "v")
        with pytest.raises(PermissionDenied, match="admin role"):
            await client.list_transactions()
    async with AsyncClient(address, retry=retry, timeout=5) as client:
        with pytest.raises(Unauthenticated, match="needs a valid token"):
            await client.put("k", "v")
    async with AsyncClient(address, token=ADMIN, retry=retry, timeout=5) as client:
        assert await client.list_transactions() == []
    assert stub.ran == ["Get", "Put", "ListTransactions"]


def test_tokens_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "tokens.toml"
    toml.write_text('[tokens]\n"abc" = "read-write"\n"def" = "admin"\n')
    assert load_tokens(toml) == {"abc": Role.READ_WRITE, "def": Role.ADMIN}
    as_json = tmp_path / "tokens.json"
    as_json.write_text(json.dumps({"tokens": {"abc": "admin"}}))
    assert load_tokens(as_json) == {"abc": Role.ADMIN}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"tokens": {"abc": "root"}}', "roles are admin, read-write"),
        ('{"tokens": {}}', "no tokens table"),
        ('{"abc": "admin"}', "no tokens table"),
        ('{"tokens": {" abc": "admin"}}', "empty or padded"),
        ("{", "does not parse"),
    ],
)
def test_a_bad_tokens_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(text)
    with pytest.raises(TokensFileError, match=message):
        load_tokens(path)
    with pytest.raises(TokensFileError, match="cannot read"):
        load_tokens(tmp_path / "missing.json")


class StubEtcdKV(rpc_pb2_grpc.KVServicer):
    async def Range(self, request: Any, context: Any) -> rpc_pb2.RangeResponse:
        return rpc_pb2.RangeResponse(count=7)


async def test_etcd_calls_need_a_token_which_authenticate_hands_out() -> None:
    auth = AuthInterceptor(TOKENS)
    server = grpc.aio.server(interceptors=[auth])
    rpc_pb2_grpc.add_KVServicer_to_server(StubEtcdKV(), server)  # type: ignore[no-untyped-call]
    rpc_pb2_grpc.add_AuthServicer_to_server(EtcdAuth(auth), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            etcd_auth = rpc_pb2_grpc.AuthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "etcdctl: --user any:<token>" in (refused.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await etcd_auth.Authenticate(
                    rpc_pb2.AuthenticateRequest(name="me", password="guess"), timeout=5
                )
            assert wrong.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            answer = await etcd_auth.Authenticate(
                rpc_pb2.AuthenticateRequest(name="me", password=READ_WRITE), timeout=5
            )
            assert answer.token == READ_WRITE
            for metadata in ((("token", answer.token),), (("authorization", f"Bearer {ADMIN}"),)):
                response = await kv.Range(
                    rpc_pb2.RangeRequest(key=b"k"), metadata=metadata, timeout=5
                )
                assert response.count == 7
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await kv.Range(
                    rpc_pb2.RangeRequest(key=b"k"), metadata=(("token", "x"),), timeout=5
                )
            assert unknown.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
