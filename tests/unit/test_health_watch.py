"""Health transitions become events, one per transition: the switchdev
backend's checks against the fake BlueField (firmware below the minimum,
eswitch out of switchdev mode), as the service would report them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.config import config_from_mapping
from coordinator.eswitch.base import HealthFact
from coordinator.eswitch.switchdev import SwitchdevEswitch
from coordinator.event_kinds import Event, EventKind
from coordinator.events import EventHub
from coordinator.health import HealthReport
from coordinator.store.db import Store
from coordinator.store.records import EventRecord, NewAttachment
from coordinator.store.worker import AsyncStore
from coordinator.watches.health import FIRMWARE_EVENT, HEALTHY_EVENT, HealthWatch, start_health_watch
from tests.fake_bluefield import FakeBlueField

HOST = "spiffe://bluefield.local/host/host-a"
OVS_OK = HealthFact("ovs_reachable", True, "OVSDB answers", required=True)


@pytest.fixture
def bf(tmp_path: Path) -> Iterator[FakeBlueField]:
    fake = FakeBlueField(tmp_path / "sys", vfs=1, firmware="24.35.2000")
    yield fake
    fake.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


class Probe:
    """The service's health(): backend facts plus an OVS check the test controls."""

    def __init__(self, backend: SwitchdevEswitch) -> None:
        self.backend = backend
        self.ovs = OVS_OK
        self.calls = 0

    async def __call__(self) -> HealthReport:
        self.calls += 1
        facts = await asyncio.to_thread(self.backend.health)
        return HealthReport((self.ovs, *facts))


def health_events(store: Store, owner: str | None = None) -> list[tuple[str, bool, str]]:
    return [
        (e.type, e.status, e.reason)
        for e in store.events_since(0, owner=owner)
        if e.type in (HEALTHY_EVENT, FIRMWARE_EVENT)
    ]


async def test_one_event_per_transition(bf: FakeBlueField, store: Store) -> None:
    be = SwitchdevEswitch(bf.settings(min_firmware_version="24.35.1000"), bf.transport())
    probe = Probe(be)
    events = EventHub()
    watch = HealthWatch(AsyncStore(store), events, probe)

    assert await watch.check_once() == []  # healthy from the start: nothing to say
    bf.set_firmware("24.30.1000")  # below the minimum; not required by default
    assert await watch.check_once() == [FIRMWARE_EVENT]
    assert await watch.check_once() == []  # still degraded: no repeat
    bf.set_mode("legacy")  # a required check fails
    assert await watch.check_once() == [HEALTHY_EVENT]
    assert await watch.check_once() == []
    bf.set_mode("switchdev")
    bf.set_firmware("24.35.2000")
    assert sorted(await watch.check_once()) == sorted([HEALTHY_EVENT, FIRMWARE_EVENT])
    assert await watch.check_once() == []
    assert health_events(store) == [
        (FIRMWARE_EVENT, True, "FirmwareCheckFailed"),
        (HEALTHY_EVENT, False, "RequiredCheckFailed"),
        (HEALTHY_EVENT, True, "RequiredChecksPass"),
        (FIRMWARE_EVENT, False, "FirmwareOk"),
    ]
    [degraded] = [e for e in store.events_since(0) if e.type == FIRMWARE_EVENT][:1]
    assert "24.30.1000" in degraded.message and "24.35.1000" in degraded.message
    [unhealthy] = [e for e in store.events_since(0) if e.type == HEALTHY_EVENT][:1]
    assert "eswitch_mode" in unhealthy.message and "legacy" in unhealthy.message


async def test_a_required_firmware_check_makes_the_coordinator_unhealthy(
    bf: FakeBlueField, store: Store
) -> None:
    settings = bf.settings(min_firmware_version="24.35.1000", firmware_required=True)
    watch = HealthWatch(AsyncStore(store), EventHub(), Probe(SwitchdevEswitch(settings, bf.transport())))
    bf.set_firmware("22.1.1")
    assert sorted(await watch.check_once()) == sorted([HEALTHY_EVENT, FIRMWARE_EVENT])
    [healthy] = [e for e in store.events_since(0) if e.type == HEALTHY_EVENT]
    assert not healthy.status and "firmware_version" in healthy.message


async def test_other_required_checks_count_too(bf: FakeBlueField, store: Store) -> None:
    probe = Probe(SwitchdevEswitch(bf.settings(), bf.transport()))
    watch = HealthWatch(AsyncStore(store), EventHub(), probe)
    probe.ovs = HealthFact("ovs_reachable", False, "connection refused", required=True)
    assert await watch.check_once() == [HEALTHY_EVENT]
    probe.ovs = OVS_OK
    assert await watch.check_once() == [HEALTHY_EVENT]
    # An optional check failing is no transition of DpuCoordinatorHealthy.
    probe.ovs = HealthFact("ovs_reachable", False, "optional here", required=False)
    assert await watch.check_once() == []


async def test_no_repeat_after_a_restart(bf: FakeBlueField, store: Store) -> None:
    be = SwitchdevEswitch(bf.settings(), bf.transport())
    bf.set_mode("legacy")
    assert await HealthWatch(AsyncStore(store), EventHub(), Probe(be)).check_once() == [HEALTHY_EVENT]
    # A new watch (the daemon restarted) knows the last state from the log.
    again = HealthWatch(AsyncStore(store), EventHub(), Probe(be))
    assert await again.check_once() == []
    bf.set_mode("switchdev")
    assert await again.check_once() == [HEALTHY_EVENT]


async def test_hosts_and_admins_see_coordinator_events_but_hosts_not_others(
    bf: FakeBlueField, store: Store
) -> None:
    new = NewAttachment("att-b", "spiffe://bluefield.local/host/host-b", "r", "sb-b", "hi", None, "c")
    store.sync_devices(SwitchdevEswitch(bf.settings(), bf.transport()).inventory())
    other = store.create_attachment(new, mac_for=lambda s: "02:00:00:00:00:09", max_attachments=5)
    # An event with no owner (drift of something no attachment holds) stays admins-only.
    store.append_event(
        dataclasses.replace(other, owner=""), Event(EventKind.DRIFT_CORRECTED, True, "Orphan", "admins only")
    )
    bf.set_mode("legacy")
    await HealthWatch(
        AsyncStore(store), EventHub(), Probe(SwitchdevEswitch(bf.settings(), bf.transport()))
    ).check_once()
    seen: list[EventRecord] = store.events_since(0, owner=HOST)
    assert [(e.type, e.attachment_id, e.sandbox_id) for e in seen] == [(HEALTHY_EVENT, "", "")]
    admin = {e.type for e in store.events_since(0)}
    assert {"DpuDriftCorrected", "DpuAttachInProgress", HEALTHY_EVENT} <= admin
    assert other.attachment_id not in {e.attachment_id for e in seen}


async def test_the_task_polls_and_survives_a_failing_probe(store: Store) -> None:
    calls = 0

    async def probe() -> HealthReport:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("probe bug")
        return HealthReport((HealthFact("eswitch_mode", False, "legacy", required=True),))

    config = config_from_mapping({"health": {"poll_s": 0.5}})
    events = EventHub()
    task = start_health_watch(config, AsyncStore(store), events, probe)
    try:
        await asyncio.wait_for(events.wait(timeout=5), timeout=5)
        assert calls == 2 and not task.done()
        assert health_events(store) == [(HEALTHY_EVENT, False, "RequiredCheckFailed")]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
