"""Metrics of nodes and routers: names, registries, the runtime collector, the endpoint.

Nodes here are in-process single-replica nodes on a real loop
(``tests.unit.test_node_resolver.node``); the router's request counting runs
through the real interceptor on a real gRPC server. Every series name must
follow Prometheus' conventions and be listed in the README's "Metrics"
section.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import grpc.aio
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.groups import Conflict, DeadlineExceeded, GroupUnavailable, Refused
from router.metrics import TXN_OUTCOMES, RouterMetrics
from router.txn import _failed_outcome
from shardkv.errors import InvalidArgument
from shardkv.metrics import MetricsServer, NodeMetrics, RuntimeCollector
from shardkv.node.resolver import TxnResolver
from shardkv.node.transport_grpc import PeerTraffic
from shardkv.raft import MessageType
from shardkv.raft.types import Message
from shardkv.txn_protocol import now_ms
from shardkv.v1 import kv_pb2, router_pb2, router_pb2_grpc
from tests.unit.test_node_resolver import Node, cluster_map, node, run_passes, two_groups_prepared
from tests.unit.test_transport_grpc import Cluster as TransportCluster
from tests.unit.test_transport_grpc import eventually

README = Path(__file__).resolve().parents[2] / "README.md"
ALLOWED_LABELS = {"group", "role", "peer", "outcome", "method", "code", "op", "reason"}


@pytest.fixture
async def watched() -> AsyncIterator[tuple[Node, NodeMetrics]]:
    """One node with groups 1 and 2, led here, its state served by its metrics."""
    async with node(1, (1, 2)) as only:
        metrics = only.runtime.metrics
        metrics.watch(only.runtime, {2: PeerTraffic(3, 300, 4, 400)})
        yield only, metrics


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def put(key: bytes) -> kv_pb2.Command:
    return kv_pb2.Command(operations=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=b"v"))])


def exposed_names(registry: CollectorRegistry) -> dict[str, str]:
    """Every family the registry exposes: its name as scraped -> its type."""
    text = generate_latest(registry).decode()
    names = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        names[name] = family.type
    return names


def check_conventions(registry: CollectorRegistry) -> None:
    text = generate_latest(registry).decode()
    readme = README.read_text()
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert family.name.startswith("shardkv_"), family.name
        assert re.fullmatch(r"[a-z_]+", family.name), family.name
        assert family.documentation, family.name
        exposed = family.name + "_total" if family.type == "counter" else family.name
        assert f"`{exposed}`" in readme, f"{exposed} is not in the README's Metrics section"
        if family.type == "histogram" and "seconds" in family.documentation.lower():
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= ALLOWED_LABELS, (sample.name, sample.labels)
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name


# -- the node ---------------------------------------------------------------------------


async def test_node_series_follow_the_conventions_and_are_documented(
    watched: tuple[Node, NodeMetrics],
) -> None:
    only, metrics = watched
    await only.runtime.propose(1, put(b"a"))
    metrics.txns_resolved.labels("committed")
    check_conventions(metrics.registry)
    names = exposed_names(metrics.registry)
    for name in (
        "shardkv_raft_term",
        "shardkv_raft_role",
        "shardkv_raft_commit_index",
        "shardkv_raft_applied_index",
        "shardkv_raft_log_entries",
        "shardkv_raft_leader_changes_total",
        "shardkv_raft_proposal_commit_seconds",
        "shardkv_raft_apply_seconds",
        "shardkv_storage_fsync_seconds",
        "shardkv_storage_sync_entries",
        "shardkv_storage_sync_bytes",
        "shardkv_transport_bytes_sent_total",
        "shardkv_txn_locks",
        "shardkv_resolver_txns_resolved_total",
    ):
        assert name in names, name


async def test_registries_are_per_node_and_never_the_global_one() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.fsync_seconds.observe(0.01)
    assert second.registry.get_sample_value("shardkv_storage_fsync_seconds_count") == 0
    assert not [
        name
        for name in prometheus_client.REGISTRY._names_to_collectors  # the global default
        if name.startswith("shardkv_")
    ]


async def test_the_collector_reads_the_runtime_and_the_round_observes_it(
    watched: tuple[Node, NodeMetrics],
) -> None:
    only, metrics = watched
    registry = metrics.registry
    assert value(registry, "shardkv_raft_term", group="1") >= 1
    assert value(registry, "shardkv_raft_role", group="1", role="leader") == 1
    assert value(registry, "shardkv_raft_role", group="1", role="follower") == 0
    assert value(registry, "shardkv_raft_leader_changes_total", group="1") == 1
    commit = value(registry, "shardkv_raft_commit_index", group="1")
    last = value(registry, "shardkv_raft_log_last_index", group="1")
    commits = value(registry, "shardkv_raft_proposal_commit_seconds_count")
    fsyncs = value(registry, "shardkv_storage_fsync_seconds_count")
    synced_entries = value(registry, "shardkv_storage_sync_entries_sum")

    await asyncio.gather(*(only.runtime.propose(1, put(b"k%d" % n)) for n in range(5)))

    assert value(registry, "shardkv_raft_commit_index", group="1") == commit + 5
    assert value(registry, "shardkv_raft_applied_index", group="1") == commit + 5
    assert value(registry, "shardkv_raft_log_last_index", group="1") == last + 5
    entries = value(registry, "shardkv_raft_log_entries", group="1")
    first = value(registry, "shardkv_raft_log_first_index", group="1")
    assert entries == last + 5 - first + 1
    assert value(registry, "shardkv_raft_commit_index", group="2") == commit  # untouched
    assert value(registry, "shardkv_raft_proposal_commit_seconds_count") == commits + 5
    assert value(registry, "shardkv_storage_fsync_seconds_count") > fsyncs
    assert value(registry, "shardkv_storage_sync_entries_sum") == synced_entries + 5
    assert value(registry, "shardkv_storage_sync_bytes_sum") > 0
    assert value(registry, "shardkv_storage_sync_groups_count") > 0
    assert value(registry, "shardkv_raft_apply_seconds_count") > 0
    assert value(registry, "shardkv_node_rounds_total") > 0
    assert value(registry, "shardkv_raft_entries_applied_total") >= 5
    assert value(registry, "shardkv_transport_bytes_sent_total", peer="2") == 300
    assert value(registry, "shardkv_transport_messages_received_total", peer="2") == 4


async def test_locks_records_and_resolutions_are_counted(
    watched: tuple[Node, NodeMetrics],
) -> None:
    only, metrics = watched
    registry = metrics.registry
    the_map = cluster_map({1: only, 2: only})
    assert value(registry, "shardkv_txn_locks", group="2") == 0
    await two_groups_prepared({1: only, 2: only}, the_map, now_ms() - 1)
    assert value(registry, "shardkv_txn_locks", group="1") == 1
    assert value(registry, "shardkv_txn_locks", group="2") == 1
    resolver = TxnResolver(only.runtime, lambda: the_map)
    try:
        await run_passes(resolver)
    finally:
        await resolver.stop()
    assert value(registry, "shardkv_txn_locks", group="1") == 0
    assert value(registry, "shardkv_txn_locks", group="2") == 0
    assert value(registry, "shardkv_txn_open_records", group="1") == 0
    # One settlement per group holding its locks: groups 1 and 2.
    assert value(registry, "shardkv_resolver_txns_resolved_total", outcome="aborted") == 2
    assert value(registry, "shardkv_resolver_failures_total") == 0


async def test_a_scrape_from_another_thread_reads_on_the_loop(
    watched: tuple[Node, NodeMetrics],
) -> None:
    _, metrics = watched
    text = (await asyncio.to_thread(generate_latest, metrics.registry)).decode()
    assert 'shardkv_raft_role{group="2",role="leader"} 1.0' in text


async def test_a_stopped_loop_leaves_only_the_state_out(
    watched: tuple[Node, NodeMetrics],
) -> None:
    only, _ = watched
    closed = asyncio.new_event_loop()
    closed.close()
    collector = RuntimeCollector(only.runtime, None, closed)
    assert list(await asyncio.to_thread(collector.collect)) == []


async def test_the_endpoint_serves_the_registry_over_http(
    watched: tuple[Node, NodeMetrics],
) -> None:
    _, metrics = watched
    server = MetricsServer.start(metrics.registry, "127.0.0.1", 0)
    try:

        def scrape() -> tuple[int, str]:
            url = f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()

        status, text = await asyncio.to_thread(scrape)
        assert status == 200
        assert 'shardkv_raft_commit_index{group="1"}' in text
    finally:
        await server.close()
        await server.close()  # twice is harmless


async def test_the_grpc_transport_counts_traffic_per_peer() -> None:
    cluster = TransportCluster()
    try:
        a, b = await cluster.start(1), await cluster.start(2)
        cluster.connect_all()
        for index in range(10):
            a.transport.send(2, 7, Message(MessageType.HEARTBEAT, to=2, from_=1, term=index))
        await a.transport.flush()
        await b.inbox.wait_for(10)
        await eventually(lambda: a.transport.traffic[2].messages_sent == 10)
        sent, received = a.transport.traffic[2], b.transport.traffic[1]
        assert received.messages_received == 10
        assert sent.bytes_sent == received.bytes_received > 0
        assert received.messages_sent == 0
    finally:
        await cluster.stop_all()


# -- the router -------------------------------------------------------------------------


class _Servicer(router_pb2_grpc.RouterServicer):
    async def Get(
        self,
        request: router_pb2.GetRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> router_pb2.GetResponse:
        if request.key == b"missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such key")
        if request.key == b"bug":
            raise RuntimeError("a bug")
        return router_pb2.GetResponse()


async def test_the_interceptor_counts_and_times_calls_by_method_and_code() -> None:
    metrics = RouterMetrics()
    server = grpc.aio.server(interceptors=[metrics.interceptor])
    router_pb2_grpc.add_RouterServicer_to_server(_Servicer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            codes = []
            for key in (b"a", b"b", b"missing", b"bug"):
                try:
                    await stub.Get(router_pb2.GetRequest(key=key))
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Put(router_pb2.PutRequest(key=b"a", value=b"v"))
    finally:
        await server.stop(None)
    assert codes == [
        grpc.StatusCode.OK,
        grpc.StatusCode.OK,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNKNOWN,
    ]
    registry = metrics.registry
    requests = "shardkv_router_requests_total"
    assert value(registry, requests, method="Get", code="OK") == 2
    assert value(registry, requests, method="Get", code="NOT_FOUND") == 1
    assert value(registry, requests, method="Get", code="UNKNOWN") == 1
    assert value(registry, requests, method="Put", code="UNIMPLEMENTED") == 1
    duration = "shardkv_router_request_duration_seconds_count"
    assert value(registry, duration, method="Get", code="OK") == 2


def test_router_series_follow_the_conventions_and_are_documented() -> None:
    metrics = RouterMetrics()
    metrics.requests.labels("Put", "OK").inc()
    metrics.request_seconds.labels("Put", "OK").observe(0.01)
    metrics.lock_waits.labels("write").inc()
    metrics.node_retries.labels("1", "not_leader").inc()
    metrics.batch_items.labels("write").observe(3)
    check_conventions(metrics.registry)
    for outcome in TXN_OUTCOMES:  # every outcome shows from the start
        assert value(metrics.registry, "shardkv_router_txns_total", outcome=outcome) == 0


@pytest.mark.parametrize(
    ("errors", "outcome"),
    [
        ([Conflict("held")], "aborted"),
        (
            [
                GroupUnavailable("no leader"),
                DeadlineExceeded("late"),
                TimeoutError(),
                asyncio.CancelledError(),
            ],
            "in_doubt",
        ),
        ([Refused("stale"), InvalidArgument("too big"), RuntimeError("bug")], "rejected"),
    ],
)
def test_a_failed_transaction_is_counted_by_what_the_caller_learns(
    errors: Iterable[BaseException], outcome: str
) -> None:
    assert {_failed_outcome(error) for error in errors} == {outcome}
