"""NetworkScope enforcement on real packets: guest namespaces behind a
private OVS, a fabric namespace with TCP/UDP echo servers, policies applied
through the attachment service's real path (compile, diff, bundle, verify)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from coordinator.attachment_identity import cookie_for_slot, zone_of_slot
from coordinator.callers import Caller, Role
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.base import DeviceKind
from coordinator.flows.classes import load_network_classes
from coordinator.flows.model import Flow, Goto, Meter
from coordinator.ovs.conntrack import ConntrackControl
from coordinator.policy.packet import IPPROTO_TCP, CtState, Direction, Fragment, Packet
from coordinator.policy.validate import scope_from_mapping
from coordinator.service import DENY_ALL_CLASS, AttachParams
from coordinator.store.records import PolicyState
from tests.integration.stack import (
    HOST,
    NETPROBE,
    SERVER_V4,
    SERVER_V6,
    UPLINK_V4,
    Stack,
    Uplink,
    build_stack,
    probe_ping,
    probe_tcp,
    probe_udp,
)

pytestmark = pytest.mark.ovs

BRIDGE = "br-pol"
GUEST_V4, GUEST_V6 = "198.51.100.10", "2001:db8::10"
OWN = {"addresses": [GUEST_V4, GUEST_V6]}


def scope(**fields: Any) -> Any:
    return scope_from_mapping({**OWN, **fields})


def allow(name: str, protocol: str = "PROTOCOL_TCP", cidrs: list[str] | None = None, ports: list[int] | None = None,
          **extra: Any) -> dict[str, Any]:  # fmt: skip
    rule: dict[str, Any] = {"name": name, "action": "ACTION_ALLOW", "protocol": protocol, **extra}
    if cidrs:
        rule["cidrs"] = cidrs
    if ports:
        rule["ports"] = [{"start": p} for p in ports]
    return rule


def deny(name: str, **kwargs: Any) -> dict[str, Any]:
    return {**allow(name, **kwargs), "action": "ACTION_DENY"}


WEB = [allow("web", cidrs=["203.0.113.0/24", "2001:db8:ff::/64"], ports=[443, 8080])]


@pytest_asyncio.fixture
async def stack(tmp_path: Path, ovs: OvsInstance, uplink: Uplink) -> AsyncIterator[Stack]:
    s = await build_stack(tmp_path, ovs, BRIDGE, "uplink")
    try:
        yield s
    finally:
        for record in s.store.list_attachments():
            await s.service.detach(HOST, record.attachment_id, record.lease_generation)
        await s.close()


async def _guest(stack: Stack, sandbox: str = "sb-1", kind: DeviceKind = DeviceKind.VF) -> str:
    record = await stack.attach(sandbox, kind)
    return stack.configure_guest(record, f"{GUEST_V4}/24", f"{GUEST_V6}/64")


async def test_allowed_tcp_passes_and_everything_else_is_dropped(stack: Stack) -> None:
    ns = await _guest(stack)
    [applied] = await stack.service.apply_policy("sb-1", scope(egress=WEB))
    assert applied.policy_state is PolicyState.APPLIED
    assert probe_tcp(ns, SERVER_V4, 443) and probe_tcp(ns, SERVER_V4, 8080)
    assert not probe_tcp(ns, SERVER_V4, 80)
    assert not probe_udp(ns, SERVER_V4, 5000)
    assert not probe_ping(ns, SERVER_V4)


async def test_ipv6_rules(stack: Stack) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(egress=WEB))
    assert probe_tcp(ns, SERVER_V6, 443)
    assert not probe_tcp(ns, SERVER_V6, 80)
    await stack.service.apply_policy("sb-1", scope(egress=[allow("v4-only", cidrs=["203.0.113.0/24"])]))
    assert probe_tcp(ns, SERVER_V4, 80) and not probe_tcp(ns, SERVER_V6, 443)


async def test_replies_pass_but_the_reverse_direction_is_refused(stack: Stack, uplink: Uplink) -> None:
    ns = await _guest(stack)
    server = netns.popen_in_netns(
        ns, [sys.executable, NETPROBE, "serve", "--tcp", "22"], stdin=subprocess.PIPE
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        await stack.service.apply_policy("sb-1", scope(egress=WEB))
        assert probe_tcp(ns, SERVER_V4, 443)  # the reply direction passes
        assert not probe_tcp(uplink.ns, GUEST_V4, 22)  # new inbound does not
        ingress = [allow("ssh", cidrs=["198.51.100.0/24"], ports=[22])]
        await stack.service.apply_policy("sb-1", scope(egress=WEB, ingress=ingress))
        assert probe_tcp(uplink.ns, GUEST_V4, 22)
        assert not probe_tcp(uplink.ns, GUEST_V4, 23)
    finally:
        server.kill()
        server.wait()


async def test_deny_wins_over_allow(stack: Stack) -> None:
    ns = await _guest(stack)
    rules = [allow("all-tcp", cidrs=["203.0.113.0/24", "198.51.100.0/24"], ports=[443, 8080, 22]),
             deny("no-8080", ports=[8080])]  # fmt: skip
    await stack.service.apply_policy("sb-1", scope(egress=rules))
    assert probe_tcp(ns, SERVER_V4, 443)
    assert not probe_tcp(ns, SERVER_V4, 8080)


async def test_icmp_type_filtering(stack: Stack) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(egress=[allow("echo", "PROTOCOL_ICMP", icmpType=8)]))
    assert probe_ping(ns, SERVER_V4)
    await stack.service.apply_policy("sb-1", scope(egress=[allow("tstamp", "PROTOCOL_ICMP", icmpType=13)]))
    assert not probe_ping(ns, SERVER_V4)


async def test_udp_and_the_dns_toggle(stack: Stack) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(dns_servers=[SERVER_V4]))
    assert probe_udp(ns, SERVER_V4, 53)
    assert not probe_udp(ns, SERVER_V4, 5000)
    await stack.service.apply_policy("sb-1", scope(egress=[allow("udp", "PROTOCOL_UDP", ports=[5000])]))
    assert probe_udp(ns, SERVER_V4, 5000) and not probe_udp(ns, SERVER_V4, 53)


async def test_spoofed_source_address_and_mac_are_dropped(stack: Stack) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(egress=WEB))
    netns.add_address(ns, "eth0", "198.51.100.99/24")
    assert not probe_tcp(ns, SERVER_V4, 443, source="198.51.100.99")
    # The spoofed attempt resolved the gateway from the spoofed address too
    # (and that ARP was dropped): start the real one with a clean cache.
    netns.run_in_netns(ns, ["ip", "neigh", "flush", "all"])
    assert probe_tcp(ns, SERVER_V4, 443, source=GUEST_V4)
    record = stack.store.list_attachments()[0]
    netns.set_link(ns, "eth0", mac="02:00:00:00:be:ef")
    netns.run_in_netns(ns, ["ip", "neigh", "flush", "all"])
    assert not probe_tcp(ns, SERVER_V4, 443)
    netns.set_link(ns, "eth0", mac=record.mac)
    assert probe_tcp(ns, SERVER_V4, 443)


async def test_two_guests_are_isolated_unless_policy_allows(stack: Stack) -> None:
    ns_a = await _guest(stack, "sb-a")
    b = await stack.attach("sb-b", DeviceKind.SF)
    ns_b = stack.configure_guest(b, "198.51.100.11/24")
    server = netns.popen_in_netns(
        ns_b, [sys.executable, NETPROBE, "serve", "--tcp", "22"], stdin=subprocess.PIPE
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        to_b = [allow("to-b", cidrs=["198.51.100.11/32"], ports=[22])]
        await stack.service.apply_policy("sb-a", scope(egress=to_b))
        # A may send, but B's own ingress policy (baseline) still refuses.
        assert not probe_tcp(ns_a, "198.51.100.11", 22)
        from_a = [allow("from-a", cidrs=[f"{GUEST_V4}/32"], ports=[22])]
        await stack.service.apply_policy(
            "sb-b", scope_from_mapping({"addresses": ["198.51.100.11"], "ingress": from_a})
        )
        assert probe_tcp(ns_a, "198.51.100.11", 22)
    finally:
        server.kill()
        server.wait()


async def test_policy_applies_and_meters_go_over_the_channel_without_ovs_ofctl(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _guest(stack)
    spawned: list[str] = []
    spawn = asyncio.create_subprocess_exec

    async def recorded(program: str, *args: Any, **kwargs: Any) -> Any:
        spawned.append(program)
        return await spawn(program, *args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recorded)
    limited = scope(version=2, egress=WEB, egress_rate_limit={"kbps": 2000, "burst_kb": 100})
    for policy in (scope(egress=WEB), limited, scope(version=3, egress=WEB)):
        [applied] = await stack.service.apply_policy("sb-1", policy)
        assert applied.policy_state is PolicyState.APPLIED
    assert "ovs-ofctl" not in spawned
    assert stack.switch.channel.connects == 1  # one connection since the start


async def test_failed_bundle_keeps_the_previous_policy(stack: Stack) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(egress=WEB))
    record = stack.store.list_attachments()[0]
    before = await stack.openflow.dump(cookie_for_slot(record.slot))
    # Make the switch refuse the next bundle: one more add in it, of a flow
    # policed by a meter the bridge does not have.
    unmetered = Flow("classify", 3020, (("in_port", "9"), ("dl_type", "0x0800")),
                     (Meter(999), Goto("egress_spoof")), cookie_for_slot(record.slot))  # fmt: skip
    refused_add = stack.switch.encoder.encode(unmetered).add
    prepare_bundle = stack.switch.prepare_bundle
    stack.switch.prepare_bundle = lambda changes: prepare_bundle([*changes, refused_add])  # type: ignore[method-assign]
    try:
        [degraded] = await stack.service.apply_policy(
            "sb-1", scope(egress=[allow("all", cidrs=["0.0.0.0/0"])])
        )
    finally:
        del stack.switch.prepare_bundle
    assert degraded.policy_state is PolicyState.DEGRADED
    [event] = [e for e in stack.store.events_since(0) if e.reason == "ApplyFailed"][-1:]
    assert "bundle refused, old flows kept" in event.message and "OFPMMFC_INVALID_METER" in event.message
    assert sorted(await stack.openflow.dump(cookie_for_slot(record.slot))) == sorted(before)
    assert probe_tcp(ns, SERVER_V4, 443) and not probe_tcp(ns, SERVER_V4, 80)
    assert stack.store.policy("sb-1") is not None and stack.store.policy("sb-1")[0] == 0  # type: ignore[index]


async def test_established_connection_survives_an_update_that_still_allows_it(stack: Stack) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(egress=WEB))
    hold = netns.popen_in_netns(
        ns, [sys.executable, NETPROBE, "hold", SERVER_V4, "443"], stdin=subprocess.PIPE
    )
    try:
        assert hold.stdout is not None and hold.stdin is not None
        assert hold.stdout.readline().strip() == "connected"
        for version in range(1, 6):
            extra = [allow(f"extra-{version}", cidrs=["203.0.113.0/24"], ports=[9000 + version])]
            await stack.service.apply_policy("sb-1", scope(version=version, egress=[*WEB, *extra]))
            hold.stdin.write("\n")
            hold.stdin.flush()
            assert hold.stdout.readline().strip() == "ok"
    finally:
        hold.kill()
        hold.wait()


async def test_no_forbidden_packet_passes_during_a_stream_of_updates(stack: Stack) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(egress=WEB))
    leaks: list[str] = []
    stop = threading.Event()

    def probe_forbidden() -> None:
        while not stop.is_set():
            # Port 80 is forbidden by every policy in the stream.
            if probe_tcp(ns, SERVER_V4, 80, timeout=0.3):
                leaks.append("tcp/80")

    prober = threading.Thread(target=probe_forbidden)
    prober.start()
    try:
        for version in range(1, 21):
            ports = [443, 8080] if version % 2 else [443, 22]
            rules = [allow("web", cidrs=["203.0.113.0/24"], ports=ports), deny("no-80", ports=[80])]
            await stack.service.apply_policy("sb-1", scope(version=version, egress=rules))
            assert probe_tcp(ns, SERVER_V4, 443)
    finally:
        stop.set()
        prober.join()
    assert leaks == []


def _meter_counts(stats: str) -> tuple[int, int]:
    """(packets into the meter, packets its drop band dropped) from
    "meter:N ... packet_in_count:X ... bands:\n0: packet_count:Y ..."."""
    head, _, bands = stats.partition("bands:")
    seen = [int(p.split(":", 1)[1]) for p in head.split() if p.startswith("packet_in_count:")]
    dropped = [int(p.split(":", 1)[1]) for p in bands.split() if p.startswith("packet_count:")]
    return (seen[0] if seen else -1, dropped[0] if dropped else -1)


async def test_egress_rate_limit_polices_through_a_meter(stack: Stack) -> None:
    ns = await _guest(stack)
    udp = [allow("udp", "PROTOCOL_UDP", ports=[5000])]
    await stack.service.apply_policy(
        "sb-1", scope(egress=udp, egress_rate_limit={"kbps": 1000, "burst_kb": 100})
    )
    record = stack.store.list_attachments()[0]
    assert probe_udp(ns, SERVER_V4, 5000)
    netns.run_in_netns(ns, [sys.executable, NETPROBE, "blast", SERVER_V4, "5000", "--count", "600"])
    # Sent at once, this is far above 1 Mbit/s plus 100 kbit of burst: most
    # of what reaches the meter must be dropped by its band.
    seen, dropped = _meter_counts(await stack.openflow.meter_stats(record.slot))
    assert seen > 20 and dropped > seen // 2, (seen, dropped)
    await stack.service.apply_policy("sb-1", scope(egress=udp))
    assert _meter_counts(await stack.openflow.meter_stats(record.slot)) == (-1, -1)
    assert probe_udp(ns, SERVER_V4, 5000)


async def test_explain_names_the_deciding_rule_and_matches_the_switch(stack: Stack) -> None:
    await _guest(stack)
    rules = [*WEB, deny("no-8080-to-5", cidrs=[f"{SERVER_V4}/32"], ports=[8080])]
    await stack.service.apply_policy("sb-1", scope(egress=rules))
    record = stack.store.list_attachments()[0]
    admin = Caller("spiffe://bluefield.local/admin/admin", Role.ADMIN)

    def tcp(dport: int, direction: Direction = Direction.EGRESS, ct: CtState = CtState.NEW) -> Packet:
        src, dst = (GUEST_V4, SERVER_V4) if direction is Direction.EGRESS else (SERVER_V4, GUEST_V4)
        return Packet(direction, IPPROTO_TCP, ip_address(src), ip_address(dst), 40000, dport, ct_state=ct)

    cases = [
        (tcp(443), True, "web"),
        (tcp(8080), False, "no-8080-to-5"),
        (tcp(80), False, "default"),
        (tcp(22, Direction.INGRESS), False, "default"),
        (tcp(22, Direction.INGRESS, CtState.ESTABLISHED), True, "established"),
        # The L2 guard refuses tagged and non-IP frames, whatever the rules say.
        (replace(tcp(443), vlan_id=100), False, "l2-guard"),
        (replace(tcp(443), vlan_id=0), False, "l2-guard"),
        (replace(tcp(22, Direction.INGRESS, CtState.ESTABLISHED), vlan_id=7), False, "l2-guard"),
        (replace(tcp(443), ethertype=0x8847), False, "l2-guard"),
        (replace(tcp(443), fragment=Fragment.FIRST), True, "web"),
    ]
    for packet, allowed, rule in cases:
        answer = await stack.service.explain(admin, record.attachment_id, packet)
        assert (answer.verdict.allowed, answer.verdict.rule) == (allowed, rule), packet
        assert answer.switch_agrees, answer.trace


async def test_an_update_that_revokes_a_connection_cuts_it_and_spares_the_rest(stack: Stack) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(egress=WEB))
    holds = {
        port: netns.popen_in_netns(
            ns, [sys.executable, NETPROBE, "hold", SERVER_V4, str(port)], stdin=subprocess.PIPE
        )
        for port in (443, 8080)
    }

    def round_trip(port: int) -> str:
        proc = holds[port]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        for proc in holds.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        assert round_trip(443) == round_trip(8080) == "ok"
        only_443 = [allow("web", cidrs=["203.0.113.0/24"], ports=[443])]
        [record] = await stack.service.apply_policy("sb-1", scope(version=2, egress=only_443))
        assert round_trip(443) == "ok"
        assert round_trip(8080) == "fail"
        events = [e for e in stack.store.events_since(0) if e.type == "DpuPolicyApplied"]
        assert "1 revoked connections cut" in events[-1].message
        assert record.policy_version == 2
    finally:
        for proc in holds.values():
            proc.kill()
            proc.wait()


async def test_connections_a_guest_opens_while_their_rule_is_withdrawn_do_not_survive(
    stack: Stack,
) -> None:
    """A hostile guest opening connections to a destination as fast as it can
    while the rule that allows it is withdrawn: none of them is left in its
    zone once the update has returned (an entry left there would carry the
    connection on as established, past the new policy). Without the revoke,
    about as many entries as the flood made are left."""
    ns = await _guest(stack)
    [record] = stack.store.list_attachments()
    zone = zone_of_slot(record.slot)
    conntrack = ConntrackControl(stack.ovs.vswitchd_ctl, timeout=10)
    only_443 = [allow("web", cidrs=["203.0.113.0/24"], ports=[443])]
    try:
        for version in (2, 4, 6):
            await stack.service.apply_policy("sb-1", scope(version=version, egress=WEB))
            flood = netns.popen_in_netns(ns, [sys.executable, NETPROBE, "syn-flood", SERVER_V4, "8080"])
            try:
                await asyncio.sleep(0.4)
                opened = [e for e in await conntrack.dump(zone) if e.dport == 8080]
                assert opened, "the flood opened no connection: nothing was tested"
                await stack.service.apply_policy("sb-1", scope(version=version + 1, egress=only_443))
                left = [e for e in await conntrack.dump(zone) if e.dport == 8080]
            finally:
                flood.kill()
                flood.wait()
            assert left == [], f"version {version + 1}: {len(left)} of the flood's connections survived"
    finally:
        await conntrack.close()


async def test_each_zone_gets_a_connection_limit_and_loses_it_on_detach(stack: Stack) -> None:
    record = await stack.attach("sb-limit")
    limits = await stack.service.dataplane.conntrack.get_zone_limits([record.slot])
    assert limits[record.slot] == stack.config.limits.conntrack_per_attachment
    await stack.service.detach(HOST, record.attachment_id, record.lease_generation)
    assert record.slot not in await stack.service.dataplane.conntrack.get_zone_limits()


async def test_arp_claiming_a_foreign_address_is_dropped(stack: Stack, uplink: Uplink) -> None:
    ns = await _guest(stack)
    await stack.service.apply_policy("sb-1", scope(egress=WEB))

    def uplink_learned(address: str) -> bool:
        out = netns.run_in_netns(uplink.ns, ["ip", "neigh", "show", address]).stdout
        return "lladdr" in out

    for claimed in ("198.51.100.99", GUEST_V4):
        netns.run_in_netns(uplink.ns, ["ip", "neigh", "flush", "all"])
        netns.run_in_netns(ns, [sys.executable, NETPROBE, "arp-request", "eth0", claimed, UPLINK_V4])
        # The fabric answers (and so learns the sender) only if the request
        # got through; give its reply a moment.
        await asyncio.sleep(0.3)
        assert uplink_learned(claimed) is (claimed == GUEST_V4), claimed


async def test_a_stored_policy_that_no_longer_reads_fails_closed(stack: Stack) -> None:
    await stack.attach("sb-1")
    await stack.service.apply_policy("sb-1", scope(version=3, egress=WEB))
    # As if the database had been edited behind the daemon's back.
    stack.store._db.execute('UPDATE sandbox_policies SET scope = \'{"addresses": ["not-an-ip"]}\'')
    params = AttachParams("sb-1", "hi-1", "req-second", DeviceKind.VF, "", "BASELINE")
    second = await stack.service.attach(HOST, params)
    assert second.policy_state is PolicyState.DEGRADED and second.policy_version == 3
    # Its flows are exactly the deny-all class's: nothing to change.
    deny_all = load_network_classes()[DENY_ALL_CLASS]
    desired = stack.service.dataplane.desired_flows(second, second.ofport, deny_all)
    unchanged = await stack.switch.sync(cookie_for_slot(second.slot), desired)
    assert (unchanged.added, unchanged.removed) == (0, 0) and unchanged.total == len(desired)
    ns = stack.configure_guest(second, f"{GUEST_V4}/24")
    assert not probe_tcp(ns, SERVER_V4, 443)
    await stack.service.apply_policy("sb-1", scope(version=4, egress=WEB))
    assert probe_tcp(ns, SERVER_V4, 443)


async def test_work_beside_the_revoke_that_fails_takes_the_revoke_with_it(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conntrack revoke of a change starts first, the proof's
    fingerprint beside it; when the fingerprint fails the apply fails, and
    the revoke is not left running after it (nor does the failure wait
    for it)."""
    record = await stack.attach("sb-1")
    await stack.service.apply_policy("sb-1", scope(egress=WEB))
    dataplane: Any = stack.service.dataplane
    revoking_started = asyncio.Event()
    revoke_ended: list[str] = []

    async def slow_revoke(*args: Any, **kwargs: Any) -> Any:
        revoking_started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            revoke_ended.append("cancelled")
            raise
        revoke_ended.append("finished")

    def failing_fingerprint(*args: Any) -> bytes:
        raise RuntimeError("fingerprint failed")

    monkeypatch.setattr(dataplane.conntrack, "revoke_entries", slow_revoke)
    monkeypatch.setattr(dataplane._prover.inputs, "of", failing_fingerprint)
    narrower = scope(egress=[allow("web", cidrs=["203.0.113.0/24"], ports=[443])])
    with pytest.raises(RuntimeError, match="fingerprint failed"):
        await asyncio.wait_for(dataplane.enforce_and_revoke(record, record.ofport, narrower), 10)
    assert revoking_started.is_set()
    await asyncio.sleep(0)
    assert revoke_ended == ["cancelled"]
