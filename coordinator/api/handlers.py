"""A gRPC method handler with a callback when each call ends.

Server interceptors (metrics, security events) need to see how a call
ended — the status the servicer set or aborted with, the exception that
escaped — for unary and streaming RPCs alike. The wrapping is the same for
all of them; only what they do at the end differs.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# (request, context, exception or None, seconds the call took); the request
# is None for client-streaming calls.
CallEnded = Callable[[Any, Any, BaseException | None, float], None]


def on_call_end(
    handler: grpc.RpcMethodHandler[Any, Any], ended: CallEnded
) -> grpc.RpcMethodHandler[Any, Any]:
    def single(behavior: Callable[..., Any], *, streamed_request: bool) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: Any) -> Any:
            started = time.monotonic()
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                ended(None if streamed_request else request, context, exc, time.monotonic() - started)
                raise
            ended(None if streamed_request else request, context, None, time.monotonic() - started)
            return response

        return wrapper

    def streaming(behavior: Callable[..., Any], *, streamed_request: bool) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(behavior):
            # Writes with context.write() and returns when the stream ends.
            return single(behavior, streamed_request=streamed_request)

        async def wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.monotonic()
            seen = None if streamed_request else request
            try:
                responses = behavior(request, context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        yield response
                else:
                    for response in responses:
                        yield response
            except BaseException as exc:
                ended(seen, context, exc, time.monotonic() - started)
                raise
            ended(seen, context, None, time.monotonic() - started)

        return wrapper

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            single(handler.unary_unary, streamed_request=False), **serializers
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            single(handler.stream_unary, streamed_request=True), **serializers
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream, streamed_request=False), **serializers
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream, streamed_request=True), **serializers
        )
    return handler
