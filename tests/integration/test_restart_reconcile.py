"""A restart's reconcile of many attachments, in process on a private OVS.

The reconcile reads the switch once and the store once for all of them
(alike stored policies decoded once), so these tests make sure each
attachment is still checked against its own policy: drift in a few of
many (a flow gone, a flow whose actions changed - same count -, a stray
flow) is found and repaired for exactly those, the rest stay untouched,
and a sandbox whose stored policy no longer reads is denied without
taking the others with it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from coordinator.attachment_identity import BRIDGE_COOKIE, cookie_for_slot, cookie_in_flow
from coordinator.daemon import Adapters, build
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.flows.classes import load_network_classes
from coordinator.ovs import ofsweep
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.policy.scope import Scope
from coordinator.policy.validate import scope_from_mapping
from coordinator.service import DENY_ALL_CLASS
from coordinator.store.records import AttachmentRecord, PolicyState
from tests.integration.stack import Stack, Uplink, build_stack

pytestmark = pytest.mark.ovs

BRIDGE = "br-recon"
ATTACHMENTS = 6


def _scope(i: int) -> Scope:
    """Sandbox ``i``'s policy: its own address, the same rules as the others."""
    rule = {"action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP", "cidrs": ["203.0.113.0/24"]}
    return scope_from_mapping({
        "version": 1, "addresses": [f"198.51.100.{20 + i}"],
        "egress": [{**rule, "name": "web", "ports": [{"start": 443}]},
                   {**rule, "name": "ssh", "ports": [{"start": 22}]}],
    })  # fmt: skip


async def _stop(stack: Stack | Adapters) -> None:
    """The daemon stops: its connections close, the flows stay in OVS."""
    await stack.switch.close()
    await stack.ovsdb.close()
    await (stack.async_store if isinstance(stack, Stack) else stack.store).close()


async def _clean_up(adapters: Adapters | None, stack: Stack) -> None:
    """Every attachment torn down and the daemon closed, then the eswitch's functions."""
    if adapters is not None:
        for record in await adapters.service.list_all():
            await adapters.service.dataplane.teardown(record)
        await adapters.close()
    stack.backend.destroy()


async def _holds_exactly(adapters: Adapters, record: AttachmentRecord, scope: Scope) -> bool:
    """Whether the switch holds exactly ``scope``'s flows under the attachment's cookie."""
    desired = adapters.dataplane.desired_flows(record, record.ofport, scope)
    installed = await adapters.switch.installed(cookie_for_slot(record.slot))
    return {f.key for f in installed} == set(adapters.switch.encode(desired))


async def _attached_with(stack: Stack, prefix: str, scopes: list[Scope]) -> list[AttachmentRecord]:
    """Attachments of sandboxes ``PREFIX-i``, each with ``scopes[i]`` applied, as stored."""
    records = [await stack.attach(f"{prefix}-{i}") for i in range(len(scopes))]
    for i, scope in enumerate(scopes):
        await stack.service.apply_policy(f"{prefix}-{i}", scope)
    return [r for r in (stack.store.get(r.attachment_id) for r in records) if r is not None]


def _rule_flow(stack: Stack, record: AttachmentRecord, port: int) -> str:
    cookie = cookie_for_slot(record.slot)
    dump = stack.ovs.ofctl("dump-flows", "--no-stats", stack.ovs.mgmt(BRIDGE), f"cookie={cookie:#x}/-1")
    line = next(line.strip() for line in dump.splitlines() if f"tp_dst={port}" in line)
    return line.split(" actions=")[0].removeprefix(f"cookie={cookie:#x}, ")


