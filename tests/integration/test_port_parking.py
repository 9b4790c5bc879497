"""A VF's port parked between attachments, on a private OVS with real
frames: a detached VF - its guest still holding it up, as a hostile one
would - hears none of the bridge's ARP floods and gets nothing out; the
next attach of the VF takes the port back; a restarted ovs-vswitchd, which
forgets port configuration, has the port parked again before the bridge's
flows flood, and one whose flows came back without the ports' configuration
is noticed by the switch watch, and meanwhile (or while the daemon is not
running at all) the port's representor is down, so the restored floods
reach nothing through it; a restarted daemon keeps parked ports as they
are."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from coordinator.attachment_identity import BRIDGE_COOKIE
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.base import DeviceKind
from coordinator.event_kinds import EventKind
from coordinator.policy.validate import scope_from_mapping
from coordinator.store.records import AttachmentRecord
from coordinator.watches.switch import recover
from tests.integration.invariants import inert_ports, ports_of
from tests.integration.stack import (
    HOST,
    NETPROBE,
    SERVER_V4,
    UPLINK_V4,
    Stack,
    Uplink,
    build_stack,
    probe_tcp,
    restart_daemon,
)

pytestmark = pytest.mark.ovs

BRIDGE = "br-park"
# Each test's guest its own address: the fabric's neighbour cache outlives a test.
GUEST_V4, REUSED_V4 = "198.51.100.40", "198.51.100.41"
WEB = scope_from_mapping(
    {"version": 1, "addresses": [REUSED_V4],
     "egress": [{"name": "web", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP",
                 "cidrs": ["203.0.113.0/24"], "ports": [{"start": 443}]}]}
)  # fmt: skip


@pytest_asyncio.fixture
async def stack(tmp_path: Path, ovs: OvsInstance, uplink: Uplink) -> AsyncIterator[Stack]:
    s = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=1, sfs=0)
    try:
        yield s
    finally:
        await s.detach_all_and_close()


def _arp_heard(guest_ns: str, uplink: Uplink) -> int:
    """ARP frames the guest's eth0 receives while the fabric broadcasts three
    who-has requests (flooded by the bridge to every port that may hear them)."""
    sniff = netns.popen_in_netns(
        guest_ns, [sys.executable, NETPROBE, "sniff-arp", "eth0", "--seconds", "1.0"]
    )
    try:
        assert sniff.stdout is not None and sniff.stdout.readline().strip() == "ready"
        for i in range(3):
            netns.run_in_netns(uplink.ns, [sys.executable, NETPROBE, "arp-request", "eth0", UPLINK_V4,
                                           f"198.51.100.{200 + i}"])  # fmt: skip
        return int(sniff.stdout.readline())
    finally:
        sniff.kill()
        sniff.wait()


def _fabric_heard(guest_ns: str, uplink: Uplink) -> int:
    """ARP frames the fabric receives while the guest asks once who has its address."""
    listen = netns.popen_in_netns(
        uplink.ns, [sys.executable, NETPROBE, "sniff-arp", "eth0", "--seconds", "1.0"]
    )
    try:
        assert listen.stdout is not None and listen.stdout.readline().strip() == "ready"
        netns.run_in_netns(guest_ns, [sys.executable, NETPROBE, "arp-request", "eth0", GUEST_V4, UPLINK_V4])
        return int(listen.stdout.readline())
    finally:
        listen.kill()
        listen.wait()


def _hold_up(stack: Stack, record: AttachmentRecord) -> str:
    """The guest's side of the VF up again after a detach downed it: a guest
    that does not let go of its VF."""
    ns = stack.guest_ns(record)
    netns.set_link(ns, "eth0")
    return ns


async def _detach(stack: Stack, record: AttachmentRecord) -> None:
    assert await stack.service.detach(HOST, record.attachment_id, record.lease_generation)


async def test_a_detached_vfs_port_is_parked_and_hears_no_flood(stack: Stack, uplink: Uplink) -> None:
    record = await stack.attach("sb-park", DeviceKind.VF)
    ns = stack.configure_guest(record, f"{GUEST_V4}/24")
    assert _arp_heard(ns, uplink) >= 3  # attached: the floods reach it (the check can see them)
    await _detach(stack, record)
    rep = record.device.representor
    assert rep in ports_of(stack.ovs, parked=True) and rep in inert_ports(stack.ovs, BRIDGE)
    ns = _hold_up(stack, record)
    assert _arp_heard(ns, uplink) == 0
    # Nor does anything it sends get anywhere: the fabric hears none of its ARP.
    assert _fabric_heard(ns, uplink) == 0


async def test_the_next_attach_of_the_vf_takes_its_parked_port_back(stack: Stack, uplink: Uplink) -> None:
    first = await stack.attach("sb-first", DeviceKind.VF)
    await _detach(stack, first)
    second = await stack.attach("sb-second", DeviceKind.VF)
    assert second.device == first.device  # the pool's one VF
    rep = second.device.representor
    assert rep not in inert_ports(stack.ovs, BRIDGE) and rep not in ports_of(stack.ovs, parked=True)
    ids = stack.ovs.vsctl("get", "Port", rep, "external_ids")
    assert second.attachment_id in ids and second.sandbox_id in ids
    ns = stack.configure_guest(second, f"{REUSED_V4}/24")
    [applied] = await stack.service.apply_policy("sb-second", WEB)
    assert probe_tcp(ns, SERVER_V4, 443) and not probe_tcp(ns, SERVER_V4, 80)
    assert _arp_heard(ns, uplink) >= 3
    assert applied.ofport == second.ofport == first.ofport  # the same port, not a new one


async def test_a_restarted_vswitchd_parks_the_port_again_before_the_bridge_flows_flood(
    stack: Stack, ovs: OvsInstance, uplink: Uplink
) -> None:
    record = await stack.attach("sb-restart", DeviceKind.VF)
    await _detach(stack, record)
    rep = record.device.representor
    ovs.stop_vswitchd()
    ovs.start_vswitchd()
    assert rep not in inert_ports(ovs, BRIDGE)  # OVS forgot: the daemon must park it again
    inert_when_flooding: list[bool] = []
    real_sync = stack.switch.sync

    async def sync_watching_the_bridge_flows(cookie: int, *args: object, **kwargs: object) -> object:
        if cookie == BRIDGE_COOKIE:
            inert_when_flooding.append(rep in inert_ports(ovs, BRIDGE))
        return await real_sync(cookie, *args, **kwargs)  # type: ignore[arg-type]

    stack.switch.sync = sync_watching_the_bridge_flows  # type: ignore[method-assign]
    try:
        await recover(stack.service, "test: vswitchd restarted")
    finally:
        del stack.switch.sync
    assert inert_when_flooding and all(inert_when_flooding)
    assert rep in inert_ports(ovs, BRIDGE)
    assert _arp_heard(_hold_up(stack, record), uplink) == 0


async def test_a_parked_port_that_lost_its_bits_with_the_flows_still_there_is_noticed(
    stack: Stack, ovs: OvsInstance, uplink: Uplink
) -> None:
    """As after `ovs-ctl restart`, which restores the flows but not the
    ports' configuration: the base flows are all there, so only the parked
    port tells the switch watch that the switch needs re-programming."""
    record = await stack.attach("sb-bits", DeviceKind.VF)
    await _detach(stack, record)
    rep = record.device.representor
    assert await stack.service.switch_intact() is None
    for bit in ("receive", "forward", "packet-in"):
        ovs.ofctl("mod-port", ovs.mgmt(BRIDGE), rep, bit)
    assert rep not in inert_ports(ovs, BRIDGE)
    lost = await stack.service.switch_intact()
    assert lost is not None and f"parked port {rep}" in lost
    assert rep in inert_ports(ovs, BRIDGE)  # at once, before the re-programming
    await recover(stack.service, f"test: {lost}")
    assert rep in inert_ports(ovs, BRIDGE) and await stack.service.switch_intact() is None
    assert _arp_heard(_hold_up(stack, record), uplink) == 0


def _restart_keeping_flows(ovs: OvsInstance) -> None:
    """What `ovs-ctl restart` does (its `ovs-save`): the bridge's flows
    dumped, ovs-vswitchd restarted, the flows added back in one bundle. The
    ports come back without the configuration OpenFlow gave them."""
    dumped = ovs.ofctl("dump-flows", "--no-stats", "--no-names", ovs.mgmt(BRIDGE))
    flows = [line.strip() for line in dumped.splitlines() if line.strip() and "_FLOW" not in line]
    assert flows
    ovs.stop_vswitchd()
    ovs.start_vswitchd()
    ovs.ofctl("add-flows", "--bundle", ovs.mgmt(BRIDGE), "-", input="\n".join(flows) + "\n")


async def test_a_parked_vf_hears_no_restored_flood_before_the_daemon_looks_again(
    stack: Stack, ovs: OvsInstance, uplink: Uplink
) -> None:
    """ovs-vswitchd restarted with its flows restored, the daemon not
    looking (it may be down for good): the parked port lost its bits, but
    not its representor's kernel state, which is down."""
    record = await stack.attach("sb-saved", DeviceKind.VF)
    await _detach(stack, record)
    rep = record.device.representor
    _restart_keeping_flows(ovs)
    assert rep not in inert_ports(ovs, BRIDGE)  # forgotten, and nobody has looked yet
    ns = _hold_up(stack, record)
    assert _arp_heard(ns, uplink) == 0
    assert _fabric_heard(ns, uplink) == 0
    # The next attach of the VF has its representor up again.
    await recover(stack.service, "test: vswitchd restarted")
    again = await stack.attach("sb-saved-again", DeviceKind.VF)
    assert again.device == record.device
    ns = stack.configure_guest(again, f"{REUSED_V4}/24")
    assert _arp_heard(ns, uplink) >= 3


async def test_a_restarted_daemon_keeps_a_parked_port_parked_and_reports_no_drift(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink
) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=1, sfs=0)
    restarted = stack
    try:
        record = await stack.attach("sb-daemon", DeviceKind.VF)
        await _detach(stack, record)
        last = stack.store.events_since(0, limit=10_000)[-1].seq
        restarted = await restart_daemon(stack)
        later = [e for e in restarted.store.events_since(0, limit=10_000) if e.seq > last]
        assert [e for e in later if e.type == EventKind.ATTACHMENT_DRIFT] == []
        rep = record.device.representor
        assert rep in ports_of(ovs, parked=True) and rep in inert_ports(ovs, BRIDGE)
        reused = await restarted.attach("sb-after", DeviceKind.VF)
        assert reused.device == record.device and rep not in inert_ports(ovs, BRIDGE)
    finally:
        await restarted.detach_all_and_close()
