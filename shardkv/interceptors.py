"""Server interceptors that wrap a method's handler once and keep it.

``WrappingInterceptor`` is the base: ``wrap(path, handler)`` returns the
handler to serve a method with (or the one given, untouched); the first
call of each method wraps it, later ones cost one dictionary lookup. The
router's metrics and in-flight limit build on it (``router.interceptors``).

``DecodeInterceptor``: a request that does not decode is INVALID_ARGUMENT, not UNKNOWN.

gRPC decodes a request before any handler runs, and a decode error there
ends the call as UNKNOWN ("Unexpected DecodeError"), which a caller cannot
tell from a bug in the server. This interceptor wraps each unary method's
deserializer so that bytes that are no message of the method's request type
reach a handler that answers INVALID_ARGUMENT, naming the method. Both
servers install it: the node's (``shardkv.node.process``) and the router's
(``router.server``), where it goes last among the interceptors so the others
wrap its handlers and count, limit and authenticate such calls like any
other. Streaming requests (the Raft transport's streams) pass through
untouched: the transport decodes its batches itself.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, cast

import grpc
import grpc.aio

__all__ = ["Behavior", "DecodeInterceptor", "WrappingInterceptor"]

if TYPE_CHECKING:
    Behavior = Callable[[object, grpc.aio.ServicerContext[object, object]], Awaitable[object]]
    _Handler = grpc.RpcMethodHandler[object, object]
    _Interceptor = grpc.aio.ServerInterceptor[object, object]
    _Context = grpc.aio.ServicerContext[object, object]
else:
    Behavior = Callable
    _Interceptor = grpc.aio.ServerInterceptor


class _Undecodable:
    """What a guarded deserializer hands the handler for bytes that are no message of its type."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _guarded(deserializer: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return deserializer(data)
        except Exception as error:
            return _Undecodable(error)

    return deserialize


async def _refuse(path: str, request: _Undecodable, context: _Context) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request to {path} is not a valid message of its request type "
        f"({request.error}): send it encoded as the .proto file says",
    )


class WrappingInterceptor(_Interceptor):
    """Serves each method with ``wrap``'s handler, made once; see the module docstring."""

    def __init__(self) -> None:
        # method path -> (the handler continuation gave, its wrapped twin)
        self._handlers: dict[str, tuple[_Handler, _Handler]] = {}

    def wrap(self, path: str, handler: _Handler) -> _Handler:
        """The handler to serve ``path`` with (``handler`` itself to leave it alone)."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path = handler_call_details.method
        cached = self._handlers.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(path, handler)
        self._handlers[path] = (handler, wrapped)
        return wrapped


class DecodeInterceptor(WrappingInterceptor):
    """Refuses undecodable requests with INVALID_ARGUMENT; see the module docstring.

    Unary requests only (unary-unary, and unary-stream served by an async
    generator): the others pass through untouched.
    """

    def wrap(self, path: str, handler: _Handler) -> _Handler:
        if handler.request_deserializer is None:
            return handler
        deserializer = _guarded(handler.request_deserializer)
        # The stubs type behaviors as synchronous; under grpc.aio they are coroutines.
        unary = cast("Behavior | None", handler.unary_unary)
        if unary is not None:

            async def unary_behavior(request: object, context: _Context) -> object:
                if isinstance(request, _Undecodable):
                    await _refuse(path, request, context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_behavior,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        stream = cast(
            "Callable[[object, _Context], AsyncIterator[object]] | None", handler.unary_stream
        )
        if stream is not None and inspect.isasyncgenfunction(stream):

            async def stream_behavior(request: object, context: _Context) -> AsyncIterator[object]:
                if isinstance(request, _Undecodable):
                    await _refuse(path, request, context)
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                stream_behavior,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
