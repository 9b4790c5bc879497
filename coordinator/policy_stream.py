"""Glue between the gateway stream and the attachment service: validates
each event at the edge, hands good policies to the service, degrades on bad
ones, and watches the stream for staleness."""

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
    def __init__(self, service: AttachmentService, config: PolicyConfig) -> None:
        self._service = service
        self._config = config
        self.stale = False

    async def on_event(self, event: gw.PolicyEvent) -> None:
        sandbox_id = event.sandbox_id
        if not is_identifier(sandbox_id):
            # No sandbox of ours can have this id: nothing to apply or degrade.
            log.warning(
                "policy event ignored: malformed sandbox_id",
                extra={"sandbox_id": quoted(sandbox_id), "seq": event.seq},
            )
            return
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
                f"seq {event.seq}: projection.sandbox_id {projection.sandbox_id!r} is not the event's sandbox",
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

    async def on_denied(self, sandbox_id: str, message: str) -> None:
        if not is_identifier(sandbox_id):
            log.warning(
                "policy denial ignored: malformed sandbox_id", extra={"sandbox_id": quoted(sandbox_id)}
            )
            return
        self._service.book.deny(sandbox_id, message)
        await self._service.degrade(sandbox_id, "NotDelegated", message)

    async def watch_staleness(
        self, status: Callable[[], StreamStatus], clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Runs forever: STALE once the stream is down longer than
        stale_threshold_ms; fresh INITIALs after a reconnect apply again."""
        threshold = self._config.stale_threshold_ms / 1000
        while True:
            current = status()
            down_for = clock() - current.down_since if current.down_since is not None else 0.0
            if not current.connected and down_for >= threshold and not self.stale:
                self.stale = True
                turned = await self._service.mark_stale(deny=self._config.on_stale == "deny-all")
                log.warning("policy stale", extra={"attachments": turned, "down_for_s": round(down_for, 1)})
            elif current.connected and self.stale:
                self.stale = False
                log.info("policy stream back; policies refresh as the gateway resends them")
            await asyncio.sleep(STALE_CHECK_INTERVAL_S)
