"""ExplainPacket: what the policy the switch enforces says of a packet, and
what the live switch does with it."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.callers import Caller
from coordinator.errors import PermissionDenied, Unavailable
from coordinator.flows.trace import TraceParseError, TracePorts, parse_dpif_show, parse_trace, trace_request
from coordinator.ovs.control import vswitchd_ctl
from coordinator.ovs.trace import TraceError, dpif_show, trace
from coordinator.policy.evaluator import Verdict, evaluate
from coordinator.policy.packet import Packet
from coordinator.service.context import ServiceContext


@dataclass(frozen=True)
class Explanation:
    verdict: Verdict
    trace: str
    switch_agrees: bool


class Explainer:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def explain(self, caller: Caller, attachment_id: str, packet: Packet) -> Explanation:
        """The policy's verdict for ``packet`` and the live switch's trace."""
        if not caller.is_admin:
            raise PermissionDenied("ExplainPacket is for admins")
        ctx = self._ctx
        record = await ctx.visible(caller, attachment_id)
        # What the switch enforces: deny-all while withdrawn or stale-denied.
        verdict = evaluate((await ctx.enforced(record)).scope, packet)
        ports = TracePorts(
            attachment_ofport=record.ofport,
            attachment_mac=record.mac,
            uplink_ofport=ctx.dataplane.uplink_ofport or 0,
        )
        request = trace_request(packet, ports)
        cfg = ctx.config.ovs
        ctl = vswitchd_ctl(cfg.rundir, cfg.vswitchd_ctl)
        try:
            text = await trace(ctl, cfg.bridge, request.flow, request.ct_next, timeout=cfg.timeout_s)
            odp = parse_dpif_show(await dpif_show(ctl, timeout=cfg.timeout_s), cfg.bridge)
            switch = parse_trace(text, request.expected_ofport, odp)
        except (TraceError, TraceParseError) as exc:
            raise Unavailable(f"tracing through the switch: {exc}") from exc
        return Explanation(verdict=verdict, trace=text, switch_agrees=switch.allowed == verdict.allowed)