async def test_drift_in_a_few_of_many_attachments_is_found_and_repaired(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink
) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=ATTACHMENTS, sfs=0)
    adapters: Adapters | None = None
    try:
        records = [await stack.attach(f"many-{i}") for i in range(ATTACHMENTS)]
        for i in range(ATTACHMENTS):
            await stack.service.apply_policy(f"many-{i}", _scope(i))
        records = [r for r in (stack.store.get(r.attachment_id) for r in records) if r is not None]
        await _stop(stack)
        mgmt = ovs.mgmt(BRIDGE)
        # While it is down: attachment 1 gains a stray flow, 3 loses one, and
        # 4 keeps as many flows as it should but one of them drops.
        stray = f"cookie={cookie_for_slot(records[1].slot):#x},table=0,priority=2,ip,nw_src=203.0.113.99"
        ovs.ofctl("add-flow", mgmt, f"{stray},actions=drop")
        ovs.ofctl("del-flows", "--strict", mgmt,
                  _rule_flow(stack, records[3], 443) + f",cookie={cookie_for_slot(records[3].slot):#x}/-1")  # fmt: skip
        ovs.ofctl("mod-flows", "--strict", mgmt, _rule_flow(stack, records[4], 22) + ",actions=drop")
        # And the policy stored for sandbox 5 no longer reads.
        with contextlib.closing(sqlite3.connect(stack.config.store.path)) as db, db:
            db.execute(
                "UPDATE sandbox_policies SET scope = ? WHERE sandbox_id = 'many-5'", (b"\x1a\x05garbage",)
            )

        adapters = await build(stack.config, stack.backend)  # the restart
        events = [e for e in await adapters.store.events_since(0) if e.reason == "FlowsRepaired"]
        repaired = {e.attachment_id for e in events}
        tampered = {records[i].attachment_id for i in (1, 3, 4)}
        # 5's flows turned to deny-all: a repair too, and only that.
        assert repaired == tampered | {records[5].attachment_id}
        for i, record in enumerate(records[:5]):
            assert await _holds_exactly(adapters, record, _scope(i)), f"attachment {i}"
            again = await adapters.store.get(record.attachment_id)
            assert again is not None and again.policy_state is PolicyState.APPLIED
        deny_all = load_network_classes()[DENY_ALL_CLASS]
        assert await _holds_exactly(adapters, records[5], deny_all)
        denied = await adapters.store.get(records[5].attachment_id)
        assert denied is not None and denied.policy_state is PolicyState.DEGRADED

        # Converged: the next restart finds nothing to correct.
        await _stop(adapters)
        adapters = await build(stack.config, stack.backend)
        report = adapters.service.last_converge
        assert report is not None and (report.corrections, report.flows_added, report.flows_removed) == (
            0,
            0,
            0,
        )
    finally:
        await _clean_up(adapters, stack)


def _claims(ovs: OvsInstance, address: str) -> list[int]:
    """The cookies of the flows dropping ARP that claims ``address`` (one
    place: whichever attachment's flow the switch holds)."""
    dump = ovs.ofctl("dump-flows", "--no-stats", ovs.mgmt(BRIDGE), f"arp,arp_spa={address}")
    return [c for line in dump.splitlines() if "actions=drop" in line and (c := cookie_in_flow(line))]


