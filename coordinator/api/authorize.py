"""Authorization first, then decoding, for every Coordinator RPC.

The innermost server interceptor. gRPC would decode a request before any
handler runs, so the Coordinator's methods are handed the raw bytes
(``Received``) instead: the caller is authenticated and its role checked
against ``ROLES`` first (UNAUTHENTICATED / PERMISSION_DENIED), and only then
is the request decoded; what does not decode is INVALID_ARGUMENT "request
could not be decoded". An exception that escapes a handler becomes INTERNAL
"internal error" (it is logged here): no exception text ever reaches a
caller.

The other interceptors see the ``Received`` wrapper as the request; its
``message`` is the decoded request once this interceptor has decoded it.
The standard services on the same server (grpc.health.v1, reflection) are
not Coordinator RPCs and pass untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.api import front
from coordinator.api.auth import Forbidden, RoleMap, Unauthenticated
from coordinator.bounded import DETAIL_LIMIT, bounded
from coordinator.callers import Caller, Role

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/" + pb.DESCRIPTOR.services_by_name["Coordinator"].full_name + "/"
UNDECODABLE = "request could not be decoded"
INTERNAL = "internal error"

_ANY = frozenset({Role.HOST, Role.ADMIN})
# Who may call what. A method missing here is refused to everyone.
ROLES: dict[str, frozenset[Role]] = {
    "Health": _ANY,
    "Attach": frozenset({Role.HOST}),
    "Detach": _ANY,
    "GetAttachment": _ANY,
    "ListAttachments": _ANY,
    "Reconcile": _ANY,
    "WatchAttachmentEvents": _ANY,
    "ExplainPacket": frozenset({Role.ADMIN}),
}

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")

Context = grpc.aio.ServicerContext[Any, Any]


def current_caller() -> Caller:
    """The caller of the RPC being handled, as authorized here."""
    return _caller.get()


@contextlib.contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Servicer methods called in-process, not through the server (tests):
    the caller they see, as if it had been authorized."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)


class Received:
    """A request as it came off the wire; decoded at most once, on demand."""

    __slots__ = ("_decoder", "_tried", "data", "message")

    def __init__(self, data: bytes, decoder: Callable[[bytes], Any]) -> None:
        self.data = data
        self._decoder = decoder
        self._tried = False
        self.message: Any = None

    def decode(self) -> Any:
        """The decoded message, or None if the bytes are not one."""
        if not self._tried:
            self._tried = True
            try:
                self.message = self._decoder(self.data)
            except Exception:  # protobuf raises DecodeError, RuntimeWarning subclasses, ...
                self.message = None
        return self.message


class Authorizer(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, roles: RoleMap) -> None:
        self._roles = roles

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        full = handler_call_details.method
        if handler is None or not full.startswith(SERVICE_PREFIX):
            return handler
        return self._guarded(full.removeprefix(SERVICE_PREFIX), handler)

    async def _admit(self, method: str, received: Received, context: Context) -> Any:
        """Authorize, then decode; aborts the call unless both succeed."""
        try:
            caller = self._roles.caller_from_auth_context(dict(context.auth_context()))
        except Unauthenticated as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, bounded(str(exc), DETAIL_LIMIT))
        except Forbidden as exc:
            log.warning("rpc refused: %s", bounded(str(exc), DETAIL_LIMIT), extra={"method": method})
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, bounded(str(exc), DETAIL_LIMIT))
        if caller.role not in ROLES.get(method, frozenset()):
            log.warning(
                "rpc refused", extra={"method": method, "identity": bounded(caller.identity, DETAIL_LIMIT)}
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{method} is not allowed for role {caller.role.value}"
            )
        # Authenticated, not revoked, a role for the method: the connection
        # has proven itself and keeps its slot (api/front).
        front.prove(context.peer() or "")
        message = received.decode()
        if message is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE)
        _caller.set(caller)
        return message

    def _guarded(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        decoder = handler.request_deserializer or (lambda data: data)

        def receive(data: bytes) -> Received:
            return Received(data, decoder)

        if handler.unary_unary is not None:
            behavior: Callable[[Any, Context], Awaitable[Any]] = handler.unary_unary  # type: ignore[assignment]

            async def unary(received: Received, context: Context) -> Any:
                message = await self._admit(method, received, context)
                try:
                    return await behavior(message, context)
                except Exception as exc:
                    await _internal(method, exc, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=receive, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            # The servicer's streaming methods are async generators.
            streaming: Callable[[Any, Context], AsyncIterator[Any]] = handler.unary_stream  # type: ignore[assignment]

            async def stream(received: Received, context: Context) -> AsyncIterator[Any]:
                message = await self._admit(method, received, context)
                try:
                    async for response in streaming(message, context):
                        yield response
                except Exception as exc:
                    await _internal(method, exc, context)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=receive, response_serializer=handler.response_serializer
            )
        # The Coordinator has no client-streaming RPCs; refuse rather than
        # let one through unguarded if it ever gets one.
        raise TypeError(f"{method}: only unary requests are guarded")


async def _internal(method: str, exc: Exception, context: Context) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # the handler's own abort, already a status for the caller
    log.error("%s failed", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)
