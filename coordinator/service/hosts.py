"""A host's Reconcile, and the hosts that never reconciled.

A restarted host says which attachments it restored; matched ones are
taken over by its new instance, and in AUTHORITATIVE mode the ones it does
not know are released. Hosts not heard from within
``reconcile.host_grace_s`` of a start are reported or released.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.callers import Caller
from coordinator.errors import InvalidArgument
from coordinator.event_kinds import Event, EventKind
from coordinator.host_reconcile import HostReconcilePlan, Known, ReconcileMode, plan_host_reconcile
from coordinator.service.context import ServiceContext
from coordinator.service.gate import OperationGate
from coordinator.service.lifecycle import Lifecycle
from coordinator.store.records import AttachmentRecord, AttachmentState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostReconcileResult:
    matched: tuple[AttachmentRecord, ...]
    coordinator_only: tuple[AttachmentRecord, ...]
    host_only: tuple[Known, ...]
    stale_generation: tuple[Known, ...]
    released: tuple[str, ...]


class HostSync:
    def __init__(self, ctx: ServiceContext, gate: OperationGate, lifecycle: Lifecycle) -> None:
        self._ctx = ctx
        self._gate = gate
        self._lifecycle = lifecycle

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
        ctx = self._ctx
        ctx.heard_from.add(caller.identity)
        owner = None if caller.is_admin else caller.identity
        decided: HostReconcilePlan = plan_host_reconcile(
            host_instance_id, known, await ctx.store.list_attachments(owner=owner)
        )
        taken = {}
        for record in decided.take_over:
            async with ctx.locks[record.sandbox_id]:
                current = await ctx.store.get(record.attachment_id)
                if current is not None and current.lease_generation == record.lease_generation:
                    taken[record.attachment_id] = await ctx.store.take_over(
                        record.attachment_id, host_instance_id
                    )
        matched = tuple(taken.get(r.attachment_id, r) for r in decided.matched)
        released: list[str] = []
        if mode is ReconcileMode.AUTHORITATIVE:
            async with self._gate.operation("Reconcile", wait=False):
                for record in decided.coordinator_only:
                    async with ctx.locks[record.sandbox_id]:
                        current = await ctx.store.get(record.attachment_id)
                        if current is None or current.state is not AttachmentState.BOUND:
                            continue
                        await self._lifecycle.release(current, "ReleasedByReconcile",
                                                      f"host instance {host_instance_id!r} does not know it (AUTHORITATIVE)")  # fmt: skip
                        released.append(record.attachment_id)
        await ctx.events.notify()
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
        ctx = self._ctx
        quiet = [
            r
            for r in await ctx.store.list_attachments(state=AttachmentState.BOUND)
            if r.owner not in ctx.heard_from
        ]
        authoritative = ctx.config.reconcile.reconcile_mode == "authoritative"
        for record in quiet:
            message = f"host {record.owner} has not reconciled within reconcile.host_grace_s"
            if authoritative:
                async with self._gate.operation("reconcile expiry", wait=True), ctx.locks[record.sandbox_id]:
                    current = await ctx.store.get(record.attachment_id)
                    if current is not None and current.state is AttachmentState.BOUND:
                        await self._lifecycle.release(current, "HostNeverReconciled", message + ": released")
            else:
                await ctx.store.append_event(record, Event(EventKind.HOST_NOT_RECONCILED, False, "HostNeverReconciled",
                                             message + " (reconcile_mode advisory: kept)"))  # fmt: skip
        await ctx.events.notify()
        return [r.attachment_id for r in quiet]
