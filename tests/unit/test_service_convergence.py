"""Convergence through the recording fake switch: start-up, orphans, an
OVS restart, moved and missing ports, flows that drifted, and what happens
when the switch refuses a step."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from coordinator.attachment_identity import BRIDGE_COOKIE, cookie_for_slot
from coordinator.dataplane_port import HeldFlows
from coordinator.errors import Unavailable
from coordinator.eswitch.base import PreparedDevice
from coordinator.flows.model import Flow
from coordinator.ovs.port_keys import ATTACHMENT_KEY, OWNER_KEY, OWNER_VALUE, ROLE_KEY, SANDBOX_KEY
from coordinator.policy.scope import Scope
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState
from tests.unit.fake_dataplane import Change, FakeDataplane, devices
from tests.unit.service_harness import CLASSES, PIPELINE, harness, scope

ISOLATED = CLASSES["dpu-ovs-isolated"]


async def test_start_on_an_empty_switch_installs_the_bridge_and_reports_nothing_to_correct(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        assert h.switch.tables[BRIDGE_COOKIE] == h.switch.bridge_flows()
        report = h.service.last_converge
        assert report is not None and (report.reason, report.corrections, report.attachments) == (
            "start",
            0,
            0,
        )
        assert await h.service.switch_intact() is None
        assert h.reasons("DpuDriftCorrected") == []


async def test_start_removes_every_kind_of_orphan_with_a_drift_event(tmp_path: Path) -> None:
    switch = FakeDataplane(PIPELINE)
    orphan_device = devices()[3]
    switch.ports["stray0"] = {OWNER_KEY: OWNER_VALUE, ROLE_KEY: "attachment", ATTACHMENT_KEY: "gone",
                              SANDBOX_KEY: "sb-x"}  # fmt: skip
    switch.ofports["stray0"] = 40
    switch.tables[cookie_for_slot(7)] = ["cookie=0xbfc0000000000007,table=0,priority=1,actions=drop"]
    switch.prepared[orphan_device.device_id] = PreparedDevice(orphan_device, "02:00:00:00:00:09")
    switch.meters.add(9)
    async with harness(tmp_path, switch=switch) as h:
        assert sorted(h.reasons("DpuDriftCorrected")) == [
            "OrphanDeviceReleased", "OrphanFlowsRemoved", "OrphanMeterRemoved", "OrphanPortRemoved",
        ]  # fmt: skip
        assert "stray0" not in h.switch.ports and cookie_for_slot(7) not in h.switch.tables
        assert not h.switch.prepared and not h.switch.meters
        assert sorted(h.observed.corrections) == sorted(h.reasons("DpuDriftCorrected"))


async def test_an_ovs_restart_is_noticed_and_everything_reinstalled_without_repair_events(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        a, b = await h.attach("sb-1"), await h.attach("sb-2")
        await h.service.apply_policy("sb-2", scope(2, rate_kbps=1000))
        before = {c: list(f) for c, f in h.switch.tables.items()}
        h.switch.restart()
        assert await h.service.switch_intact() == "bridge base flows missing"
        report = await h.service.reconverge("ovs-restart")
        assert h.switch.tables == before
        assert report.attachments == 2 and report.flows_added > 0
        assert {a.slot, b.slot} <= h.switch.zone_limits and b.slot in h.switch.meters
        assert "FlowsRepaired" not in h.reasons() and await h.service.switch_intact() is None


class _CountingCompiles(FakeDataplane):
    """Counts the attachments' flows compiled, and how many were when ``sync_all`` began."""

    def __init__(self) -> None:
        super().__init__(PIPELINE)
        self.compiled = 0
        self.compiled_before_sync: list[int] = []

    def desired_flows(self, record: AttachmentRecord, ofport: int, scope: Scope) -> list[Flow]:
        self.compiled += 1
        return super().desired_flows(record, ofport, scope)

    async def sync_all(
        self, desired: Mapping[int, Sequence[Flow]], *, held: HeldFlows | None = None
    ) -> Mapping[int, Change]:
        self.compiled_before_sync.append(self.compiled)
        return await super().sync_all(desired, held=held)


