"""The pure decisions of restart reconcile, host Reconcile, admission and
fault injection."""

from __future__ import annotations

from pathlib import Path

import pytest

import coordinator
from coordinator import faults
from coordinator.admission import TokenBucket
from coordinator.attachment_identity import BRIDGE_COOKIE, cookie_for_slot, slot_of_cookie
from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.host_reconcile import Known, plan_host_reconcile
from coordinator.ovs.ovsdb import ATTACHMENT_KEY, OWNER_KEY, OWNER_VALUE, ROLE_KEY
from coordinator.ovs.port_keys import parked_ids
from coordinator.reconcile import plan
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState


def record(n: int, state: AttachmentState = AttachmentState.BOUND, *, instance: str = "hi-1",
           generation: int = 1) -> AttachmentRecord:  # fmt: skip
    device = EswitchDevice(DeviceKind.VF, 0, 0, n, f"pf0vf{n}")
    return AttachmentRecord(
        attachment_id=f"a{n}", owner="host", request_id=f"r{n}", sandbox_id=f"s{n}", host_instance_id=instance,
        lease_generation=generation, device=device, mac=f"02:00:00:00:00:{n:02x}", slot=n, network_class="c",
        state=state, ofport=n + 10, policy_version=0, policy_state=PolicyState.BASELINE, policy_applied_at=None,
        created_at=0.0, updated_at=0.0,
    )  # fmt: skip


def port(attachment_id: str, role: str = "attachment") -> dict[str, str]:
    return {OWNER_KEY: OWNER_VALUE, ROLE_KEY: role, ATTACHMENT_KEY: attachment_id}


def test_nothing_to_correct_when_the_world_matches() -> None:
    records = [record(1), record(2)]
    ports = {"uplink": port("", "uplink"), "pf0vf1": port("a1"), "pf0vf2": port("a2")}
    cookies = [BRIDGE_COOKIE, cookie_for_slot(1), cookie_for_slot(2)]
    prepared = [r.device for r in records]
    work = plan(records, ports, cookies, prepared, "uplink")
    assert work.corrections == 0 and work.keep == tuple(records)


def test_every_kind_of_correction_is_planned() -> None:
    bound, attaching, detaching = (
        record(1),
        record(2, AttachmentState.ATTACHING),
        record(3, AttachmentState.DETACHING),
    )
    ports = {
        "uplink": port("", "uplink"),
        "old-uplink": port("", "uplink"),  # the config moved the uplink
        "pf0vf2": port("a2"),  # rolled back through its record, not as an orphan
        "pf0vf9": port("gone"),
    }
    cookies = [BRIDGE_COOKIE, cookie_for_slot(1), cookie_for_slot(3), cookie_for_slot(77), 0x1234]
    stray = EswitchDevice(DeviceKind.SF, 0, 0, 1000, "en0pf0sf1000")
    work = plan([bound, attaching, detaching], ports, cookies, [bound.device, stray], "uplink")
    assert work.roll_back == (attaching,) and work.finish_detach == (detaching,)
    assert [(p.name, p.attachment_id) for p in work.orphan_ports] == [("old-uplink", ""), ("pf0vf9", "gone")]
    assert work.orphan_slots == (77,)  # not the bridge's, not someone else's cookie
    assert work.orphan_devices == (stray,)
    assert work.missing_ports == ("a1",)


def test_a_parked_port_is_no_orphan_while_it_is_a_port_of_the_bridge() -> None:
    ports = {"uplink": port("", "uplink"), "pf0vf4": parked_ids(9), "pf0vf5": parked_ids(10)}
    ofports = {"uplink": 1, "pf0vf4": 7}  # pf0vf5's representor is gone: no OpenFlow port
    work = plan([], ports, [BRIDGE_COOKIE], [], "uplink", ofports)
    assert [p.name for p in work.orphan_ports] == ["pf0vf5"]
    # Without the interfaces' numbers, every parked port stays.
    assert plan([], ports, [BRIDGE_COOKIE], [], "uplink").orphan_ports == ()


def test_slot_of_cookie_only_for_our_attachment_cookies() -> None:
    assert slot_of_cookie(cookie_for_slot(5)) == 5
    assert slot_of_cookie(BRIDGE_COOKIE) is None
    assert slot_of_cookie(0x1) is None
    assert slot_of_cookie(0xBFC1 << 48 | 5) is None


def test_host_reconcile_sorts_each_entry() -> None:
    held = [record(1), record(2, instance="hi-old"), record(3, generation=4), record(4),
            record(5, AttachmentState.ATTACHING)]  # fmt: skip
    known = [
        Known("a1", 1, "s1"),  # matched, same instance
        Known("a2", 1, ""),  # matched, another instance: take over
        Known("a3", 3, "s3"),  # stale generation
        Known("a9", 1, "s9"),  # the coordinator does not have it
        Known("a4", 1, "other"),  # wrong sandbox: not the same attachment
        Known("a5", 1, "s5"),  # still attaching: not held yet
    ]
    decided = plan_host_reconcile("hi-1", known, held)
    assert [r.attachment_id for r in decided.matched] == ["a1", "a2"]
    assert [r.attachment_id for r in decided.take_over] == ["a2"]
    assert [k.attachment_id for k in decided.stale_generation] == ["a3"]
    assert [k.attachment_id for k in decided.host_only] == ["a9", "a4", "a5"]
    assert decided.coordinator_only == ()


def test_host_reconcile_orphans_are_the_unknown_bound_ones() -> None:
    decided = plan_host_reconcile("hi-1", [Known("a1", 1, "")], [record(1), record(2), record(3)])
    assert [r.attachment_id for r in decided.coordinator_only] == ["a2", "a3"]


def test_token_bucket_admits_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert bucket.try_take() and not bucket.try_take()
    bucket.give_back()
    assert bucket.try_take()


def test_faults_parse_and_fire() -> None:
    assert faults.parse("attach.claimed=kill, detach.marked=raise") == {
        "attach.claimed": "kill", "detach.marked": "raise"}  # fmt: skip
    with pytest.raises(faults.FaultConfigError, match="unknown fault point"):
        faults.parse("attach.typo=kill")
    with pytest.raises(faults.FaultConfigError, match="unknown action"):
        faults.parse("attach.claimed=explode")
    faults.enable("policy.flows_applied", "raise")
    try:
        faults.reached("attach.claimed")  # not enabled: nothing
        with pytest.raises(faults.FaultInjected, match=r"policy\.flows_applied"):
            faults.reached("policy.flows_applied")
    finally:
        faults.disable_all()


def test_every_fault_point_is_placed_in_the_code() -> None:
    source = "".join(p.read_text() for p in Path(coordinator.__file__).parent.rglob("*.py"))
    for point in faults.POINTS:
        assert f'faults.reached("{point}")' in source, point
