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

from dataclasses import dataclass

import grpc
import grpc.aio

from router.interceptors import Behavior, RouterMethodInterceptor
from shardkv.limits import MAX_OPERATIONS

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


class InFlightInterceptor(RouterMethodInterceptor):
    """Serves at most ``max_in_flight`` Router calls at once; refuses more (see above)."""

    def __init__(self, max_in_flight: int) -> None:
        super().__init__()
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def wrap_behavior(self, method: str, behavior: Behavior) -> Behavior:
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
