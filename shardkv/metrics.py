"""Prometheus metrics of a node, and the HTTP endpoint that serves a registry.

``NodeMetrics`` owns one ``CollectorRegistry`` per node, never
prometheus_client's global one, so that several nodes in one process (the
tests) keep their series apart. Two kinds of series live in it:

1. Events, counted or timed where they happen: the runtime's round observes
   proposal-to-commit time, apply time, fsync time and what each synced write
   carries (entries, entry bytes, groups); the resolver counts the
   transactions it resolved, by outcome, and its failures.
2. State, read by ``RuntimeCollector`` when Prometheus scrapes, not updated on
   every change: per group the term, role, commit and applied index, the log's
   bounds and length, leader changes seen, transaction locks and open records;
   per peer node the messages and bytes sent and received; the round and
   transport counters.

The HTTP endpoint (``MetricsServer``, prometheus_client's WSGI server) serves
in threads of its own. A scrape does not read the runtime from there: the
collector hands the read to the node's event loop and waits for it (at most
``SCRAPE_TIMEOUT``), so it never races the loop and never sees a round half
done. A loop that does not answer in time (stopped, or stuck in a long round)
costs the scrape the state series only; the event series still come.

Labels stay low-cardinality: ``group``, ``peer`` (a node id), ``role``,
``outcome``; never a key. The README's "Metrics" section lists every series.
Bytes and seconds are the units, as Prometheus asks.

The router (``router.metrics``) serves its own registry with ``MetricsServer``
too: both processes bind and answer the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shardkv.raft import Role

if TYPE_CHECKING:
    from shardkv.node.runtime import NodeRuntime
    from shardkv.node.transport_grpc import PeerTraffic

__all__ = [
    "DEFAULT_METRICS_ADDRESS",
    "LATENCY_BUCKETS",
    "SCRAPE_TIMEOUT",
    "MetricsServer",
    "NodeMetrics",
    "RuntimeCollector",
]

_log = logging.getLogger(__name__)

# prometheus_client adds a "_created" gauge beside every counter and histogram
# in the text format; Go's client (etcd, TiKV) does not, and no dashboard reads
# them: half the series for nothing. The switch is the library's, process-wide.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Loopback unless told otherwise: metrics tell a lot about a cluster.
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
# How long a scrape waits for the node's loop to read its state.
SCRAPE_TIMEOUT = 2.0
# From half a millisecond (a round on an idle node) to ten seconds (a stalled disk).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_COUNT_BUCKETS = tuple(float(1 << power) for power in range(15))  # 1 .. 16,384
_BYTES_BUCKETS = tuple(float(1 << power) for power in range(6, 28, 2))  # 64 B .. 64 MiB
_ROLES = tuple(role.name.lower() for role in Role)


class NodeMetrics:
    """The registry of one node and the instruments its parts observe events with."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.proposal_commit_seconds = Histogram(
            "shardkv_raft_proposal_commit_seconds",
            "Time from a proposal on this node (as leader) until its entry committed.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.apply_seconds = Histogram(
            "shardkv_raft_apply_seconds",
            "Time one round took to apply the entries it committed, all groups in one batch.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fsync_seconds = Histogram(
            "shardkv_storage_fsync_seconds",
            "Time one synced write of a round (all groups' Raft state) took to reach disk.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.sync_entries = Histogram(
            "shardkv_storage_sync_entries",
            "Raft log entries persisted by one synced write (all groups of a round).",
            buckets=_COUNT_BUCKETS,
            registry=registry,
        )
        self.sync_bytes = Histogram(
            "shardkv_storage_sync_bytes",
            "Entry data persisted by one synced write (all groups of a round).",
            buckets=_BYTES_BUCKETS,
            registry=registry,
        )
        self.sync_groups = Histogram(
            "shardkv_storage_sync_groups",
            "Groups whose Raft state one synced write persisted (group commit across groups).",
            buckets=_COUNT_BUCKETS,
            registry=registry,
        )
        self.txns_resolved = Counter(
            "shardkv_resolver_txns_resolved",
            "Transactions the background resolver settled or finished, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.resolve_failures = Counter(
            "shardkv_resolver_failures",
            "Attempts of the background resolver that failed (retried on a later pass).",
            registry=registry,
        )
        # The meta leader's drivers (shardkv.node.migration, shardkv.node.placement).
        self.migration_keys = Counter(
            "shardkv_migration_keys_copied",
            "Keys (and deletions) copied from a source group to a target group by moves "
            "this node drove, catch-up rounds included.",
            registry=registry,
        )
        self.migration_bytes = Counter(
            "shardkv_migration_bytes_copied",
            "Bytes of stored records copied by moves this node drove.",
            registry=registry,
        )
        self.migration_keys_collected = Counter(
            "shardkv_migration_keys_collected",
            "Moved keys dropped at their source group once the target served them.",
            registry=registry,
        )
        self.migration_frozen_seconds = Histogram(
            "shardkv_migration_frozen_seconds",
            "How long a move's keys were unwritable: freeze until the target served them.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.driver_steps = Counter(
            "shardkv_driver_steps",
            "Steps of ring moves and replica moves this node drove, by kind and outcome.",
            ["kind", "outcome"],
            registry=registry,
        )

    def observe_commits(self, ages: Iterable[float]) -> None:
        for age in ages:
            self.proposal_commit_seconds.observe(age)

    def observe_sync(self, seconds: float, entries: int, entry_bytes: int, groups: int) -> None:
        self.fsync_seconds.observe(seconds)
        self.sync_entries.observe(entries)
        self.sync_bytes.observe(entry_bytes)
        self.sync_groups.observe(groups)

    def watch(
        self, runtime: NodeRuntime, traffic: Mapping[int, PeerTraffic] | None = None
    ) -> RuntimeCollector:
        """Serve ``runtime``'s state (and ``traffic``, per peer node) from now on.

        Call it on the runtime's event loop: scrapes read the state there.
        """
        collector = RuntimeCollector(runtime, traffic, asyncio.get_running_loop())
        self.registry.register(collector)
        return collector


