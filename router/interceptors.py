"""A server interceptor that wraps each unary method of the Router service once.

``RouterMethodInterceptor`` is what the metrics and the in-flight limit share:
calls of other services (health, reflection) pass through untouched; a
Router method's handler is wrapped by ``wrap(method, behavior)`` the first
time it is seen, and the wrapped handler is kept, so each call costs one
dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import grpc
import grpc.aio

from shardkv.v1 import router_pb2

__all__ = ["SERVICE_PREFIX", "Behavior", "RouterMethodInterceptor"]

SERVICE_PREFIX = "/" + router_pb2.DESCRIPTOR.services_by_name["Router"].full_name + "/"

if TYPE_CHECKING:
    # Generic only in the type stubs.
    Behavior = Callable[[object, grpc.aio.ServicerContext[object, object]], Awaitable[object]]
    _Handler = grpc.RpcMethodHandler[object, object]
    _Interceptor = grpc.aio.ServerInterceptor[object, object]
else:
    Behavior = Callable
    _Interceptor = grpc.aio.ServerInterceptor


class RouterMethodInterceptor(_Interceptor):
    """Wraps every unary Router method with ``wrap``; see the module docstring."""

    def __init__(self) -> None:
        # method path -> (the handler continuation gave, its wrapped twin)
        self._handlers: dict[str, tuple[_Handler, _Handler]] = {}

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        """The behavior to serve ``method`` (its short name, e.g. ``Put``) with."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or handler.unary_unary is None or not path.startswith(SERVICE_PREFIX):
            return handler
        cached = self._handlers.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        # The stubs type behaviors as synchronous; under grpc.aio they are coroutines.
        behavior = cast("Behavior", handler.unary_unary)
        wrapped: _Handler = grpc.unary_unary_rpc_method_handler(
            self.wrap(path[len(SERVICE_PREFIX) :], behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._handlers[path] = (handler, wrapped)
        return wrapped
