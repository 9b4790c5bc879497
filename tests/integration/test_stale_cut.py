"""A stale deny-all cuts many attachments with two drops each, records them
STALE, and only then puts the full deny-all flows in the drops' place; the
drops never outlive the transition, and a policy or a re-convergence that
finds them (a crash between the cut and its replacement) removes them.
In process on a private OVS with real traffic from a guest to the uplink."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from os_ken.ofproto.ofproto_v1_3 import OFPFC_ADD

from coordinator.attachment_identity import cookie_for_slot
from coordinator.callers import Caller, Role
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.event_kinds import Event, EventKind
from coordinator.flows.classes import load_network_classes
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs.ofwire import flow_mod_key
from coordinator.policy.packet import IPPROTO_TCP, Direction, Packet
from coordinator.policy.validate import scope_from_mapping
from coordinator.service import DENY_ALL_CLASS
from coordinator.store.records import AttachmentRecord, PolicyState
from tests.integration.stack import SERVER_V4, Stack, Uplink, build_stack, probe_tcp

pytestmark = pytest.mark.ovs

BRIDGE = "br-cut"
ADMIN = Caller("spiffe://bluefield.local/admin/ops", Role.ADMIN)
GUESTS = ("198.51.100.50", "198.51.100.51")
WEB = 80
DENY_ALL_WHEN_STALE: dict[str, dict[str, object]] = {"policy": {"on_stale": "deny-all"}}


def policy(version: int, address: str) -> dict[str, object]:
    return {
        "version": version,
        "addresses": [address],
        "egress": [{"name": "web", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP",
                    "cidrs": [f"{SERVER_V4}/32"], "ports": [{"start": WEB}]}],
    }  # fmt: skip


def _flows(stack: Stack, record: AttachmentRecord) -> list[str]:
    text = stack.ovs.ofctl(
        "dump-flows", "--no-stats", "--no-names", stack.ovs.mgmt(BRIDGE),
        f"cookie={cookie_for_slot(record.slot):#x}/-1",
    )  # fmt: skip
    return [line.strip() for line in text.splitlines() if "cookie=" in line]


def _drops(flows: Sequence[str]) -> list[str]:
    cut = load_pipeline().priority("cut")
    return [f for f in flows if f"priority={cut}," in f]


def _state(stack: Stack, record: AttachmentRecord) -> PolicyState:
    current = stack.store.get(record.attachment_id)
    assert current is not None
    return current.policy_state


async def _applied(stack: Stack) -> list[AttachmentRecord]:
    records = []
    for i, guest in enumerate(GUESTS):
        sandbox = f"cut-{i}"
        record = await stack.attach(sandbox)
        await asyncio.to_thread(stack.configure_guest, record, f"{guest}/24")
        (record,) = await stack.service.apply_policy(sandbox, scope_from_mapping(policy(1, guest)))
        records.append(record)
    return records


async def test_stale_deny_all_cuts_with_two_drops_each_then_holds_exactly_deny_all(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink
) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=2, sfs=0, extra=DENY_ALL_WHEN_STALE)
    try:
        records = await _applied(stack)
        ns = [stack.guest_ns(r) for r in records]
        assert all(probe_tcp(n, SERVER_V4, WEB) for n in ns)
        bundles: list[list[bytes]] = []  # the flow-mods of each bundle sent
        prepare_bundle = stack.switch.prepare_bundle

        def recorded_bundle(changes: Sequence[bytes]) -> Any:
            bundles.append(list(changes))
            return prepare_bundle(changes)

        seen: dict[str, object] = {}
        cut_zones = stack.service.dataplane.cut_zones

        async def between_record_and_replace(cut: Sequence[AttachmentRecord]) -> str:
            # The cut is in and recorded; the deny-all flows are not yet.
            seen["states"] = [_state(stack, r) for r in records]
            seen["flows"] = [_flows(stack, r) for r in records]
            seen["probes"] = [await asyncio.to_thread(probe_tcp, n, SERVER_V4, WEB) for n in ns]
            return await cut_zones(cut)

        stack.switch.prepare_bundle = recorded_bundle  # type: ignore[method-assign]
        stack.service.dataplane.cut_zones = between_record_and_replace  # type: ignore[method-assign]
        assert await stack.service.mark_stale(deny=True) == len(records)

        # The cut: one bundle of two added drops per attachment, nothing deleted.
        assert len(bundles[0]) == 2 * len(records)
        # An add (OFPFC_ADD, the flow-mod's command byte) with no instructions: a drop.
        assert all(mod[25] == OFPFC_ADD and flow_mod_key(mod).instructions == b"" for mod in bundles[0])
        assert seen["states"] == [PolicyState.STALE] * len(records)
        assert seen["probes"] == [False] * len(records)
        flows_then = seen["flows"]
        assert isinstance(flows_then, list)
        for record, flows in zip(records, flows_then, strict=True):
            drops = _drops(flows)
            assert len(drops) == 2, flows
            assert any(f"in_port={record.ofport} " in d for d in drops)
            assert any(f"dl_dst={record.mac} " in d for d in drops)
        # Then: exactly the deny-all flows, the drops gone.
        deny_all = load_network_classes()[DENY_ALL_CLASS]
        for record in records:
            flows = _flows(stack, record)
            assert not _drops(flows) and "ct(" not in " ".join(flows)
            assert len(flows) == len(stack.service.dataplane.desired_flows(record, record.ofport, deny_all))
        assert not any(probe_tcp(n, SERVER_V4, WEB) for n in ns)
        # ExplainPacket judges what is enforced (deny-all), not the stored
        # policy that allowed the web port, and the live switch agrees.
        web = Packet(Direction.EGRESS, IPPROTO_TCP, ip_address(GUESTS[0]), ip_address(SERVER_V4), 40000, WEB)
        explained = await stack.service.explain(ADMIN, records[0].attachment_id, web)
        assert not explained.verdict.allowed and explained.switch_agrees
    finally:
        await stack.detach_all_and_close()


async def test_drops_left_by_an_interrupted_cut_go_with_fresh_policy_and_with_reconverge(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink
) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=2, sfs=0, extra=DENY_ALL_WHEN_STALE)
    try:
        fresh, crashed = await _applied(stack)
        # As after a crash between the cut and its replacement: drops on top
        # of the policy flows, the state already STALE.
        await stack.service.dataplane.cut_many([fresh, crashed])
        stale = Event(EventKind.POLICY_STALE, True, "StreamDown", "test")
        stack.store.record_policy_results(
            [(r.attachment_id, PolicyState.STALE, 1, stale) for r in (fresh, crashed)]
        )
        assert not probe_tcp(stack.guest_ns(fresh), SERVER_V4, WEB)
        # Fresh policy: its flows exactly, the drops gone, traffic back.
        await stack.service.apply_policy("cut-0", scope_from_mapping(policy(2, GUESTS[0])))
        assert _state(stack, fresh) is PolicyState.APPLIED
        assert not _drops(_flows(stack, fresh))
        assert probe_tcp(stack.guest_ns(fresh), SERVER_V4, WEB)
        # Re-convergence: the other one's drops are its own flows, not
        # orphans, and give way to deny-all (stale with on_stale deny-all).
        await stack.service.reconverge("test")
        flows = _flows(stack, crashed)
        assert _drops(flows) == [] and "ct(" not in " ".join(flows)
        assert _state(stack, crashed) is PolicyState.STALE
        assert not probe_tcp(stack.guest_ns(crashed), SERVER_V4, WEB)
    finally:
        await stack.detach_all_and_close()
