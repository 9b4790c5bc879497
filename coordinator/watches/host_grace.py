"""Hosts that never reconcile: once ``reconcile.host_grace_s`` has passed
after a start, the attachments of hosts not heard from since are reported
(advisory) or released (authoritative), as the service's
``expire_unreconciled`` decides."""

from __future__ import annotations

import asyncio
import logging

from coordinator.service import AttachmentService

__all__ = ["expire_unreconciled_after"]

log = logging.getLogger(__name__)


async def expire_unreconciled_after(service: AttachmentService, grace_s: float) -> None:
    await asyncio.sleep(grace_s)
    quiet = await service.expire_unreconciled()
    if quiet:
        log.warning("%d attachments of hosts that never reconciled", len(quiet))
