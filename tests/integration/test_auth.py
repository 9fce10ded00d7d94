"""Tokens, roles and limits at a real router in front of real nodes.

One cluster of 3 nodes and one ``shardkv-router`` with a tokens file
(``--tokens-file``: a read-write and an admin token) and a small in-flight
limit (``--max-in-flight 8``). Callers without a token are refused and write
nothing; the read-write token reads and writes but may not resolve
transactions; the admin token may. A burst of 200 concurrent PutMany calls
gets RESOURCE_EXHAUSTED (with ``retry-after-ms``) for what is over the limit,
nothing of a refused call is applied, and another client's get during the
burst is answered promptly.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router import Client, PermissionDenied, Unauthenticated
from router.auth import bearer_metadata
from router.limits import RETRY_AFTER_KEY
from shardkv.v1 import kv_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    MakeCluster,
    Settings,
    clean_environment,
)
from tests.integration.routers import wait_ready
from tests.ports import free_ports

pytestmark = pytest.mark.integration

READ_WRITE = "rw-7f3a9c"
ADMIN = "admin-51d2e8"
MAX_IN_FLIGHT = 8


class _AuthorizedStub:
    """A RouterStub whose calls carry ``token`` (``wait_ready`` calls ClusterStatus)."""

    def __init__(self, stub: router_pb2_grpc.RouterStub, token: str) -> None:
        self._stub = stub
        self._metadata = bearer_metadata(token)

    def ClusterStatus(
        self, request: router_pb2.ClusterStatusRequest, timeout: float
    ) -> router_pb2.ClusterStatusResponse:
        response: router_pb2.ClusterStatusResponse = self._stub.ClusterStatus(
            request, timeout=timeout, metadata=self._metadata
        )
        return response


@pytest.fixture
def secured(make_cluster: MakeCluster) -> Iterator[tuple[str, grpc.Channel]]:
    cluster = make_cluster(Settings(nodes=3, groups=2))
    cluster.start_all()
    tokens = cluster.root / "tokens.toml"
    tokens.write_text(f'[tokens]\n"{READ_WRITE}" = "read-write"\n"{ADMIN}" = "admin"\n')
    address = f"127.0.0.1:{free_ports(1)[0]}"
    nodes = ",".join(cluster.addresses[node] for node in sorted(cluster.addresses))
    with (cluster.root / "router.log").open("ab") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "router.server", "--listen", address, "--nodes", nodes),
                *("--tokens-file", str(tokens), "--max-in-flight", str(MAX_IN_FLIGHT)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_environment(),
            cwd=cluster.root,
        )
    channel = grpc.insecure_channel(address)
    try:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        wait_ready(_AuthorizedStub(stub, READ_WRITE), cluster.group_ids, READY_TIMEOUT)  # type: ignore[arg-type]
        yield address, channel
    finally:
        channel.close()
        process.kill()
        process.wait(STOP_TIMEOUT)


def test_tokens_and_roles_at_the_router(secured: tuple[str, grpc.Channel]) -> None:
    address, channel = secured
    stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
    for metadata in (None, bearer_metadata("not-a-token")):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Put(router_pb2.PutRequest(key=b"k", value=b"v"), timeout=5, metadata=metadata)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            stub.PutMany(
                router_pb2.PutManyRequest(items=[kv_pb2.KeyValue(key=b"k2", value=b"v")]),
                timeout=5,
                metadata=metadata,
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with Client(address, timeout=5) as anonymous, pytest.raises(Unauthenticated):
        anonymous.get("k")
    # Health checking stays open.
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    with Client(address, token=READ_WRITE, timeout=10) as client:
        # Nothing of the refused calls was applied.
        assert client.get_many(["k", "k2"]) == {}
        client.put("k", "v")
        assert client.get("k") == b"v"
        with pytest.raises(PermissionDenied):
            client.resolve_transaction("1:1", commit=False)
        with pytest.raises(PermissionDenied):
            client.list_transactions()
    with Client(address, token=ADMIN, timeout=10) as admin:
        assert admin.get("k") == b"v"
        assert admin.list_transactions() == []


def test_a_burst_over_the_limit_is_refused_and_others_are_served(
    secured: tuple[str, grpc.Channel],
) -> None:
    address, _ = secured
    with Client(address, token=READ_WRITE, timeout=10) as other:
        other.put("other", "here")

        async def burst() -> tuple[list[grpc.StatusCode], list[int], float]:
            metadata = bearer_metadata(READ_WRITE)
            async with grpc.aio.insecure_channel(address) as channel:
                stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]

                async def put_many(number: int) -> grpc.StatusCode:
                    items = [
                        kv_pb2.KeyValue(key=b"burst/%03d/%03d" % (number, item), value=b"x" * 100)
                        for item in range(300)
                    ]
                    try:
                        await stub.PutMany(
                            router_pb2.PutManyRequest(items=items), timeout=20, metadata=metadata
                        )
                    except grpc.aio.AioRpcError as error:
                        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                            hints: dict[str, object] = dict(
                                error.trailing_metadata() or ()  # type: ignore[arg-type]
                            )
                            assert hints.get(RETRY_AFTER_KEY), "a retry hint"
                            assert "retry after" in (error.details() or "")
                        return error.code()
                    return grpc.StatusCode.OK

                calls = [asyncio.ensure_future(put_many(number)) for number in range(200)]
                await asyncio.sleep(0)

                def get_other() -> float:
                    started = time.monotonic()
                    assert other.get("other") == b"here"
                    return time.monotonic() - started

                answered_in = await asyncio.to_thread(get_other)
                codes = await asyncio.gather(*calls)
            refused = [
                number for number, code in enumerate(codes) if code is not grpc.StatusCode.OK
            ]
            return codes, refused, answered_in

        codes, refused, answered_in = asyncio.run(burst())
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) > 0
        # The first arrivals are served (the other client's get may hold one place).
        assert codes.count(grpc.StatusCode.OK) >= MAX_IN_FLIGHT - 1
        assert answered_in < 3.0, f"the other client waited {answered_in:.2f} s"
        # A refused call applied nothing; an accepted one applied all.
        found = other.get_many([b"burst/%03d/000" % number for number in range(200)])
        assert {int(key.split(b"/")[1]) for key in found} == set(range(200)) - set(refused)
