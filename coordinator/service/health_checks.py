"""The coordinator's health checks (the Health RPC, Attach's gate): the
switch and the eswitch as they answer, whether the switch holds what the
store says, and the gateway stream; cached briefly for Attach."""

from __future__ import annotations

import asyncio
import time

from coordinator.eswitch.base import HealthFact
from coordinator.health import HealthReport, ovs_checks
from coordinator.ovs.openflow import OpenFlowError
from coordinator.ovs.ovsdb import OvsdbError
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
        checks: list[HealthFact] = []
        try:
            facts = await ctx.ovsdb.bridge_facts(ctx.config.ovs.bridge)
            error = ""
        except OvsdbError as exc:
            facts, error = None, str(exc)
        hw_required = ctx.backend.name == "switchdev"
        checks += ovs_checks(facts, error, ctx.config.ovs.bridge, hw_offload_required=hw_required)
        try:
            await ctx.openflow.ping()
            checks.append(HealthFact("openflow_reachable", True, "bridge answers OpenFlow", required=True))
        except OpenFlowError as exc:
            checks.append(HealthFact("openflow_reachable", False, str(exc), required=True))
        converging = self._gate.converging
        lost = self._gate.switch_lost or (f"re-programming ({converging})" if converging else None)
        checks.append(
            HealthFact(
                "switch_programmed", lost is None, lost or "every attachment's flows installed", required=True
            )
        )
        checks += await asyncio.to_thread(ctx.backend.health)
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
