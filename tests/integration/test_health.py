"""Standard gRPC health checking, reflection and JSON logs on real node and router processes.

Three ``shardkv-node`` processes and one ``shardkv-router``, all logging JSON.
The standard ``grpc.health.v1.Health/Check`` answers SERVING on each, for the
whole server and for its service; reflection lists the services (what
``grpcurl`` needs); a node whose two peers die reports NOT_SERVING (its groups
lost their quorum) and so does the router, until the peers come back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.integration.conftest import Cluster, MakeCluster, Settings, wait_until
from tests.integration.routers import RouterProcess

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NODE = "shardkv.v1.Node"
ROUTER = "shardkv.v1.Router"
# Election timeout 300 ms, a check every 100 ms (node) or 1 s (router).
CHANGE_TIMEOUT = 8.0


class Probe:
    """Health checks and reflection on one address, over one channel."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)

    def status(self, service: str = "") -> int | None:
        try:
            return self.check(service)
        except grpc.RpcError:
            return None

    def check(self, service: str) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(response.status)

    def statuses(self, service: str) -> tuple[int | None, int | None]:
        return self.status(), self.status(service)

    def services(self) -> set[str]:
        return set(ProtoReflectionDescriptorDatabase(self.channel).get_services())


@pytest.fixture
def running(make_cluster: MakeCluster) -> Iterator[tuple[Cluster, RouterProcess]]:
    cluster = make_cluster(Settings(nodes=3, groups=4))
    # Top-level keys go before the file's tables.
    cluster.config_path.write_text('log_format = "json"\n' + cluster.config_path.read_text())
    cluster.start_all()
    router = RouterProcess(cluster, "router", env={"SHARDKV_LOG_FORMAT": "json"})
    try:
        router.start()
        yield cluster, router
    finally:
        router.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a log file (the harness adds a plain header line per start)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_health_reflection_and_logs_of_nodes_and_router(
    running: tuple[Cluster, RouterProcess],
) -> None:
    cluster, router = running
    nodes = {node_id: Probe(address) for node_id, address in cluster.addresses.items()}
    front = Probe(router.address)
    both_serving = (SERVING, SERVING)
    both_not = (NOT_SERVING, NOT_SERVING)
    try:
        for node_id, probe in nodes.items():
            wait_until(f"node {node_id} SERVING", lambda p=probe: p.statuses(NODE) == both_serving)
        wait_until("the router SERVING", lambda: front.statuses(ROUTER) == both_serving)
        with pytest.raises(grpc.RpcError) as unknown:
            nodes[1].check("shardkv.v1.NoSuchService")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        health_and_reflection = {
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        assert nodes[1].services() == {NODE, "shardkv.v1.RaftTransport", *health_and_reflection}
        etcd_names = ("KV", "Watch", "Lease", "Maintenance", "Cluster", "Auth")
        etcd = {f"etcdserverpb.{name}" for name in etcd_names}
        assert front.services() == {ROUTER, *etcd, *health_and_reflection}

        # Every node logs JSON; its leader changes carry the group and node ids.
        lines = json_lines(cluster.log_path(1).read_text())
        assert lines and all(line["node_id"] == 1 for line in lines)
        assert {"time", "level", "logger", "message"} <= set(lines[0])
        changes = [line for line in lines if line["logger"] == "shardkv.node.peer"]
        assert {line["group_id"] for line in changes} == {0, 1, 2, 3, 4}
        assert all("term" in line and "leader_id" in line for line in changes)
        assert json_lines(router.log_path.read_text()), "the router logs JSON too"

        # Two of three nodes crash: node 1's groups have no quorum left.
        # Only what it logs from the crash on: a node on a loaded machine may have
        # lost a leader for a moment before (and logged SERVING again after).
        logged_before = len(json_lines(cluster.log_path(1).read_text()))
        cluster.kill(2)
        cluster.kill(3)
        wait_until(
            "node 1 NOT_SERVING",
            lambda: nodes[1].statuses(NODE) == both_not,
            timeout=CHANGE_TIMEOUT,
        )
        wait_until(
            "the router NOT_SERVING",
            lambda: front.statuses(ROUTER) == both_not,
            timeout=CHANGE_TIMEOUT,
        )
        not_serving = [
            line
            for line in json_lines(cluster.log_path(1).read_text())[logged_before:]
            if line["message"].startswith("health: NOT_SERVING")
        ]
        assert len(not_serving) == 1 and "no quorum reachable" in not_serving[0]["message"]

        cluster.start(2)
        cluster.start(3)
        wait_until(
            "node 1 SERVING again",
            lambda: nodes[1].statuses(NODE) == both_serving,
            timeout=CHANGE_TIMEOUT,
        )
        wait_until(
            "the router SERVING again",
            lambda: front.statuses(ROUTER) == both_serving,
            timeout=CHANGE_TIMEOUT,
        )
    finally:
        for probe in (*nodes.values(), front):
            probe.channel.close()
