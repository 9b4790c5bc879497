"""The attachment service: Attach, Detach, Get, List, Health, Reconcile.

Orchestrates store, eswitch and switch (through the dataplane). Each
mutation follows the same shape: decide and claim in one store transaction,
act on the world, record the outcome; on failure undo what was done so bad
input or a failed step never leaves a claimed device, a port or flows
behind. On start and after OVS restarts, the whole world is converged to the
store (``reconverge``), each correction reported as a drift event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from coordinator import faults
from coordinator.admission import TokenBucket
from coordinator.attachment_identity import BRIDGE_COOKIE, cookie_for_slot, meter_of_slot
from coordinator.callers import Caller
from coordinator.config import Config
from coordinator.dataplane import Dataplane, WorldFacts
from coordinator.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from coordinator.eswitch.base import DeviceKind, EswitchBackend, HealthFact
from coordinator.eswitch.mac import mac_for_device
from coordinator.event_kinds import Event, EventKind
from coordinator.events import EventHub
from coordinator.flows.pipeline import Pipeline
from coordinator.flows.trace import TraceParseError, TracePorts, parse_dpif_show, parse_trace, trace_request
from coordinator.gateway.client import StreamStatus
from coordinator.health import HealthReport, ovs_checks
from coordinator.host_reconcile import HostReconcilePlan, Known, ReconcileMode, plan_host_reconcile
from coordinator.keyed_lock import KeyedLocks
from coordinator.leases import DetachDecision, decide_detach
from coordinator.memory import release_free_memory
from coordinator.ovs.control import vswitchd_ctl
from coordinator.ovs.openflow import OpenFlowError, OpenFlowSwitch
from coordinator.ovs.ovsdb import Ovsdb, OvsdbError
from coordinator.ovs.trace import TraceError, dpif_show, trace
from coordinator.policy.evaluator import Verdict, evaluate
from coordinator.policy.packet import Packet
from coordinator.policy.scope import Scope
from coordinator.policy_book import PolicyBook, PolicyDenied
from coordinator.reconcile import Plan, plan
from coordinator.store.db import AttachmentLimitReached, PoolExhausted, UnreadablePolicy
from coordinator.store.records import AttachmentRecord, AttachmentState, NewAttachment, PolicyState, PoolStats
from coordinator.store.worker import AsyncStore

log = logging.getLogger(__name__)

HEALTH_TTL_S = 1.0
# Attachments plugged at once when the whole switch is re-programmed: the
# eswitch and OVSDB calls of one overlap with the others'.
PLUG_CONCURRENCY = 8
DENY_ALL_CLASS = "dpu-ovs-deny-all"
REMOVED_REASON = "PolicyRemoved"
REMOVED_MESSAGE = "the gateway withdrew the policy: deny-all until a new one arrives"


class ServiceObserver(Protocol):
    """Where the service reports what metrics count (the daemon plugs in
    Prometheus; nothing by default)."""

    def policy_applied(self, seconds: float, *, ok: bool) -> None: ...

    def corrected(self, kind: str) -> None: ...


class _NoObserver:
    def policy_applied(self, seconds: float, *, ok: bool) -> None:
        pass

    def corrected(self, kind: str) -> None:
        pass


class PolicySource(Protocol):
    """The gateway stream, as the service sees it."""

    status: StreamStatus

    def register(self, sandbox_ids: Iterable[str]) -> None: ...

    def unregister(self, sandbox_ids: Iterable[str]) -> None: ...


@dataclass(frozen=True)
class Explanation:
    verdict: Verdict
    trace: str
    switch_agrees: bool


@dataclass(frozen=True)
class AttachParams:
    sandbox_id: str
    host_instance_id: str
    request_id: str
    kind: DeviceKind | None
    network_class: str  # "" = configured default
    initial_policy: str  # "" = configured default; "BASELINE" or "WAIT_INITIAL"
    initial_policy_timeout_ms: int = 0  # 0 = configured default


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


@dataclass(frozen=True)
class HostReconcileResult:
    matched: tuple[AttachmentRecord, ...]
    coordinator_only: tuple[AttachmentRecord, ...]
    host_only: tuple[Known, ...]
    stale_generation: tuple[Known, ...]
    released: tuple[str, ...]


class AttachmentService:
    def __init__(
        self,
        *,
        config: Config,
        store: AsyncStore,
        backend: EswitchBackend,
        ovsdb: Ovsdb,
        openflow: OpenFlowSwitch,
        pipeline: Pipeline,
        network_classes: Mapping[str, Scope],
        events: EventHub,
        mac_salt: str,
    ) -> None:
        self._config = config
        self._store = store
        self._backend = backend
        self._ovsdb = ovsdb
        self._openflow = openflow
        self._classes = network_classes
        self._events = events
        self._mac_salt = mac_salt
        self.dataplane = Dataplane(
            config=config, backend=backend, ovsdb=ovsdb, openflow=openflow, pipeline=pipeline
        )
        # Mutations of one sandbox (attach, detach, policy) run one at a
        # time; different sandboxes proceed in parallel. A sandbox's lock
        # exists only while it is held or awaited.
        self._locks = KeyedLocks()
        # Latest gateway policies; the gateway stream (if any) registers
        # sandboxes through policy_source.
        self.book = PolicyBook()
        self.policy_source: PolicySource | None = None
        self._health: tuple[float, HealthReport] | None = None
        self._admission = TokenBucket(config.limits.max_attach_qps)
        # Operations in flight, and what stops new ones: a re-programming of
        # the whole switch (waits for them, then runs alone) or shutdown.
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._converging: str | None = None
        self._converged = asyncio.Event()
        self._converged.set()
        self._converge_lock = asyncio.Lock()
        self._switch_lost: str | None = None
        self._stopping = False
        # Host identities heard from since start (Reconcile, Attach, Detach).
        self._heard_from: set[str] = set()
        self.last_converge: ConvergeReport | None = None
        self.observer: ServiceObserver = _NoObserver()

    # -- start-up and re-programming ---------------------------------------------

    async def start(self) -> None:
        """Bring the bridge and every stored attachment to their intended
        state: finish what a crash interrupted, remove what no attachment
        holds, re-install flows."""
        presence = await self._store.sync_devices(await asyncio.to_thread(self._backend.inventory))
        for record in await self._store.list_attachments():
            if record.device.device_id in presence.vanished:
                # Gone while the daemon was down (the host removed the VF).
                await self._store.append_event(record, Event(EventKind.ATTACHMENT_DRIFT, False, "DeviceRemoved",
                                         f"{record.device.device_id} disappeared while the coordinator was down"))  # fmt: skip
        await self.reconverge("start")

    async def device_returned(self, record: AttachmentRecord) -> None:
        """A removed device is back (the host re-created the VF): its function
        lost its address and its representor may be a new port: re-install."""
        async with self._operation("re-install", wait=True), self._locks[record.sandbox_id]:
            current = await self._store.get(record.attachment_id)
            if current is None or current.state is not AttachmentState.BOUND:
                return
            try:
                await self._install(current)
            except Unavailable as exc:
                await self._store.append_event(
                    current, Event(EventKind.ATTACHMENT_DRIFT, False, "ReinstallFailed", str(exc))
                )
        await self._events.notify()

    async def reconverge(self, reason: str) -> ConvergeReport:
        """Converge the switch and the eswitch to the store (see
        `reconcile`). Runs
        alone: new operations wait (policy) or are refused with UNAVAILABLE
        (attach, detach) until it is done."""
        async with self._converge_lock:
            self._converging = reason
            self._converged.clear()
            try:
                await self._idle.wait()
                report = await self._converge(reason)
            finally:
                self._converging = None
                self._converged.set()
        self._switch_lost = None
        self._health = None
        self.last_converge = report
        release_free_memory()
        await self._events.notify()
        log.info(
            "converged",
            extra={"reason": reason, "corrections": report.corrections, "attachments": report.attachments,
                   "flows_added": report.flows_added, "seconds": round(report.seconds, 3)},
        )  # fmt: skip
        return report

    def mark_switch_lost(self, reason: str) -> None:
        """The switch lost our state or stopped answering: attaches are
        refused (UNAVAILABLE) and Health is degraded until reconverge."""
        if self._switch_lost is None:
            log.warning("switch needs re-programming: %s", reason)
        self._switch_lost = reason
        self._health = None

    async def switch_intact(self) -> str | None:
        """None if the switch still holds our bridge flows; else why not."""
        try:
            installed = await self._openflow.dump(BRIDGE_COOKIE)
            facts = await self._ovsdb.bridge_facts(self._config.ovs.bridge)
        except (OpenFlowError, OvsdbError) as exc:
            return f"switch unreachable: {exc}"
        if facts.get("bridge") is None:
            return f"bridge {self._config.ovs.bridge} missing"
        expected = len(self.dataplane.bridge_flows())
        if len(installed) != expected:
            return f"bridge holds {len(installed)} of its {expected} base flows (ovs-vswitchd restarted?)"
        try:
            numbers = await self._ovsdb.interface_ofports()
        except OvsdbError as exc:
            return f"switch unreachable: {exc}"
        return await self._port_moved(numbers)

    async def _port_moved(self, numbers: Mapping[str, int]) -> str | None:
        """OpenFlow port numbers are not fixed: after an ovs-vswitchd restart
        a port can come back under another one (a port added while it was
        down may have taken the old number first). Our flows name ports by
        number, so a port that moved needs its flows re-programmed."""
        in_use = {record.device.representor: record.ofport for record in await self._store.list_attachments()
                  if record.state == AttachmentState.BOUND and record.ofport > 0}  # fmt: skip
        uplink = self._config.ovs.uplink
        if uplink and self.dataplane.uplink_ofport is not None:
            in_use[uplink] = self.dataplane.uplink_ofport
        for name, number in sorted(in_use.items()):
            now = numbers.get(name)
            if now != number:
                return f"port {name} is now OpenFlow port {now or 'none'}, its flows use {number}"
        return None

    async def _converge(self, reason: str) -> ConvergeReport:
        began = time.monotonic()
        dp = self.dataplane
        await dp.ensure_bridge()
        facts = await dp.facts()
        prepared = [p.slot for p in facts.prepared]
        work = plan(
            await self._store.list_attachments(), facts.ports, facts.flows, prepared, self._config.ovs.uplink
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
                await self.dataplane.teardown(record)
            except Unavailable as exc:
                # Kept in the store: the next reconverge tries again.
                log.error("finishing %s of %s failed: %s", record.state.value, record.attachment_id, exc)
                continue
            await self._store.delete_attachment(record.attachment_id, reason=reason, message=message)
            self.observer.corrected(
                "RolledBack" if record.state is AttachmentState.ATTACHING else "DetachFinished"
            )

    async def _remove_orphans(self, work: Plan) -> None:
        dp = self.dataplane
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
        meters = {
            meter_of_slot(r.slot) for r in await self._store.list_attachments(state=AttachmentState.BOUND)
        }
        for meter in sorted(await self.dataplane.learn_meters() - meters):
            await self.dataplane.remove_meter(meter)
            await self._drift(
                "", "", "OrphanMeterRemoved", f"meter {meter} belongs to no attachment: removed"
            )

    async def _drift(self, attachment_id: str, sandbox_id: str, reason: str, message: str) -> None:
        """A drift event; its host sees it when the id was ever its."""
        fence = await self._store.fence(attachment_id) if attachment_id else None
        owner = fence.owner if fence else ""
        log.warning("drift corrected: %s", message, extra={"attachment_id": attachment_id, "reason": reason})
        self.observer.corrected(reason)
        await self._store.record_event(
            attachment_id, sandbox_id, owner, Event(EventKind.DRIFT_CORRECTED, True, reason, message)
        )

    async def _reinstall(self, work: Plan, facts: WorldFacts, *, restarted: bool) -> tuple[int, int, int]:
        """Plug every BOUND attachment and install all their flows in one
        bundle of the differences. An attachment whose device or port cannot
        be restored keeps whatever flows it has (none = closed: the bridge is
        fail-secure) and gets a drift event."""
        dp = self.dataplane
        prepared = {p.slot.device_id: p.mac for p in facts.prepared}
        gate = asyncio.Semaphore(PLUG_CONCURRENCY)

        async def plug(record: AttachmentRecord) -> _Plugged | None:
            scope, state, version = await self._intended(record)
            rep = record.device.representor
            ofport = facts.ofports.get(rep)
            mac = prepared.get(record.device.device_id)
            # Prepared with our address (or one the backend cannot read) and
            # on the bridge with a port number: nothing to redo but flows.
            in_place = ofport is not None and rep in facts.ports and mac in ("", record.mac)
            async with gate:
                try:
                    if not in_place or ofport is None:
                        rep = await dp.prepare(record)
                        ofport = await dp.add_port(record, rep, zone_limit=False)
                    await dp.set_meter(record.slot, scope)
                except (Unavailable, OpenFlowError) as exc:
                    await self._store.append_event(
                        record, Event(EventKind.ATTACHMENT_DRIFT, False, "ReinstallFailed", str(exc))
                    )
                    return None
            return _Plugged(record, rep, ofport, state, version, scope)

        plugged = [p for p in await asyncio.gather(*(plug(r) for r in work.keep)) if p is not None]
        # Zone limits before the flows that let traffic in (a limit does not
        # count connections that exist when it is set).
        await dp.set_zone_limits([p.record.slot for p in plugged])
        desired: dict[int, list[str]] = {}
        adopted: dict[str, Scope] = {}
        for p in plugged:
            if p.state is PolicyState.APPLIED and p.version != await self._stored_version(
                p.record.sandbox_id
            ):
                adopted[p.record.sandbox_id] = p.scope
            desired[cookie_for_slot(p.record.slot)] = dp.desired_flows(p.record, p.ofport, p.scope)
        try:
            changes = await dp.sync_all(desired)
        except OpenFlowError as exc:
            raise Unavailable(f"re-installing flows: {exc}") from exc
        for p in plugged:
            # A meter left from a rate limit the policy no longer has.
            await dp.drop_meter_if_unused(p.record.slot, p.scope)
        for sandbox_id, scope in adopted.items():
            # The gateway's latest policy, now installed (its apply had
            # failed, e.g. OVS went away mid-update): the new last good one.
            await self._store.save_policy(sandbox_id, scope)
        repaired = 0
        missing = set(work.missing_ports)
        for p in plugged:
            record, rep, ofport, state, version = p.record, p.rep, p.ofport, p.state, p.version
            if record.attachment_id in missing:
                await self._drift(record.attachment_id, record.sandbox_id, "PortRestored",
                            f"port {rep} was missing from the bridge: re-added")  # fmt: skip
            change = changes.get(cookie_for_slot(record.slot))
            if change is not None and not restarted:
                repaired += 1
                await self._drift(record.attachment_id, record.sandbox_id, "FlowsRepaired",
                            f"flows differed from the stored policy: +{change.added} -{change.removed}")  # fmt: skip
            if (record.ofport, record.device.representor, record.policy_state, record.policy_version) != (
                ofport,
                rep,
                state,
                version,
            ):
                await self._store.mark_bound(
                    record.attachment_id,
                    ofport=ofport,
                    policy_state=state,
                    policy_version=version,
                    representor=rep,
                )
        added = sum(c.added for c in changes.values())
        removed = sum(c.removed for c in changes.values())
        return added, removed, repaired

    # -- operations in flight ------------------------------------------------------

    @asynccontextmanager
    async def _operation(self, what: str, *, wait: bool) -> AsyncIterator[None]:
        """Counts an operation in flight. While the switch is re-programmed
        or the daemon stops, ``wait`` operations (policy updates, which must
        not be lost) wait; the others are refused with UNAVAILABLE."""
        while True:
            if self._stopping and not wait:
                raise Unavailable(f"{what}: the coordinator is shutting down; retry against its successor")
            if self._converging is None:
                break
            if not wait:
                raise Unavailable(
                    f"{what}: the switch is being re-programmed ({self._converging}); retry shortly"
                )
            await self._converged.wait()
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new attaches and detaches; wait up to ``timeout`` for those
        in flight. True if none is left."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def in_flight(self) -> int:
        return self._active

    # -- health ---------------------------------------------------------------

    async def health(self, *, fresh: bool = True) -> HealthReport:
        now = time.monotonic()
        if not fresh and self._health and now - self._health[0] < HEALTH_TTL_S:
            return self._health[1]
        checks: list[HealthFact] = []
        try:
            facts = await self._ovsdb.bridge_facts(self._config.ovs.bridge)
            error = ""
        except OvsdbError as exc:
            facts, error = None, str(exc)
        hw_required = self._backend.name == "switchdev"
        checks += ovs_checks(facts, error, self._config.ovs.bridge, hw_offload_required=hw_required)
        try:
            await self._openflow.ping()
            checks.append(HealthFact("openflow_reachable", True, "bridge answers OpenFlow", required=True))
        except OpenFlowError as exc:
            checks.append(HealthFact("openflow_reachable", False, str(exc), required=True))
        lost = self._switch_lost or (f"re-programming ({self._converging})" if self._converging else None)
        checks.append(
            HealthFact(
                "switch_programmed", lost is None, lost or "every attachment's flows installed", required=True
            )
        )
        checks += await asyncio.to_thread(self._backend.health)
        if self.policy_source is not None:
            status = self.policy_source.status
            state = "connected" if status.connected else "down"
            detail = f"{state}; {status.reconnects} reconnects, {status.resyncs} resyncs, last seq {status.last_seq}"
            if status.denied:
                detail += f"; refused sandboxes: {', '.join(sorted(status.denied))}"
            checks.append(HealthFact("policy_stream", status.connected, detail, required=False))
        report = HealthReport(tuple(checks))
        self._health = (now, report)
        return report

    async def pools(self) -> list[PoolStats]:
        return await self._store.pool_stats()

    # -- attach -----------------------------------------------------------------

    async def attach(self, caller: Caller, params: AttachParams) -> AttachmentRecord:
        network_class = params.network_class or self._config.policy.network_class_defaults
        if network_class not in self._classes:
            raise InvalidArgument(
                "network_class",
                f"unknown network class {network_class!r} (known: {', '.join(sorted(self._classes))})",
            )
        initial = params.initial_policy or self._default_initial_policy()
        if initial == "WAIT_INITIAL" and self.policy_source is None:
            raise FailedPrecondition(
                "initial_policy WAIT_INITIAL needs the policy gateway stream, which is not configured "
                "(gateway.endpoint); use BASELINE"
            )
        self._heard_from.add(caller.identity)
        if self._switch_lost is not None:
            raise Unavailable(f"the switch is being re-programmed ({self._switch_lost}); retry shortly")
        async with self._operation("Attach", wait=False), self._locks[params.sandbox_id]:
            existing = await self._store.find_by_request(caller.identity, params.request_id)
            if existing is not None:
                return self._replay(existing, params, network_class)
            if not self._admission.try_take():
                raise ResourceExhausted(
                    f"limits.max_attach_qps ({self._admission.rate:g}/s) exceeded; retry with backoff"
                )
            report = await self.health(fresh=False)
            failing = report.failing_required()
            if failing:
                names = ", ".join(f"{c.name} ({c.detail})" for c in failing)
                raise FailedPrecondition(f"required health checks failing: {names}")
            new = NewAttachment(
                attachment_id=str(uuid.uuid4()),
                owner=caller.identity,
                request_id=params.request_id,
                sandbox_id=params.sandbox_id,
                host_instance_id=params.host_instance_id,
                kind=params.kind,
                network_class=network_class,
            )
            try:
                record = await self._store.create_attachment(
                    new,
                    mac_for=lambda s: mac_for_device(self._mac_salt, s.kind, s.controller, s.pf, s.number),
                    max_attachments=self._config.limits.max_attachments,
                )
            except (PoolExhausted, AttachmentLimitReached) as exc:
                raise ResourceExhausted(str(exc)) from exc
            await self._events.notify()
            try:
                faults.reached("attach.claimed")
                if initial == "WAIT_INITIAL":
                    record = await self._install_waiting(record, params.initial_policy_timeout_ms)
                else:
                    record = await self._install(record)
                    self._register(record.sandbox_id)
                faults.reached("attach.bound")
            except BaseException as exc:
                await self._undo_attach(record, exc)
                raise
        await self._events.notify()
        log.info("attached", extra={"attachment_id": record.attachment_id, "sandbox_id": record.sandbox_id})
        return record

    def _default_initial_policy(self) -> str:
        configured: str = self._config.policy.initial_policy
        if configured == "auto":
            return "WAIT_INITIAL" if self.policy_source is not None else "BASELINE"
        return configured

    def _register(self, sandbox_id: str) -> None:
        if self.policy_source is not None:
            self.policy_source.register([sandbox_id])

    async def _unregister_if_unused(self, sandbox_id: str) -> None:
        if self.policy_source is not None and not await self._store.list_attachments(sandbox_id=sandbox_id):
            self.policy_source.unregister([sandbox_id])
            self.book.forget(sandbox_id)

    async def _install_waiting(self, record: AttachmentRecord, timeout_ms: int) -> AttachmentRecord:
        """WAIT_INITIAL: plug the device closed (deny-all), ask the gateway for
        the sandbox's policy, enforce it when it comes, then mark BOUND."""
        rep, ofport = await self._plug(record)
        await self._enforce(record, ofport, self._classes[DENY_ALL_CLASS])
        self._register(record.sandbox_id)
        timeout = (timeout_ms or self._config.policy.initial_policy_timeout_ms) / 1000
        try:
            scope = await self.book.wait(record.sandbox_id, timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"{exc}; attach of {record.sandbox_id} rolled back") from exc
        except PolicyDenied as exc:
            raise PermissionDenied(
                f"gateway refused the policy of sandbox {record.sandbox_id}: {exc}"
            ) from exc
        await self._enforce(record, ofport, scope)
        faults.reached("attach.flows_installed")
        await self._store.save_policy(record.sandbox_id, scope)
        return await self._store.mark_bound(
            record.attachment_id,
            ofport=ofport,
            policy_state=PolicyState.APPLIED,
            policy_version=scope.version,
            representor=rep,
        )

    def _replay(
        self, existing: AttachmentRecord, params: AttachParams, network_class: str
    ) -> AttachmentRecord:
        same = (
            existing.sandbox_id == params.sandbox_id
            and existing.host_instance_id == params.host_instance_id
            and existing.network_class == network_class
            and (params.kind is None or existing.device.kind is params.kind)
        )
        if not same:
            raise AlreadyExists(
                f"request_id {params.request_id!r} was already used for a different Attach "
                f"(attachment {existing.attachment_id})"
            )
        return existing

    async def _scope_for(self, record: AttachmentRecord) -> tuple[Scope, PolicyState, int]:
        """The sandbox's last good policy if there is one, else its class."""
        try:
            stored = await self._store.policy(record.sandbox_id)
        except UnreadablePolicy as exc:
            # Validated before it was stored; unreadable now means the store
            # was tampered with or limits tightened. Fail closed.
            log.error(
                "stored policy of sandbox %s unusable (%s); denying all", record.sandbox_id, exc.problem
            )
            return self._classes[DENY_ALL_CLASS], PolicyState.DEGRADED, exc.version
        if stored is None:
            return self._classes[record.network_class], PolicyState.BASELINE, 0
        return stored.scope, PolicyState.APPLIED, stored.version

    async def _stored_version(self, sandbox_id: str) -> int | None:
        return await self._store.policy_version(sandbox_id)

    def _denied(self, record: AttachmentRecord) -> bool:
        """Whether the attachment is held at deny-all: its policy withdrawn
        (PENDING), or stale with on_stale = deny-all."""
        return record.policy_state is PolicyState.PENDING or (
            record.policy_state is PolicyState.STALE and self._config.policy.on_stale == "deny-all"
        )

    async def _intended(self, record: AttachmentRecord) -> tuple[Scope, PolicyState, int]:
        """What a BOUND attachment should enforce when it is re-installed,
        and the policy state that goes with it: deny-all while its policy
        is withdrawn (or stale with on_stale = deny-all); the gateway's
        latest policy when it is newer than the stored one; else the stored
        last good policy (or the class), keeping STALE / DEGRADED."""
        if self._denied(record):
            return self._classes[DENY_ALL_CLASS], record.policy_state, record.policy_version
        scope, state, version = await self._scope_for(record)
        latest = self.book.latest(record.sandbox_id)
        if latest is not None and (state is not PolicyState.APPLIED or latest.version != version):
            return latest, PolicyState.APPLIED, latest.version
        if state is PolicyState.APPLIED and record.policy_state in (PolicyState.STALE, PolicyState.DEGRADED):
            state = record.policy_state
        return scope, state, version

    async def _enforce(self, record: AttachmentRecord, ofport: int, scope: Scope) -> None:
        try:
            await self.dataplane.enforce(record, ofport, scope)
        except OpenFlowError as exc:
            raise Unavailable(f"attaching {record.device.device_id}: {exc}") from exc

    async def _plug(self, record: AttachmentRecord) -> tuple[str, int]:
        """Prepare the device and put its representor on the bridge; returns
        the representor's name and OpenFlow port. Idempotent."""
        rep = await self.dataplane.prepare(record)
        faults.reached("attach.device_prepared")
        ofport = await self.dataplane.add_port(record, rep)
        faults.reached("attach.port_added")
        return rep, ofport

    async def _install(self, record: AttachmentRecord) -> AttachmentRecord:
        """Plug, install and verify the sandbox's flows, mark BOUND."""
        scope, state, version = await self._scope_for(record)
        rep, ofport = await self._plug(record)
        await self._enforce(record, ofport, scope)
        faults.reached("attach.flows_installed")
        return await self._store.mark_bound(
            record.attachment_id, ofport=ofport, policy_state=state, policy_version=version, representor=rep
        )

    # -- policy -------------------------------------------------------------------

    async def apply_policy(self, sandbox_id: str, scope: Scope) -> list[AttachmentRecord]:
        """Make ``scope`` the sandbox's policy on every attachment it has.

        Each attachment changes in one atomic bundle of only the differing
        flows, is read back and compared, and only then counts as applied.
        The policy becomes the stored last good one only if every attachment
        took it; one that failed keeps its previous flows (the bundle is all
        or nothing) and is marked DEGRADED.
        """
        async with self._operation("policy update", wait=True), self._locks[sandbox_id]:
            results = await self._apply_locked(sandbox_id, scope)
        await self._events.notify()
        return results

    async def _apply_locked(self, sandbox_id: str, scope: Scope) -> list[AttachmentRecord]:
        results = []
        failed = False
        records = await self._store.list_attachments(sandbox_id=sandbox_id, state=AttachmentState.BOUND)
        for record in records:
            began = time.monotonic()
            try:
                sync, cut = await self.dataplane.enforce_and_revoke(record, record.ofport, scope)
            except OpenFlowError as exc:
                self.observer.policy_applied(time.monotonic() - began, ok=False)
                failed = True
                event = Event(
                    EventKind.POLICY_DEGRADED, True, "ApplyFailed", f"version {scope.version}: {exc}"
                )
                results.append(
                    await self._store.set_policy_status(
                        record.attachment_id, PolicyState.DEGRADED, record.policy_version, event=event
                    )
                )
                continue
            self.observer.policy_applied(time.monotonic() - began, ok=True)
            faults.reached("policy.flows_applied")
            message = f"version {scope.version}: {sync.total} flows (+{sync.added} -{sync.removed}){cut}"
            event = Event(EventKind.POLICY_APPLIED, True, "Applied", message)
            results.append(
                await self._store.set_policy_status(
                    record.attachment_id, PolicyState.APPLIED, scope.version, event=event
                )
            )
        faults.reached("policy.status_recorded")
        if not failed:
            await self._store.save_policy(sandbox_id, scope)
        return results

    async def apply_latest(self, sandbox_id: str) -> None:
        """Enforce what the gateway last said for the sandbox: its policy, or
        deny-all once the policy was withdrawn (REMOVED)."""
        if self.book.latest(sandbox_id) is None:
            await self.withdraw([sandbox_id], REMOVED_REASON, REMOVED_MESSAGE, keep_baseline=True)
            return
        async with self._operation("policy update", wait=True), self._locks[sandbox_id]:
            scope = self.book.latest(sandbox_id)
            if scope is not None:
                await self._apply_locked(sandbox_id, scope)
        await self._events.notify()

    async def withdraw(
        self, sandbox_ids: Iterable[str], reason: str, message: str, *, keep_baseline: bool
    ) -> int:
        """The gateway has no policy for these sandboxes (REMOVED, or a
        completed resync did not mention them): their stored policy is
        forgotten and every BOUND attachment denies all traffic, PENDING,
        until a new policy arrives. ``keep_baseline``: an attachment still on
        its network class (it never had a policy) keeps it. Returns how many
        attachments turned."""
        wanted = set(sandbox_ids)
        for sandbox_id in sorted(wanted):
            await self._store.delete_policy(sandbox_id)

        def pick(record: AttachmentRecord) -> bool:
            if record.policy_state is PolicyState.PENDING:
                return False  # already closed
            return not (keep_baseline and record.policy_state is PolicyState.BASELINE)

        event = Event(EventKind.POLICY_APPLIED, False, reason, message)
        return await self._transition(
            "policy withdrawal", wanted, pick, PolicyState.PENDING, event, deny=True
        )

    async def degrade(self, sandbox_id: str, reason: str, message: str) -> None:
        """The sandbox's new policy was unusable: keep enforcing the last good
        one and say so."""
        async with self._locks[sandbox_id]:
            for record in await self._store.list_attachments(
                sandbox_id=sandbox_id, state=AttachmentState.BOUND
            ):
                await self._store.set_policy_status(
                    record.attachment_id, PolicyState.DEGRADED, record.policy_version,
                    event=Event(EventKind.POLICY_DEGRADED, True, reason, message),
                )  # fmt: skip
        await self._events.notify()

    async def mark_stale(
        self,
        *,
        deny: bool,
        sandbox_ids: Iterable[str] | None = None,
        reason: str = "StreamDown",
        message: str = "policy stream down longer than stale_threshold_ms",
    ) -> int:
        """Every attachment's policy (of ``sandbox_ids``, default all) is
        STALE, one DpuPolicyStale each; with ``deny``, their traffic is cut
        until fresh policy arrives. Withdrawn (PENDING) attachments already
        deny all and stay so. Returns how many turned stale."""

        def pick(record: AttachmentRecord) -> bool:
            return record.policy_state not in (PolicyState.STALE, PolicyState.PENDING)

        wanted = None if sandbox_ids is None else set(sandbox_ids)
        event = Event(EventKind.POLICY_STALE, True, reason, message)
        return await self._transition("stale policy", wanted, pick, PolicyState.STALE, event, deny=deny)

    async def _transition(
        self,
        what: str,
        sandbox_ids: set[str] | None,
        pick: Callable[[AttachmentRecord], bool],
        state: PolicyState,
        event: Event,
        *,
        deny: bool,
    ) -> int:
        """Turn the BOUND attachments ``pick`` selects (of ``sandbox_ids``,
        default all) to ``state`` with ``event``, all at once: the sandboxes
        nobody else holds go together in one step (their deny-all flows in
        one bundle, their states in one transaction); a sandbox busy with
        another operation follows as soon as that one is done."""
        async with self._operation(what, wait=True):
            affected = sorted(
                {
                    r.sandbox_id
                    for r in await self._store.list_attachments(state=AttachmentState.BOUND)
                    if (sandbox_ids is None or r.sandbox_id in sandbox_ids) and pick(r)
                }
            )
            free = [s for s in affected if not self._locks.locked(s)]
            busy = [s for s in affected if self._locks.locked(s)]
            async with contextlib.AsyncExitStack() as held:
                for sandbox_id in free:  # none is held: each acquire returns at once
                    await held.enter_async_context(self._locks[sandbox_id])
                turned = await self._transition_locked(set(free), pick, state, event, deny=deny)

            async def later(sandbox_id: str) -> int:
                async with self._locks[sandbox_id]:
                    return await self._transition_locked({sandbox_id}, pick, state, event, deny=deny)

            turned += sum(await asyncio.gather(*(later(s) for s in busy)))
        return turned

    async def _transition_locked(
        self,
        sandbox_ids: set[str],
        pick: Callable[[AttachmentRecord], bool],
        state: PolicyState,
        event: Event,
        *,
        deny: bool,
    ) -> int:
        """``_transition`` with the sandboxes' locks held. Order: the cut
        (two drops per attachment, one small bundle), then states and events
        together, then the watchers told; only after that are connections
        revoked and the drops replaced by the deny-all flows and read back,
        so none of it delays the cut nor its record."""
        records = [
            r
            for r in await self._store.list_attachments(state=AttachmentState.BOUND)
            if r.sandbox_id in sandbox_ids and pick(r)
        ]
        if not records:
            return 0
        began = time.monotonic()
        deny_all = self._classes[DENY_ALL_CLASS]
        dropped = False  # cut by drops that the deny-all flows replace after the record
        if deny:
            try:
                await self.dataplane.cut_many(records)
                dropped = True
            except OpenFlowError as exc:
                log.error(
                    "cutting %d attachments in one bundle failed (%s); one at a time", len(records), exc
                )
                records = await self._close_one_by_one(records, deny_all)
        cut = time.monotonic()
        await self._store.set_policy_statuses(
            [(r.attachment_id, state, r.policy_version) for r in records], event=event
        )
        recorded = time.monotonic()
        await self._events.notify()
        if deny and records:
            await self.dataplane.cut_zones(records)
            if dropped:
                try:
                    await self.dataplane.settle_cut(records, deny_all)
                except OpenFlowError as exc:
                    log.error("deny-all flows of %d attachments did not read back: %s", len(records), exc)
            await self.dataplane.drop_meters_if_unused(records, deny_all)
        log.info(
            "policy %s", state.value,
            extra={"attachments": len(records), "reason": event.reason, "deny_all": deny,
                   "cut_ms": round((cut - began) * 1000, 1), "recorded_ms": round((recorded - began) * 1000, 1),
                   "done_ms": round((time.monotonic() - began) * 1000, 1)},
        )  # fmt: skip
        return len(records)

    async def _close_one_by_one(
        self, records: Sequence[AttachmentRecord], deny_all: Scope
    ) -> list[AttachmentRecord]:
        closed = []
        for record in records:
            try:
                await self.dataplane.enforce(record, record.ofport, deny_all)
            except OpenFlowError as exc:
                log.error("closing %s failed: %s", record.attachment_id, exc)
                continue
            closed.append(record)
        return closed

    # -- explain ---------------------------------------------------------------

    async def explain(self, caller: Caller, attachment_id: str, packet: Packet) -> Explanation:
        """The policy's verdict for ``packet`` and the live switch's trace."""
        if not caller.is_admin:
            raise PermissionDenied("ExplainPacket is for admins")
        record = await self.get(caller, attachment_id)
        # What the switch enforces: deny-all while withdrawn or stale-denied.
        enforced = (
            self._classes[DENY_ALL_CLASS] if self._denied(record) else (await self._scope_for(record))[0]
        )
        verdict = evaluate(enforced, packet)
        ports = TracePorts(
            attachment_ofport=record.ofport,
            attachment_mac=record.mac,
            uplink_ofport=self.dataplane.uplink_ofport or 0,
        )
        request = trace_request(packet, ports)
        ctl = vswitchd_ctl(self._config.ovs.rundir, self._config.ovs.vswitchd_ctl)
        timeout = self._config.ovs.timeout_s
        try:
            text = await trace(ctl, self._config.ovs.bridge, request.flow, request.ct_next, timeout=timeout)
            odp = parse_dpif_show(await dpif_show(ctl, timeout=timeout), self._config.ovs.bridge)
            switch = parse_trace(text, request.expected_ofport, odp)
        except (TraceError, TraceParseError) as exc:
            raise Unavailable(f"tracing through the switch: {exc}") from exc
        return Explanation(verdict=verdict, trace=text, switch_agrees=switch.allowed == verdict.allowed)

    async def _undo_attach(self, record: AttachmentRecord, cause: BaseException) -> None:
        try:
            await self.dataplane.teardown(record)
            await self._store.delete_attachment(
                record.attachment_id, reason="AttachFailed", message=str(cause)
            )
            await self._unregister_if_unused(record.sandbox_id)
        except Exception:
            # Left ATTACHING in the store: the next start-up rolls it back.
            log.exception("rollback of attachment %s failed", record.attachment_id)
        await self._events.notify()

    # -- detach -------------------------------------------------------------------

    async def detach(self, caller: Caller, attachment_id: str, generation: int) -> bool:
        """True if detached now, False if it already was (idempotent)."""
        self._heard_from.add(caller.identity)
        found = await self._store.get(attachment_id) or await self._store.fence(attachment_id)
        async with self._operation("Detach", wait=False), self._locks[found.sandbox_id if found else ""]:
            record = await self._store.get(attachment_id)
            fence = await self._store.fence(attachment_id)
            owner = record.owner if record else fence.owner if fence else None
            if owner is None or not caller.may_see(owner):
                raise NotFound(f"attachment {attachment_id} not found")
            decision = decide_detach(generation, fence.generation if fence else None, record is not None)
            current = fence.generation if fence else 0
            if decision is DetachDecision.STALE:
                raise FailedPrecondition(
                    f"stale lease generation: {generation} is older than the current "
                    f"generation {current} of attachment {attachment_id}"
                )
            if decision is DetachDecision.NEVER_ISSUED:
                raise FailedPrecondition(
                    f"lease generation {generation} was never issued for attachment "
                    f"{attachment_id} (current {current})"
                )
            if decision is DetachDecision.NOT_FOUND:
                raise NotFound(f"attachment {attachment_id} not found")
            if decision is DetachDecision.ALREADY_DETACHED or record is None:
                return False
            if record.state is AttachmentState.ATTACHING:
                raise FailedPrecondition(
                    f"attachment {attachment_id} is still attaching; retry when it is bound"
                )
            await self._release(record, "Detached", f"detached by {caller.identity}", actor=caller.identity)
        await self._events.notify()
        return True

    async def _release(self, record: AttachmentRecord, reason: str, message: str, *, actor: str = "") -> None:
        """Detach ``record`` (its sandbox lock held): DETACHING, tear down,
        delete. A crash in between is finished by the next reconverge."""
        record = await self._store.mark_detaching(record.attachment_id)
        faults.reached("detach.marked")
        await self.dataplane.teardown(record)
        await self._store.delete_attachment(record.attachment_id, reason=reason, message=message, actor=actor)
        await self._unregister_if_unused(record.sandbox_id)
        log.info(
            "detached",
            extra={"attachment_id": record.attachment_id, "sandbox_id": record.sandbox_id, "reason": reason},
        )

    # -- host reconcile ----------------------------------------------------------

    async def reconcile_host(
        self, caller: Caller, host_instance_id: str, mode: ReconcileMode, known: Sequence[Known]
    ) -> HostReconcileResult:
        """Compare what a (restarted) host restored with what the coordinator
        holds for its identity; take matched attachments over for a new host
        instance; in AUTHORITATIVE mode release what the host does not know."""
        if not host_instance_id:
            raise InvalidArgument("host_instance_id", "required")
        seen: set[str] = set()
        for i, entry in enumerate(known):
            if not entry.attachment_id:
                raise InvalidArgument(f"known[{i}].attachment_id", "required")
            if entry.attachment_id in seen:
                raise InvalidArgument(f"known[{i}].attachment_id", f"{entry.attachment_id} listed twice")
            seen.add(entry.attachment_id)
        self._heard_from.add(caller.identity)
        owner = None if caller.is_admin else caller.identity
        decided: HostReconcilePlan = plan_host_reconcile(
            host_instance_id, known, await self._store.list_attachments(owner=owner)
        )
        taken = {}
        for record in decided.take_over:
            async with self._locks[record.sandbox_id]:
                current = await self._store.get(record.attachment_id)
                if current is not None and current.lease_generation == record.lease_generation:
                    taken[record.attachment_id] = await self._store.take_over(
                        record.attachment_id, host_instance_id
                    )
        matched = tuple(taken.get(r.attachment_id, r) for r in decided.matched)
        released: list[str] = []
        if mode is ReconcileMode.AUTHORITATIVE:
            async with self._operation("Reconcile", wait=False):
                for record in decided.coordinator_only:
                    async with self._locks[record.sandbox_id]:
                        current = await self._store.get(record.attachment_id)
                        if current is None or current.state is not AttachmentState.BOUND:
                            continue
                        await self._release(current, "ReleasedByReconcile",
                                            f"host instance {host_instance_id!r} does not know it (AUTHORITATIVE)")  # fmt: skip
                        released.append(record.attachment_id)
        await self._events.notify()
        log.info(
            "host reconciled",
            extra={"host": caller.identity, "host_instance_id": host_instance_id, "mode": mode.value,
                   "matched": len(matched), "coordinator_only": len(decided.coordinator_only),
                   "host_only": len(decided.host_only), "stale": len(decided.stale_generation),
                   "released": len(released), "taken_over": len(taken)},
        )  # fmt: skip
        return HostReconcileResult(
            matched=matched,
            coordinator_only=decided.coordinator_only,
            host_only=decided.host_only,
            stale_generation=decided.stale_generation,
            released=tuple(released),
        )

    async def expire_unreconciled(self) -> list[str]:
        """After ``reconcile.host_grace_s``: attachments whose host identity
        has not been heard from since start. advisory: one event each;
        authoritative: released. Returns their ids."""
        quiet = [
            r
            for r in await self._store.list_attachments(state=AttachmentState.BOUND)
            if r.owner not in self._heard_from
        ]
        authoritative = self._config.reconcile.reconcile_mode == "authoritative"
        for record in quiet:
            message = f"host {record.owner} has not reconciled within reconcile.host_grace_s"
            if authoritative:
                async with self._operation("reconcile expiry", wait=True), self._locks[record.sandbox_id]:
                    current = await self._store.get(record.attachment_id)
                    if current is not None and current.state is AttachmentState.BOUND:
                        await self._release(current, "HostNeverReconciled", message + ": released")
            else:
                await self._store.append_event(record, Event(EventKind.HOST_NOT_RECONCILED, False, "HostNeverReconciled",
                                         message + " (reconcile_mode advisory: kept)"))  # fmt: skip
        await self._events.notify()
        return [r.attachment_id for r in quiet]

    # -- queries -------------------------------------------------------------------

    async def get(self, caller: Caller, attachment_id: str) -> AttachmentRecord:
        record = await self._store.get(attachment_id)
        if record is None or not caller.may_see(record.owner):
            raise NotFound(f"attachment {attachment_id} not found")
        return record

    async def list_all(self) -> list[AttachmentRecord]:
        return await self._store.list_attachments()

    async def list(
        self, caller: Caller, *, sandbox_id: str, host_instance_id: str, state: AttachmentState | None
    ) -> list[AttachmentRecord]:
        owner = None if caller.is_admin else caller.identity
        return await self._store.list_attachments(
            owner=owner, sandbox_id=sandbox_id, host_instance_id=host_instance_id, state=state
        )
