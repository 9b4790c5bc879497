"""Watches the switch for losing our state and re-programs it.

ovs-vswitchd keeps no flows, meters or conntrack limits across a restart,
and OVSDB (or the whole of OVS) may be away for a while. Every
``ovs.watch_interval_ms`` the bridge is checked through OVSDB and the
OpenFlow channel; when the base flows are gone or the switch does not
answer, attaches are refused with UNAVAILABLE and Health is degraded, and
the whole switch is re-programmed from the store as soon as it answers,
retrying with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from coordinator.errors import Unavailable
from coordinator.service import AttachmentService, ConvergeReport

log = logging.getLogger(__name__)


async def recover(service: AttachmentService, reason: str, *, cap_s: float = 5.0) -> ConvergeReport:
    """Re-program the switch, retrying until it answers."""
    service.mark_switch_lost(reason)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(Unavailable),
        wait=wait_random_exponential(multiplier=0.1, max=cap_s),
        reraise=True,
    ):
        with attempt:
            try:
                return await service.reconverge("ovs-restart")
            except Unavailable as exc:
                service.mark_switch_lost(f"{reason}; re-programming failed: {exc}")
                raise
    raise AssertionError("unreachable")  # AsyncRetrying re-raises or returns


async def watch_switch(service: AttachmentService, interval_s: float) -> None:
    """Runs until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        problem = await service.switch_intact()
        if problem is not None:
            # The store and the switch are read one after the other: a port
            # a detach removed (or an attach re-added under a new number)
            # in between looks moved for that moment. A real loss is still
            # there, the same, when looked at again; under many concurrent
            # detaches the second look may catch another port's moment.
            again = await service.switch_intact()
            problem = problem if again == problem else None
        if problem is None:
            continue
        began = time.monotonic()
        log.warning("switch lost our state: %s; re-programming", problem)
        report = await recover(service, problem)
        log.info(
            "switch re-programmed",
            extra={"seconds": round(time.monotonic() - began, 3), "attachments": report.attachments,
                   "flows_added": report.flows_added},
        )  # fmt: skip