async def test_a_reconverge_lets_the_dataplane_compile_each_attachments_flows_when_it_asks(
    tmp_path: Path,
) -> None:
    # Not a whole switch of flows compiled up front and held while the
    # dataplane compares them (it takes them a range at a time).
    switch = _CountingCompiles()
    async with harness(tmp_path, switch=switch) as h:
        for sandbox in ("sb-1", "sb-2", "sb-3"):
            await h.attach(sandbox)
        switch.compiled, switch.compiled_before_sync = 0, []
        await h.service.reconverge("start")
        assert switch.compiled_before_sync == [0]
        assert switch.compiled == 3  # each once: the fake reads each cookie once


async def test_flows_that_drifted_are_repaired_at_start_with_an_event(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        h.switch.tables[cookie_for_slot(record.slot)].pop()
        report = await h.service.reconverge("start")
        assert h.switch.flows_of(record) == h.switch.rendered(record, record.ofport, ISOLATED)
        assert report.corrections == 1 and h.reasons("DpuDriftCorrected") == ["FlowsRepaired"]


async def test_a_port_that_moved_is_noticed_and_its_flows_follow(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        h.switch.ofports[record.device.representor] = 77
        assert "is now OpenFlow port 77" in (await h.service.switch_intact() or "")
        await h.service.reconverge("ovs-restart")
        moved = h.current(record)
        assert moved.ofport == 77
        assert h.switch.flows_of(moved) == h.switch.rendered(moved, 77, ISOLATED)


async def test_a_missing_port_and_device_are_restored(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        await h.switch.remove_port(record.device.representor)
        await h.switch.release(record.device)
        await h.service.reconverge("ovs-restart")
        assert record.device.representor in h.switch.ports and record.device.device_id in h.switch.prepared
        assert "PortRestored" in h.reasons("DpuDriftCorrected")


async def test_an_attachment_that_cannot_be_replugged_gets_a_drift_event_and_the_rest_converge(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        await h.attach("sb-1")
        h.switch.ports.clear()
        h.switch.fail("prepare")
        report = await h.service.reconverge("ovs-restart")
        assert report.attachments == 1 and "ReinstallFailed" in h.reasons("DpuAttachmentDrift")


async def test_a_refused_reinstall_bundle_is_unavailable_and_the_switch_stays_lost(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.attach("sb-1")
        h.switch.fail("sync_all")
        h.service.mark_switch_lost("test")
        with pytest.raises(Unavailable, match="re-installing flows"):
            await h.service.reconverge("ovs-restart")
        health = await h.service.health()
        assert not health.healthy and any(c.name == "switch_programmed" and not c.ok for c in health.checks)


async def test_reconverge_runs_alone_attach_is_refused_and_policy_waits(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.attach("sb-1")
        entered, release = asyncio.Event(), asyncio.Event()
        facts = h.switch.facts

        async def slow_facts():  # type: ignore[no-untyped-def]
            entered.set()
            await release.wait()
            return await facts()

        h.switch.facts = slow_facts  # type: ignore[method-assign]
        converging = asyncio.ensure_future(h.service.reconverge("ovs-restart"))
        await entered.wait()
        with pytest.raises(Unavailable, match="being re-programmed"):
            await h.attach("sb-2")
        applying = asyncio.ensure_future(h.service.apply_policy("sb-1", scope(4)))
        await asyncio.sleep(0.01)
        assert not applying.done()
        release.set()
        await converging
        (applied,) = await applying
        assert (applied.policy_state, applied.policy_version) == (PolicyState.APPLIED, 4)


async def test_start_reports_a_device_that_vanished_while_down(tmp_path: Path) -> None:
    switch = FakeDataplane(PIPELINE)
    async with harness(tmp_path, switch=switch) as h:
        record = await h.attach("sb-1")
    switch.offered = [d for d in switch.offered if d.device_id != record.device.device_id]
    async with harness(tmp_path, switch=switch) as h:
        assert "DeviceRemoved" in h.reasons("DpuAttachmentDrift")
        assert h.current(record).state is AttachmentState.BOUND
