"""Attach and detach through the recording fake switch: what lands in the
switch and the store, and that every failure, at every fault point and every
step of the switch, leaves nothing behind (or something the next convergence
finishes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator import faults
from coordinator.errors import FailedPrecondition, ResourceExhausted, Unavailable
from coordinator.faults import FaultInjected
from coordinator.ovs.port_keys import is_parked
from coordinator.service import DENY_ALL_CLASS, AttachParams
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState
from tests.unit.fake_dataplane import FakeDataplane, devices
from tests.unit.service_harness import CLASSES, HOST, PIPELINE, FakeStream, harness, scope

ATTACH_POINTS = [p for p in faults.POINTS if p.startswith("attach.")]
DETACH_POINTS = [p for p in faults.POINTS if p.startswith("detach.")]


async def test_attach_plugs_the_device_and_installs_the_class_then_detach_removes_all(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        assert (record.state, record.policy_state) == (AttachmentState.BOUND, PolicyState.BASELINE)
        sw = h.switch
        assert sw.flows_of(record) == sw.rendered(record, record.ofport, CLASSES["dpu-ovs-isolated"])
        assert (
            sw.ports[record.device.representor]["bluefield-coordinator-attachment-id"] == record.attachment_id
        )
        assert record.slot in sw.zone_limits and record.device.device_id in sw.prepared
        assert sw.steps()[-3:] == ["prepare", "add_port", "enforce"]
        assert await h.service.detach(HOST, record.attachment_id, record.lease_generation)
        assert h.world_is_empty_of(record) and h.store.get(record.attachment_id) is None
        assert not await h.service.detach(HOST, record.attachment_id, record.lease_generation)


async def test_attach_replays_a_request_and_installs_the_last_good_policy(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        first = await h.attach("sb-1")
        assert (await h.attach("sb-1")).attachment_id == first.attachment_id
        await h.service.apply_policy("sb-1", scope(3))
        params = AttachParams("sb-1", "hi-1", "req-second", None, "", "BASELINE")
        second = await h.service.attach(HOST, params)
        assert (second.policy_state, second.policy_version) == (PolicyState.APPLIED, 3)
        assert h.switch.flows_of(second) == h.switch.rendered(second, second.ofport, scope(3))


@pytest.mark.parametrize("point", ATTACH_POINTS)
async def test_a_fault_at_any_attach_point_rolls_back_completely(tmp_path: Path, point: str) -> None:
    async with harness(tmp_path) as h:
        faults.enable(point, "raise")
        with pytest.raises(FaultInjected):
            await h.attach("sb-1")
        faults.disable_all()
        assert h.store.list_attachments() == []
        assert "AttachFailed" in h.reasons()
        only = devices()[0]
        assert only.device_id not in h.switch.prepared
        assert only.representor not in h.switch.ports or is_parked(h.switch.ports[only.representor])
        assert [c for c in h.switch.tables if c != 0xBFC0_0000_0000_0000] == []
        # The device is free again: the next attach gets it.
        assert (await h.attach("sb-2")).state is AttachmentState.BOUND


@pytest.mark.parametrize(
    ("step", "error"), [("prepare", Unavailable), ("add_port", Unavailable), ("enforce", Unavailable)]
)
async def test_a_failing_switch_step_rolls_the_attach_back(tmp_path: Path, step: str, error: type) -> None:
    async with harness(tmp_path) as h:
        h.switch.fail(step)
        with pytest.raises(error, match=f"{step} failed"):
            await h.attach("sb-1")
        assert h.store.list_attachments() == []
        assert "teardown" in h.switch.steps()
        assert not h.switch.prepared and all(is_parked(ids) for ids in h.switch.ports.values())


async def test_a_vf_port_refused_beside_the_prepare_is_added_again_after_it(tmp_path: Path) -> None:
    # A VF's port goes on the bridge while its function is prepared; if that
    # failed (e.g. the prepare had to make the representor), once more after.
    async with harness(tmp_path) as h:
        h.switch.fail("add_port", "no such device (fake)")
        real_prepare = h.switch.prepare

        async def prepare_then_heal(record: AttachmentRecord) -> str:
            await asyncio.sleep(0)  # the port addition runs meanwhile, and fails
            h.switch.heal()
            return await real_prepare(record)

        h.switch.prepare = prepare_then_heal  # type: ignore[method-assign]
        record = await h.attach("sb-1")
        assert record.state is AttachmentState.BOUND and record.device.representor in h.switch.ports
        assert h.switch.steps()[-4:] == ["add_port", "prepare", "add_port", "enforce"]


async def test_a_rollback_that_fails_is_finished_by_the_next_convergence(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.switch.fail("enforce")
        h.switch.fail("teardown")
        with pytest.raises(Unavailable):
            await h.attach("sb-1")
        (left,) = h.store.list_attachments()
        assert left.state is AttachmentState.ATTACHING
        h.switch.heal()
        await h.service.reconverge("start")
        assert h.store.list_attachments() == [] and h.world_is_empty_of(left)
        assert h.observed.corrections == ["RolledBack"]


@pytest.mark.parametrize("point", DETACH_POINTS)
async def test_a_fault_at_any_detach_point_is_finished_by_the_next_convergence(
    tmp_path: Path, point: str
) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        faults.enable(point, "raise")
        with pytest.raises(FaultInjected):
            await h.service.detach(HOST, record.attachment_id, record.lease_generation)
        faults.disable_all()
        assert h.current(record).state is AttachmentState.DETACHING
        await h.service.reconverge("start")
        assert h.store.get(record.attachment_id) is None and h.world_is_empty_of(record)
        assert h.observed.corrections == ["DetachFinished"]


async def test_detach_refuses_a_stale_generation_and_an_attaching_record(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        with pytest.raises(FailedPrecondition, match="never issued"):
            await h.service.detach(HOST, record.attachment_id, record.lease_generation + 1)
        assert h.current(record).state is AttachmentState.BOUND


async def test_wait_initial_installs_deny_all_first_then_the_gateway_policy(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        stream = FakeStream()
        h.service.policy_source = stream
        attaching = asyncio.ensure_future(h.attach("sb-1", initial="WAIT_INITIAL"))
        while "sb-1" not in stream.registered:
            await asyncio.sleep(0)
        (closed,) = h.store.list_attachments()
        assert h.switch.flows_of(closed) == h.switch.rendered(closed, 1, CLASSES[DENY_ALL_CLASS])
        h.service.book.offer("sb-1", scope(5))
        record = await attaching
        assert (record.policy_state, record.policy_version) == (PolicyState.APPLIED, 5)
        assert h.store.policy("sb-1") is not None


async def test_wait_initial_times_out_and_rolls_back(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.service.policy_source = FakeStream()
        with pytest.raises(Exception, match="no policy for sandbox sb-1"):
            await h.attach("sb-1", initial="WAIT_INITIAL", initial_policy_timeout_ms=10)
        assert h.store.list_attachments() == [] and all(is_parked(ids) for ids in h.switch.ports.values())


async def test_the_gate_refuses_attach_while_lost_draining_or_unhealthy(tmp_path: Path) -> None:
    async with harness(tmp_path, limits={"max_attach_qps": 1000}) as h:
        h.service.mark_switch_lost("test")
        with pytest.raises(Unavailable, match="re-programmed"):
            await h.attach("sb-1")
        await h.service.reconverge("ovs-restart")
        h.switch.healthy = False
        with pytest.raises(FailedPrecondition, match="ovs_reachable"):
            await h.attach("sb-1")
        h.switch.healthy = True
        await h.service.health()  # the cached report is replaced
        assert (await h.attach("sb-1")).state is AttachmentState.BOUND
        assert await h.service.drain(1.0)
        with pytest.raises(Unavailable, match="shutting down"):
            await h.attach("sb-2")


async def test_attach_admission_and_pool_limits(tmp_path: Path) -> None:
    async with harness(tmp_path, switch=FakeDataplane(PIPELINE, offered=devices(vfs=1))) as h:
        await h.attach("sb-1")
        with pytest.raises(ResourceExhausted):
            await h.attach("sb-2")
