"""Which policy an attachment should enforce, and in which policy state.

Pure rules, no I/O: the callers read the store and the gateway's latest
policy and hand them in. The choices are the sandbox's stored last good
policy, the gateway's latest one, the attachment's network class, or
deny-all (a withdrawn policy, a stale one with ``on_stale = "deny-all"``,
or a stored policy that no longer reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from coordinator.policy.scope import Scope
from coordinator.store.records import AttachmentRecord, PolicyState, StoredPolicy

DENY_ALL_CLASS = "dpu-ovs-deny-all"


@dataclass(frozen=True)
class Unreadable:
    """A stored last good policy that no longer reads (tampered with, or
    the limits tightened since it was validated): its version and why."""

    version: int
    problem: str


# What the store holds for a sandbox: its last good policy, one that no
# longer reads, or nothing.
Stored = StoredPolicy | Unreadable | None


@dataclass(frozen=True)
class Intent:
    scope: Scope
    state: PolicyState
    version: int
    # Why the stored policy could not be used ("" = it could, or none was
    # consulted); the caller logs it.
    problem: str = ""


def denied(state: PolicyState, on_stale: str) -> bool:
    """Whether an attachment in ``state`` is held at deny-all: its policy
    withdrawn (PENDING), or stale with ``on_stale = "deny-all"``."""
    return state is PolicyState.PENDING or (state is PolicyState.STALE and on_stale == "deny-all")


def last_good(network_class: str, stored: Stored, classes: Mapping[str, Scope]) -> Intent:
    """The sandbox's stored last good policy (APPLIED) if there is one, else
    its network class (BASELINE). A stored policy that does not read any
    more (tampered with, or the limits tightened since it was validated)
    fails closed: deny-all, DEGRADED."""
    if stored is None:
        return Intent(classes[network_class], PolicyState.BASELINE, 0)
    if isinstance(stored, Unreadable):
        return Intent(classes[DENY_ALL_CLASS], PolicyState.DEGRADED, stored.version, problem=stored.problem)
    return Intent(stored.scope, PolicyState.APPLIED, stored.version)


def reinstalled(
    record: AttachmentRecord,
    stored: Stored,
    latest: Scope | None,
    classes: Mapping[str, Scope],
    on_stale: str,
) -> Intent:
    """What a BOUND attachment enforces when it is re-installed: deny-all
    while it is denied (see ``denied``), keeping its state and version; the
    gateway's ``latest`` policy when the stored one is missing, unusable or
    of another version; else the stored last good policy (or the class),
    an APPLIED one keeping the attachment's STALE / DEGRADED."""
    if denied(record.policy_state, on_stale):
        return Intent(classes[DENY_ALL_CLASS], record.policy_state, record.policy_version)
    base = last_good(record.network_class, stored, classes)
    if latest is not None and (base.state is not PolicyState.APPLIED or latest.version != base.version):
        return Intent(latest, PolicyState.APPLIED, latest.version, problem=base.problem)
    if base.state is PolicyState.APPLIED and record.policy_state in (PolicyState.STALE, PolicyState.DEGRADED):
        return replace(base, state=record.policy_state)
    return base


def becomes_last_good(chosen: Intent, stored: Stored) -> bool:
    """Whether an installed ``chosen`` policy is a new last good one: it is
    APPLIED (the gateway's latest, whose own apply had failed) and not the
    version stored."""
    return chosen.state is PolicyState.APPLIED and chosen.version != (
        stored.version if stored is not None else None
    )


def enforced(record: AttachmentRecord, stored: Stored, classes: Mapping[str, Scope], on_stale: str) -> Intent:
    """What the switch enforces for a BOUND attachment now: deny-all while it
    is denied, else its last good policy (or class)."""
    if denied(record.policy_state, on_stale):
        return Intent(classes[DENY_ALL_CLASS], record.policy_state, record.policy_version)
    return last_good(record.network_class, stored, classes)


def initial_policy(requested: str, configured: str, *, has_stream: bool) -> str:
    """BASELINE or WAIT_INITIAL for an Attach: the request's choice, else the
    configured one, where ``auto`` waits only when a gateway stream exists."""
    if requested:
        return requested
    if configured == "auto":
        return "WAIT_INITIAL" if has_stream else "BASELINE"
    return configured
