"""What the attachment service needs from the switch and the eswitch.

The service's only door to OVS and the eswitch: ``coordinator.dataplane``
is the real one (built in the daemon and injected); the unit tests drive
the service through a recording fake. Failures cross the door as the
domain's ``Unavailable`` (a step of the world did not happen) or as
``FlowsRejected`` (the switch did not take a change of flows: the bundle was
refused as a whole, or what it holds afterwards differs), whatever the
transport below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from coordinator.eswitch.base import EswitchDevice, HealthFact, PreparedDevice
from coordinator.flows.model import Flow
from coordinator.policy.packet import Packet
from coordinator.policy.scope import Scope
from coordinator.store.records import AttachmentRecord

# A caller's work to run while the switch works (``enforce_and_revoke``).
Work = Callable[[], object] | None


class FlowsRejected(RuntimeError):
    """The switch did not take a change of flows (or meters)."""


class HeldFlows(Protocol):
    """The flows the switch held under our cookies when ``facts`` read them,
    opaque to the service: handed back to ``converge_flows`` it diffs against
    them instead of reading every flow again. Only while nothing has
    changed the flows of the cookies synced since (a whole-switch
    reconverge runs alone)."""

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class WorldFacts:
    """What the switch and the eswitch hold that carries our marks."""

    ports: Mapping[str, Mapping[str, str]]  # our OVS ports -> external_ids
    flow_counts: Mapping[int, int]  # cookie -> how many flows it holds (ours only)
    ofports: Mapping[str, int]  # interface -> OpenFlow port, where it has one
    prepared: tuple[PreparedDevice, ...]  # functions the eswitch has prepared
    held: HeldFlows | None = None  # the flows themselves, as read (None: not kept)


@dataclass(frozen=True)
class AttachmentFlows:
    """What one attachment's flows are compiled from at a reconverge."""

    record: AttachmentRecord
    ofport: int
    scope: Scope


@dataclass(frozen=True)
class SwitchTrace:
    """A packet traced through the live switch."""

    text: str  # the switch's own account
    allowed: bool  # whether it reaches its destination


class FlowChange(Protocol):
    """How many flows a change of one cookie added and removed, and how many
    the cookie holds after it."""

    @property
    def added(self) -> int: ...

    @property
    def removed(self) -> int: ...

    @property
    def total(self) -> int: ...


class DataplanePort(Protocol):
    # -- the whole switch --------------------------------------------------------

    def installed_flows(self) -> int:
        """Flows installed and verified (bridge and attachments)."""
        ...

    async def inventory(self) -> list[EswitchDevice]:
        """The devices the eswitch offers now."""
        ...

    async def ensure_bridge(self) -> None:
        """The bridge (fail-secure), the uplink port and the base flows."""
        ...

    async def facts(self) -> WorldFacts: ...

    async def switch_intact(self, ports_in_use: Mapping[str, int]) -> str | None:
        """None if the switch still holds our bridge and base flows and every
        port of ``ports_in_use`` (name -> the OpenFlow port our flows use)
        still has that number; else why not."""
        ...

    async def switch_health(self) -> list[HealthFact]:
        """OVSDB and OpenFlow as they answer now."""
        ...

    async def eswitch_health(self) -> list[HealthFact]: ...

    async def converge_flows(
        self, attachments: Sequence[AttachmentFlows], *, held: HeldFlows | None, proofs: Mapping[int, bytes]
    ) -> Mapping[int, FlowChange]:
        """Every attachment's cookie holding exactly its intent (one bundle
        of the differences from ``held``, what ``facts`` read (None: read
        now), read back;
        the changes by cookie); ``proofs``:
        the stored flow proofs by slot. When every one shows its attachment
        unchanged since its last verified sync, nothing is compiled or sent.
        New proofs go where ``keep_proofs_with`` said."""
        ...

    def keep_proofs_with(self, sink: Callable[[int, bytes], None]) -> None:
        """Where the proof of each verified sync goes (the slot and the
        encoded proof): to the store, written with its next commit."""
        ...

    async def set_zone_limits(self, slots: Sequence[int]) -> None: ...

    async def learn_meters(self) -> set[int]: ...

    async def remove_meter(self, meter: int) -> None: ...

    async def remove_port(self, name: str) -> None: ...

    async def remove_slot(self, slot: int) -> None: ...

    async def release(self, slot: EswitchDevice) -> None: ...

    # -- one attachment ---------------------------------------------------------

    async def prepare(self, record: AttachmentRecord) -> str:
        """The device prepared; returns its representor."""
        ...

    async def add_port(self, record: AttachmentRecord, representor: str, *, zone_limit: bool = True) -> int:
        """The representor on the bridge; returns its OpenFlow port."""
        ...

    def desired_flows(self, record: AttachmentRecord, ofport: int, scope: Scope) -> list[Flow]:
        """The compiled flows of the attachment under ``scope``."""
        ...

    async def enforce(self, record: AttachmentRecord, ofport: int, scope: Scope) -> FlowChange: ...

    async def enforce_and_revoke(
        self,
        record: AttachmentRecord,
        ofport: int,
        scope: Scope,
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> tuple[FlowChange, str]:
        """``enforce``, then the connections ``scope`` no longer allows cut;
        a note for the event message. ``meanwhile`` (once, once the cut is
        asked) is work of the caller's that runs while the switch reads the
        flows back and answers the cut, off the apply's critical path."""
        ...

    async def set_meter(self, slot: int, scope: Scope) -> None: ...

    async def drop_meter_if_unused(self, slot: int, scope: Scope) -> None: ...

    async def teardown(self, record: AttachmentRecord) -> None:
        """Flows, then port, then device gone; each step idempotent."""
        ...

    async def trace(self, record: AttachmentRecord, packet: Packet) -> SwitchTrace: ...

    # -- many attachments at once ---------------------------------------------------

    async def cut_many(self, records: Sequence[AttachmentRecord]) -> None: ...

    async def settle_cut(self, records: Sequence[AttachmentRecord], deny_all: Scope) -> None: ...

    async def cut_zones(self, records: Sequence[AttachmentRecord]) -> str: ...

    async def drop_meters_if_unused(self, records: Sequence[AttachmentRecord], scope: Scope) -> None: ...
