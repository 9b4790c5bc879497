"""Attach and detach: one attachment's life.

Each follows the same shape: decide and claim in one store transaction,
act on the world, record the outcome; on failure undo what was done so bad
input or a failed step never leaves a claimed device, a port or flows
behind. A crash in between is finished by the next convergence.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from coordinator import faults
from coordinator.bounded import quoted
from coordinator.callers import Caller
from coordinator.dataplane_port import FlowsRejected
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
from coordinator.eswitch.base import DeviceKind
from coordinator.eswitch.mac import mac_for_device
from coordinator.event_kinds import Event, EventKind
from coordinator.gateway.policy_book import PolicyDenied
from coordinator.leases import DetachDecision, decide_detach
from coordinator.policy.scope import Scope
from coordinator.service import intent
from coordinator.service.context import ServiceContext
from coordinator.service.gate import OperationGate
from coordinator.service.health_checks import ServiceHealth
from coordinator.store.db import AttachmentLimitReached, PoolExhausted
from coordinator.store.records import AttachmentRecord, AttachmentState, NewAttachment, PolicyState

log = logging.getLogger(__name__)

A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class AttachParams:
    sandbox_id: str
    host_instance_id: str
    request_id: str
    kind: DeviceKind | None
    network_class: str  # "" = configured default
    initial_policy: str  # "" = configured default; "BASELINE" or "WAIT_INITIAL"
    initial_policy_timeout_ms: int = 0  # 0 = configured default


class Lifecycle:
    def __init__(self, ctx: ServiceContext, gate: OperationGate, health: ServiceHealth) -> None:
        self._ctx = ctx
        self._gate = gate
        self._health = health

    # -- attach -----------------------------------------------------------------

    async def attach(self, caller: Caller, params: AttachParams) -> AttachmentRecord:
        ctx = self._ctx
        network_class = params.network_class or ctx.config.policy.network_class_defaults
        if network_class not in ctx.classes:
            raise InvalidArgument(
                "network_class",
                f"unknown network class {network_class!r} (known: {', '.join(sorted(ctx.classes))})",
            )
        initial = intent.initial_policy(
            params.initial_policy, ctx.config.policy.initial_policy, has_stream=ctx.policy_source is not None
        )
        if initial == "WAIT_INITIAL" and ctx.policy_source is None:
            raise FailedPrecondition(
                "initial_policy WAIT_INITIAL needs the policy gateway stream, which is not configured "
                "(gateway.endpoint); use BASELINE"
            )
        ctx.heard_from.add(caller.identity)
        self._gate.refuse_attach_if_switch_lost()
        async with self._gate.operation("Attach", wait=False), ctx.locks[params.sandbox_id]:
            existing = await ctx.store.find_by_request(caller.identity, params.request_id)
            if existing is not None:
                return _replay(existing, params, network_class)
            # Whoever attaches a sandbox's device gets the sandbox's policy:
            # while one host identity has it attached, it is that host's.
            if any(r.owner != caller.identity for r in await ctx.store.attachments_of(params.sandbox_id)):
                raise PermissionDenied(
                    f"sandbox_id: sandbox {quoted(params.sandbox_id)} is attached by another host identity"
                )
            self._gate.admit_attach()
            failing = (await self._health.report(fresh=False)).failing_required()
            if failing:
                names = ", ".join(f"{c.name} ({c.detail})" for c in failing)
                raise FailedPrecondition(f"required health checks failing: {names}")
            record = await self._claim(caller, params, network_class)
            await ctx.events.notify()
            try:
                faults.reached("attach.claimed")
                if initial == "WAIT_INITIAL":
                    record = await self._install_waiting(record, params.initial_policy_timeout_ms)
                else:
                    record = await self.install(record)
                    ctx.register(record.sandbox_id)
                faults.reached("attach.bound")
            except BaseException as exc:
                await self._undo_attach(record, exc)
                raise
        await ctx.events.notify()
        log.info("attached", extra={"attachment_id": record.attachment_id, "sandbox_id": record.sandbox_id})
        return record

    async def _claim(self, caller: Caller, params: AttachParams, network_class: str) -> AttachmentRecord:
        ctx = self._ctx
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
            return await ctx.store.create_attachment(
                new,
                mac_for=lambda s: mac_for_device(ctx.mac_salt, s.kind, s.controller, s.pf, s.number),
                max_attachments=ctx.config.limits.max_attachments,
            )
        except (PoolExhausted, AttachmentLimitReached) as exc:
            raise ResourceExhausted(str(exc)) from exc

    async def _install_waiting(self, record: AttachmentRecord, timeout_ms: int) -> AttachmentRecord:
        """WAIT_INITIAL: plug the device closed (deny-all), ask the gateway for
        the sandbox's policy, enforce it when it comes, then mark BOUND."""
        ctx = self._ctx
        rep, ofport = await self._plug(record)
        await self._enforce(record, ofport, ctx.deny_all)
        ctx.register(record.sandbox_id)
        timeout = (timeout_ms or ctx.config.policy.initial_policy_timeout_ms) / 1000
        try:
            scope = await self._gate.unless_converging("Attach", ctx.book.wait(record.sandbox_id, timeout))
        except TimeoutError as exc:
            raise DeadlineExceeded(f"{exc}; attach of {record.sandbox_id} rolled back") from exc
        except PolicyDenied as exc:
            raise PermissionDenied(
                f"gateway refused the policy of sandbox {record.sandbox_id}: {exc}"
            ) from exc
        await self._enforce(record, ofport, scope)
        faults.reached("attach.flows_installed")
        # The gateway's policy becomes the sandbox's last good one in the
        # same commit that marks the attachment BOUND.
        return await ctx.store.mark_bound(
            record.attachment_id,
            ofport=ofport,
            policy_state=PolicyState.APPLIED,
            policy_version=scope.version,
            representor=rep,
            last_good=scope,
        )

    async def install(self, record: AttachmentRecord) -> AttachmentRecord:
        """Plug, install and verify the sandbox's flows, mark BOUND. The
        stored policy is read while the device is plugged."""
        chosen, (rep, ofport) = await _both(self._ctx.last_good(record), self._plug(record))
        await self._enforce(record, ofport, chosen.scope)
        faults.reached("attach.flows_installed")
        return await self._ctx.store.mark_bound(
            record.attachment_id,
            ofport=ofport,
            policy_state=chosen.state,
            policy_version=chosen.version,
            representor=rep,
        )

    async def _plug(self, record: AttachmentRecord) -> tuple[str, int]:
        """Prepare the device and put its representor on the bridge; returns
        the representor's name and OpenFlow port. Idempotent.

        A VF's representor exists before its function is prepared (the host
        made the VF), so it goes on the bridge meanwhile: no flow lets its
        traffic in before the policy's. An SF's exists only once prepared."""
        dataplane = self._ctx.dataplane
        expected = record.device.representor
        if record.device.kind is not DeviceKind.VF:
            rep = await dataplane.prepare(record)
            faults.reached("attach.device_prepared")
            return rep, await self._add_port(record, rep)
        prepared, added = await asyncio.gather(
            dataplane.prepare(record), dataplane.add_port(record, expected), return_exceptions=True
        )
        if isinstance(prepared, BaseException):
            raise prepared
        rep = prepared
        faults.reached("attach.device_prepared")
        if rep != expected:
            # Named otherwise than the pool said: that name off the bridge again.
            await dataplane.remove_port(expected)
            return rep, await self._add_port(record, rep)
        if isinstance(added, BaseException):
            # e.g. the representor was only made by the prepare: once more.
            log.info("adding port %s again after its device was prepared (%s)", rep, added)
            return rep, await self._add_port(record, rep)
        faults.reached("attach.port_added")
        return rep, added

    async def _add_port(self, record: AttachmentRecord, representor: str) -> int:
        ofport = await self._ctx.dataplane.add_port(record, representor)
        faults.reached("attach.port_added")
        return ofport

    async def _enforce(self, record: AttachmentRecord, ofport: int, scope: Scope) -> None:
        try:
            await self._ctx.dataplane.enforce(record, ofport, scope)
        except FlowsRejected as exc:
            raise Unavailable(f"attaching {record.device.device_id}: {exc}") from exc

    async def _undo_attach(self, record: AttachmentRecord, cause: BaseException) -> None:
        ctx = self._ctx
        try:
            await ctx.dataplane.teardown(record)
            await ctx.store.delete_attachment(record.attachment_id, reason="AttachFailed", message=str(cause))
            await ctx.unregister_if_unused(record.sandbox_id)
        except Exception:
            # Left ATTACHING in the store: the next start-up rolls it back.
            log.exception("rollback of attachment %s failed", record.attachment_id)
        await ctx.events.notify()

    async def device_returned(self, record: AttachmentRecord) -> None:
        """A removed device is back (the host re-created the VF): its function
        lost its address and its representor may be a new port: re-install."""
        ctx = self._ctx
        async with self._gate.operation("re-install", wait=True), ctx.locks[record.sandbox_id]:
            current = await ctx.store.get(record.attachment_id)
            if current is None or current.state is not AttachmentState.BOUND:
                return
            try:
                await self.install(current)
            except Unavailable as exc:
                await ctx.store.append_event(
                    current, Event(EventKind.ATTACHMENT_DRIFT, False, "ReinstallFailed", str(exc))
                )
        await ctx.events.notify()

    # -- detach -------------------------------------------------------------------

    async def detach(self, caller: Caller, attachment_id: str, generation: int) -> bool:
        """True if detached now, False if it already was (idempotent)."""
        ctx = self._ctx
        ctx.heard_from.add(caller.identity)
        record, fence = await ctx.store.attachment_and_fence(attachment_id)
        found = record or fence
        async with self._gate.operation("Detach", wait=False), ctx.locks[found.sandbox_id if found else ""]:
            record, fence = await ctx.store.attachment_and_fence(attachment_id)
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
            await self.release(record, "Detached", f"detached by {caller.identity}", actor=caller.identity)
        await ctx.events.notify()
        return True

    async def release(self, record: AttachmentRecord, reason: str, message: str, *, actor: str = "") -> None:
        """Detach ``record`` (its sandbox lock held): DETACHING, tear down,
        delete. A crash in between is finished by the next reconverge."""
        ctx = self._ctx
        record = await ctx.store.mark_detaching(record.attachment_id)
        faults.reached("detach.marked")
        await ctx.dataplane.teardown(record)
        await ctx.store.delete_attachment(record.attachment_id, reason=reason, message=message, actor=actor)
        await ctx.unregister_if_unused(record.sandbox_id)
        log.info(
            "detached",
            extra={"attachment_id": record.attachment_id, "sandbox_id": record.sandbox_id, "reason": reason},
        )


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both side by side; the first failure is raised once both have
    finished (an undo that follows must not race a step still running)."""
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (one, two):
        if isinstance(outcome, BaseException):
            raise outcome
    return one, two  # type: ignore[return-value]  # neither is an exception here


def _replay(existing: AttachmentRecord, params: AttachParams, network_class: str) -> AttachmentRecord:
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
