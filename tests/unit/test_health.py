"""Health checking: the shared ``Health`` on a real gRPC server, and the node's check.

The node's check runs on the in-process cluster of ``test_node_runtime`` (memory
engines and network, the test's own ticks); the real processes are in
tests/integration/test_health.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shardkv.health import Health
from shardkv.node.health import health_interval, leaderless_groups
from shardkv.node.transport_memory import MemoryNetwork
from tests.ports import free_ports
from tests.unit.test_node_runtime import NODES, LocalCluster

SERVICE = "shardkv.v1.Node"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Problems:
    """A check whose answer the test sets."""

    def __init__(self) -> None:
        self.problems: list[str] = ["starting"]
        self.error: Exception | None = None

    async def __call__(self) -> Sequence[str]:
        if self.error is not None:
            raise self.error
        return self.problems


class Served:
    def __init__(self, health: Health, problems: Problems, channel: grpc.aio.Channel) -> None:
        self.health = health
        self.problems = problems
        self.channel = channel

    async def status(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(channel=self.channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(response.status)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    server = grpc.aio.server()
    problems = Problems()
    health = await Health.add_to(server, (SERVICE,), problems, interval=60)
    (port,) = free_ports(1)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(health, problems, channel)
    finally:
        await health.stop()
        await channel.close()
        await server.stop(None)


async def test_not_serving_until_the_check_passes_then_both_names_follow_it(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shardkv.health")
    assert await served.status() == NOT_SERVING
    assert await served.status(SERVICE) == NOT_SERVING
    served.problems.problems = []
    assert await served.health.update() is True
    assert (await served.status(), await served.status(SERVICE)) == (SERVING, SERVING)
    served.problems.problems = ["group 3 has no leader"]
    assert await served.health.update() is False
    assert await served.health.update() is False
    assert (await served.status(), await served.status(SERVICE)) == (NOT_SERVING, NOT_SERVING)
    assert served.health.problems == ["group 3 has no leader"]
    # One line per change of status, not one per check.
    assert [line.getMessage() for line in caplog.records] == [
        "health: SERVING",
        "health: NOT_SERVING: group 3 has no leader",
    ]


async def test_a_failing_check_is_not_serving(served: Served) -> None:
    served.problems.problems = []
    await served.health.update()
    served.problems.error = RuntimeError("no status")
    assert await served.health.update() is False
    assert served.health.problems == ["the health check failed: RuntimeError: no status"]


async def test_an_unknown_service_is_not_found(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.status("shardkv.v1.Nothing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stop_is_not_serving_for_good(served: Served) -> None:
    served.problems.problems = []
    served.health.start()
    await served.health.update()
    assert await served.status() == SERVING
    await served.health.stop()
    await served.health.stop()
    assert await served.health.update() is False
    assert (await served.status(), await served.status(SERVICE)) == (NOT_SERVING, NOT_SERVING)


async def test_reflection_lists_the_services(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=2):
        names = {service.name for service in response.list_services_response.service}
        break
    assert names == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_the_node_checks_every_tick_within_limits() -> None:
    assert health_interval(0.03) == 0.1
    assert health_interval(0.25) == 0.25
    assert health_interval(5.0) == 1.0


async def test_a_node_cut_off_from_its_groups_reports_them_until_healed() -> None:
    cluster = LocalCluster(MemoryNetwork())
    for node_id in NODES:
        cluster.start(node_id, bootstrap=True)
    await cluster.elect_all()
    await cluster.step(5)

    async def problems() -> dict[int, Sequence[str]]:
        return {
            node_id: await leaderless_groups(node.runtime)
            for node_id, node in cluster.nodes.items()
        }

    async def until(expected: dict[int, Sequence[str]], what: str) -> None:
        for _ in range(200):
            if await problems() == expected:
                return
            await cluster.step()
        raise AssertionError(f"{what}: {await problems()}")

    assert await problems() == {1: (), 2: (), 3: ()}
    cluster.network.isolate(1)
    # Every group of node 1 loses its leader there (as a follower by election
    # timeout, as a leader by check-quorum); nodes 2 and 3 keep a quorum.
    cut_off = ("no known leader (no quorum reachable) in groups 1, 2, 3, 4",)
    await until({1: cut_off, 2: (), 3: ()}, "node 1 did not report all its groups")
    cluster.network.heal()
    await until({1: (), 2: (), 3: ()}, "node 1 did not find its groups' leaders again")
