"""The resync contract as the stream handler holds the service to it, in
process on a private OVS, with time passed in: a completed sync withdraws
what it did not mention; an overdue one leaves the unconfirmed STALE; a
gateway that keeps reconnecting does not push the deadline back."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator._proto.bluefield.gateway.v1 import policy_pb2 as gw
from coordinator.attachment_identity import cookie_for_slot
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.gateway.policy_stream import PolicyStreamHandler
from coordinator.policy.validate import scope_from_mapping
from coordinator.store.records import AttachmentRecord, PolicyState
from tests.integration.stack import Stack, Uplink, build_stack

pytestmark = pytest.mark.ovs

BRIDGE = "br-resync"
TIMEOUT_MS = 1000
GUEST = "198.51.100.40"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def initial(seq: int, sandbox: str, version: int) -> gw.PolicyEvent:
    network = gw.NetworkScope(version=version, addresses=[GUEST])
    return gw.PolicyEvent(
        seq=seq, type=gw.EVENT_TYPE_INITIAL, sandbox_id=sandbox, gateway_epoch="e2",
        projection=gw.PolicyProjection(sandbox_id=sandbox, network=network),
    )  # fmt: skip


def sync_complete(seq: int) -> gw.PolicyEvent:
    return gw.PolicyEvent(seq=seq, type=gw.EVENT_TYPE_SYNC_COMPLETE, gateway_epoch="e2")


async def _two_applied(stack: Stack) -> tuple[AttachmentRecord, AttachmentRecord]:
    scope = scope_from_mapping({"version": 1, "addresses": [GUEST]})
    records = []
    for sandbox in ("rs-a", "rs-b"):
        await stack.attach(sandbox)
        (record,) = await stack.service.apply_policy(sandbox, scope)
        assert record.policy_state is PolicyState.APPLIED
        records.append(record)
    return records[0], records[1]


def _state(stack: Stack, record: AttachmentRecord) -> PolicyState:
    current = stack.store.get(record.attachment_id)
    assert current is not None
    return current.policy_state


def _reasons(stack: Stack, record: AttachmentRecord) -> list[str]:
    return [e.reason for e in stack.store.events_since(0) if e.attachment_id == record.attachment_id]


async def test_a_completed_sync_withdraws_what_it_did_not_mention(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink
) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=2, sfs=0)
    clock = Clock()
    handler = PolicyStreamHandler(stack.service, stack.config.policy, clock)
    try:
        a, b = await _two_applied(stack)
        await handler.on_resync(frozenset({"rs-a", "rs-b"}))
        await handler.on_event(initial(1, "rs-a", 2))
        assert handler.resync_pending and handler.unconfirmed == {"rs-b"}
        await handler.on_event(sync_complete(2))
        assert not handler.resync_pending
        assert (_state(stack, a), _state(stack, b)) == (PolicyState.APPLIED, PolicyState.PENDING)
        assert _reasons(stack, b)[-1] == "NotInResync"
        assert stack.service.book.latest("rs-b") is None and stack.store.policy("rs-b") is None
        # b holds exactly the deny-all flows: ARP with its own MAC, nothing else.
        flows = stack.ovs.ofctl(
            "dump-flows", "--no-stats", stack.ovs.mgmt(BRIDGE), f"cookie={cookie_for_slot(b.slot):#x}/-1"
        )
        assert "ct(" not in flows and "arp" in flows
        clock.now += 10 * TIMEOUT_MS / 1000
        await handler.check_resync()  # nothing pending: nothing turns stale
        assert _state(stack, a) is PolicyState.APPLIED
    finally:
        await stack.detach_all_and_close()


async def test_an_overdue_resync_leaves_the_unconfirmed_stale_and_flapping_does_not_delay_it(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink
) -> None:
    stack = await build_stack(
        tmp_path, ovs, BRIDGE, "uplink", vfs=2, sfs=0, extra={"policy": {"resync_timeout_ms": TIMEOUT_MS}}
    )
    clock = Clock()
    handler = PolicyStreamHandler(stack.service, stack.config.policy, clock)
    try:
        a, b = await _two_applied(stack)
        await handler.on_resync(frozenset({"rs-a", "rs-b"}))
        clock.now += 0.8
        await handler.on_resync(frozenset({"rs-a", "rs-b"}))  # the stream broke and came back
        await handler.on_event(initial(1, "rs-a", 2))
        clock.now += 0.3  # 1.1 s after the first stream, 0.3 s after the second
        await handler.check_resync()
        assert (_state(stack, a), _state(stack, b)) == (PolicyState.APPLIED, PolicyState.STALE)
        assert _reasons(stack, b)[-1] == "ResyncIncomplete"
        # keep-last-known: b still enforces its last policy (conntrack, not deny-all).
        flows = stack.ovs.ofctl(
            "dump-flows", "--no-stats", stack.ovs.mgmt(BRIDGE), f"cookie={cookie_for_slot(b.slot):#x}/-1"
        )
        assert "ct(" in flows
        # A late answer confirms it again; a new stream after an overdue resync starts a fresh count.
        await handler.on_event(initial(2, "rs-b", 2))
        assert _state(stack, b) is PolicyState.APPLIED
        await handler.on_resync(frozenset({"rs-a", "rs-b"}))
        await handler.check_resync()
        assert (_state(stack, a), _state(stack, b)) == (PolicyState.APPLIED, PolicyState.APPLIED)
    finally:
        await stack.detach_all_and_close()
