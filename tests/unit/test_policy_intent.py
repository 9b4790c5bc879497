"""Every policy-intent rule as a table of cases: which policy an attachment
enforces (its last good one, the gateway's latest, its class, deny-all) and
in which state, with no store and no switch."""

from __future__ import annotations

import dataclasses

import pytest

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.policy.scope import Scope
from coordinator.service import intent
from coordinator.service.intent import DENY_ALL_CLASS, Intent, Stored, Unreadable
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState, StoredPolicy
from tests.unit.service_harness import CLASSES, scope

APPLIED, BASELINE, DEGRADED, PENDING, STALE = (
    PolicyState.APPLIED, PolicyState.BASELINE, PolicyState.DEGRADED, PolicyState.PENDING, PolicyState.STALE,
)  # fmt: skip
DENY, CLASS = CLASSES[DENY_ALL_CLASS], CLASSES["dpu-ovs-isolated"]
V2, V3 = scope(2), scope(3)


def _stored(s: Scope) -> StoredPolicy:
    return StoredPolicy(s.version, s)


UNREADABLE = Unreadable(4, "stored policy is not JSON")
INVALID = Unreadable(4, "addresses[0]: not an address")
_DEVICE = EswitchDevice(DeviceKind.VF, 0, 0, 1, "pf0vf1")
_BASE = AttachmentRecord(
    attachment_id="a-1", owner="h", request_id="r", sandbox_id="sb", host_instance_id="hi",
    device=_DEVICE, slot=1, mac="02:00:00:00:00:01", network_class="dpu-ovs-isolated",
    state=AttachmentState.BOUND, lease_generation=1, ofport=1,
    policy_state=BASELINE, policy_version=0, policy_applied_at=None, created_at=0.0, updated_at=0.0,
)  # fmt: skip


def _record(state: PolicyState, version: int = 0) -> AttachmentRecord:
    return dataclasses.replace(_BASE, policy_state=state, policy_version=version)


@pytest.mark.parametrize(
    ("state", "on_stale", "expected"),
    [
        (PENDING, "keep-last-known", True),
        (PENDING, "deny-all", True),
        (STALE, "deny-all", True),
        (STALE, "keep-last-known", False),
        (APPLIED, "deny-all", False),
        (BASELINE, "deny-all", False),
        (DEGRADED, "deny-all", False),
    ],
)
def test_denied(state: PolicyState, on_stale: str, expected: bool) -> None:
    assert intent.denied(state, on_stale) is expected


@pytest.mark.parametrize(
    ("stored", "expected", "problem"),
    [
        (None, Intent(CLASS, BASELINE, 0), False),
        (_stored(V2), Intent(V2, APPLIED, 2), False),
        (UNREADABLE, Intent(DENY, DEGRADED, 4), True),
        (INVALID, Intent(DENY, DEGRADED, 4), True),
    ],
    ids=["no policy: the class", "stored: last good", "unreadable: deny-all", "invalid now: deny-all"],
)
def test_last_good(stored: Stored, expected: Intent, problem: bool) -> None:
    chosen = intent.last_good("dpu-ovs-isolated", stored, CLASSES)
    assert (chosen.scope, chosen.state, chosen.version) == (expected.scope, expected.state, expected.version)
    assert bool(chosen.problem) is problem


@pytest.mark.parametrize(
    ("record", "stored", "latest", "on_stale", "expected"),
    [
        (_record(PENDING, 2), _stored(V2), V3, "keep-last-known", (DENY, PENDING, 2)),
        (_record(STALE, 2), _stored(V2), V3, "deny-all", (DENY, STALE, 2)),
        (_record(STALE, 2), _stored(V2), None, "keep-last-known", (V2, STALE, 2)),
        (_record(DEGRADED, 2), _stored(V2), None, "deny-all", (V2, DEGRADED, 2)),
        (_record(APPLIED, 2), _stored(V2), None, "deny-all", (V2, APPLIED, 2)),
        (_record(APPLIED, 2), _stored(V2), V2, "deny-all", (V2, APPLIED, 2)),
        (_record(DEGRADED, 2), _stored(V2), V3, "deny-all", (V3, APPLIED, 3)),
        (_record(BASELINE), None, V3, "deny-all", (V3, APPLIED, 3)),
        (_record(BASELINE), None, None, "deny-all", (CLASS, BASELINE, 0)),
        (_record(APPLIED, 4), UNREADABLE, None, "deny-all", (DENY, DEGRADED, 4)),
        (_record(APPLIED, 4), UNREADABLE, V3, "deny-all", (V3, APPLIED, 3)),
    ],
    ids=[
        "withdrawn: deny-all, state kept",
        "stale with deny-all: deny-all",
        "stale keeping last known: last good, still stale",
        "degraded: last good, still degraded",
        "applied: last good",
        "gateway latest is the stored one: unchanged",
        "gateway latest newer: it, applied",
        "no stored policy but a latest: it",
        "nothing: the class",
        "unreadable stored: deny-all, degraded",
        "unreadable stored but a latest: the latest",
    ],
)
def test_reinstalled(
    record: AttachmentRecord,
    stored: Stored,
    latest: Scope | None,
    on_stale: str,
    expected: tuple[Scope, PolicyState, int],
) -> None:
    chosen = intent.reinstalled(record, stored, latest, CLASSES, on_stale)
    assert (chosen.scope, chosen.state, chosen.version) == expected


@pytest.mark.parametrize(
    ("chosen", "stored", "expected"),
    [
        (Intent(V3, APPLIED, 3), _stored(V2), True),
        (Intent(V3, APPLIED, 3), None, True),
        (Intent(V2, APPLIED, 2), _stored(V2), False),
        (Intent(V2, STALE, 2), None, False),
        (Intent(CLASS, BASELINE, 0), None, False),
        (Intent(DENY, PENDING, 2), None, False),
    ],
)
def test_becomes_last_good(chosen: Intent, stored: Stored, expected: bool) -> None:
    assert intent.becomes_last_good(chosen, stored) is expected


@pytest.mark.parametrize(
    ("record", "stored", "on_stale", "expected"),
    [
        (_record(PENDING, 2), _stored(V2), "keep-last-known", DENY),
        (_record(STALE, 2), _stored(V2), "deny-all", DENY),
        (_record(STALE, 2), _stored(V2), "keep-last-known", V2),
        (_record(APPLIED, 2), _stored(V2), "deny-all", V2),
        (_record(BASELINE), None, "deny-all", CLASS),
        (_record(APPLIED, 4), UNREADABLE, "deny-all", DENY),
    ],
)
def test_enforced(record: AttachmentRecord, stored: Stored, on_stale: str, expected: Scope) -> None:
    assert intent.enforced(record, stored, CLASSES, on_stale).scope == expected


@pytest.mark.parametrize(
    ("requested", "configured", "has_stream", "expected"),
    [
        ("BASELINE", "WAIT_INITIAL", True, "BASELINE"),
        ("WAIT_INITIAL", "BASELINE", False, "WAIT_INITIAL"),
        ("", "auto", True, "WAIT_INITIAL"),
        ("", "auto", False, "BASELINE"),
        ("", "BASELINE", True, "BASELINE"),
        ("", "WAIT_INITIAL", False, "WAIT_INITIAL"),
    ],
)
def test_initial_policy(requested: str, configured: str, has_stream: bool, expected: str) -> None:
    assert intent.initial_policy(requested, configured, has_stream=has_stream) == expected
