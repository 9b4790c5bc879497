"""Rows of the store as typed values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.event_kinds import EventKind
from coordinator.policy.scope import Scope


class AttachmentState(enum.Enum):
    ATTACHING = "ATTACHING"
    BOUND = "BOUND"
    DETACHING = "DETACHING"


class PolicyState(enum.Enum):
    APPLIED = "APPLIED"
    PENDING = "PENDING"
    STALE = "STALE"
    DEGRADED = "DEGRADED"
    BASELINE = "BASELINE"


@dataclass(frozen=True)
class AttachmentRecord:
    attachment_id: str
    owner: str
    request_id: str
    sandbox_id: str
    host_instance_id: str
    lease_generation: int
    device: EswitchDevice
    mac: str
    slot: int
    network_class: str
    state: AttachmentState
    ofport: int
    policy_version: int
    policy_state: PolicyState
    policy_applied_at: float | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Fence:
    attachment_id: str
    owner: str
    sandbox_id: str
    generation: int
    detached_at: float | None


@dataclass(frozen=True)
class EventRecord:
    seq: int
    attachment_id: str
    sandbox_id: str
    owner: str
    type: EventKind
    status: bool
    reason: str
    message: str
    time: float
    actor: str = ""  # the caller identity that asked for the change, if one did


class StoredPolicy(NamedTuple):
    """A sandbox's last good policy as the store keeps it."""

    version: int
    scope: Scope


@dataclass(frozen=True)
class NewAttachment:
    """What Attach asks the store to create."""

    attachment_id: str
    owner: str
    request_id: str
    sandbox_id: str
    host_instance_id: str
    kind: DeviceKind | None  # None: any kind
    network_class: str


@dataclass(frozen=True)
class PoolStats:
    kind: DeviceKind
    total: int
    free: int


@dataclass(frozen=True)
class DevicePresence:
    """What one inventory sync changed: device ids that turned present
    (new, or back after a removal) and ones that turned absent."""

    appeared: frozenset[str]
    vanished: frozenset[str]
