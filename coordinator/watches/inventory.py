"""Keeps the store's device pool in step with the eswitch while running.

The host creates and destroys VFs whenever it likes (``sriov_numvfs``), so
their representors come and go under a running daemon. This task re-reads
``backend.inventory()`` on a polling interval (``[eswitch]
inventory_poll_s``) and, where udevd runs, early on net add/remove/rename
events (:class:`coordinator.eswitch.net_events.RepresentorWatcher`), then
records it with ``Store.sync_devices``: new devices join the pool, vanished
ones are marked absent (kept, so an attachment holding one stays
referable) and drop out of the pool stats.

A device that vanishes while attached is drift, not a crash: its attachment
gets a ``DpuAttachmentDrift`` event (status False, reason
``DeviceRemoved``) and keeps its row; when the device comes back it gets
``DpuAttachmentDrift`` status True, reason ``DeviceReturned``, and the
optional ``on_device_returned`` hook runs (e.g. to re-prepare the function
and re-plug its port). Transitions are what ``sync_devices`` reports from
the store's ``present`` column, so a restart does not repeat them.

``backend.inventory()`` runs on a worker thread: netlink libraries refuse a
thread with a running event loop, and sysfs reads block.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from coordinator.config import Config
from coordinator.eswitch.base import EswitchBackend, EswitchError
from coordinator.eswitch.net_events import NetEvent, NetEventSource, RepresentorWatcher
from coordinator.event_kinds import Event, EventKind
from coordinator.events import EventHub
from coordinator.store.db import StoreError
from coordinator.store.records import AttachmentRecord
from coordinator.store.worker import AsyncStore
from coordinator.waiting import wait_within

__all__ = [
    "DRIFT_EVENT",
    "InventoryWatch",
    "SyncOutcome",
    "start_inventory_watch",
]

log = logging.getLogger(__name__)

DRIFT_EVENT = EventKind.ATTACHMENT_DRIFT
# After a udev event, wait this long for the rest of the burst (a host
# creating 16 VFs sends dozens) so one re-read covers it.
SETTLE_S = 0.2

ReturnHook = Callable[[AttachmentRecord], Awaitable[None]]


@dataclass(frozen=True)
class SyncOutcome:
    appeared: frozenset[str]
    vanished: frozenset[str]
    events: int  # drift events written


class InventoryWatch:
    def __init__(
        self,
        store: AsyncStore,
        backend: EswitchBackend,
        events: EventHub,
        *,
        poll_s: float,
        event_source: NetEventSource | None = None,
        udev: bool = False,
        on_device_returned: ReturnHook | None = None,
        settle_s: float = SETTLE_S,
    ) -> None:
        self._store = store
        self._backend = backend
        self._events = events
        self._poll_s = poll_s
        self._source = event_source
        self._udev = udev
        self._on_returned = on_device_returned
        self._settle_s = settle_s
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def sync_once(self) -> SyncOutcome | None:
        """Re-read the inventory and record it; None when the backend could
        not be read (the pool then stays as it was)."""
        try:
            slots = await asyncio.to_thread(self._backend.inventory)
        except (EswitchError, OSError) as exc:
            log.warning("inventory re-read failed; keeping the pool as it is: %s", exc)
            return None
        try:
            change = await self._store.sync_devices(slots)
        except StoreError as exc:  # pragma: no cover - the store failing is logged, not fatal
            log.error("recording the inventory failed: %s", exc)
            return None
        if not change.appeared and not change.vanished:
            return SyncOutcome(change.appeared, change.vanished, 0)
        log.info(
            "inventory changed",
            extra={"appeared": sorted(change.appeared), "vanished": sorted(change.vanished)},
        )
        written = 0
        returned: list[AttachmentRecord] = []
        for record in await self._store.list_attachments():
            device = record.device
            if device.device_id in change.vanished:
                message = (
                    f"{device.kind.value.upper()} {device.device_id} (representor {device.representor}) "
                    "was removed from the eswitch while attached"
                )
                await self._store.append_event(record, Event(DRIFT_EVENT, False, "DeviceRemoved", message))
                log.warning("device removed while attached", extra={"attachment_id": record.attachment_id})
                written += 1
            elif device.device_id in change.appeared:
                message = (
                    f"{device.kind.value.upper()} {device.device_id} (representor {device.representor}) "
                    "is present again"
                )
                await self._store.append_event(record, Event(DRIFT_EVENT, True, "DeviceReturned", message))
                returned.append(record)
                written += 1
        await self._events.notify()
        if self._on_returned is not None:
            for record in returned:
                try:
                    await self._on_returned(record)
                except Exception:
                    log.exception("handling the return of %s failed", record.attachment_id)
        return SyncOutcome(change.appeared, change.vanished, written)

    def _on_net_event(self, event: NetEvent) -> None:
        # Runs on the watcher thread: only hand the wake-up to the loop.
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def _start_watcher(self) -> RepresentorWatcher | None:
        if self._source is None and not self._udev:
            return None
        # Without a source given, the watcher opens (and closes) a pyudev one.
        watcher = RepresentorWatcher(self._on_net_event, self._source)
        try:
            watcher.start()
        except Exception as exc:  # no libudev, no permission: polling still works
            log.warning("no udev net events (%s); re-reading the inventory every %gs", exc, self._poll_s)
            return None
        return watcher

    async def run(self) -> None:
        """Sync every ``poll_s`` seconds and soon after each udev event, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        watcher = self._start_watcher()
        try:
            while True:
                try:
                    await wait_within(self._wake.wait(), timeout=self._poll_s)
                    await asyncio.sleep(self._settle_s)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                try:
                    await self.sync_once()
                except Exception:
                    # Never let one bad pass end the watch: the next may succeed.
                    log.exception("inventory sync failed")
        finally:
            if watcher is not None:
                await asyncio.to_thread(watcher.stop)


def start_inventory_watch(
    config: Config,
    store: AsyncStore,
    backend: EswitchBackend,
    events: EventHub,
    *,
    event_source: NetEventSource | None = None,
    on_device_returned: ReturnHook | None = None,
) -> asyncio.Task[None]:
    """Start the watch as a task (cancel it to stop). ``event_source``
    replaces the udev one (tests)."""
    watch = InventoryWatch(
        store,
        backend,
        events,
        poll_s=config.eswitch.inventory_poll_s,
        event_source=event_source,
        # The emulated inventory is fixed at start: nothing to listen for.
        udev=config.eswitch.inventory_udev and backend.name == "switchdev",
        on_device_returned=on_device_returned,
    )
    return asyncio.ensure_future(watch.run())
