"""What the coordinator does to the switch and the eswitch, in one place.

The attachment service decides *what* an attachment should look like; this
module makes the world look like that: the bridge and its base flows, an
attachment's device, port, conntrack zone limit, meter and flows, and their
removal. It also reads back what the world holds (ports, flows and devices
carrying our marks) for reconcile, and installs many attachments' flows in
one atomic bundle when the whole switch is re-programmed. Flows and meters
go over one persistent OpenFlow channel (``ovs.ofsync.ChannelSwitch``) as
the compiler's Flow values, verified by reading them back in byte form;
ovs-ofctl is run only to explain a read-back that differs. And it answers
what the service asks of the switch: whether it still holds our state, the
health probes, and traces of packets for ExplainPacket.

It is the service's only door to OVS and the eswitch (typed by
``dataplane_port.DataplanePort``): the OVS and eswitch errors stop here,
as ``Unavailable`` or, for a change of flows the switch did not take,
``FlowsRejected``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from coordinator import faults
from coordinator.attachment_identity import (
    BRIDGE_COOKIE,
    COOKIE_OWNER,
    COOKIE_OWNER_MASK,
    cookie_for_slot,
    meter_of_slot,
    zone_of_slot,
)
from coordinator.config import Config
from coordinator.dataplane_converge import ProofSink, Prover, converge_flows
from coordinator.dataplane_parking import PortParking
from coordinator.dataplane_port import (
    AttachmentFlows,
    FlowsRejected,
    HeldFlows,
    SwitchTrace,
    Work,
    WorldFacts,
)
from coordinator.dataplane_probes import ReadFlows, SwitchProbes
from coordinator.errors import Unavailable
from coordinator.eswitch.base import DeviceKind, EswitchBackend, EswitchDevice, EswitchError, HealthFact
from coordinator.flow_proofs import ProofInputs
from coordinator.flows.compiler import (
    BridgeFacts,
    PortFacts,
    attachment_flows,
    bridge_flows,
    cut_flows,
    default_burst_kb,
)
from coordinator.flows.model import Flow
from coordinator.flows.pipeline import Pipeline
from coordinator.ovs.conntrack import ConntrackControl, ConntrackError
from coordinator.ovs.control import vswitchd_ctl
from coordinator.ovs.ofsync import ChannelSwitch, MeterBand
from coordinator.ovs.openflow import OpenFlowError, SyncResult
from coordinator.ovs.ovsdb import OWNER_KEY, OWNER_VALUE, ROLE_KEY, Ovsdb, OvsdbError
from coordinator.ovs.unixctl import UnixctlClient
from coordinator.policy.packet import Packet
from coordinator.policy.scope import Scope
from coordinator.store.records import AttachmentRecord
from coordinator.waiting import all_of

log = logging.getLogger(__name__)

__all__ = ["Dataplane", "WorldFacts"]


@contextmanager
def _rejected() -> Iterator[None]:
    """The switch's refusal of a change of flows, as the door names it."""
    try:
        yield
    except OpenFlowError as exc:
        raise FlowsRejected(str(exc)) from exc


