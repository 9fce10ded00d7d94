"""How much one router takes on: request size, keys per call, calls and queued items, deadlines.

``RouterLimits`` holds the settings (the router's flags, with defaults that
serve a busy cluster and stop a runaway caller):

- ``max_request_bytes``: the largest request message (gRPC's own check:
  RESOURCE_EXHAUSTED, without a retry hint: sending it again fails again);
- ``max_keys_per_call``: items of one Batch, PutMany or GetMany, at most
  ``shardkv.limits.MAX_OPERATIONS`` (INVALID_ARGUMENT beyond it);
- ``max_in_flight``: Router calls served at once by this router
  (``InFlightInterceptor``);
- ``max_in_flight_per_group``: requests waiting in one group's queue at the
  router (``router.groups.GroupBatcher``);
- ``default_deadline``: the deadline of a call that brings none;
  ``max_deadline``: a caller's longer deadline is cut to it.

Beyond ``max_in_flight`` or ``max_in_flight_per_group`` a call is refused
with RESOURCE_EXHAUSTED before anything of it is sent to a group, and the
trailing metadata ``retry-after-ms`` (``RETRY_AFTER_KEY``) says when to try
again; the message says so too. The client retries such calls after at least
that long. Refusing at once keeps the router answering: queues stay short,
so the calls it does take finish within their deadlines.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import grpc
import grpc.aio

from shardkv.limits import MAX_OPERATIONS
from shardkv.v1 import router_pb2

__all__ = [
    "DEFAULT_LIMITS",
    "RETRY_AFTER_KEY",
    "RETRY_AFTER_MS",
    "InFlightInterceptor",
    "RouterLimits",
    "overloaded_message",
]

RETRY_AFTER_KEY = "retry-after-ms"
# Long enough for a few node round trips to finish and free their places.
RETRY_AFTER_MS = 50
_SERVICE_PREFIX = "/" + router_pb2.DESCRIPTOR.services_by_name["Router"].full_name + "/"

if TYPE_CHECKING:
    _Behavior = Callable[[object, grpc.aio.ServicerContext[object, object]], Awaitable[object]]
    _Handler = grpc.RpcMethodHandler[object, object]
    _Interceptor = grpc.aio.ServerInterceptor[object, object]
else:
    _Interceptor = grpc.aio.ServerInterceptor


@dataclass(frozen=True)
class RouterLimits:
    max_request_bytes: int = 64 << 20
    max_keys_per_call: int = MAX_OPERATIONS
    max_in_flight: int = 10_000
    max_in_flight_per_group: int = 20_000
    default_deadline: float = 30.0
    max_deadline: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_keys_per_call", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_in_flight_per_group < 1:
            raise ValueError("max_in_flight_per_group must be at least 1")
        if self.max_keys_per_call > MAX_OPERATIONS:
            raise ValueError(f"max_keys_per_call may be at most {MAX_OPERATIONS}")
        if not 0 < self.default_deadline <= self.max_deadline:
            raise ValueError("the deadlines need 0 < default_deadline <= max_deadline")

    def deadline_for(self, remaining: float | None) -> float:
        """The seconds a call gets: its own deadline (cut to the maximum), else the default."""
        return self.default_deadline if remaining is None else min(remaining, self.max_deadline)


DEFAULT_LIMITS = RouterLimits()


def overloaded_message(what: str) -> str:
    return f"{what}; retry after {RETRY_AFTER_MS} ms ({RETRY_AFTER_KEY} in the trailing metadata)"


class InFlightInterceptor(_Interceptor):
    """Serves at most ``max_in_flight`` Router calls at once; refuses more (see above)."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._handlers: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or handler.unary_unary is None or not path.startswith(_SERVICE_PREFIX):
            return handler
        cached = self._handlers.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        # The stubs type behaviors as synchronous; under grpc.aio they are coroutines.
        limited: _Handler = grpc.unary_unary_rpc_method_handler(
            self._limit(cast("_Behavior", handler.unary_unary)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._handlers[path] = (handler, limited)
        return limited

    def _limit(self, behavior: _Behavior) -> _Behavior:
        async def limited(
            request: object, context: grpc.aio.ServicerContext[object, object]
        ) -> object:
            if self.in_flight >= self.max_in_flight:
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(RETRY_AFTER_MS)),))
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    overloaded_message(
                        f"the router is serving its limit of {self.max_in_flight} calls"
                    ),
                )
            self.in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1

        return limited
