"""The attachment service: Attach, Detach, Get, List, Health.

Orchestrates store, eswitch backend and switch. Each mutation follows the
same shape: decide and claim in one store transaction, act on the world,
record the outcome; on failure undo what was done so bad input or a failed
step never leaves a claimed device, a port or flows behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from coordinator.callers import Caller
from coordinator.config import Config
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
from coordinator.eswitch.base import DeviceKind, EswitchBackend, EswitchError, HealthFact
from coordinator.eswitch.mac import mac_for_device
from coordinator.events import EventHub
from coordinator.flows.compiler import (
    BRIDGE_COOKIE,
    BridgeFacts,
    PortFacts,
    attachment_flows,
    bridge_flows,
    cookie_for_slot,
    default_burst_kb,
    meter_id,
)
from coordinator.flows.pipeline import Pipeline
from coordinator.flows.render import render_flows
from coordinator.flows.trace import TraceParseError, TracePorts, parse_dpif_show, parse_trace, trace_request
from coordinator.gateway.client import StreamStatus
from coordinator.health import HealthReport, ovs_checks
from coordinator.leases import DetachDecision, decide_detach
from coordinator.ovs.conntrack import ConntrackControl, ConntrackError
from coordinator.ovs.control import vswitchd_ctl
from coordinator.ovs.openflow import OpenFlowError, OpenFlowSwitch, SyncResult
from coordinator.ovs.ovsdb import ATTACHMENT_KEY, OWNER_KEY, OWNER_VALUE, SANDBOX_KEY, Ovsdb, OvsdbError
from coordinator.ovs.trace import TraceError, dpif_show, trace
from coordinator.policy.evaluator import Verdict, evaluate
from coordinator.policy.packet import Packet
from coordinator.policy.scope import Scope
from coordinator.policy.validate import PolicyError, scope_from_mapping, scope_to_mapping
from coordinator.policy_book import PolicyBook, PolicyDenied
from coordinator.store.db import AttachmentLimitReached, PoolExhausted, Store
from coordinator.store.records import AttachmentRecord, AttachmentState, NewAttachment, PolicyState, PoolStats

log = logging.getLogger(__name__)

ROLE_KEY = "bluefield-coordinator-role"
HEALTH_TTL_S = 1.0
DENY_ALL_CLASS = "dpu-ovs-deny-all"


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


class AttachmentService:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
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
        self._pipeline = pipeline
        self._classes = network_classes
        self._events = events
        self._mac_salt = mac_salt
        # Mutations of one sandbox (attach, detach, policy) run one at a
        # time; different sandboxes proceed in parallel.
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Latest gateway policies; the gateway stream (if any) registers
        # sandboxes through policy_source.
        self.book = PolicyBook()
        self.policy_source: PolicySource | None = None
        self._conntrack = ConntrackControl(
            vswitchd_ctl(config.ovs.rundir, config.ovs.vswitchd_ctl),
            timeout=config.ovs.timeout_s,
            userspace_datapath=config.ovs.datapath_type == "netdev",
        )
        self._uplink_ofport: int | None = None
        # slot -> whether its meter exists; absent = not known since start.
        self._metered: dict[int, bool] = {}
        self._health: tuple[float, HealthReport] | None = None

    # -- start-up -----------------------------------------------------------

    async def start(self) -> None:
        """Bring the bridge and every stored attachment to their intended
        state: finish what a crash interrupted, re-install flows."""
        cfg = self._config.ovs
        self._store.sync_devices(self._backend.inventory())
        await self._ovsdb.ensure_bridge(cfg.bridge, cfg.datapath_type)
        if cfg.uplink:
            self._uplink_ofport = await self._ovsdb.ensure_port(
                cfg.bridge, cfg.uplink, {OWNER_KEY: OWNER_VALUE, ROLE_KEY: "uplink"}
            )
        await self._install_bridge_flows()
        for record in self._store.list_attachments():
            if record.state is AttachmentState.BOUND:
                await self._install(record)
            else:
                # ATTACHING: the client never got an answer; DETACHING: the
                # client asked for it to go. Either way, finish removing it.
                await self._teardown(record)
                self._store.delete_attachment(
                    record.attachment_id,
                    reason="RolledBack",
                    message=f"{record.state.value} interrupted by a restart",
                )
        await self._events.notify()

    async def _install_bridge_flows(self) -> None:
        flows = bridge_flows(self._pipeline, BridgeFacts(uplink_ofport=self._uplink_ofport))
        await self._openflow.sync(BRIDGE_COOKIE, render_flows(flows, self._pipeline))

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

    def pools(self) -> list[PoolStats]:
        return self._store.pool_stats()

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
        async with self._locks[params.sandbox_id]:
            existing = self._store.find_by_request(caller.identity, params.request_id)
            if existing is not None:
                return self._replay(existing, params, network_class)
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
                record = self._store.create_attachment(
                    new,
                    mac_for=lambda s: mac_for_device(self._mac_salt, s.kind, s.controller, s.pf, s.number),
                    max_attachments=self._config.limits.max_attachments,
                )
            except (PoolExhausted, AttachmentLimitReached) as exc:
                raise ResourceExhausted(str(exc)) from exc
            await self._events.notify()
            try:
                if initial == "WAIT_INITIAL":
                    record = await self._install_waiting(record, params.initial_policy_timeout_ms)
                else:
                    record = await self._install(record)
                    self._register(record.sandbox_id)
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

    def _unregister_if_unused(self, sandbox_id: str) -> None:
        if self.policy_source is not None and not self._store.list_attachments(sandbox_id=sandbox_id):
            self.policy_source.unregister([sandbox_id])
            self.book.forget(sandbox_id)

    async def _install_waiting(self, record: AttachmentRecord, timeout_ms: int) -> AttachmentRecord:
        """WAIT_INITIAL: plug the device closed (deny-all), ask the gateway for
        the sandbox's policy, enforce it when it comes, then mark BOUND."""
        rep, ofport = await self._plug(record)
        try:
            await self._enforce(record, ofport, self._classes[DENY_ALL_CLASS])
        except OpenFlowError as exc:
            raise Unavailable(f"attaching {record.device.device_id}: {exc}") from exc
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
        try:
            await self._enforce(record, ofport, scope)
        except OpenFlowError as exc:
            raise Unavailable(f"attaching {record.device.device_id}: {exc}") from exc
        self._store.save_policy(record.sandbox_id, scope.version, json.dumps(scope_to_mapping(scope)))
        return self._store.mark_bound(
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

    def _scope_for(self, record: AttachmentRecord) -> tuple[Scope, PolicyState, int]:
        """The sandbox's last good policy if there is one, else its class."""
        stored = self._store.policy(record.sandbox_id)
        if stored is None:
            return self._classes[record.network_class], PolicyState.BASELINE, 0
        version, text = stored
        try:
            return scope_from_mapping(json.loads(text)), PolicyState.APPLIED, version
        except (ValueError, PolicyError) as exc:
            # Validated before it was stored; unreadable now means the store
            # was tampered with or limits tightened. Fail closed.
            log.error("stored policy of sandbox %s unusable (%s); denying all", record.sandbox_id, exc)
            return self._classes[DENY_ALL_CLASS], PolicyState.DEGRADED, version

    async def _enforce(self, record: AttachmentRecord, ofport: int, scope: Scope) -> SyncResult:
        port = PortFacts(ofport=ofport, mac=record.mac, zone=record.slot, cookie=cookie_for_slot(record.slot))
        flows = attachment_flows(self._pipeline, port, scope)
        limit = scope.egress_rate_limit
        if limit is not None:
            await self._openflow.set_meter(
                meter_id(port), limit.kbps, limit.burst_kb or default_burst_kb(limit.kbps)
            )
            self._metered[record.slot] = True
        result = await self._openflow.sync(port.cookie, render_flows(flows, self._pipeline))
        # A meter is removed only where one may exist: after a rate-limited
        # policy, or once per slot after start (what OVS holds is unknown then).
        # Policy updates without a rate limit spawn no extra ovs-ofctl.
        if limit is None and self._metered.get(record.slot, True):
            await self._openflow.delete_meter(meter_id(port))
            self._metered[record.slot] = False
        return result

    async def _plug(self, record: AttachmentRecord) -> tuple[str, int]:
        """Prepare the device and put its representor on the bridge; returns
        the representor's name and OpenFlow port. Idempotent."""
        try:
            rep = await asyncio.to_thread(self._backend.prepare, record.device, record.mac)
            ofport = await self._ovsdb.ensure_port(self._config.ovs.bridge, rep, self._port_ids(record))
            # Before any flow lets traffic in: a limit does not count the
            # connections that already exist when it is set.
            await self._conntrack.set_zone_limit(record.slot, self._config.limits.conntrack_per_attachment)
        except (EswitchError, OvsdbError, ConntrackError) as exc:
            raise Unavailable(f"attaching {record.device.device_id}: {exc}") from exc
        return rep, ofport

    async def _install(self, record: AttachmentRecord) -> AttachmentRecord:
        """Plug, install and verify the sandbox's flows, mark BOUND.
        Idempotent: also used to re-install."""
        scope, state, version = self._scope_for(record)
        rep, ofport = await self._plug(record)
        try:
            await self._enforce(record, ofport, scope)
        except OpenFlowError as exc:
            raise Unavailable(f"attaching {record.device.device_id}: {exc}") from exc
        if (
            record.state is AttachmentState.BOUND
            and record.ofport == ofport
            and record.policy_state is state
            and record.device.representor == rep
        ):
            return record
        return self._store.mark_bound(
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
        async with self._locks[sandbox_id]:
            results = await self._apply_locked(sandbox_id, scope)
        await self._events.notify()
        return results

    async def _apply_locked(self, sandbox_id: str, scope: Scope) -> list[AttachmentRecord]:
        results = []
        failed = False
        records = self._store.list_attachments(sandbox_id=sandbox_id, state=AttachmentState.BOUND)
        for record in records:
            try:
                sync = await self._enforce(record, record.ofport, scope)
            except OpenFlowError as exc:
                failed = True
                event = ("DpuPolicyDegraded", True, "ApplyFailed", f"version {scope.version}: {exc}")
                results.append(
                    self._store.set_policy_status(
                        record.attachment_id, PolicyState.DEGRADED, record.policy_version, event=event
                    )
                )
                continue
            cut = await self._revoke(record, scope)
            message = f"version {scope.version}: {sync.total} flows (+{sync.added} -{sync.removed}){cut}"
            event = ("DpuPolicyApplied", True, "Applied", message)
            results.append(
                self._store.set_policy_status(
                    record.attachment_id, PolicyState.APPLIED, scope.version, event=event
                )
            )
        if not failed:
            self._store.save_policy(sandbox_id, scope.version, json.dumps(scope_to_mapping(scope)))
        return results

    async def apply_latest(self, sandbox_id: str) -> None:
        """Enforce what the gateway last said for the sandbox: its policy, or
        deny-all once the policy was withdrawn (REMOVED)."""
        async with self._locks[sandbox_id]:
            scope = self.book.latest(sandbox_id)
            if scope is not None:
                await self._apply_locked(sandbox_id, scope)
            else:
                self._store.delete_policy(sandbox_id)
                await self._close_all(sandbox_id, PolicyState.PENDING, ("DpuPolicyApplied", False, "PolicyRemoved",
                                      "the gateway withdrew the policy: deny-all until a new one arrives"))  # fmt: skip
        await self._events.notify()

    async def _close_all(
        self, sandbox_id: str, state: PolicyState, event: tuple[str, bool, str, str]
    ) -> None:
        """Deny-all flows and ``state`` for every BOUND attachment of the
        sandbox (policy withdrawn, or stale with on_stale = deny-all)."""
        deny_all = self._classes[DENY_ALL_CLASS]
        for record in self._store.list_attachments(sandbox_id=sandbox_id, state=AttachmentState.BOUND):
            try:
                await self._enforce(record, record.ofport, deny_all)
                await self._revoke(record, deny_all)
            except OpenFlowError as exc:
                log.error("closing %s failed: %s", record.attachment_id, exc)
                continue
            self._store.set_policy_status(record.attachment_id, state, record.policy_version, event=event)

    async def degrade(self, sandbox_id: str, reason: str, message: str) -> None:
        """The sandbox's new policy was unusable: keep enforcing the last good
        one and say so."""
        async with self._locks[sandbox_id]:
            for record in self._store.list_attachments(sandbox_id=sandbox_id, state=AttachmentState.BOUND):
                self._store.set_policy_status(
                    record.attachment_id, PolicyState.DEGRADED, record.policy_version,
                    event=("DpuPolicyDegraded", True, reason, message),
                )  # fmt: skip
        await self._events.notify()

    async def mark_stale(self, *, deny: bool) -> int:
        """The policy stream has been down too long: every attachment's
        policy is STALE (one DpuPolicyStale each); with ``deny``, cut their
        traffic until fresh policy arrives. Returns how many turned stale."""
        turned = 0
        for sandbox_id in sorted(
            {r.sandbox_id for r in self._store.list_attachments(state=AttachmentState.BOUND)}
        ):
            async with self._locks[sandbox_id]:
                fresh = [
                    r for r in self._store.list_attachments(sandbox_id=sandbox_id, state=AttachmentState.BOUND)
                    if r.policy_state is not PolicyState.STALE
                ]  # fmt: skip
                event = (
                    "DpuPolicyStale",
                    True,
                    "StreamDown",
                    "policy stream down longer than stale_threshold_ms",
                )
                if deny:
                    await self._close_all(sandbox_id, PolicyState.STALE, event)
                else:
                    for record in fresh:
                        self._store.set_policy_status(
                            record.attachment_id, PolicyState.STALE, record.policy_version, event=event
                        )
                turned += len(fresh)
        await self._events.notify()
        return turned

    async def _revoke(self, record: AttachmentRecord, scope: Scope) -> str:
        """Cut the attachment's connections ``scope`` no longer allows; the
        ones it still allows keep their conntrack entries. Returns a note
        for the event message."""
        try:
            result = await self._conntrack.revoke_entries(record.slot, scope)
        except ConntrackError as exc:
            log.warning("revoking connections of %s failed: %s", record.attachment_id, exc)
            return f"; revoking connections failed: {exc}"
        note = f"; {len(result.flushed)} revoked connections cut" if result.flushed else ""
        if result.unflushable:
            # OVS 3.1's userspace conntrack cannot flush ICMPv6 entries by
            # tuple; they stay until they time out (and never carry new flows).
            note += f"; {len(result.unflushable)} revoked ICMPv6 entries left to expire"
        return note

    # -- explain ---------------------------------------------------------------

    async def explain(self, caller: Caller, attachment_id: str, packet: Packet) -> Explanation:
        """The policy's verdict for ``packet`` and the live switch's trace."""
        if not caller.is_admin:
            raise PermissionDenied("ExplainPacket is for admins")
        record = self.get(caller, attachment_id)
        verdict = evaluate(self._scope_for(record)[0], packet)
        ports = TracePorts(
            attachment_ofport=record.ofport, attachment_mac=record.mac, uplink_ofport=self._uplink_ofport or 0
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
            await self._teardown(record)
            self._store.delete_attachment(record.attachment_id, reason="AttachFailed", message=str(cause))
            self._unregister_if_unused(record.sandbox_id)
        except Exception:
            # Left ATTACHING in the store: the next start-up rolls it back.
            log.exception("rollback of attachment %s failed", record.attachment_id)
        await self._events.notify()

    def _port_ids(self, record: AttachmentRecord) -> dict[str, str]:
        return {
            OWNER_KEY: OWNER_VALUE,
            ROLE_KEY: "attachment",
            ATTACHMENT_KEY: record.attachment_id,
            SANDBOX_KEY: record.sandbox_id,
        }

    async def _teardown(self, record: AttachmentRecord) -> None:
        """Flows first (the port then carries no traffic: the bridge is
        fail-secure), then the port, then the device. Each step idempotent."""
        try:
            await self._openflow.delete(cookie_for_slot(record.slot))
            await self._openflow.delete_meter(record.slot)
            self._metered.pop(record.slot, None)
            # The next attachment in this slot starts with an empty zone.
            await self._conntrack.flush_zone(record.slot)
            await self._conntrack.delete_zone_limit(record.slot)
            await self._ovsdb.delete_port(self._config.ovs.bridge, record.device.representor)
            await asyncio.to_thread(self._backend.release, record.device)
        except (EswitchError, OvsdbError, OpenFlowError, ConntrackError) as exc:
            raise Unavailable(f"detaching {record.attachment_id}: {exc}") from exc

    # -- detach -------------------------------------------------------------------

    async def detach(self, caller: Caller, attachment_id: str, generation: int) -> bool:
        """True if detached now, False if it already was (idempotent)."""
        found = self._store.get(attachment_id) or self._store.fence(attachment_id)
        async with self._locks[found.sandbox_id if found else ""]:
            record = self._store.get(attachment_id)
            fence = self._store.fence(attachment_id)
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
            record = self._store.mark_detaching(attachment_id)
            await self._teardown(record)
            self._store.delete_attachment(
                attachment_id, reason="Detached", message=f"detached by {caller.identity}"
            )
            self._unregister_if_unused(record.sandbox_id)
        await self._events.notify()
        log.info("detached", extra={"attachment_id": attachment_id, "sandbox_id": record.sandbox_id})
        return True

    # -- queries -------------------------------------------------------------------

    def get(self, caller: Caller, attachment_id: str) -> AttachmentRecord:
        record = self._store.get(attachment_id)
        if record is None or not caller.may_see(record.owner):
            raise NotFound(f"attachment {attachment_id} not found")
        return record

    def list_all(self) -> list[AttachmentRecord]:
        return self._store.list_attachments()

    def list(
        self, caller: Caller, *, sandbox_id: str, host_instance_id: str, state: AttachmentState | None
    ) -> list[AttachmentRecord]:
        owner = None if caller.is_admin else caller.identity
        return self._store.list_attachments(
            owner=owner, sandbox_id=sandbox_id, host_instance_id=host_instance_id, state=state
        )
