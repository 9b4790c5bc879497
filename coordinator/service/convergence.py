"""Convergence: the switch and the eswitch brought to what the store says.

At start-up, after ovs-vswitchd restarted or lost our flows, and whenever
the switch watch finds it changed: finish what a crash interrupted, remove
what no attachment holds, re-install every BOUND attachment's flows in one
bundle of the differences. Each correction is reported as a drift event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.attachment_identity import cookie_for_slot, meter_of_slot
from coordinator.dataplane_port import AttachmentFlows, FlowsRejected, WorldFacts
from coordinator.errors import Unavailable
from coordinator.event_kinds import Event, EventKind
from coordinator.memory import release_free_memory
from coordinator.policy.scope import Scope
from coordinator.reconcile import Plan, plan
from coordinator.service.context import ServiceContext
from coordinator.service.gate import OperationGate
from coordinator.service.health_checks import ServiceHealth
from coordinator.service.intent import Stored
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState

log = logging.getLogger(__name__)

# Attachments plugged at once when the whole switch is re-programmed: the
# eswitch and OVSDB calls of one overlap with the others'.
PLUG_CONCURRENCY = 8


@dataclass(frozen=True)
class ConvergeReport:
    reason: str
    corrections: int
    attachments: int
    flows_added: int
    flows_removed: int
    seconds: float


@dataclass(frozen=True)
class _Plugged:
    record: AttachmentRecord
    rep: str
    ofport: int
    state: PolicyState
    version: int
    scope: Scope
    adopted: bool  # the gateway's latest policy: the new last good one once installed


class Convergence:
    def __init__(self, ctx: ServiceContext, gate: OperationGate, health: ServiceHealth) -> None:
        self._ctx = ctx
        self._gate = gate
        self._health = health
        self.last: ConvergeReport | None = None

    async def start(self) -> None:
        """Bring the bridge and every stored attachment to their intended
        state: finish what a crash interrupted, remove what no attachment
        holds, re-install flows."""
        store = self._ctx.store
        presence = await store.sync_devices(await self._ctx.dataplane.inventory())
        for record in await store.list_attachments():
            if record.device.device_id in presence.vanished:
                # Gone while the daemon was down (the host removed the VF).
                await store.append_event(record, Event(EventKind.ATTACHMENT_DRIFT, False, "DeviceRemoved",
                                         f"{record.device.device_id} disappeared while the coordinator was down"))  # fmt: skip
        await self.reconverge("start")

    async def reconverge(self, reason: str) -> ConvergeReport:
        """Converge the switch and the eswitch to the store (see
        `reconcile`). Runs alone: new operations wait (policy) or are
        refused with UNAVAILABLE (attach, detach) until it is done."""
        async with self._gate.alone(reason):
            report = await self._converge(reason)
        self._gate.switch_lost = None
        self._health.invalidate()
        self.last = report
        release_free_memory()
        await self._ctx.events.notify()
        log.info(
            "converged",
            extra={"reason": reason, "corrections": report.corrections, "attachments": report.attachments,
                   "flows_added": report.flows_added, "seconds": round(report.seconds, 3)},
        )  # fmt: skip
        return report

    async def switch_intact(self) -> str | None:
        """None if the switch still holds our bridge flows and every BOUND
        attachment's port its OpenFlow number; else why not."""
        in_use = {record.device.representor: record.ofport for record in await self._ctx.store.list_attachments()
                  if record.state == AttachmentState.BOUND and record.ofport > 0}  # fmt: skip
        return await self._ctx.dataplane.switch_intact(in_use)

    async def _converge(self, reason: str) -> ConvergeReport:
        began = time.monotonic()
        dp = self._ctx.dataplane
        await dp.ensure_bridge()
        facts = await dp.facts()
        prepared = [p.slot for p in facts.prepared]
        work = plan(
            await self._ctx.store.list_attachments(),
            facts.ports,
            facts.flow_counts,
            prepared,
            self._ctx.config.ovs.uplink,
            facts.ofports,
        )
        await self._finish_interrupted(work)
        await self._remove_orphans(work)
        await self._remove_orphan_meters()
        added, removed, kept = await self._reinstall(work, facts, restarted=reason != "start")
        return ConvergeReport(
            reason=reason,
            corrections=work.corrections + kept,
            attachments=len(work.keep),
            flows_added=added,
            flows_removed=removed,
            seconds=time.monotonic() - began,
        )

    async def _finish_interrupted(self, work: Plan) -> None:
        # ATTACHING: the client never got an answer; DETACHING: the client
        # asked for it to go. Either way, finish removing it.
        for record, reason, message in [
            *((r, "RolledBack", "ATTACHING interrupted by a restart: rolled back") for r in work.roll_back),
            *((r, "Detached", "DETACHING interrupted by a restart: detach finished") for r in work.finish_detach),
        ]:  # fmt: skip
            try:
                await self._ctx.dataplane.teardown(record)
            except Unavailable as exc:
                # Kept in the store: the next reconverge tries again.
                log.error("finishing %s of %s failed: %s", record.state.value, record.attachment_id, exc)
                continue
            await self._ctx.store.delete_attachment(record.attachment_id, reason=reason, message=message)
            self._ctx.observer.corrected(
                "RolledBack" if record.state is AttachmentState.ATTACHING else "DetachFinished"
            )

    async def _remove_orphans(self, work: Plan) -> None:
        dp = self._ctx.dataplane
        for port in work.orphan_ports:
            await dp.remove_port(port.name)
            await self._drift(port.attachment_id, port.sandbox_id, "OrphanPortRemoved",
                              f"port {port.name} carried our owner tag but belongs to no attachment: removed")  # fmt: skip
        for slot in work.orphan_slots:
            await dp.remove_slot(slot)
            await self._drift("", "", "OrphanFlowsRemoved",
                              f"flows of cookie {cookie_for_slot(slot):#x} belong to no attachment: removed")  # fmt: skip
        for device in work.orphan_devices:
            await dp.release(device)
            await self._drift("", "", "OrphanDeviceReleased",
                              f"{device.device_id} was prepared but no attachment claims it: released")  # fmt: skip

    async def _remove_orphan_meters(self) -> None:
        # After the interrupted attachments are gone: a meter numbered like
        # no BOUND attachment's slot is left from a crash (meters cannot ride
        # in a bundle, so one can outlive its flows).
        bound = await self._ctx.store.list_attachments(state=AttachmentState.BOUND)
        meters = {meter_of_slot(r.slot) for r in bound}
        for meter in sorted(await self._ctx.dataplane.learn_meters() - meters):
            await self._ctx.dataplane.remove_meter(meter)
            await self._drift(
                "", "", "OrphanMeterRemoved", f"meter {meter} belongs to no attachment: removed"
            )

    async def _drift(self, attachment_id: str, sandbox_id: str, reason: str, message: str) -> None:
        """A drift event; its host sees it when the id was ever its."""
        fence = await self._ctx.store.fence(attachment_id) if attachment_id else None
        owner = fence.owner if fence else ""
        log.warning("drift corrected: %s", message, extra={"attachment_id": attachment_id, "reason": reason})
        self._ctx.observer.corrected(reason)
        await self._ctx.store.record_event(
            attachment_id, sandbox_id, owner, Event(EventKind.DRIFT_CORRECTED, True, reason, message)
        )

    async def _plug(
        self,
        record: AttachmentRecord,
        facts: WorldFacts,
        prepared: Mapping[str, str],
        stored: Mapping[str, Stored],
        gate: asyncio.Semaphore,
    ) -> _Plugged | None:
        """Device, port and meter of one BOUND attachment, redone only where
        the world lost them; None (and a drift event) if that failed."""
        ctx = self._ctx
        chosen, adopted = ctx.reinstalled_with(record, stored.get(record.sandbox_id))
        rep = record.device.representor
        ofport = facts.ofports.get(rep)
        mac = prepared.get(record.device.device_id)
        # Prepared with our address (or one the backend cannot read) and
        # on the bridge with a port number: nothing to redo but flows.
        in_place = ofport is not None and rep in facts.ports and mac in ("", record.mac)
        async with gate:
            try:
                if not in_place or ofport is None:
                    rep = await ctx.dataplane.prepare(record)
                    ofport = await ctx.dataplane.add_port(record, rep, zone_limit=False)
                await ctx.dataplane.set_meter(record.slot, chosen.scope)
            except (Unavailable, FlowsRejected) as exc:
                await ctx.store.append_event(
                    record, Event(EventKind.ATTACHMENT_DRIFT, False, "ReinstallFailed", str(exc))
                )
                return None
        return _Plugged(record, rep, ofport, chosen.state, chosen.version, chosen.scope, adopted)

    async def _reinstall(self, work: Plan, facts: WorldFacts, *, restarted: bool) -> tuple[int, int, int]:
        """Plug every BOUND attachment and install all their flows in one
        bundle of the differences. An attachment whose device or port cannot
        be restored keeps whatever flows it has (none = closed: the bridge is
        fail-secure) and gets a drift event."""
        ctx = self._ctx
        dp = ctx.dataplane
        prepared = {p.slot.device_id: p.mac for p in facts.prepared}
        # Every sandbox's stored policy in one read, each distinct one
        # decoded once (not a store round trip and a decode per attachment).
        stored = await ctx.stored_all()
        gate = asyncio.Semaphore(PLUG_CONCURRENCY)
        plugs = (self._plug(r, facts, prepared, stored, gate) for r in work.keep)
        plugged = [p for p in await asyncio.gather(*plugs) if p is not None]
        # Zone limits before the flows that let traffic in (a limit does not
        # count connections that exist when it is set).
        await dp.set_zone_limits([p.record.slot for p in plugged])
        try:
            # Diffed against the flows ``facts`` read: since then only the
            # cookies of attachments no longer kept (orphans, interrupted
            # ones) changed, and nothing else runs during a reconverge.
            changes = await dp.converge_flows(
                [AttachmentFlows(p.record, p.ofport, p.scope) for p in plugged],
                held=facts.held,
                proofs=await ctx.store.flow_proofs(),
            )
            # The proofs it made, kept now: a crash right after the start
            # would otherwise cost the next start the whole compare again.
            await ctx.store.run(lambda: None)
        except FlowsRejected as exc:
            raise Unavailable(f"re-installing flows: {exc}") from exc
        for p in plugged:
            # A meter left from a rate limit the policy no longer has.
            await dp.drop_meter_if_unused(p.record.slot, p.scope)
        for sandbox_id, scope in {p.record.sandbox_id: p.scope for p in plugged if p.adopted}.items():
            # The gateway's latest policy, now installed (its apply had
            # failed, e.g. OVS went away mid-update): the new last good one.
            await ctx.save_last_good(sandbox_id, scope)
        repaired = 0
        missing = set(work.missing_ports)
        for p in plugged:
            record = p.record
            if record.attachment_id in missing:
                await self._drift(record.attachment_id, record.sandbox_id, "PortRestored",
                                  f"port {p.rep} was missing from the bridge: re-added")  # fmt: skip
            change = changes.get(cookie_for_slot(record.slot))
            if change is not None and not restarted:
                repaired += 1
                await self._drift(record.attachment_id, record.sandbox_id, "FlowsRepaired",
                                  f"flows differed from the stored policy: +{change.added} -{change.removed}")  # fmt: skip
            recorded = (record.ofport, record.device.representor, record.policy_state, record.policy_version)
            if recorded != (p.ofport, p.rep, p.state, p.version):
                await ctx.store.mark_bound(
                    record.attachment_id,
                    ofport=p.ofport,
                    policy_state=p.state,
                    policy_version=p.version,
                    representor=p.rep,
                )
        added = sum(c.added for c in changes.values())
        removed = sum(c.removed for c in changes.values())
        return added, removed, repaired
