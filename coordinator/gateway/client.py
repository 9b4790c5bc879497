"""The coordinator's side of `WatchSandboxPolicies`.

One long-lived bidirectional stream to the gateway, over the coordinator's
own mTLS credential. The client registers every sandbox it holds
attachments for; the gateway answers with INITIAL/DELTA/REMOVED events
whose `seq` counts up by one per stream. Anything that breaks that contract
- a gap, a regression, the stream ending, the gateway restarting - ends the
session; the next session re-registers everything, and that session is a
resync: the gateway answers every registered sandbox with INITIAL or
REMOVED, then SYNC_COMPLETE (``on_resync`` learns which sandboxes the
session opened with; the events, marker included, go to ``on_event``).
Reconnects back off exponentially with
full jitter (tenacity), capped; a session that was healthy for a while starts
the backoff afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from coordinator._proto.bluefield.gateway.v1 import policy_pb2 as gw
from coordinator._proto.bluefield.gateway.v1 import policy_pb2_grpc as gw_grpc
from coordinator.bounded import DETAIL_LIMIT, bounded
from coordinator.client import TlsFiles
from coordinator.gateway.channel import GatewayChannels
from coordinator.gateway.reference import DENIED_TRAILER

log = logging.getLogger(__name__)

EventHandler = Callable[[gw.PolicyEvent], Awaitable[None]]
DeniedHandler = Callable[[str, str], Awaitable[None]]
ResyncHandler = Callable[[frozenset[str]], Awaitable[None]]
HEALTHY_SESSION_S = 30.0
CAPABILITIES = (gw.CAPABILITY_EGRESS_RATE_LIMIT, gw.CAPABILITY_IPV6)


class SessionEnded(Exception):
    """The stream is gone; reconnect (with backoff)."""


class LongSessionEnded(Exception):
    """A healthy session ended; reconnect with the backoff reset."""


@dataclass
class StreamStatus:
    """What the daemon reports about the stream (health, metrics, staleness)."""

    connected: bool = False
    # Monotonic time the stream went down (or the client started); None while up.
    down_since: float | None = None
    reconnects: int = 0
    resyncs: int = 0
    last_seq: int = 0
    epoch: str = ""
    denied: set[str] = field(default_factory=set)


class PolicyStreamClient:
    def __init__(
        self,
        target: str,
        tls: TlsFiles,
        on_event: EventHandler,
        *,
        on_denied: DeniedHandler | None = None,
        on_resync: ResyncHandler | None = None,
        server_name: str = "",
        crl: tuple[str, ...] = (),
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        # Credentials are re-read and validated for every session.
        self.channels = GatewayChannels(target, tls, server_name=server_name, crl=crl)
        self._on_event = on_event
        self._on_denied = on_denied
        self._on_resync = on_resync
        # The sandboxes the current session's first Register carried.
        self._resync_ids: frozenset[str] = frozenset()
        self._backoff_base = backoff_base_s
        self._backoff_cap = backoff_cap_s
        self._clock = clock
        self._wanted: set[str] = set()
        self._outbox: asyncio.Queue[gw.WatchRequest | None] | None = None
        self._stopped = asyncio.Event()
        self.status = StreamStatus(down_since=clock())

    # -- registrations ----------------------------------------------------------

    def register(self, sandbox_ids: Iterable[str]) -> None:
        new = set(sandbox_ids) - self._wanted
        if not new:
            return
        self._wanted |= new
        self.status.denied -= new
        self._send(gw.WatchRequest(register=gw.Register(sandbox_ids=sorted(new), capabilities=CAPABILITIES)))

    def unregister(self, sandbox_ids: Iterable[str]) -> None:
        gone = set(sandbox_ids) & self._wanted
        if not gone:
            return
        self._wanted -= gone
        self._send(gw.WatchRequest(unregister=gw.Unregister(sandbox_ids=sorted(gone))))

    @property
    def registered(self) -> frozenset[str]:
        return frozenset(self._wanted)

    def _send(self, request: gw.WatchRequest) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(request)

    # -- the stream -------------------------------------------------------------

    def stop(self) -> None:
        self._stopped.set()
        if self._outbox is not None:
            self._outbox.put_nowait(None)

    async def run(self) -> None:
        """Keep a session up until stop()."""
        while not self._stopped.is_set():
            try:
                async for attempt in AsyncRetrying(
                    wait=wait_random_exponential(multiplier=self._backoff_base, max=self._backoff_cap),
                    retry=retry_if_exception_type(SessionEnded),
                ):
                    with attempt:
                        await self._session()
                        return  # stopped
            except LongSessionEnded:
                continue

    async def _session(self) -> None:
        if self._stopped.is_set():
            return
        outbox: asyncio.Queue[gw.WatchRequest | None] = asyncio.Queue()
        self._resync_ids = frozenset(self._wanted)
        outbox.put_nowait(
            gw.WatchRequest(register=gw.Register(sandbox_ids=sorted(self._wanted), capabilities=CAPABILITIES))
        )
        self._outbox = outbox
        started = self._clock()
        async with self.channels.open() as channel:
            stub = gw_grpc.PolicyGatewayStub(channel)  # type: ignore[no-untyped-call]
            call = stub.WatchSandboxPolicies()
            writer = asyncio.ensure_future(_write_requests(call, outbox))
            stop_waiter: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
            try:
                await self._consume(call, stop_waiter)
            except grpc.aio.AioRpcError as exc:
                await self._session_failed(exc)
            finally:
                stop_waiter.cancel()
                writer.cancel()
                call.cancel()
                self._outbox = None
                self._mark_down()
        if self._stopped.is_set():
            return
        if self._clock() - started > HEALTHY_SESSION_S:
            raise LongSessionEnded()
        raise SessionEnded()

    async def _consume(self, call: Any, stop_waiter: asyncio.Future[Any]) -> None:
        connect = asyncio.ensure_future(call.wait_for_connection())
        done, _ = await asyncio.wait({connect, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        if stop_waiter in done:
            connect.cancel()
            return
        await connect
        self._mark_up()
        if self._on_resync is not None:
            try:
                await self._on_resync(self._resync_ids)
            except Exception:
                log.exception("starting the resync of %d sandboxes failed", len(self._resync_ids))
        expected_seq = 1
        while True:
            read = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({read, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if stop_waiter in done:
                read.cancel()
                return
            event = read.result()
            if event is grpc.aio.EOF:  # type: ignore[attr-defined]
                log.warning("policy stream ended by the gateway")
                return
            assert isinstance(event, gw.PolicyEvent)
            if not self._accept(event, expected_seq):
                continue
            expected_seq = event.seq + 1
            if event.type != gw.EVENT_TYPE_SYNC_COMPLETE and event.sandbox_id not in self._wanted:
                # Not asked for (never, or no longer): counted in the
                # sequence, handed to no one, so nothing of it is kept.
                log.debug("policy event for a sandbox not registered ignored",
                          extra={"seq": event.seq, "sandbox_id": bounded(event.sandbox_id)})  # fmt: skip
                continue
            try:
                await self._on_event(event)
            except Exception:
                log.exception("handling policy event seq %d for %s failed", event.seq, event.sandbox_id)

    def _accept(self, event: gw.PolicyEvent, expected_seq: int) -> bool:
        """True to handle the event, False to drop a duplicate; raises
        SessionEnded for anything that needs a resync."""
        if self.status.epoch and event.gateway_epoch != self.status.epoch:
            log.info("gateway epoch changed: resyncing", extra={"epoch": event.gateway_epoch})
            self.status.resyncs += 1
        self.status.epoch = event.gateway_epoch
        if event.seq == expected_seq - 1 and event.seq > 0:
            log.info(
                "duplicate policy event ignored",
                extra={"seq": event.seq, "sandbox_id": bounded(event.sandbox_id)},
            )
            return False
        if event.seq != expected_seq:
            self.status.resyncs += 1
            log.warning("policy stream seq %d, expected %d: resyncing", event.seq, expected_seq)
            raise SessionEnded()
        self.status.last_seq = event.seq
        return True

    async def _session_failed(self, exc: grpc.aio.AioRpcError) -> None:
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            trailers: list[Any] = list(exc.trailing_metadata() or ())
            denied = next((str(v) for k, v in trailers if k == DENIED_TRAILER), "")
            # Only a sandbox this stream asked for can be denied to it: the
            # gateway's word on any other is neither acted on nor kept.
            if denied in self._wanted:
                # Not ours to enforce from this gateway: stop asking for it.
                self._wanted.discard(denied)
                self.status.denied.add(denied)
                if self._on_denied is not None:
                    await self._on_denied(denied, exc.details() or "permission denied")
                return
        log.warning(
            "policy stream failed: %s %s", exc.code().name, bounded(exc.details() or "", DETAIL_LIMIT)
        )

    def _mark_up(self) -> None:
        self.status.connected = True
        self.status.down_since = None
        log.info("policy stream connected", extra={"target": self._target})

    def _mark_down(self) -> None:
        if self.status.connected:
            self.status.reconnects += 1
        self.status.connected = False
        if self.status.down_since is None:
            self.status.down_since = self._clock()


async def _write_requests(call: Any, outbox: asyncio.Queue[gw.WatchRequest | None]) -> None:
    """Send queued registrations on the stream; None half-closes it."""
    try:
        while True:
            request = await outbox.get()
            if request is None:
                await call.done_writing()
                return
            await call.write(request)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        return  # the read side reports why the stream ended