class Dataplane:
    def __init__(
        self,
        *,
        config: Config,
        backend: EswitchBackend,
        ovsdb: Ovsdb,
        switch: ChannelSwitch,
        pipeline: Pipeline,
    ) -> None:
        self._config = config
        self._bridge = config.ovs.bridge
        self._backend = backend
        self._ovsdb = ovsdb
        self._switch = switch
        self._pipeline = pipeline
        cfg = config.ovs
        # One connection to ovs-vswitchd's control socket for every conntrack
        # call and trace, kept open; the socket is looked up again when it breaks (a
        # packaged ovs-vswitchd names it after its pid, which a restart changes).
        self._control = UnixctlClient(
            lambda: vswitchd_ctl(cfg.rundir, cfg.vswitchd_ctl), timeout=cfg.timeout_s
        )
        self._conntrack = ConntrackControl(self._control, userspace_datapath=cfg.datapath_type == "netdev")
        self._probes = SwitchProbes(cfg, backend, ovsdb, switch, self._control)
        self._parking = PortParking(self._bridge, ovsdb, switch, backend)
        self.uplink_ofport: int | None = None
        # slot -> whether its meter exists; absent = unknown until the meters
        # are learned (reconverge), known absent after.
        self._metered: dict[int, bool] = {}
        self._meters_known = False
        # cookie -> flows installed and verified under it (for metrics).
        self._flow_counts: dict[int, int] = {}
        self._prover = Prover(ProofInputs(pipeline))

    def keep_proofs_with(self, sink: ProofSink) -> None:
        self._prover.sink = sink

    def installed_flows(self) -> int:
        """Flows installed and verified (bridge and attachments)."""
        return sum(self._flow_counts.values())

    @property
    def conntrack(self) -> ConntrackControl:
        return self._conntrack

    def read_flows_early(self) -> None:
        """``SwitchProbes.read_early``; dropped if ``ensure_bridge`` changes the bridge's flows."""
        self._probes.read_early()

    async def close(self) -> None:
        """Close the control connection (a later call opens another)."""
        self._probes.drop_early()
        await self._control.close()

    # -- bridge -------------------------------------------------------------

    async def ensure_bridge(self) -> None:
        """The bridge (fail-secure), the uplink port and the base flows."""
        cfg = self._config.ovs
        try:
            await self._ovsdb.ensure_bridge(cfg.bridge, cfg.datapath_type)
            if cfg.uplink:
                self.uplink_ofport = await self._ovsdb.ensure_port(
                    cfg.bridge, cfg.uplink, {OWNER_KEY: OWNER_VALUE, ROLE_KEY: "uplink"}
                )
            # Before any flow: allowed fragmented datagrams need reassembly,
            # and a parked port forgotten by a restarted ovs-vswitchd is
            # parked again before the bridge's flows flood to every port.
            await self.conntrack.enable_fragment_reassembly()
            await self._switch.match_fragments_as_parsed()
            await self._parking.repark(await self._ovsdb.owned_ports(cfg.bridge))
            result = await self._switch.sync(BRIDGE_COOKIE, self.bridge_flows())
            self._flow_counts[BRIDGE_COOKIE] = result.total
            if result.added or result.removed:
                self._probes.drop_early()
        except (OvsdbError, OpenFlowError, ConntrackError) as exc:
            raise Unavailable(f"programming bridge {cfg.bridge}: {exc}") from exc

    def bridge_flows(self) -> list[Flow]:
        return bridge_flows(self._pipeline, BridgeFacts(uplink_ofport=self.uplink_ofport))

    # -- one attachment -------------------------------------------------------

    async def prepare(self, record: AttachmentRecord) -> str:
        try:
            return await asyncio.to_thread(self._backend.prepare, record.device, record.mac)
        except EswitchError as exc:
            raise Unavailable(f"attaching {record.device.device_id}: {exc}") from exc

    async def add_port(self, record: AttachmentRecord, representor: str, *, zone_limit: bool = True) -> int:
        """Put the representor on the bridge with the zone limit in place
        before any flow lets traffic in (a limit does not count connections
        that already exist when it is set; ``zone_limit=False``: the caller
        sets it). Returns the OpenFlow port."""
        steps = [self._parking.take(record, representor)]
        if zone_limit:
            # Independent of the port: set while OVS adds it (both before any flow).
            limit = self._config.limits.conntrack_per_attachment
            steps.append(self._set_zone_limit(zone_of_slot(record.slot), limit))
        # Both finish before a failure is reported: a rollback that follows
        # must not race a zone limit still being set.
        outcomes = await asyncio.gather(*steps, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, OvsdbError | ConntrackError | OpenFlowError):
                raise Unavailable(f"attaching {record.device.device_id}: {outcome}") from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        ofport = outcomes[0]
        assert isinstance(ofport, int)
        return ofport

    async def _set_zone_limit(self, zone: int, limit: int) -> int:
        await self.conntrack.set_zone_limit(zone, limit)
        return limit

    def desired_flows(self, record: AttachmentRecord, ofport: int, scope: Scope) -> list[Flow]:
        return attachment_flows(self._pipeline, self._port(record, ofport), scope)

    def _port(self, record: AttachmentRecord, ofport: int) -> PortFacts:
        return PortFacts(ofport=ofport, mac=record.mac, slot=record.slot)

    async def enforce(self, record: AttachmentRecord, ofport: int, scope: Scope) -> SyncResult:
        """Make the attachment's flows those of ``scope``: one atomic bundle of
        the differences, read back and verified. Raises FlowsRejected."""
        with _rejected():
            result, _ = await self._enforce(record, ofport, scope, revoke=False)
        return result

    async def enforce_and_revoke(
        self, record: AttachmentRecord, ofport: int, scope: Scope, *, meanwhile: Work = None
    ) -> tuple[SyncResult, str]:
        """``enforce``, then cut the connections ``scope`` no longer allows
        (see ``revoke``), that while the flows are read back; ``meanwhile``
        runs then too, once the cut is asked."""
        with _rejected():
            return await self._enforce(record, ofport, scope, revoke=True, meanwhile=meanwhile)

    async def _enforce(
        self, record: AttachmentRecord, ofport: int, scope: Scope, *, revoke: bool, meanwhile: Work = None
    ) -> tuple[SyncResult, str]:
        port = self._port(record, ofport)
        notes: list[str] = []
        fingerprint = [b""]  # of the proof's inputs, worked out while the switch reads back

        async def cut() -> None:
            revoking = asyncio.ensure_future(self.revoke(record, scope))  # its dump asked first,
            try:
                await asyncio.sleep(0)  # written in this turn of the loop; this work meanwhile
                fingerprint[0] = self._prover.inputs.of(port, scope)
                if meanwhile is not None:
                    meanwhile()
            except BaseException:  # cancelled, or the work failed: the revoke goes with it
                revoking.cancel()
                raise
            notes.append(await revoking)

        meters = self._meter_band(record.slot, scope)
        if meters:  # from here on it may exist, whatever the outcome
            self._metered[record.slot] = True
        # The change is diffed against what the attachment's last verified
        # sync left, if nothing changed it through us since (still read back
        # and compared). Otherwise the switch reads out what the cookie holds
        # (and which meters exist, when this policy sets one) while the policy
        # compiles: the requests go out before the compile starts.
        known = None if meters else self._switch.known(port.cookie)
        reads = (
            None
            if known is not None
            else asyncio.ensure_future(self._switch.read(port.cookie, meters=bool(meters)))
        )
        await asyncio.sleep(0)
        try:
            desired = self.desired_flows(record, ofport, scope)
            result = await self._switch.sync(
                port.cookie, desired, beside_readback=cut if revoke else None, meters=meters,
                read=reads, known=known,
            )  # fmt: skip
        finally:
            if reads is not None and not reads.done():
                reads.cancel()
            elif reads is not None and not reads.cancelled():
                reads.exception()  # seen: a failed read already failed the sync
        self._flow_counts[port.cookie] = result.total
        self._prover.proven(port, scope, self._switch.verified(port.cookie), fingerprint[0])
        await self.drop_meter_if_unused(record.slot, scope)
        if revoke and not notes:  # nothing changed: no bundle, so not cut yet
            await cut()
        return result, "".join(notes)

    async def set_meter(self, slot: int, scope: Scope) -> None:
        """Raises FlowsRejected. Meters cannot ride in a bundle: set before
        the flows that use it."""
        with _rejected():
            for meter, band in self._meter_band(slot, scope).items():
                await self._switch.set_meter(meter, band.kbps, band.burst_kb)
                self._metered[slot] = True

    @staticmethod
    def _meter_band(slot: int, scope: Scope) -> dict[int, MeterBand]:
        limit = scope.egress_rate_limit
        if limit is None:
            return {}
        return {meter_of_slot(slot): MeterBand(limit.kbps, limit.burst_kb or default_burst_kb(limit.kbps))}

    async def drop_meter_if_unused(self, slot: int, scope: Scope) -> None:
        """Raises FlowsRejected."""
        # Removed only where one may exist: after a rate-limited policy, or
        # once per slot after start. Unmetered updates cost no extra round trip.
        if scope.egress_rate_limit is None and self._metered.get(slot, not self._meters_known):
            with _rejected():
                await self._switch.delete_meter(meter_of_slot(slot))
            self._metered[slot] = False

    async def teardown(self, record: AttachmentRecord, on_step: Sequence[str] = ()) -> None:
        """Flows first (the port then carries no traffic: the bridge is
        fail-secure), then the port, then the device. The slot's meter,
        conntrack entries and zone limit go while the port goes (none
        depends on the other once the flows are gone), and so does a VF's
        function. A VF's representor stays, and its port is parked on the
        bridge, inert (``dataplane_parking``); an SF's goes with the SF, so
        its port is removed and the SF goes after it. Each step idempotent."""
        vf = record.device.kind is DeviceKind.VF
        try:
            await self._remove_flows(record.slot)
            faults.reached("detach.flows_removed")
            port = self._parking.give_back(record)
            await all_of(self._clear_slot(record.slot), port, *([self.release(record.device)] if vf else []))
            faults.reached("detach.port_removed")
            if not vf:
                await self.release(record.device)
            faults.reached("detach.device_released")
        except (EswitchError, OvsdbError, OpenFlowError, ConntrackError) as exc:
            raise Unavailable(f"detaching {record.attachment_id}: {exc}") from exc

    async def remove_slot(self, slot: int) -> None:
        """A slot's flows, meter, conntrack entries and zone limit: the next
        attachment in this slot starts empty."""
        try:
            await self._remove_flows(slot)
            await self._clear_slot(slot)
        except (OpenFlowError, ConntrackError) as exc:
            raise Unavailable(f"removing the flows of slot {slot}: {exc}") from exc

    async def _remove_flows(self, slot: int) -> None:
        await self._switch.delete(cookie_for_slot(slot))
        self._flow_counts.pop(cookie_for_slot(slot), None)

    async def _clear_slot(self, slot: int) -> None:
        """After its flows: the slot's meter, and its conntrack entries and
        zone limit (one exchange), side by side."""
        await all_of(self._remove_meter(slot), self._conntrack.clear_zone(zone_of_slot(slot)))

    async def _remove_meter(self, slot: int) -> None:
        await self._switch.delete_meter(meter_of_slot(slot))
        self._metered.pop(slot, None)

    async def revoke(self, record: AttachmentRecord, scope: Scope) -> str:
        """Cut the attachment's connections ``scope`` no longer allows; the
        ones it still allows keep their conntrack entries. Returns a note
        for the event message."""
        try:
            result = await self.conntrack.revoke_entries(zone_of_slot(record.slot), scope)
        except ConntrackError as exc:
            log.warning("revoking connections of %s failed: %s", record.attachment_id, exc)
            return f"; revoking connections failed: {exc}"
        return result.note()

    # -- many attachments at once ----------------------------------------------------

    def cut_flows(self, record: AttachmentRecord) -> list[Flow]:
        return cut_flows(self._pipeline, self._port(record, record.ofport))

    async def cut_many(self, records: Sequence[AttachmentRecord]) -> None:
        """Stop all traffic of every attachment in ``records`` at once: two
        drops each (see ``cut_flows``) added in one atomic bundle, without
        reading the switch and without deleting anything, so the bundle stays
        small however many flows the attachments hold. ``settle_cut`` then
        puts the deny-all flows in their place. Raises FlowsRejected (then
        nothing changed)."""
        with _rejected():
            await self._switch.add([f for r in records for f in self.cut_flows(r)])

    async def settle_cut(self, records: Sequence[AttachmentRecord], deny_all: Scope) -> None:
        """After ``cut_many``: each attachment's flows (the drops included)
        replaced with ``deny_all``'s in one atomic bundle, then read back and
        corrected. Raises FlowsRejected if they still differ; as every bundle
        is all or nothing, an attachment then still holds its drops or
        already its deny-all flows, closed either way."""
        desired = {cookie_for_slot(r.slot): self.desired_flows(r, r.ofport, deny_all) for r in records}
        try:
            await self._switch.replace_many(desired)
        except OpenFlowError as exc:
            log.warning("replacing the drops of %d attachments failed (%s); correcting", len(records), exc)
        with _rejected():
            await self._verify_many(desired)
        for cookie, flows in desired.items():
            self._flow_counts[cookie] = len(flows)

    async def _verify_many(self, desired: Mapping[int, Sequence[Flow]]) -> None:
        """Read back the cookies of ``desired`` and correct any difference in
        one bundle; raises OpenFlowError if they still differ. One cookie is
        read by itself, not with every flow of ours."""
        if len(desired) == 1:
            ((cookie, flows),) = desired.items()
            await self._switch.sync(cookie, flows)
        else:
            await self._sync_all(desired)

    async def cut_zones(self, records: Sequence[AttachmentRecord]) -> str:
        """Every connection of these attachments' conntrack zones, gone: one
        flush per zone over one control connection. A note for logs ("" if
        it worked)."""
        try:
            await self.conntrack.flush_zones([zone_of_slot(r.slot) for r in records])
        except ConntrackError as exc:
            log.warning("cutting the connections of %d attachments failed: %s", len(records), exc)
            return f"cutting connections failed: {exc}"
        return ""

    async def drop_meters_if_unused(self, records: Sequence[AttachmentRecord], scope: Scope) -> None:
        for record in records:
            await self.drop_meter_if_unused(record.slot, scope)

    # -- the whole switch ---------------------------------------------------------

    async def facts(self) -> WorldFacts:
        """Our ports, how many flows each of our cookies holds (and the flows,
        for ``converge_flows``), and the prepared functions."""
        return await self._probes.facts(self._bridge)

    async def converge_flows(
        self, attachments: Sequence[AttachmentFlows], *, held: HeldFlows | None, proofs: Mapping[int, bytes]
    ) -> dict[int, SyncResult]:
        """Every attachment's cookie holding exactly its intent: unless every
        stored proof holds, compiled when asked, compared with the flows
        ``facts`` read and the ones that differ synced a range of slots at a
        time (``dataplane_converge``). The changes by cookie. Raises FlowsRejected."""
        if not isinstance(held, ReadFlows):
            held = (await self.facts()).held
            assert isinstance(held, ReadFlows)
        with _rejected():
            changes, counts = await converge_flows(
                self._switch, lambda a: self.desired_flows(a.record, a.ofport, a.scope), self._prover,
                attachments, held, proofs,
            )  # fmt: skip
        self._flow_counts.update(counts)
        return changes

    async def _sync_all(self, desired: Mapping[int, Sequence[Flow]]) -> dict[int, SyncResult]:
        changes = await self._switch.sync_many(desired, COOKIE_OWNER, COOKIE_OWNER_MASK)
        for cookie, flows in desired.items():
            self._flow_counts[cookie] = len(flows)
        return changes

    async def set_zone_limits(self, slots: Sequence[int]) -> None:
        """The zone limit of many slots, a few hundred per command, in one exchange."""
        try:
            await self.conntrack.set_zone_limits(
                [zone_of_slot(s) for s in slots], self._config.limits.conntrack_per_attachment
            )
        except ConntrackError as exc:
            raise Unavailable(f"setting conntrack zone limits: {exc}") from exc

    async def remove_port(self, name: str) -> None:
        await self._ovsdb.delete_port(self._bridge, name)

    async def release(self, slot: EswitchDevice) -> None:
        await asyncio.to_thread(self._backend.release, slot)

    async def learn_meters(self) -> set[int]:
        """Read which meters the bridge has (meters are numbered like slots):
        from now on a meter is removed only where one exists."""
        try:
            meters = await self._switch.meters()
        except OpenFlowError as exc:
            raise Unavailable(f"reading the bridge's meters: {exc}") from exc
        self._metered = dict.fromkeys(meters, True)
        self._meters_known = True
        return meters

    async def remove_meter(self, meter: int) -> None:
        try:
            await self._switch.delete_meter(meter)
        except OpenFlowError as exc:
            raise Unavailable(f"removing meter {meter}: {exc}") from exc
        self._metered.pop(meter, None)

    # -- what the service asks of the switch (see ``dataplane_probes``) ---------------------

    async def inventory(self) -> list[EswitchDevice]:
        return await asyncio.to_thread(self._backend.inventory)

    async def switch_intact(self, ports_in_use: Mapping[str, int]) -> str | None:
        intact = await self._probes.switch_intact(len(self.bridge_flows()), ports_in_use, self.uplink_ofport)
        return intact or await self._parking.intact()

    async def switch_health(self) -> list[HealthFact]:
        return await self._probes.switch_health()

    async def eswitch_health(self) -> list[HealthFact]:
        return await self._probes.eswitch_health()

    async def trace(self, record: AttachmentRecord, packet: Packet) -> SwitchTrace:
        return await self._probes.trace(record, packet, self.uplink_ofport)