async def test_a_restart_reconciles_a_range_of_slots_at_a_time_drift_in_a_late_range_too(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconcile compiles, compares and syncs a few slots at a time
    (here two, so six attachments span four ranges): drift in the first and
    the last range is repaired for exactly those attachments, and a place
    claimed from two ranges (two sandboxes with one address: the drop of
    ARP claiming it) goes to the later cookie and stays there, the restarts
    after finding nothing to correct, also once the switch lost every flow
    of theirs and got them back."""
    monkeypatch.setattr(ofsweep, "RANGE_SLOTS", 2)
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=ATTACHMENTS, sfs=0)
    adapters: Adapters | None = None
    scopes = [_scope(i) for i in range(ATTACHMENTS)]
    scopes[4] = _scope(1)  # the address of sandbox 1, in another range
    shared = "198.51.100.21"
    try:
        records = [await stack.attach(f"ranges-{i}") for i in range(ATTACHMENTS)]
        for i in range(ATTACHMENTS):
            await stack.service.apply_policy(f"ranges-{i}", scopes[i])
        records = [r for r in (stack.store.get(r.attachment_id) for r in records) if r is not None]
        by_slot = sorted(range(ATTACHMENTS), key=lambda i: records[i].slot)
        assert [records[i].slot // 2 for i in by_slot] == [0, 1, 1, 2, 2, 3]
        first, last = by_slot[0], by_slot[-1]
        earlier, later = sorted((1, 4), key=lambda i: records[i].slot)
        await _stop(stack)
        mgmt = ovs.mgmt(BRIDGE)
        # While it is down: the shared place goes to the earlier cookie, the
        # first attachment gains a stray flow and the last loses one.
        [holder] = _claims(ovs, shared)
        dump = ovs.ofctl("dump-flows", "--no-stats", mgmt, f"arp,arp_spa={shared}")
        [line] = [line.strip() for line in dump.splitlines() if "actions=drop" in line]
        place = line.split(" actions=")[0].removeprefix(f"cookie={holder:#x}, ")
        ovs.ofctl(
            "add-flow", mgmt, f"cookie={cookie_for_slot(records[earlier].slot):#x},{place},actions=drop"
        )
        assert _claims(ovs, shared) == [cookie_for_slot(records[earlier].slot)]
        stray = f"cookie={cookie_for_slot(records[first].slot):#x},table=0,priority=2,ip,nw_src=203.0.113.99"
        ovs.ofctl("add-flow", mgmt, f"{stray},actions=drop")
        cookie = cookie_for_slot(records[last].slot)
        ovs.ofctl(
            "del-flows", "--strict", mgmt, _rule_flow(stack, records[last], 443) + f",cookie={cookie:#x}/-1"
        )

        adapters = await build(stack.config, stack.backend)  # the restart
        events = await adapters.store.events_since(0)
        repaired = {e.attachment_id for e in events if e.reason == "FlowsRepaired"}
        # The shared place moved to the later cookie: a repair of both.
        assert repaired == {records[i].attachment_id for i in (first, last, earlier, later)}
        assert _claims(ovs, shared) == [cookie_for_slot(records[later].slot)]
        for i in range(ATTACHMENTS):
            if i != earlier:  # the one whose flow another holds
                assert await _holds_exactly(adapters, records[i], scopes[i]), f"attachment {i}"

        for lost in (False, True, False):
            await _stop(adapters)
            if lost:  # every attachment's flows gone (as after an ovs-vswitchd restart)
                for record in records:
                    ovs.ofctl("del-flows", mgmt, f"cookie={cookie_for_slot(record.slot):#x}/-1")
            adapters = await build(stack.config, stack.backend)
            report = adapters.service.last_converge
            assert report is not None and report.flows_removed == 0
            assert report.corrections == (ATTACHMENTS if lost else 0)
            assert _claims(ovs, shared) == [cookie_for_slot(records[later].slot)]
    finally:
        await _clean_up(adapters, stack)


async def test_the_flows_read_while_ovsdb_connects_are_read_again_if_the_bridge_changed(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start reads every flow of ours while OVSDB's replica fills; if
    programming the bridge then changed its own flows (here ovs-vswitchd
    lost them while the daemon was down), what was read is not used."""
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=2, sfs=0)
    adapters: Adapters | None = None
    dumps: list[int] = []
    real = ChannelSwitch.dump_digests

    async def counted(self: ChannelSwitch, cookie: int, mask: int):  # type: ignore[no-untyped-def]
        dumps.append(cookie)
        return await real(self, cookie, mask)

    monkeypatch.setattr(ChannelSwitch, "dump_digests", counted)
    try:
        records = await _attached_with(stack, "early", [_scope(0), _scope(1)])
        await _stop(stack)
        dumps.clear()
        adapters = await build(stack.config, stack.backend)
        assert len(dumps) == 1  # the early one, used
        await _stop(adapters)
        adapters = None

        ovs.ofctl("del-flows", ovs.mgmt(BRIDGE), f"cookie={BRIDGE_COOKIE:#x}/-1")
        dumps.clear()
        adapters = await build(stack.config, stack.backend)
        assert len(dumps) == 2  # read again after the bridge's flows were put back
        report = adapters.service.last_converge
        assert report is not None and report.corrections == 0
        for i, record in enumerate(records):
            assert await _holds_exactly(adapters, record, _scope(i)), f"attachment {i}"
    finally:
        await _clean_up(adapters, stack)
