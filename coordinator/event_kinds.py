"""The closed vocabulary of events the coordinator records (pure).

Every event is one condition's transition: a kind, its status, a reason
(one CamelCase word) and a message for people. Callers of
WatchAttachmentEvents see the kind's value as ``Condition.type``; the
security event file maps some kinds to OCSF. A kind not listed here cannot
be recorded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(str, enum.Enum):
    """The kinds of event; each value is the condition type on the wire and
    in the store (never rename one)."""

    # An Attach is under way (True); the row exists, the device is claimed.
    ATTACH_IN_PROGRESS = "DpuAttachInProgress"
    # True: bound and enforced. False: removed (detached, rolled back,
    # failed, released); the reason says which.
    ATTACHMENT_BOUND = "DpuAttachmentBound"
    # False: the switch or eswitch no longer holds what the store says and
    # it could not be repaired; True: back in place.
    ATTACHMENT_DRIFT = "DpuAttachmentDrift"
    # Reconcile corrected something (an orphan removed, a port restored).
    DRIFT_CORRECTED = "DpuDriftCorrected"
    # A host did not reconcile within the grace time after a start.
    HOST_NOT_RECONCILED = "DpuHostNotReconciled"
    # A new host instance took the lease over (the generation went up).
    LEASE_TAKEN_OVER = "DpuLeaseTakenOver"
    # True: a policy version is enforced. False: the policy was withdrawn.
    POLICY_APPLIED = "DpuPolicyApplied"
    # True: a policy could not be applied or validated; the old one holds.
    POLICY_DEGRADED = "DpuPolicyDegraded"
    # True: the gateway's view is too old to be trusted.
    POLICY_STALE = "DpuPolicyStale"
    # Coordinator-wide: the required health checks pass (True) or not.
    COORDINATOR_HEALTHY = "DpuCoordinatorHealthy"
    # Coordinator-wide: the firmware check fails (True) or passes again.
    FIRMWARE_DEGRADED = "DpuFirmwareDegraded"
    # Coordinator-wide: the last certificate/CRL reload worked (True) or not.
    TRUST_RELOADED = "DpuTrustReloaded"

    def __str__(self) -> str:
        # The wire name, in logs and f-strings alike on every Python version
        # (3.12 formats a str-valued enum member by its str()).
        return self.value


@dataclass(frozen=True)
class Event:
    """One event before the store gives it a sequence number and a time;
    whom it concerns (attachment, sandbox, owner) the store takes from
    the attachment it is recorded for."""

    kind: EventKind
    status: bool
    reason: str
    message: str
    # The caller identity that asked for the change ("" = no caller: the
    # attachment's owner for its own requests, else the coordinator itself).
    actor: str = ""

    def __post_init__(self) -> None:
        # A plain string would pass for the str-valued enum at run time.
        if not isinstance(self.kind, EventKind):
            raise TypeError(f"event kind must be an EventKind, not {self.kind!r}")
