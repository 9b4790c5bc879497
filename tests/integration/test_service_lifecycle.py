"""The service's life beyond single calls, in process on a private OVS:
admission limits (max_attachments, max_attach_qps refuse with
RESOURCE_EXHAUSTED and leave nothing behind), hosts that never reconcile
after a restart, and a policy update cut short by an OVS restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.attachment_identity import BRIDGE_COOKIE, COOKIE_OWNER, COOKIE_OWNER_MASK, cookie_for_slot
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.errors import ResourceExhausted
from coordinator.metrics import Metrics
from coordinator.ovs.ovsdb import OWNER_KEY
from coordinator.policy.validate import scope_from_mapping
from coordinator.store.records import PolicyState
from coordinator.watches.switch import recover
from tests.integration.stack import HOST as HOST_ADMIN
from tests.integration.stack import Stack, Uplink, build_stack, restart_daemon

pytestmark = pytest.mark.ovs

BRIDGE = "br-limits"


def _our_ports(stack: Stack) -> int:
    out = stack.ovs.vsctl("--columns=external_ids", "list", "Port")
    return out.count(OWNER_KEY)


def _our_flow_cookies(stack: Stack) -> set[str]:
    out = stack.ovs.ofctl("dump-flows", "--no-stats", stack.ovs.mgmt(BRIDGE),
                          f"cookie={COOKIE_OWNER:#x}/{COOKIE_OWNER_MASK:#x}")  # fmt: skip
    return {line.split(",", 1)[0].strip() for line in out.splitlines() if "actions=" in line}


async def _refused_leaves_nothing(stack: Stack, sandbox: str, needle: str) -> None:
    ports, cookies, rows = _our_ports(stack), _our_flow_cookies(stack), stack.store.count()
    with pytest.raises(ResourceExhausted, match=needle):
        await stack.attach(sandbox)
    assert (_our_ports(stack), _our_flow_cookies(stack), stack.store.count()) == (ports, cookies, rows)


async def test_max_attachments(tmp_path: Path, ovs: OvsInstance, uplink: Uplink) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=3, sfs=0,
                              extra={"limits": {"max_attachments": 2}})  # fmt: skip
    try:
        first, second = await stack.attach("lim-1"), await stack.attach("lim-2")
        await _refused_leaves_nothing(stack, "lim-3", r"max_attachments \(2\)")
        # Room again after a detach.
        await stack.service.detach(HOST_ADMIN, first.attachment_id, first.lease_generation)
        assert (await stack.attach("lim-3")).state.value == "BOUND"
        del second
    finally:
        await _detach_all(stack)


async def test_max_attach_qps(tmp_path: Path, ovs: OvsInstance, uplink: Uplink) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=3, sfs=0,
                              extra={"limits": {"max_attach_qps": 0.2}})  # fmt: skip
    try:
        await stack.attach("qps-1")  # the burst: one
        await _refused_leaves_nothing(stack, "qps-2", r"max_attach_qps")
        # A replay of an attach already made costs nothing.
        again = await stack.attach("qps-1")
        assert again.sandbox_id == "qps-1"
    finally:
        await _detach_all(stack)


async def _detach_all(stack: Stack) -> None:
    for record in stack.store.list_attachments():
        await stack.service.detach(HOST_ADMIN, record.attachment_id, record.lease_generation)
    await stack.close()


@pytest.mark.parametrize("mode", ["advisory", "authoritative"])
async def test_hosts_that_never_reconcile_after_a_restart(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink, mode: str
) -> None:
    """reconcile_mode: after a restart, attachments of a host that is not
    heard from within host_grace_s are reported (advisory) or released."""
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=2, sfs=0,
                              extra={"reconcile": {"reconcile_mode": mode}})  # fmt: skip
    record = await stack.attach("quiet")
    assert await stack.service.expire_unreconciled() == []  # heard from: it attached
    restarted = await restart_daemon(stack)
    try:
        assert await restarted.service.expire_unreconciled() == [record.attachment_id]
        events = [
            e for e in await restarted.async_store.events_since(0) if e.attachment_id == record.attachment_id
        ]
        if mode == "advisory":
            assert await restarted.async_store.get(record.attachment_id) is not None
            assert events[-1].type == "DpuHostNotReconciled"
        else:
            assert await restarted.async_store.get(record.attachment_id) is None
            assert events[-1].reason == "HostNeverReconciled"
            assert not _our_flow_cookies(restarted) - {f"cookie={BRIDGE_COOKIE:#x}"}
    finally:
        await _detach_all(restarted)


async def test_policy_update_cut_short_by_an_ovs_restart_lands_after_recovery(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink
) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=1, sfs=0)
    try:
        record = await stack.attach("mid")
        v2 = scope_from_mapping({"version": 2, "addresses": ["198.51.100.30"],
                                 "egress": [{"name": "web", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP",
                                             "cidrs": ["203.0.113.0/24"], "ports": [{"start": 443}]}]})  # fmt: skip
        ovs.stop_vswitchd()
        stack.service.book.offer("mid", v2)
        await stack.service.apply_latest("mid")  # OVS is away: the update fails
        failed = stack.store.get(record.attachment_id)
        assert failed is not None and failed.policy_state is PolicyState.DEGRADED
        assert await stack.service.switch_intact() is not None
        ovs.start_vswitchd()
        report = await recover(stack.service, "test: vswitchd restarted")
        assert report.attachments == 1 and report.flows_added > 0
        landed = stack.store.get(record.attachment_id)
        assert landed is not None and (landed.policy_state, landed.policy_version) == (PolicyState.APPLIED, 2)
        assert stack.store.policy("mid") is not None and stack.store.policy("mid")[0] == 2
        installed = await stack.openflow.dump(cookie_for_slot(landed.slot))
        assert len(installed) == len(stack.service.dataplane.desired_flows(landed, landed.ofport, v2))
        assert await stack.service.switch_intact() is None
    finally:
        await _detach_all(stack)


async def test_metrics_fed_by_the_service(tmp_path: Path, ovs: OvsInstance, uplink: Uplink) -> None:
    """Policy-apply latency, flows installed and reconcile corrections come
    from real operations."""
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=1, sfs=0)
    metrics = Metrics()
    stack.service.observer = metrics
    try:
        record = await stack.attach("metered")
        v1 = scope_from_mapping({"version": 1, "addresses": ["198.51.100.31"]})
        await stack.service.apply_policy("metered", v1)
        sample = metrics.registry.get_sample_value
        assert sample("bluefield_coordinator_policy_apply_duration_seconds_count", {"result": "ok"}) == 1
        ours = await stack.openflow.dump(COOKIE_OWNER, COOKIE_OWNER_MASK)
        assert stack.service.dataplane.installed_flows() == len(ours) > 0
        stray = cookie_for_slot(4000)
        stack.ovs.ofctl(
            "add-flow", stack.ovs.mgmt(BRIDGE), f"cookie={stray:#x},table=0,priority=1,actions=drop"
        )
        await stack.service.reconverge("start")
        assert (
            sample("bluefield_coordinator_reconcile_corrections_total", {"kind": "OrphanFlowsRemoved"}) == 1
        )
        assert stack.service.dataplane.installed_flows() == len(
            await stack.openflow.dump(COOKIE_OWNER, COOKIE_OWNER_MASK)
        )
        del record
    finally:
        await _detach_all(stack)
