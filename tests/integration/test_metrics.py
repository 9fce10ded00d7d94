"""Metrics of real node and router processes, scraped over HTTP, move with the work done.

Three ``shardkv-node`` processes (``--metrics-port``) and one
``shardkv-router`` (``SHARDKV_ROUTER_METRICS_PORT``): scrape every endpoint,
do puts and a transaction through the router, scrape again, and check that
the series that should have moved did; then add a group and check that the
migration series moved as the ring change ran.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardkv.v1 import kv_pb2, node_pb2, router_pb2
from tests.integration.conftest import Cluster, Settings, wait_until
from tests.integration.routers import RouterProcess
from tests.ports import free_ports

pytestmark = pytest.mark.integration

DEADLINE = 15.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def ports_besides(count: int, taken: Iterable[int]) -> list[int]:
    """``count`` free ports, none of ``taken`` (free too, but promised to a server)."""
    taken = set(taken)
    return [port for port in free_ports(count + len(taken)) if port not in taken][:count]


class MetricsCluster(Cluster):
    """A test cluster whose nodes serve metrics, each on a port of its own."""

    def __init__(self, root: Path, settings: Settings) -> None:
        super().__init__(root, settings)
        self.listen_ports = {int(address.rpartition(":")[2]) for address in self.addresses.values()}
        ports = ports_besides(len(self.addresses), self.listen_ports)
        self.metrics_ports = dict(zip(self.addresses, ports, strict=True))

    def ports(self) -> set[int]:
        """Every port this cluster's nodes listen on or serve metrics on."""
        return self.listen_ports | set(self.metrics_ports.values())

    def node_arguments(self, node_id: int) -> list[str]:
        return [
            *super().node_arguments(node_id),
            "--metrics-port",
            str(self.metrics_ports[node_id]),
        ]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and wanted <= sample_labels
    )


def per_group_max(scrapes: list[Samples], name: str, **labels: str) -> dict[str, float]:
    """Per group, the highest value any node reports (the leader's, for indexes)."""
    wanted = set(labels.items())
    highest: dict[str, float] = {}
    for samples in scrapes:
        for (sample, sample_labels), value in samples.items():
            if sample == name and wanted <= sample_labels:
                group = dict(sample_labels)["group"]
                highest[group] = max(highest.get(group, 0.0), value)
    return highest


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[MetricsCluster, RouterProcess, int]]:
    cluster = MetricsCluster(tmp_path, Settings(nodes=3, groups=2))
    router = RouterProcess(cluster, "router")
    (router_metrics_port,) = ports_besides(
        1, {*cluster.ports(), int(router.address.rpartition(":")[2])}
    )
    router.env["SHARDKV_ROUTER_METRICS_PORT"] = str(router_metrics_port)
    try:
        cluster.start_all()
        router.start()
        yield cluster, router, router_metrics_port
    finally:
        router.close()
        cluster.close()


