"""Health transitions as events: ``DpuFirmwareDegraded`` and ``DpuCoordinatorHealthy``.

A task runs the health checks every ``[health] poll_s`` seconds and writes
one coordinator-wide event per transition (never one per poll):

- ``DpuCoordinatorHealthy``: status False (reason ``RequiredCheckFailed``,
  the message names the failing checks) when a required check fails; True
  (``RequiredChecksPass``) when all pass again.
- ``DpuFirmwareDegraded``: status True (``FirmwareCheckFailed``, the check's
  detail) when the ``firmware_version`` check fails; False (``FirmwareOk``)
  when it passes again. Backends without a firmware check (emulated) never
  emit it.

Coordinator-wide events carry no attachment or sandbox id and the owner
``store.db.EVERYONE`` ("*") rather than a host's identity, so every
``WatchAttachmentEvents`` caller receives them: hosts too, since whether the
DPU can attach and enforce concerns every host's attachments.

The last state is taken from the event log at start, so a restart does not
repeat an event; with nothing logged yet, only a failure is news.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from coordinator.config import Config
from coordinator.event_kinds import Event, EventKind
from coordinator.events import EventHub
from coordinator.health import HealthReport
from coordinator.store.worker import AsyncStore

__all__ = ["FIRMWARE_CHECK", "FIRMWARE_EVENT", "HEALTHY_EVENT", "HealthWatch", "start_health_watch"]

log = logging.getLogger(__name__)

HEALTHY_EVENT = EventKind.COORDINATOR_HEALTHY
FIRMWARE_EVENT = EventKind.FIRMWARE_DEGRADED
FIRMWARE_CHECK = "firmware_version"

HealthProbe = Callable[[], Awaitable[HealthReport]]


class HealthWatch:
    def __init__(self, store: AsyncStore, events: EventHub, health: HealthProbe) -> None:
        self._store = store
        self._events = events
        self._health = health
        # The status of the last event of each type; None = never reported.
        self._last: dict[EventKind, bool | None] = {}

    async def _known(self, type_: EventKind) -> bool | None:
        if type_ not in self._last:
            event = await self._store.last_coordinator_event(type_)
            self._last[type_] = event.status if event is not None else None
        return self._last[type_]

    async def _transition(
        self, type_: EventKind, status: bool, default: bool, reason: str, message: str
    ) -> bool:
        """Write the event if ``status`` differs from the last one (or, with
        none logged, from ``default``, the unremarkable state)."""
        known = await self._known(type_)
        if status == (default if known is None else known):
            return False
        await self._store.append_coordinator_event(Event(type_, status, reason, message))
        self._last[type_] = status
        log.warning("%s -> %s: %s", type_, status, message)
        return True

    async def check_once(self) -> list[EventKind]:
        """Run the checks; the types of the events written."""
        report = await self._health()
        written = []
        failing = report.failing_required()
        if failing:
            names = "; ".join(f"{c.name}: {c.detail}" for c in failing)
            changed = await self._transition(HEALTHY_EVENT, False, True, "RequiredCheckFailed", names)
        else:
            changed = await self._transition(
                HEALTHY_EVENT, True, True, "RequiredChecksPass", "every required health check passes"
            )
        if changed:
            written.append(HEALTHY_EVENT)
        firmware = next((c for c in report.checks if c.name == FIRMWARE_CHECK), None)
        if firmware is not None:
            reason = "FirmwareOk" if firmware.ok else "FirmwareCheckFailed"
            if await self._transition(FIRMWARE_EVENT, not firmware.ok, False, reason, firmware.detail):
                written.append(FIRMWARE_EVENT)
        if written:
            await self._events.notify()
        return written

    async def run(self, interval_s: float) -> None:
        """Check every ``interval_s`` seconds until cancelled."""
        while True:
            try:
                await self.check_once()
            except Exception:
                # A failing probe must not end the watch; the next may work.
                log.exception("health watch: checking failed")
            await asyncio.sleep(interval_s)


def start_health_watch(
    config: Config, store: AsyncStore, events: EventHub, health: HealthProbe
) -> asyncio.Task[None]:
    """Start the watch as a task (cancel it to stop); ``health`` is e.g.
    ``lambda: service.health(fresh=True)``."""
    return asyncio.ensure_future(HealthWatch(store, events, health).run(config.health.poll_s))
