"""The coordinator's health checks (the Health RPC, Attach's gate): the
switch and the eswitch as they answer, whether the switch holds what the
store says, and the gateway stream; cached briefly for Attach."""

from __future__ import annotations

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

    def invalidate(self) -> None:
        """The next report is checked afresh (the switch was lost or re-programmed)."""
        self._cached = None

    async def report(self, *, fresh: bool = True) -> HealthReport:
        now = time.monotonic()
        if not fresh and self._cached and now - self._cached[0] < HEALTH_TTL_S:
            return self._cached[1]
        ctx = self._ctx
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
        self._cached = (now, report)
        return report
