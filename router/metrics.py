"""Prometheus metrics of a router: its requests, transactions, locks met and node calls.

``RouterMetrics`` owns one ``CollectorRegistry`` per router (never
prometheus_client's global one, so routers in one process keep apart); the
router's parts count into it where things happen:

- every call of the ``shardkv.v1.Router`` service, by method and status code,
  counted and timed by ``interceptor`` (a ``grpc.aio.ServerInterceptor`` the
  server is created with), so that a call refused before any work (a bad
  argument) counts as much as one that ran;
- transactions by outcome (``router.txn``): ``committed`` (the compares held,
  the success branch applied), ``compare_failed`` (the failure branch
  applied), ``aborted`` (a conflict: nothing applied, ABORTED), ``in_doubt``
  (answered UNAVAILABLE or DEADLINE_EXCEEDED, or cancelled: the caller does
  not learn the outcome and retries with the same session), ``rejected``
  (refused: invalid, stale session, a node's own refusal);
- locks met (``router.txn``): a write waiting for one, a read settling one, a
  transaction's prepare waiting for one;
- node calls retried, by group and reason (``router.groups``), and the size
  of each node call the batchers make (``router.service``).

Labels stay low-cardinality (method, code, outcome, op, group, reason); never
a key. ``shardkv.metrics.MetricsServer`` serves the registry over HTTP, as a
node's. The README's "Metrics" section lists every series.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram

from router.interceptors import Behavior, RouterMethodInterceptor
from shardkv.metrics import LATENCY_BUCKETS

__all__ = ["TXN_OUTCOMES", "RouterMetrics"]

TXN_OUTCOMES = ("committed", "compare_failed", "aborted", "in_doubt", "rejected")
_ITEM_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0)


class RouterMetrics:
    """The registry of one router and the instruments its parts count with."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "shardkv_router_requests",
            "Calls of the Router service answered, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "shardkv_router_request_duration_seconds",
            "Time the router took to answer a call, by method and gRPC status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.txns = Counter(
            "shardkv_router_txns",
            "Transactions coordinated, by outcome: " + ", ".join(TXN_OUTCOMES) + ".",
            ["outcome"],
            registry=registry,
        )
        self.lock_waits = Counter(
            "shardkv_router_lock_waits",
            "Times a request met a key locked by a transaction and waited for it or "
            "settled it, by the request's kind (read, write, txn).",
            ["op"],
            registry=registry,
        )
        self.node_retries = Counter(
            "shardkv_router_node_retries",
            "Node calls tried again elsewhere or later, by group and reason.",
            ["group", "reason"],
            registry=registry,
        )
        self.batch_items = Histogram(
            "shardkv_router_batch_items",
            "Requests one node call carried (group commit at the router), by op (read, write).",
            ["op"],
            buckets=_ITEM_BUCKETS,
            registry=registry,
        )
        # Every outcome of a transaction shows from the start (as 0), so that
        # rates and alerts over them need no absent().
        for outcome in TXN_OUTCOMES:
            self.txns.labels(outcome)
        self.interceptor = _RequestInterceptor(self)


class _RequestInterceptor(RouterMethodInterceptor):
    """Counts and times every unary call of the Router service; other services pass through."""

    def __init__(self, metrics: RouterMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap_behavior(self, method: str, behavior: Behavior) -> Behavior:
        metrics = self._metrics

        async def observed(
            request: object, context: grpc.aio.ServicerContext[object, object]
        ) -> object:
            started = time.perf_counter()
            code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
            try:
                response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                # An abort set the code; anything else reaches the caller as UNKNOWN.
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                labels = (method, code.name)
                metrics.requests.labels(*labels).inc()
                metrics.request_seconds.labels(*labels).observe(time.perf_counter() - started)

        return observed
