"""The coordinator's health checks (the Health RPC, Attach's gate): the
switch and the eswitch as they answer, whether the switch holds what the
store says, and the gateway stream; cached briefly for Attach."""

from __future__ import annotations

import asyncio
import time

from coordinator.eswitch.base import HealthFact
from coordinator.health import HealthReport
from coordinator.service.context import ServiceContext
from coordinator.service.gate import OperationGate

HEALTH_TTL_S = 1.0


class ServiceHealth:
    def __init__(self, ctx: ServiceContext, gate: OperationGate) -> None:
        self._ctx = ctx
        self._gate = gate
        self._cached: tuple[float, HealthReport] | None = None
        # The check Attach's callers share when the cached report expired:
        # concurrent attaches wait for one check instead of each making one.
        self._shared: asyncio.Future[HealthReport] | None = None
        self._invalidations = 0  # a check begun before one is not cached

    def invalidate(self) -> None:
        """The next report is checked afresh (the switch was lost or re-programmed)."""
        self._cached = None
        self._shared = None
        self._invalidations += 1

    async def report(self, *, fresh: bool = True) -> HealthReport:
        """``fresh``: checked now; else at most ``HEALTH_TTL_S`` old (or a
        check that started after the cached one expired)."""
        now = time.monotonic()
        if fresh:
            return await self._check(now)
        if self._cached and now - self._cached[0] < HEALTH_TTL_S:
            return self._cached[1]
        if self._shared is None or self._shared.done():
            self._shared = asyncio.ensure_future(self._check(now))
        # Shielded: one waiter cancelled (its RPC gone) does not cancel the others' check.
        return await asyncio.shield(self._shared)

    async def _check(self, now: float) -> HealthReport:
        ctx = self._ctx
        invalidations = self._invalidations
        checks = await ctx.dataplane.switch_health()
        converging = self._gate.converging
        lost = self._gate.switch_lost or (f"re-programming ({converging})" if converging else None)
        checks.append(
            HealthFact(
                "switch_programmed", lost is None, lost or "every attachment's flows installed", required=True
            )
        )
        checks += await ctx.dataplane.eswitch_health()
        if ctx.policy_source is not None:
            status = ctx.policy_source.status
            state = "connected" if status.connected else "down"
            detail = f"{state}; {status.reconnects} reconnects, {status.resyncs} resyncs, last seq {status.last_seq}"
            if status.denied:
                detail += f"; refused sandboxes: {', '.join(sorted(status.denied))}"
            checks.append(HealthFact("policy_stream", status.connected, detail, required=False))
        report = HealthReport(tuple(checks))
        if invalidations == self._invalidations:
            self._cached = (now, report)
        return report
