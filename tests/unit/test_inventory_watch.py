"""The inventory watch against the fake BlueField: VFs the host adds or
removes under a running daemon reach the store's pool; a VF removed while
attached is drift (an event), never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from coordinator.config import config_from_mapping
from coordinator.eswitch.base import DeviceKind, EswitchDevice, EswitchError
from coordinator.eswitch.switchdev import NetEvent, SwitchdevEswitch
from coordinator.events import EventHub
from coordinator.store.db import Store
from coordinator.store.records import AttachmentRecord, EventRecord, NewAttachment
from coordinator.store.worker import AsyncStore
from coordinator.watches.inventory import DRIFT_EVENT, InventoryWatch, start_inventory_watch
from tests.fake_bluefield import FakeBlueField

OWNER = "spiffe://bluefield.local/host/host-a"
FAST_POLL_S = 0.05


@pytest.fixture
def bf(tmp_path: Path) -> Iterator[FakeBlueField]:
    fake = FakeBlueField(tmp_path / "sys", vfs=3)
    yield fake
    fake.close()


@pytest.fixture
def backend(bf: FakeBlueField) -> SwitchdevEswitch:
    return SwitchdevEswitch(bf.settings(), bf.transport())


@pytest.fixture
def store(tmp_path: Path, backend: SwitchdevEswitch) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    s.sync_devices(backend.inventory())  # what service.start() does
    yield s
    s.close()


def vf_pool(store: Store) -> tuple[int, int]:
    [stats] = [p for p in store.pool_stats() if p.kind is DeviceKind.VF]
    return stats.total, stats.free


def claim_vf(store: Store, n: int = 1) -> AttachmentRecord:
    new = NewAttachment(f"att-{n}", OWNER, f"req-{n}", f"sb-{n}", "hi-1", DeviceKind.VF, "dpu-ovs-isolated")
    return store.create_attachment(new, mac_for=lambda s: "02:00:00:00:00:01", max_attachments=10)


def drift_events(store: Store) -> list[EventRecord]:
    return [e for e in store.events_since(0) if e.type == DRIFT_EVENT]


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(task: asyncio.Task[None]) -> AsyncIterator[asyncio.Task[None]]:
    try:
        yield task
        assert not task.done(), "the watch ended"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def polling_watch(
    store: Store, backend: SwitchdevEswitch, events: EventHub, **kwargs: object
) -> InventoryWatch:
    return InventoryWatch(AsyncStore(store), backend, events, poll_s=FAST_POLL_S, **kwargs)  # type: ignore[arg-type]


async def test_hot_add_and_remove_reach_the_pool_by_polling(
    bf: FakeBlueField, backend: SwitchdevEswitch, store: Store
) -> None:
    assert vf_pool(store) == (3, 3)
    async with running(asyncio.ensure_future(polling_watch(store, backend, EventHub()).run())):
        bf.add_vf(3)
        bf.add_vf(4)
        await eventually(lambda: vf_pool(store) == (5, 5))
        bf.remove_vf(1)
        await eventually(lambda: vf_pool(store) == (4, 4))
    assert drift_events(store) == []  # nothing was attached


async def test_start_inventory_watch_uses_the_configured_interval(
    bf: FakeBlueField, backend: SwitchdevEswitch, store: Store
) -> None:
    # No udevd here: the switchdev backend's udev source sees nothing (or
    # cannot open), and polling alone must do.
    config = config_from_mapping({"eswitch": {"inventory_poll_s": 0.1}})
    async with running(start_inventory_watch(config, AsyncStore(store), backend, EventHub())):
        bf.add_vf(6)
        await eventually(lambda: vf_pool(store) == (4, 4))


async def test_vf_removed_while_attached_is_drift_and_comes_back(
    bf: FakeBlueField, backend: SwitchdevEswitch, store: Store
) -> None:
    record = claim_vf(store)
    assert record.device.number == 0
    events = EventHub()
    returned: list[str] = []

    async def on_returned(r: AttachmentRecord) -> None:
        returned.append(r.attachment_id)
        raise RuntimeError("a failing hook is logged, not fatal")

    watch = polling_watch(store, backend, events, on_device_returned=on_returned)
    async with running(asyncio.ensure_future(watch.run())):
        assert vf_pool(store) == (3, 2)
        bf.remove_vf(0)
        await eventually(lambda: len(drift_events(store)) == 1)
        [removed] = drift_events(store)
        assert (removed.attachment_id, removed.owner, removed.status, removed.reason) == (
            record.attachment_id,
            OWNER,
            False,
            "DeviceRemoved",
        )
        assert "vf:1:0:0" in removed.message and "pf0vf0" in removed.message
        # The attachment stays (its device is still referable); the pool
        # shrinks by the claimed device, the free count is unchanged.
        assert store.get(record.attachment_id) is not None
        assert vf_pool(store) == (2, 2)
        await asyncio.sleep(FAST_POLL_S * 4)
        assert len(drift_events(store)) == 1  # once per transition, not per poll
        bf.add_vf(0)
        await eventually(lambda: len(drift_events(store)) == 2)
        back = drift_events(store)[1]
        assert (back.attachment_id, back.status, back.reason) == (
            record.attachment_id,
            True,
            "DeviceReturned",
        )
        await eventually(lambda: returned == [record.attachment_id])
        assert vf_pool(store) == (3, 2)


async def test_a_removed_device_is_never_handed_out(
    bf: FakeBlueField, backend: SwitchdevEswitch, store: Store
) -> None:
    watch = polling_watch(store, backend, EventHub())
    for n in (0, 1, 2):
        bf.remove_vf(n)
    await watch.sync_once()
    assert vf_pool(store) == (0, 0)
    with pytest.raises(Exception, match="no free VF"):
        claim_vf(store)


async def test_changes_are_not_repeated_after_a_restart(
    tmp_path: Path, bf: FakeBlueField, backend: SwitchdevEswitch, store: Store
) -> None:
    claim_vf(store)
    bf.remove_vf(0)
    outcome = await polling_watch(store, backend, EventHub()).sync_once()
    assert outcome is not None and outcome.vanished == {"vf:1:0:0"} and outcome.events == 1
    store.close()
    reopened = Store(tmp_path / "state.db")
    try:
        again = await polling_watch(reopened, backend, EventHub()).sync_once()
        assert again is not None and again.events == 0 and not again.vanished
        assert len(drift_events(reopened)) == 1
    finally:
        reopened.close()


class FlakyBackend:
    """A backend whose inventory fails on demand."""

    name = "switchdev"

    def __init__(self, inner: SwitchdevEswitch) -> None:
        self.inner = inner
        self.failures = 0

    def inventory(self) -> list[EswitchDevice]:
        if self.failures:
            self.failures -= 1
            raise EswitchError("sysfs unreadable")
        return self.inner.inventory()


async def test_a_failing_inventory_keeps_the_pool_and_the_watch(
    bf: FakeBlueField, backend: SwitchdevEswitch, store: Store
) -> None:
    flaky = FlakyBackend(backend)
    flaky.failures = 3
    watch = InventoryWatch(AsyncStore(store), flaky, EventHub(), poll_s=FAST_POLL_S)  # type: ignore[arg-type]
    bf.remove_vf(2)
    assert await watch.sync_once() is None
    assert vf_pool(store) == (3, 3)  # unchanged, not emptied
    async with running(asyncio.ensure_future(watch.run())):
        await eventually(lambda: vf_pool(store) == (2, 2))


class QueueSource:
    """A NetEventSource fed by the test (no udevd on CI)."""

    def __init__(self) -> None:
        self.events: queue.Queue[NetEvent] = queue.Queue()

    def poll(self, timeout: float) -> NetEvent | None:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        pass


async def test_udev_events_trigger_an_early_sync(
    bf: FakeBlueField, backend: SwitchdevEswitch, store: Store
) -> None:
    source = QueueSource()
    notified: list[int] = []
    events = EventHub()

    async def count_notifies() -> None:
        while True:
            await events.wait(timeout=60)
            notified.append(1)

    # Polling so slow that only the event can explain a prompt sync.
    watch = InventoryWatch(AsyncStore(store), backend, events, poll_s=600, event_source=source, settle_s=0.01)
    waiter = asyncio.ensure_future(count_notifies())
    try:
        async with running(asyncio.ensure_future(watch.run())):
            await asyncio.sleep(0.05)
            bf.add_vf(9)
            source.events.put(NetEvent("add", "pf0vf9"))
            await eventually(lambda: vf_pool(store) == (4, 4), timeout=3)
            await eventually(lambda: bool(notified), timeout=3)
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
