"""The Coordinator gRPC service: validate, call the service, map domain
errors to status codes. Who may call what is decided before any of this,
in ``api/authorize``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc

from coordinator import __version__
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.api import convert
from coordinator.api.auth import RoleMap
from coordinator.api.authorize import Authorizer, current_caller
from coordinator.bounded import DETAIL_LIMIT, bounded
from coordinator.errors import (
    AlreadyExists,
    CoordinatorError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from coordinator.events import EventHub
from coordinator.offload_status import OffloadMonitor
from coordinator.service import AttachmentService
from coordinator.store.worker import AsyncStore

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[CoordinatorError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)

R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Any, Context], Awaitable[R]]


def status_for(exc: CoordinatorError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def unary(handler: Handler[R]) -> Handler[R]:
    @wraps(handler)
    async def wrapper(self: Any, request: Any, context: Context) -> R:
        try:
            return await handler(self, request, context)
        except CoordinatorError as exc:
            await context.abort(status_for(exc), bounded(str(exc), DETAIL_LIMIT))
            raise  # unreachable: abort raises

    return wrapper


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(
        self,
        service: AttachmentService,
        store: AsyncStore,
        events: EventHub,
        roles: RoleMap,
        backend_name: str,
        *,
        offload: OffloadMonitor | None = None,
    ) -> None:
        self._service = service
        self._store = store
        self._events = events
        # The server installs it as the innermost interceptor (api/server).
        self.authorizer = Authorizer(roles)
        self._backend_name = backend_name
        # Datapath offload counts for Health and GetAttachment; None = not reported.
        self._offload = offload

    @unary
    async def Health(self, request: pb.HealthRequest, context: Context) -> pb.HealthResponse:
        report = await self._service.health()
        offload = await self._offload.total() if self._offload is not None else None
        return convert.health_to_pb(
            report, await self._service.pools(), self._backend_name, __version__, offload=offload
        )

    @unary
    async def Attach(self, request: pb.AttachRequest, context: Context) -> pb.Attachment:
        caller = current_caller()
        record = await self._service.attach(caller, convert.attach_params(request))
        return convert.attachment_to_pb(record)

    @unary
    async def Detach(self, request: pb.DetachRequest, context: Context) -> pb.DetachResponse:
        caller = current_caller()
        attachment_id, generation = convert.detach_args(request)
        detached = await self._service.detach(caller, attachment_id, generation)
        return pb.DetachResponse(detached=detached)

    @unary
    async def GetAttachment(self, request: pb.GetAttachmentRequest, context: Context) -> pb.Attachment:
        caller = current_caller()
        attachment_id = convert.require_id("attachment_id", request.attachment_id)
        record = await self._service.get(caller, attachment_id)
        offload = None
        if self._offload is not None:
            offload = await self._offload.for_ports([record.device.representor])
        return convert.attachment_to_pb(record, offload=offload)

    @unary
    async def ListAttachments(
        self, request: pb.ListAttachmentsRequest, context: Context
    ) -> pb.ListAttachmentsResponse:
        caller = current_caller()
        records = await self._service.list(
            caller,
            sandbox_id=convert.optional_id("sandbox_id", request.sandbox_id),
            host_instance_id=convert.optional_id("host_instance_id", request.host_instance_id),
            state=convert.list_filter_state(request.state),
        )
        return pb.ListAttachmentsResponse(attachments=[convert.attachment_to_pb(r) for r in records])

    @unary
    async def Reconcile(self, request: pb.ReconcileRequest, context: Context) -> pb.ReconcileResponse:
        caller = current_caller()
        host_instance_id, mode, known = convert.reconcile_args(request)
        result = await self._service.reconcile_host(caller, host_instance_id, mode, known)
        return convert.reconcile_to_pb(result)

    @unary
    async def ExplainPacket(
        self, request: pb.ExplainPacketRequest, context: Context
    ) -> pb.ExplainPacketResponse:
        caller = current_caller()
        attachment_id, packet = convert.explain_args(request)
        return convert.explanation_to_pb(await self._service.explain(caller, attachment_id, packet))

    async def WatchAttachmentEvents(
        self, request: pb.WatchAttachmentEventsRequest, context: Context
    ) -> AsyncIterator[pb.AttachmentEvent]:
        caller = current_caller()
        owner = None if caller.is_admin else caller.identity
        try:
            seq = convert.since_seq(request)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc), DETAIL_LIMIT))
        while not self._events.closed:
            batch = await self._store.events_since(seq, owner=owner)
            for event in batch:
                yield convert.event_to_pb(event)
                seq = event.seq
            if not batch:
                # Also wakes periodically: events of other owners advance
                # nothing for this watcher but still notify.
                await self._events.wait(timeout=5.0)
