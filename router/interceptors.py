"""The interceptor that wraps each unary method of the Router service once.

``RouterMethodInterceptor`` is what the metrics and the in-flight limit share:
calls of other services (health, reflection) pass through untouched; a
Router method's handler is wrapped by ``wrap_behavior(method, behavior)`` the
first time it is seen, and the wrapped handler is kept
(``shardkv.interceptors.WrappingInterceptor``), so each call costs one
dictionary lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import grpc

from shardkv.interceptors import Behavior, WrappingInterceptor
from shardkv.v1 import router_pb2

__all__ = ["SERVICE_PREFIX", "Behavior", "RouterMethodInterceptor"]

SERVICE_PREFIX = "/" + router_pb2.DESCRIPTOR.services_by_name["Router"].full_name + "/"

if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[object, object]


class RouterMethodInterceptor(WrappingInterceptor):
    """Wraps every unary Router method with ``wrap_behavior``; see the module docstring."""

    def wrap_behavior(self, method: str, behavior: Behavior) -> Behavior:
        """The behavior to serve ``method`` (its short name, e.g. ``Put``) with."""
        raise NotImplementedError

    def wrap(self, path: str, handler: _Handler) -> _Handler:
        if handler.unary_unary is None or not path.startswith(SERVICE_PREFIX):
            return handler
        # The stubs type behaviors as synchronous; under grpc.aio they are coroutines.
        behavior = cast("Behavior", handler.unary_unary)
        wrapped: _Handler = grpc.unary_unary_rpc_method_handler(
            self.wrap_behavior(path[len(SERVICE_PREFIX) :], behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return wrapped
