"""The reference policy gateway: serves NetworkScopes from a
directory of YAML files over `WatchSandboxPolicies`, for the demo and the
tests. The production gateway is not part of this project; this one
implements the same contract.

- mTLS; the client's identity (certificate SAN) must be allowed each sandbox
  it registers (fnmatch patterns per identity). A registration it is not
  allowed ends the stream with PERMISSION_DENIED and the sandbox id in the
  `denied-sandbox-id` trailer.
- Per stream, `seq` counts 1, 2, 3, ... with no gaps; `gateway_epoch` is new
  for every start (and for every simulated restart).
- Every stream is a resync: each sandbox of a Register is answered with
  INITIAL (its file) or REMOVED (no file); after the stream's first
  Register, one SYNC_COMPLETE says the initial sync of this epoch is done.
  Later, a registered sandbox gets INITIAL when its file appears, DELTA
  when it changes, REMOVED when it is deleted.
- ``legacy_resync`` serves the first contract instead (INITIAL only for
  sandboxes with a file, no REMOVED on registration, no SYNC_COMPLETE): how
  the coordinator copes with a gateway that never completes a resync.
- A consumer that falls `queue_size` events behind is disconnected.
- SIGUSR1 simulates a restart: new epoch, every stream closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from coordinator._proto.bluefield.gateway.v1 import policy_pb2 as gw
from coordinator._proto.bluefield.gateway.v1 import policy_pb2_grpc as gw_grpc
from coordinator.certs import IdentityError, identity_from_certificate
from coordinator.gateway.policy_dir import PolicyFile, scan
from coordinator.waiting import wait_within

log = logging.getLogger(__name__)

DENIED_TRAILER = "denied-sandbox-id"
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(eq=False)  # identity semantics: subscribers live in a set
class Subscriber:
    identity: str
    queue: asyncio.Queue[gw.PolicyEvent | None]
    registered: set[str] = field(default_factory=set)
    seq: int = 0
    # Whether the initial sync (the answer to the first Register) was sent.
    synced: bool = False
    # Why the stream must end, once set (slow consumer, restart, denial).
    closing: tuple[grpc.StatusCode, str, str] | None = None

    def event(self, type_: gw.EventType, sandbox_id: str, epoch: str, scope: gw.NetworkScope | None) -> bool:
        """Queue one event; False if the consumer is too far behind."""
        self.seq += 1
        message = gw.PolicyEvent(seq=self.seq, type=type_, sandbox_id=sandbox_id, gateway_epoch=epoch)
        if type_ != gw.EVENT_TYPE_SYNC_COMPLETE:
            message.projection.sandbox_id = sandbox_id
            if scope is not None:
                message.projection.network.CopyFrom(scope)
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True

    def close(self, code: grpc.StatusCode, message: str, denied: str = "") -> None:
        if self.closing is None:
            self.closing = (code, message, denied)
        # Whatever is still queued is moot: the consumer resyncs on its next
        # stream. Drop it so the stream ends now, not after the backlog.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class ReferenceGateway(gw_grpc.PolicyGatewayServicer):
    def __init__(
        self,
        directory: Path,
        allow: Mapping[str, Iterable[str]],
        *,
        queue_size: int = 256,
        legacy_resync: bool = False,
    ) -> None:
        self._directory = directory
        self._legacy_resync = legacy_resync
        self._allow = {identity: tuple(patterns) for identity, patterns in allow.items()}
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        self._files: dict[str, PolicyFile] = scan(directory)
        self.epoch = uuid.uuid4().hex

    def allowed(self, identity: str, sandbox_id: str) -> bool:
        return any(fnmatch.fnmatchcase(sandbox_id, p) for p in self._allow.get(identity, ()))

    def restart(self) -> None:
        """What a gateway restart looks like to its consumers."""
        self.epoch = uuid.uuid4().hex
        for sub in list(self._subscribers):
            sub.close(grpc.StatusCode.UNAVAILABLE, "gateway restarting")
        log.info("restarted", extra={"epoch": self.epoch})

    def rescan(self) -> None:
        """Publish what changed in the directory since the last scan."""
        current = scan(self._directory, self._files)
        for sandbox_id, new in current.items():
            old = self._files.get(sandbox_id)
            if old is None:
                self._publish(sandbox_id, gw.EVENT_TYPE_INITIAL, new.scope)
            elif old.digest != new.digest:
                self._publish(sandbox_id, gw.EVENT_TYPE_DELTA, new.scope)
        for sandbox_id in self._files.keys() - current.keys():
            self._publish(sandbox_id, gw.EVENT_TYPE_REMOVED, None)
        self._files = current

    def _publish(self, sandbox_id: str, type_: gw.EventType, scope: gw.NetworkScope | None) -> None:
        for sub in list(self._subscribers):
            if sandbox_id in sub.registered and not sub.event(type_, sandbox_id, self.epoch, scope):
                log.warning("disconnecting slow consumer", extra={"identity": sub.identity})
                sub.close(grpc.StatusCode.RESOURCE_EXHAUSTED, "consumer too slow: event queue full")

    async def WatchSandboxPolicies(
        self, request_iterator: AsyncIterator[gw.WatchRequest], context: Context
    ) -> AsyncIterator[gw.PolicyEvent]:
        try:
            pems = list(dict(context.auth_context())["x509_pem_cert"])
            identity = identity_from_certificate(pems[0])
        except (IdentityError, KeyError, IndexError) as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"no usable client identity: {exc}")
            return
        sub = Subscriber(identity, asyncio.Queue(maxsize=self._queue_size))
        self._subscribers.add(sub)
        reader = asyncio.ensure_future(self._read_requests(sub, request_iterator))
        try:
            while True:
                event = await sub.queue.get()
                if event is None:
                    break
                yield event
        finally:
            reader.cancel()
            self._subscribers.discard(sub)
        if sub.closing is not None and sub.closing[0] != grpc.StatusCode.OK:
            code, message, denied = sub.closing
            if denied:
                context.set_trailing_metadata(((DENIED_TRAILER, denied),))
            await context.abort(code, message)

    async def _read_requests(self, sub: Subscriber, requests: AsyncIterator[gw.WatchRequest]) -> None:
        try:
            async for request in requests:
                if request.HasField("register"):
                    self._register(sub, request.register.sandbox_ids)
                elif request.HasField("unregister"):
                    sub.registered.difference_update(request.unregister.sandbox_ids)
        except (grpc.RpcError, asyncio.CancelledError):
            return
        # The client half-closed: end our side too.
        sub.close(grpc.StatusCode.OK, "")

    def _register(self, sub: Subscriber, sandbox_ids: Iterable[str]) -> None:
        for sandbox_id in sandbox_ids:
            if not self.allowed(sub.identity, sandbox_id):
                log.warning(
                    "registration refused", extra={"identity": sub.identity, "sandbox_id": sandbox_id}
                )
                sub.close(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"sandbox {sandbox_id} is not delegated to {sub.identity}",
                    denied=sandbox_id,
                )
                return
            if sandbox_id in sub.registered:
                continue
            sub.registered.add(sandbox_id)
            policy = self._files.get(sandbox_id)
            if policy is not None:
                queued = sub.event(gw.EVENT_TYPE_INITIAL, sandbox_id, self.epoch, policy.scope)
            elif not self._legacy_resync:
                queued = sub.event(gw.EVENT_TYPE_REMOVED, sandbox_id, self.epoch, None)
            else:
                continue
            if not queued:
                sub.close(grpc.StatusCode.RESOURCE_EXHAUSTED, "consumer too slow: event queue full")
                return
        if not sub.synced and not self._legacy_resync:
            sub.synced = True
            if not sub.event(gw.EVENT_TYPE_SYNC_COMPLETE, "", self.epoch, None):
                sub.close(grpc.StatusCode.RESOURCE_EXHAUSTED, "consumer too slow: event queue full")


async def serve_gateway(
    gateway: ReferenceGateway,
    listen: str,
    credentials: grpc.ServerCredentials,
    *,
    poll_interval_s: float = 0.2,
    stop: asyncio.Event | None = None,
    bound: asyncio.Future[int] | None = None,
) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT when not given);
    ``bound`` learns the port (useful with port 0)."""
    server = grpc.aio.server()
    gw_grpc.add_PolicyGatewayServicer_to_server(gateway, server)  # type: ignore[no-untyped-call]
    port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    await server.start()
    if bound is not None:
        bound.set_result(port)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, gateway.restart)
    log.info("gateway serving", extra={"listen": listen, "epoch": gateway.epoch})
    try:
        while not stop.is_set():
            gateway.rescan()
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_within(stop.wait(), poll_interval_s)
    finally:
        gateway.restart()  # end every stream before the server goes
        await server.stop(1.0)