def test_metrics_are_served_and_move_with_puts_and_a_transaction(
    metered: tuple[MetricsCluster, RouterProcess, int],
) -> None:
    cluster, router, router_port = metered
    node_ports = [cluster.metrics_ports[node_id] for node_id in sorted(cluster.metrics_ports)]

    def led() -> list[Samples] | None:
        scrapes = [scrape(port) for port in node_ports]
        leaders = per_group_max(scrapes, "shardkv_raft_role", role="leader")
        return scrapes if leaders == {"0": 1, "1": 1, "2": 1} else None

    # Every node reports every group it hosts, in one role, and each group has a leader.
    nodes_before = wait_until("a leader in every group's metrics", led, 10.0)
    router_before = scrape(router_port)
    for samples in nodes_before:
        groups = {dict(labels)["group"] for name, labels in samples if name == "shardkv_raft_term"}
        assert groups == {"0", "1", "2"}
        assert total(samples, "shardkv_raft_role") == 3

    stub = router.stub()
    keys = [cluster.key(group_id, f"metered-{group_id}") for group_id in cluster.group_ids]
    for number in range(10):
        key = keys[number % len(keys)]
        stub.Put(router_pb2.PutRequest(key=key, value=b"v%d" % number), timeout=DEADLINE)
    # Across both groups: a two-phase commit, counted as committed.
    txn = stub.Txn(
        router_pb2.TxnRequest(
            success=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=b"txn")) for key in keys]
        ),
        timeout=DEADLINE,
    )
    assert txn.succeeded

    router_after = scrape(router_port)
    for method, calls in (("Put", 10), ("Txn", 1)):
        name = "shardkv_router_requests_total"
        moved = total(router_after, name, method=method, code="OK") - total(
            router_before, name, method=method, code="OK"
        )
        assert moved == calls, method
        assert total(router_after, "shardkv_router_request_duration_seconds_count", method=method)
    committed = "shardkv_router_txns_total"
    assert total(router_after, committed, outcome="committed") == 1 + total(
        router_before, committed, outcome="committed"
    )
    assert total(router_after, "shardkv_router_batch_items_count", op="write") > 0

    def moved_on_nodes() -> list[Samples] | None:
        # Followers apply a moment after the leader answered, and a committed
        # transaction is finished in its other group after the answer: poll.
        after = [scrape(port) for port in node_ports]
        commit_before = per_group_max(nodes_before, "shardkv_raft_commit_index")
        commit_after = per_group_max(after, "shardkv_raft_commit_index")
        applied = per_group_max(after, "shardkv_raft_applied_index")
        grown = all(commit_after[g] >= commit_before[g] + 5 for g in ("1", "2"))
        finished = not any(
            total(samples, "shardkv_txn_locks") or total(samples, "shardkv_txn_open_records")
            for samples in after
        )
        return after if grown and applied == commit_after and finished else None

    nodes_after = wait_until("the nodes' metrics to show the writes", moved_on_nodes, 10.0)

    def summed(scrapes: list[Samples], name: str) -> float:
        return sum(total(samples, name) for samples in scrapes)

    for name in (
        "shardkv_storage_fsync_seconds_count",
        "shardkv_storage_sync_entries_sum",
        "shardkv_raft_proposal_commit_seconds_count",
        "shardkv_raft_apply_seconds_count",
        "shardkv_raft_entries_applied_total",
        "shardkv_transport_bytes_sent_total",
        "shardkv_transport_messages_received_total",
    ):
        assert summed(nodes_after, name) > summed(nodes_before, name), name
    # Each node talks to both others.
    for samples in nodes_after:
        peers = {dict(labels)["peer"] for name, labels in samples if name.endswith("_sent_total")}
        assert len(peers) == 2

    # A ring change: the meta leader's driver counts what it copied and collected.
    stub.PutMany(
        router_pb2.PutManyRequest(
            items=[kv_pb2.KeyValue(key=b"spread-%03d" % n, value=b"x") for n in range(300)]
        ),
        timeout=DEADLINE,
    )
    change = stub.ChangeRing(
        node_pb2.ChangeRingRequest(add_group=node_pb2.AddGroup()), timeout=DEADLINE
    )
    moves = len(change.map.migration.moves)
    assert moves >= 1

    def migrated() -> list[Samples] | None:
        status = stub.ClusterStatus(router_pb2.ClusterStatusRequest(), timeout=DEADLINE)
        target = change.map.migration.target.epoch
        if status.map.ring.epoch < target or status.map.HasField("migration"):
            return None
        return [scrape(port) for port in node_ports]

    migrated_scrapes = wait_until("the ring change to finish", migrated, 30.0)
    assert summed(migrated_scrapes, "shardkv_migration_keys_copied_total") >= 1
    assert summed(migrated_scrapes, "shardkv_migration_bytes_copied_total") >= 1
    assert summed(migrated_scrapes, "shardkv_migration_keys_collected_total") >= 1
    assert summed(migrated_scrapes, "shardkv_migration_frozen_seconds_count") == moves
    steps = sum(
        total(samples, "shardkv_driver_steps_total", kind="migration", outcome="done")
        for samples in migrated_scrapes
    )
    assert steps >= 3 * moves  # begin, copy and switch, collect: each a step per move


def test_a_metrics_port_in_use_stops_the_node_with_a_clear_error(tmp_path: Path) -> None:
    cluster = MetricsCluster(tmp_path, Settings(nodes=1, groups=1))
    try:
        with socket.socket() as taken:
            # A port this test holds from the start: the one picked for the node
            # may be taken by a test running beside this one before we bind it.
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            cluster.metrics_ports[1] = taken.getsockname()[1]
            cluster.start(1, wait=False)
            process = cluster.processes.pop(1)
            assert process.wait(DEADLINE) == 2
        assert "metrics endpoint cannot bind" in cluster.log_path(1).read_text()
    finally:
        cluster.close()