class RuntimeCollector(Collector):
    """The runtime's state as metric families, read on the runtime's loop at each scrape."""

    def __init__(
        self,
        runtime: NodeRuntime,
        traffic: Mapping[int, PeerTraffic] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._runtime = runtime
        self._traffic = traffic
        self._loop = loop

    def collect(self) -> Iterator[Metric]:
        if _running_loop() is self._loop:
            return iter(self.read())
        future: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def read() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self.read())
                except BaseException as exc:  # handed to the scraping thread
                    future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(read)
        except RuntimeError:  # the loop is closed: the node stopped
            return iter(())
        try:
            return iter(future.result(SCRAPE_TIMEOUT))
        except TimeoutError:
            future.cancel()
            _log.warning(
                "node %d: the event loop did not answer a metrics scrape in %.0f s; "
                "its state series are left out of this one",
                self._runtime.node_id,
                SCRAPE_TIMEOUT,
            )
            return iter(())

    def read(self) -> list[Metric]:
        """Every state family, read now; call it on the runtime's loop."""
        return [*self._groups(), *self._counters(), *self._peers()]

    def _groups(self) -> list[Metric]:
        def gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=["group", *labels])

        term = gauge("shardkv_raft_term", "Current Raft term of the group's replica here.")
        role = gauge(
            "shardkv_raft_role",
            "1 for the role the group's replica here has, 0 for the others.",
            "role",
        )
        commit = gauge("shardkv_raft_commit_index", "Highest log index known committed.")
        applied = gauge("shardkv_raft_applied_index", "Highest log index applied here.")
        first = gauge("shardkv_raft_log_first_index", "First index still in the log.")
        last = gauge("shardkv_raft_log_last_index", "Last index in the log.")
        entries = gauge("shardkv_raft_log_entries", "Entries in the log (not yet compacted).")
        leader_changes = CounterMetricFamily(
            "shardkv_raft_leader_changes",
            "Times this replica saw the group get a new leader.",
            labels=["group"],
        )
        locks = gauge("shardkv_txn_locks", "Keys locked by prepared transactions.")
        records = gauge(
            "shardkv_txn_open_records",
            "Transaction records kept here as primary and not yet finished everywhere.",
        )
        for group_id, peer in sorted(self._runtime.peers.items()):
            group = str(group_id)
            status = peer.raw.status()
            term.add_metric([group], status.term)
            current = status.role.name.lower()
            for name in _ROLES:
                role.add_metric([group, name], 1.0 if name == current else 0.0)
            commit.add_metric([group], status.commit)
            applied.add_metric([group], status.applied)
            first.add_metric([group], status.first_index)
            last.add_metric([group], status.last_index)
            entries.add_metric([group], max(0, status.last_index - status.first_index + 1))
            leader_changes.add_metric([group], peer.leader_changes)
            transactions = peer.machine.txns
            locks.add_metric([group], len(transactions.locks))
            records.add_metric([group], len(transactions.open_records))
        return [term, role, commit, applied, first, last, entries, leader_changes, locks, records]

    def _counters(self) -> list[Metric]:
        rounds = self._runtime.stats
        transport = self._runtime.transport.stats
        families: list[Metric] = []
        for name, documentation, value in (
            ("shardkv_node_rounds", "Rounds of the node's loop.", rounds.rounds),
            (
                "shardkv_raft_entries_applied",
                "Log entries applied, all groups.",
                rounds.entries_applied,
            ),
            (
                "shardkv_transport_messages_dropped",
                "Raft messages dropped before reaching the network (peer down, queue full).",
                transport.messages_dropped,
            ),
            (
                "shardkv_transport_connects",
                "Streams to peer nodes opened.",
                transport.connects,
            ),
        ):
            families.append(CounterMetricFamily(name, documentation, value=value))
        return families

    def _peers(self) -> list[Metric]:
        if self._traffic is None:
            return []

        def counter(name: str, documentation: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, documentation, labels=["peer"])

        messages_sent = counter(
            "shardkv_transport_messages_sent", "Raft messages written to the peer node's streams."
        )
        bytes_sent = counter(
            "shardkv_transport_bytes_sent", "Bytes written to the peer node's streams."
        )
        messages_received = counter(
            "shardkv_transport_messages_received", "Raft messages received from the peer node."
        )
        bytes_received = counter(
            "shardkv_transport_bytes_received", "Bytes received from the peer node."
        )
        for node_id, traffic in sorted(self._traffic.items()):
            peer = [str(node_id)]
            messages_sent.add_metric(peer, traffic.messages_sent)
            bytes_sent.add_metric(peer, traffic.bytes_sent)
            messages_received.add_metric(peer, traffic.messages_received)
            bytes_received.add_metric(peer, traffic.bytes_received)
        return [messages_sent, bytes_sent, messages_received, bytes_received]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class MetricsServer:
    """An HTTP endpoint serving one registry at ``/metrics`` (any path, in fact).

    Start one with ``MetricsServer.start(registry, address, port)``; port 0
    takes a free one (``port`` says which). ``close()`` stops it; twice is
    harmless. prometheus_client serves in daemon threads, one per scrape.
    """

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @classmethod
    def start(cls, registry: CollectorRegistry, address: str, port: int) -> MetricsServer:
        """Bind and serve; ``OSError`` if the address cannot be bound."""
        server, thread = start_http_server(port, address, registry)
        return cls(server, thread)

    @property
    def port(self) -> int:
        return self._server.server_port

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # shutdown() waits for the serving thread's next poll (up to half a second).
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
        self._thread.join()
