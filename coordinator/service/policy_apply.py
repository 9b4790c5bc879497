"""Policy on the switch: a new policy applied, an unusable one degraded,
a stale one marked (and cut with ``on_stale = "deny-all"``), a withdrawn
one replaced by deny-all.

An apply changes each attachment in one atomic bundle of only the
differing flows, read back and compared; the policy becomes the stored last
good one only if every attachment took it. A stale or withdrawn policy turns
many attachments at once (``transition``): the cut first, then the record,
then the slower hygiene.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from coordinator import faults
from coordinator.dataplane_port import FlowsRejected
from coordinator.event_kinds import Event, EventKind
from coordinator.policy.scope import Scope
from coordinator.service.context import ServiceContext
from coordinator.service.gate import OperationGate
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState

log = logging.getLogger(__name__)

REMOVED_REASON = "PolicyRemoved"
REMOVED_MESSAGE = "the gateway withdrew the policy: deny-all until a new one arrives"

# Up to this many sandboxes a transition reads their attachments one
# sandbox at a time; more, all attachments at once.
FEW_SANDBOXES = 8


class PolicyApply:
    def __init__(self, ctx: ServiceContext, gate: OperationGate) -> None:
        self._ctx = ctx
        self._gate = gate

    async def apply_policy(self, sandbox_id: str, scope: Scope) -> list[AttachmentRecord]:
        """Make ``scope`` the sandbox's policy on every attachment it has.

        Each attachment changes in one atomic bundle of only the differing
        flows, is read back and compared, and only then counts as applied.
        The policy becomes the stored last good one only if every attachment
        took it; one that failed keeps its previous flows (the bundle is all
        or nothing) and is marked DEGRADED.
        """
        async with self._gate.operation("policy update", wait=True), self._ctx.locks[sandbox_id]:
            results = await self._apply_locked(sandbox_id, scope)
        await self._ctx.events.notify()
        return results

    async def _apply_locked(self, sandbox_id: str, scope: Scope) -> list[AttachmentRecord]:
        ctx = self._ctx
        outcomes: list[tuple[str, PolicyState, int, Event]] = []
        failed = False
        # Its stored form is worked out while the switch reads back the
        # first attachment's flows (a thousand rules' worth is most of a
        # millisecond), not after.
        to_keep = ctx.store.policy_to_keep(sandbox_id, scope)
        records = await ctx.store.attachments_of(sandbox_id, AttachmentState.BOUND)
        for record in records:
            began = time.monotonic()
            try:
                sync, cut = await ctx.dataplane.enforce_and_revoke(
                    record, record.ofport, scope, meanwhile=to_keep.stored
                )
            except FlowsRejected as exc:
                ctx.observer.policy_applied(time.monotonic() - began, ok=False)
                failed = True
                event = Event(
                    EventKind.POLICY_DEGRADED, True, "ApplyFailed", f"version {scope.version}: {exc}"
                )
                outcomes.append((record.attachment_id, PolicyState.DEGRADED, record.policy_version, event))
                continue
            ctx.observer.policy_applied(time.monotonic() - began, ok=True)
            faults.reached("policy.flows_applied")
            message = f"version {scope.version}: {sync.total} flows (+{sync.added} -{sync.removed}){cut}"
            event = Event(EventKind.POLICY_APPLIED, True, "Applied", message)
            outcomes.append((record.attachment_id, PolicyState.APPLIED, scope.version, event))
        # Every attachment's state and event, and the policy as the last good
        # one when all took it (also when the sandbox has no attachment yet:
        # its next one starts on it), in one commit.
        results = await ctx.store.record_policy_results(outcomes, last_good=None if failed else to_keep)
        faults.reached("policy.status_recorded")
        return results

    async def apply_latest(self, sandbox_id: str) -> None:
        """Enforce what the gateway last said for the sandbox: its policy, or
        deny-all once the policy was withdrawn (REMOVED)."""
        if self._ctx.book.latest(sandbox_id) is None:
            await self.withdraw([sandbox_id], REMOVED_REASON, REMOVED_MESSAGE, keep_baseline=True)
            return
        async with self._gate.operation("policy update", wait=True), self._ctx.locks[sandbox_id]:
            scope = self._ctx.book.latest(sandbox_id)
            if scope is not None:
                await self._apply_locked(sandbox_id, scope)
        await self._ctx.events.notify()

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
        store = self._ctx.store
        for sandbox_id in sorted(wanted):
            # The gateway withdraws every sandbox it has no policy for (each
            # new one, on an attach storm): a read, not a commit, when none is kept.
            if await store.policy_version(sandbox_id) is not None:
                await store.delete_policy(sandbox_id)

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
        ctx = self._ctx
        async with ctx.locks[sandbox_id]:
            for record in await ctx.store.attachments_of(sandbox_id, AttachmentState.BOUND):
                await ctx.store.set_policy_status(
                    record.attachment_id, PolicyState.DEGRADED, record.policy_version,
                    event=Event(EventKind.POLICY_DEGRADED, True, reason, message),
                )  # fmt: skip
        await ctx.events.notify()

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
        locks = self._ctx.locks
        async with self._gate.operation(what, wait=True):
            affected = sorted({r.sandbox_id for r in await self._bound(sandbox_ids) if pick(r)})
            free = [s for s in affected if not locks.locked(s)]
            busy = [s for s in affected if locks.locked(s)]
            async with contextlib.AsyncExitStack() as held:
                for sandbox_id in free:  # none is held: each acquire returns at once
                    await held.enter_async_context(locks[sandbox_id])
                turned = await self._transition_locked(set(free), pick, state, event, deny=deny)

            async def later(sandbox_id: str) -> int:
                async with locks[sandbox_id]:
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
        ctx = self._ctx
        records = [r for r in await self._bound(sandbox_ids) if pick(r)]
        if not records:
            return 0
        began = time.monotonic()
        deny_all = ctx.deny_all
        dropped = False  # cut by drops that the deny-all flows replace after the record
        if deny:
            try:
                await ctx.dataplane.cut_many(records)
                dropped = True
            except FlowsRejected as exc:
                log.error(
                    "cutting %d attachments in one bundle failed (%s); one at a time", len(records), exc
                )
                records = await self._close_one_by_one(records, deny_all)
        cut = time.monotonic()
        await ctx.store.record_policy_results(
            [(r.attachment_id, state, r.policy_version, event) for r in records]
        )
        recorded = time.monotonic()
        await ctx.events.notify()
        if deny and records:
            await ctx.dataplane.cut_zones(records)
            if dropped:
                try:
                    await ctx.dataplane.settle_cut(records, deny_all)
                except FlowsRejected as exc:
                    log.error("deny-all flows of %d attachments did not read back: %s", len(records), exc)
            await ctx.dataplane.drop_meters_if_unused(records, deny_all)
        log.info(
            "policy %s", state.value,
            extra={"attachments": len(records), "reason": event.reason, "deny_all": deny,
                   "cut_ms": round((cut - began) * 1000, 1), "recorded_ms": round((recorded - began) * 1000, 1),
                   "done_ms": round((time.monotonic() - began) * 1000, 1)},
        )  # fmt: skip
        return len(records)

    async def _bound(self, sandbox_ids: set[str] | None) -> list[AttachmentRecord]:
        """The BOUND attachments of ``sandbox_ids`` (default all): a few
        sandboxes by their own reads, not a read of every attachment."""
        store = self._ctx.store
        if sandbox_ids is not None and len(sandbox_ids) <= FEW_SANDBOXES:
            return [
                r for s in sorted(sandbox_ids) for r in await store.attachments_of(s, AttachmentState.BOUND)
            ]
        return [
            r
            for r in await store.list_attachments(state=AttachmentState.BOUND)
            if sandbox_ids is None or r.sandbox_id in sandbox_ids
        ]

    async def _close_one_by_one(
        self, records: Sequence[AttachmentRecord], deny_all: Scope
    ) -> list[AttachmentRecord]:
        closed = []
        for record in records:
            try:
                await self._ctx.dataplane.enforce(record, record.ofport, deny_all)
            except FlowsRejected as exc:
                log.error("closing %s failed: %s", record.attachment_id, exc)
                continue
            closed.append(record)
        return closed
