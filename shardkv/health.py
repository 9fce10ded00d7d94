"""Standard gRPC health checking and server reflection for a node's or a router's server.

``Health.add_to(server, services, check, interval=...)`` registers, on a
``grpc.aio`` server not yet started:

- ``grpc.health.v1.Health`` (grpcio-health-checking), answering for the
  whole server (``""``) and for each of ``services`` by its full name
  (``shardkv.v1.Node``, ``shardkv.v1.Router``); any other name is NOT_FOUND;
- server reflection (grpcio-reflection), listing ``services``, the health
  service and reflection itself, so ``grpcurl`` and ``grpc_cli`` work
  without the .proto files.

Every name reports the same status, from one ``check``: an async function
returning what is wrong, an empty list when all is well. Once ``start()``ed,
a task calls it every ``interval`` seconds and sets SERVING when it returns nothing,
NOT_SERVING otherwise; the status starts at NOT_SERVING until the first check
passes, so a load balancer sends nothing to a process still finding its
footing. A change of status is logged once (WARNING with the problems when it
turns NOT_SERVING, INFO when it turns SERVING). ``stop()`` turns every name
NOT_SERVING for good: a stopping process drains. What is checked is the
caller's policy: ``shardkv.node.health`` for a node, ``router.health`` for a
router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = ["Check", "Health"]

_log = logging.getLogger(__name__)

# What is wrong; empty when the process can serve.
Check = Callable[[], Awaitable[Sequence[str]]]

# The asyncio servicer (grpc_health.v1.health.aio), which grpc-stubs 1.53 predates.
_AsyncHealthServicer = health.aio.HealthServicer  # type: ignore[attr-defined]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """The health of one server, set from ``check`` (see the module docstring)."""

    def __init__(
        self,
        servicer: health_pb2_grpc.HealthServicer,
        services: Sequence[str],
        check: Check,
        *,
        interval: float,
        log_extra: Mapping[str, object] | None = None,
    ) -> None:
        self._servicer = servicer
        self.names = ("", *services)
        self._check = check
        self.interval = interval
        self._log_extra = dict(log_extra or {})
        self.serving = False
        self.problems: Sequence[str] = ("not checked yet",)
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def add_to(
        cls,
        server: grpc.aio.Server,
        services: Sequence[str],
        check: Check,
        *,
        interval: float,
        log_extra: Mapping[str, object] | None = None,
    ) -> Health:
        """Register health checking and reflection on ``server``, before it starts."""
        servicer = _AsyncHealthServicer()
        for name in ("", *services):
            await servicer.set(name, _NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        reflection.enable_server_reflection(
            (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return cls(servicer, services, check, interval=interval, log_extra=log_extra)

    async def update(self) -> bool:
        """Check once and set the status; whether the process is serving."""
        try:
            problems = list(await self._check())
        except Exception as error:  # a failing check is a problem, not a crash
            problems = [f"the health check failed: {type(error).__name__}: {error}"]
        if self._stopping:
            return False
        serving = not problems
        if serving != self.serving:
            if serving:
                _log.info("health: SERVING", extra=self._log_extra)
            else:
                _log.warning("health: NOT_SERVING: %s", "; ".join(problems), extra=self._log_extra)
        self.serving = serving
        self.problems = problems
        for name in self.names:
            await self._servicer.set(name, _SERVING if serving else _NOT_SERVING)
        return serving

    def start(self) -> None:
        """Check every ``interval`` seconds, in a task of the running loop, until ``stop()``."""
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name="health")

    async def _run(self) -> None:
        while not self._stopping:
            await self.update()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def stop(self) -> None:
        """NOT_SERVING for good, on every name, and no more checks. Stopping twice is harmless."""
        self._stopping = True
        self._wake.set()
        self.serving = False
        await self._servicer.enter_graceful_shutdown()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
