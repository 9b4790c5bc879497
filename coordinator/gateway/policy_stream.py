"""Glue between the gateway stream and the attachment service: validates
each event at the edge, hands good policies to the service, degrades on bad
ones, holds every new stream to the resync contract, and watches the stream
for staleness.

A resync (every new stream) is a full statement of the truth: each
registered sandbox is answered with INITIAL or REMOVED, then the gateway
sends SYNC_COMPLETE. When it does, a sandbox it did not mention is withdrawn
(deny-all, PENDING, reason NotInResync). When it does not within
``policy.resync_timeout_ms`` - counted from the first stream since the last
completed sync, so a flapping gateway cannot push it back - every attachment
not yet confirmed turns STALE (reason ResyncIncomplete; on_stale applies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from coordinator._proto.bluefield.gateway.v1 import policy_pb2 as gw
from coordinator.bounded import quoted
from coordinator.config import PolicyConfig
from coordinator.gateway.client import StreamStatus
from coordinator.identifiers import is_identifier
from coordinator.policy.validate import PolicyError, scope_from_proto
from coordinator.service import AttachmentService

log = logging.getLogger(__name__)

STALE_CHECK_INTERVAL_S = 0.1


class PolicyStreamHandler:
    def __init__(
        self, service: AttachmentService, config: PolicyConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._service = service
        self._config = config
        self._clock = clock
        self.stale = False
        # The resync in progress: when it began (None: none pending), whether
        # its time ran out, and the sandboxes the gateway has not answered yet.
        self._resync_began: float | None = None
        self._resync_expired = False
        self.unconfirmed: set[str] = set()

    @property
    def resync_pending(self) -> bool:
        return self._resync_began is not None

    async def on_resync(self, sandbox_ids: frozenset[str]) -> None:
        """A new stream opened registering ``sandbox_ids``: a resync begins."""
        self.unconfirmed = set(sandbox_ids)
        if self._resync_began is None or self._resync_expired:
            self._resync_began = self._clock()
            self._resync_expired = False
        log.info("policy resync started", extra={"sandboxes": len(sandbox_ids)})

    async def on_event(self, event: gw.PolicyEvent) -> None:
        if event.type == gw.EVENT_TYPE_SYNC_COMPLETE:
            await self._sync_complete(event)
            return
        sandbox_id = event.sandbox_id
        if not is_identifier(sandbox_id):
            # No sandbox of ours can have this id: nothing to apply or degrade.
            log.warning(
                "policy event ignored: malformed sandbox_id",
                extra={"sandbox_id": quoted(sandbox_id), "seq": event.seq},
            )
            return
        self.unconfirmed.discard(sandbox_id)
        if event.type == gw.EVENT_TYPE_REMOVED:
            log.info("policy removed", extra={"sandbox_id": sandbox_id, "seq": event.seq})
            self._service.book.offer(sandbox_id, None)
            await self._service.apply_latest(sandbox_id)
            return
        if event.type not in (gw.EVENT_TYPE_INITIAL, gw.EVENT_TYPE_DELTA):
            await self._service.degrade(
                sandbox_id, "InvalidEvent", f"seq {event.seq}: unknown type {event.type}"
            )
            return
        projection = event.projection
        if projection.sandbox_id and projection.sandbox_id != sandbox_id:
            await self._service.degrade(
                sandbox_id,
                "InvalidPolicy",
                f"seq {event.seq}: projection.sandbox_id {quoted(projection.sandbox_id)} is not the event's sandbox",
            )
            return
        try:
            scope = scope_from_proto(projection.network)
        except PolicyError as exc:
            log.warning(
                "invalid policy", extra={"sandbox_id": sandbox_id, "seq": event.seq, "error": str(exc)}
            )
            await self._service.degrade(
                sandbox_id, "InvalidPolicy", f"seq {event.seq}: network.{exc}; keeping the last good policy"
            )
            return
        self._service.book.offer(sandbox_id, scope)
        await self._service.apply_latest(sandbox_id)

    async def _sync_complete(self, event: gw.PolicyEvent) -> None:
        if self._resync_began is None:
            log.warning("SYNC_COMPLETE without a resync in progress ignored", extra={"seq": event.seq})
            return
        missing, self.unconfirmed = self.unconfirmed, set()
        self._resync_began, self._resync_expired = None, False
        log.info("policy resync complete", extra={"seq": event.seq, "not_mentioned": len(missing)})
        if missing:
            for sandbox_id in missing:
                self._service.book.offer(sandbox_id, None)
            message = (
                f"the gateway's resync (epoch {event.gateway_epoch[:64]}) completed without this sandbox: "
                "deny-all until a policy arrives"
            )
            await self._service.withdraw(missing, "NotInResync", message, keep_baseline=False)

    async def check_resync(self) -> None:
        """STALE for every attachment the resync has not confirmed once
        resync_timeout_ms has passed without SYNC_COMPLETE."""
        began = self._resync_began
        if began is None or self._resync_expired:
            return
        if self._clock() - began < self._config.resync_timeout_ms / 1000:
            return
        self._resync_expired = True
        pending = set(self.unconfirmed)
        turned = 0
        if pending:
            turned = await self._service.mark_stale(
                deny=self._config.on_stale == "deny-all",
                sandbox_ids=pending,
                reason="ResyncIncomplete",
                message="the gateway did not complete its resync within policy.resync_timeout_ms",
            )
        log.warning("policy resync incomplete", extra={"unconfirmed": len(pending), "attachments": turned})

    async def on_denied(self, sandbox_id: str, message: str) -> None:
        if not is_identifier(sandbox_id):
            log.warning(
                "policy denial ignored: malformed sandbox_id", extra={"sandbox_id": quoted(sandbox_id)}
            )
            return
        self._service.book.deny(sandbox_id, message)
        await self._service.degrade(sandbox_id, "NotDelegated", message)

    async def watch_staleness(self, status: Callable[[], StreamStatus]) -> None:
        """Runs forever: STALE once the stream is down longer than
        stale_threshold_ms (every attachment in one step); a resync that
        overruns its time; fresh INITIALs after a reconnect apply again."""
        threshold = self._config.stale_threshold_ms / 1000
        while True:
            await self.check_resync()
            current = status()
            down_for = self._clock() - current.down_since if current.down_since is not None else 0.0
            if not current.connected and down_for >= threshold and not self.stale:
                self.stale = True
                turned = await self._service.mark_stale(deny=self._config.on_stale == "deny-all")
                log.warning("policy stale", extra={"attachments": turned, "down_for_s": round(down_for, 1)})
            elif current.connected and self.stale:
                self.stale = False
                log.info("policy stream back; policies refresh as the gateway resends them")
            await asyncio.sleep(STALE_CHECK_INTERVAL_S)
