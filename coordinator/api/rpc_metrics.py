"""The gRPC server interceptor counting every handled RPC by method and
final status code, and timing it (the metrics themselves are
:class:`coordinator.metrics.Metrics`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from coordinator.api.handlers import on_call_end
from coordinator.metrics import Metrics

__all__ = ["RpcMetricsInterceptor"]


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every handled RPC by method and final status code and times
    it, for unary and streaming RPCs alike, including aborted and failed ones.

    Unknown methods are not counted: their names come from the client and
    would let anyone create unbounded label values."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap_handler(handler, handler_call_details.method.lstrip("/"), self._metrics)


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, metrics: Metrics
) -> grpc.RpcMethodHandler[Any, Any]:
    def ended(request: Any, context: Any, exc: BaseException | None, seconds: float) -> None:
        metrics.rpcs.labels(method=method, code=_code_of(context, exc).name).inc()
        metrics.rpc_seconds.labels(method=method).observe(seconds)

    return on_call_end(handler, ended)


def _code_of(context: Any, exc: BaseException | None) -> grpc.StatusCode:
    """The status the client will see: what abort()/set_code() set, OK on a
    clean return, CANCELLED when the client went away, UNKNOWN for an
    exception the servicer let escape (that is what grpc sends)."""
    code = _context_code(context)
    if exc is None:
        return code or grpc.StatusCode.OK
    if isinstance(exc, grpc.aio.AbortError):
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return code if code not in (None, grpc.StatusCode.OK) else grpc.StatusCode.UNKNOWN


def _context_code(context: Any) -> grpc.StatusCode | None:
    try:
        raw = context.code()
    except (AttributeError, NotImplementedError):
        return None
    if raw is None or isinstance(raw, grpc.StatusCode):
        return raw
    # Some grpc versions hand back the numeric code.
    for candidate in grpc.StatusCode:
        if candidate.value[0] == raw:
            return candidate
    return None
