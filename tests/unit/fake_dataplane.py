"""A recording stand-in for the switch and the eswitch (``DataplanePort``).

It keeps what a real switch would hold — a flow table per cookie (the
real compiler's flows, rendered as text to read in assertions), ports with
their ``external_ids`` and OpenFlow numbers, meters, zone limits, prepared
devices — records every call, and can be told to fail at any of its steps. The service's unit
tests drive attach, detach, rollback, convergence and policy changes
through it in milliseconds; what the real switch does with the flows is
the integration tests' job.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from coordinator import faults
from coordinator.dataplane_converge import Intended
from coordinator.dataplane_port import (
    AttachmentFlows,
    FlowsRejected,
    HeldFlows,
    SwitchTrace,
    Work,
    WorldFacts,
)
from coordinator.errors import Unavailable
from coordinator.eswitch.base import DeviceKind, EswitchDevice, HealthFact, PreparedDevice
from coordinator.flows.compiler import (
    BRIDGE_COOKIE,
    BridgeFacts,
    PortFacts,
    attachment_flows,
    bridge_flows,
    cookie_for_slot,
    cut_flows,
)
from coordinator.flows.model import Flow
from coordinator.flows.pipeline import Pipeline
from coordinator.flows.render import render_flows
from coordinator.ovs.port_keys import (
    ATTACHMENT_KEY,
    OWNER_KEY,
    OWNER_VALUE,
    ROLE_KEY,
    SANDBOX_KEY,
    parked_ids,
)
from coordinator.policy.packet import Packet
from coordinator.policy.scope import Scope
from coordinator.store.records import AttachmentRecord

# Steps that change flows or meters fail as the switch refusing them; the
# others as a step of the world that did not happen.
FLOW_STEPS = frozenset({"enforce", "enforce_and_revoke", "set_meter", "sync_all", "cut_many", "settle_cut"})


@dataclass(frozen=True)
class Change:
    added: int
    removed: int
    total: int


def devices(vfs: int = 4, sfs: int = 0) -> list[EswitchDevice]:
    return [EswitchDevice(DeviceKind.VF, 0, 0, i, f"pf0vf{i}") for i in range(vfs)] + [
        EswitchDevice(DeviceKind.SF, 0, 0, i, f"pf0sf{i}") for i in range(sfs)
    ]


@dataclass
class FakeDataplane:
    pipeline: Pipeline
    offered: list[EswitchDevice] = field(default_factory=devices)
    tables: dict[int, list[str]] = field(default_factory=dict)  # cookie -> flows
    ports: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> external_ids
    ofports: dict[str, int] = field(default_factory=dict)
    prepared: dict[str, PreparedDevice] = field(default_factory=dict)  # device id -> device
    meters: set[int] = field(default_factory=set)
    zone_limits: set[int] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (step, what)
    failing: dict[str, str] = field(default_factory=dict)  # step -> message
    healthy: bool = True
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- steering the fake ------------------------------------------------------------

    def fail(self, step: str, message: str = "") -> None:
        """Every later call of ``step`` fails (until ``heal``)."""
        self.failing[step] = message or f"{step} failed (fake)"

    def heal(self) -> None:
        self.failing.clear()

    def restart(self) -> None:
        """As ovs-vswitchd restarting: flows, meters and zone limits gone;
        ports and their numbers kept (OVSDB keeps them)."""
        self.tables.clear()
        self.meters.clear()
        self.zone_limits.clear()

    def steps(self) -> list[str]:
        return [step for step, _ in self.calls]

    def flows_of(self, record: AttachmentRecord) -> list[str]:
        return self.tables.get(cookie_for_slot(record.slot), [])

    def _step(self, step: str, what: str = "") -> None:
        self.calls.append((step, what))
        message = self.failing.get(step)
        if message is not None:
            raise (FlowsRejected if step in FLOW_STEPS else Unavailable)(message)

    def _port(self, record: AttachmentRecord, ofport: int) -> PortFacts:
        return PortFacts(ofport=ofport, mac=record.mac, slot=record.slot)

    def _replace(self, cookie: int, flows: Sequence[str]) -> Change | None:
        before, after = set(self.tables.get(cookie, [])), set(flows)
        self.tables[cookie] = list(flows)
        if before == after:
            return None
        return Change(added=len(after - before), removed=len(before - after), total=len(after))

    # -- the whole switch ---------------------------------------------------------------

    def installed_flows(self) -> int:
        return sum(len(flows) for flows in self.tables.values())

    async def inventory(self) -> list[EswitchDevice]:
        self._step("inventory")
        return list(self.offered)

    async def ensure_bridge(self) -> None:
        self._step("ensure_bridge")
        self._replace(BRIDGE_COOKIE, self.bridge_flows())

    def bridge_flows(self) -> list[str]:
        return render_flows(bridge_flows(self.pipeline, BridgeFacts(uplink_ofport=None)), self.pipeline)

    async def facts(self) -> WorldFacts:
        self._step("facts")
        ports = {name: dict(ids) for name, ids in self.ports.items()}
        counts = {cookie: len(f) for cookie, f in self.tables.items() if f}
        return WorldFacts(ports, counts, dict(self.ofports), tuple(self.prepared.values()))

    async def switch_intact(self, ports_in_use: Mapping[str, int]) -> str | None:
        self._step("switch_intact")
        if len(self.tables.get(BRIDGE_COOKIE, [])) != len(self.bridge_flows()):
            return "bridge base flows missing"
        for name, number in sorted(ports_in_use.items()):
            if self.ofports.get(name) != number:
                return f"port {name} is now OpenFlow port {self.ofports.get(name) or 'none'}, its flows use {number}"
        return None

    async def switch_health(self) -> list[HealthFact]:
        self._step("switch_health")
        return [HealthFact("ovs_reachable", self.healthy, "fake", required=True)]

    async def eswitch_health(self) -> list[HealthFact]:
        return []

    async def sync_all(
        self, desired: Mapping[int, Sequence[Flow]], *, held: HeldFlows | None = None
    ) -> Mapping[int, Change]:
        self._step("sync_all", f"{len(desired)} cookies")
        changes = {
            cookie: self._replace(cookie, render_flows(flows, self.pipeline))
            for cookie, flows in desired.items()
        }
        return {cookie: change for cookie, change in changes.items() if change is not None}

    async def converge_flows(
        self, attachments: Sequence[AttachmentFlows], *, held: HeldFlows | None, proofs: Mapping[int, bytes]
    ) -> Mapping[int, Change]:
        # No proofs here: every attachment's flows compiled when the sync asks.
        desired = Intended(
            lambda a: self.desired_flows(a.record, a.ofport, a.scope),
            {cookie_for_slot(a.record.slot): a for a in attachments},
        )
        return await self.sync_all(desired, held=held)

    def keep_proofs_with(self, sink: Callable[[int, bytes], None]) -> None:
        self.proof_sink = sink

    async def set_zone_limits(self, slots: Sequence[int]) -> None:
        self._step("set_zone_limits", ",".join(map(str, slots)))
        self.zone_limits.update(slots)

    async def learn_meters(self) -> set[int]:
        self._step("learn_meters")
        return set(self.meters)

    async def remove_meter(self, meter: int) -> None:
        self._step("remove_meter", str(meter))
        self.meters.discard(meter)

    async def remove_port(self, name: str) -> None:
        self._step("remove_port", name)
        self.ports.pop(name, None)
        self.ofports.pop(name, None)

    async def remove_slot(self, slot: int) -> None:
        self._step("remove_slot", str(slot))
        self.tables.pop(cookie_for_slot(slot), None)
        self.meters.discard(slot)
        self.zone_limits.discard(slot)

    async def release(self, slot: EswitchDevice) -> None:
        self._step("release", slot.device_id)
        self.prepared.pop(slot.device_id, None)

    # -- one attachment -----------------------------------------------------------------

    async def prepare(self, record: AttachmentRecord) -> str:
        self._step("prepare", record.device.device_id)
        self.prepared[record.device.device_id] = PreparedDevice(record.device, record.mac)
        return record.device.representor

    async def add_port(self, record: AttachmentRecord, representor: str, *, zone_limit: bool = True) -> int:
        self._step("add_port", representor)
        self.ports[representor] = {
            OWNER_KEY: OWNER_VALUE,
            ROLE_KEY: "attachment",
            ATTACHMENT_KEY: record.attachment_id,
            SANDBOX_KEY: record.sandbox_id,
        }
        if representor not in self.ofports:
            self.ofports[representor] = next(self._numbers)
        if zone_limit:
            self.zone_limits.add(record.slot)
        return self.ofports[representor]

    def desired_flows(self, record: AttachmentRecord, ofport: int, scope: Scope) -> list[Flow]:
        return attachment_flows(self.pipeline, self._port(record, ofport), scope)

    def rendered(self, record: AttachmentRecord, ofport: int, scope: Scope) -> list[str]:
        """``desired_flows`` as the tables hold them."""
        return render_flows(self.desired_flows(record, ofport, scope), self.pipeline)

    async def enforce(self, record: AttachmentRecord, ofport: int, scope: Scope) -> Change:
        self._step("enforce", record.attachment_id)
        return self._enforce(record, ofport, scope)

    async def enforce_and_revoke(
        self, record: AttachmentRecord, ofport: int, scope: Scope, *, meanwhile: Work = None
    ) -> tuple[Change, str]:
        self._step("enforce_and_revoke", record.attachment_id)
        change = self._enforce(record, ofport, scope)
        if meanwhile is not None:
            meanwhile()
        return change, ""

    def _enforce(self, record: AttachmentRecord, ofport: int, scope: Scope) -> Change:
        if scope.egress_rate_limit is not None:
            self.meters.add(record.slot)
        flows = self.rendered(record, ofport, scope)
        change = self._replace(cookie_for_slot(record.slot), flows)
        if scope.egress_rate_limit is None:
            self.meters.discard(record.slot)
        return change or Change(0, 0, len(flows))

    async def set_meter(self, slot: int, scope: Scope) -> None:
        self._step("set_meter", str(slot))
        if scope.egress_rate_limit is not None:
            self.meters.add(slot)

    async def drop_meter_if_unused(self, slot: int, scope: Scope) -> None:
        if scope.egress_rate_limit is None:
            self.meters.discard(slot)

    async def teardown(self, record: AttachmentRecord) -> None:
        """As the real one: flows, then port (a VF's parked, an SF's
        removed), then device, passing the same fault points."""
        self._step("teardown", record.attachment_id)
        await self.remove_slot(record.slot)
        faults.reached("detach.flows_removed")
        if record.device.kind is DeviceKind.VF and record.device.representor in self.ports:
            self._step("park_port", record.device.representor)
            self.ports[record.device.representor] = parked_ids(self.ofports.get(record.device.representor, 0))
        else:
            await self.remove_port(record.device.representor)
        faults.reached("detach.port_removed")
        await self.release(record.device)
        faults.reached("detach.device_released")

    async def trace(self, record: AttachmentRecord, packet: Packet) -> SwitchTrace:
        self._step("trace", record.attachment_id)
        return SwitchTrace(text="fake trace", allowed=False)

    # -- many attachments at once -----------------------------------------------------

    async def cut_many(self, records: Sequence[AttachmentRecord]) -> None:
        self._step("cut_many", f"{len(records)} attachments")
        for record in records:
            drops = render_flows(cut_flows(self.pipeline, self._port(record, record.ofport)), self.pipeline)
            self.tables.setdefault(cookie_for_slot(record.slot), []).extend(drops)

    async def settle_cut(self, records: Sequence[AttachmentRecord], deny_all: Scope) -> None:
        self._step("settle_cut", f"{len(records)} attachments")
        for record in records:
            self._replace(cookie_for_slot(record.slot), self.rendered(record, record.ofport, deny_all))

    async def cut_zones(self, records: Sequence[AttachmentRecord]) -> str:
        self._step("cut_zones", f"{len(records)} attachments")
        return ""

    async def drop_meters_if_unused(self, records: Sequence[AttachmentRecord], scope: Scope) -> None:
        for record in records:
            await self.drop_meter_if_unused(record.slot, scope)
