"""ExplainPacket: what the policy the switch enforces says of a packet, and
what the live switch does with it."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.callers import Caller
from coordinator.errors import PermissionDenied
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
        switch = await ctx.dataplane.trace(record, packet)
        return Explanation(
            verdict=verdict, trace=switch.text, switch_agrees=switch.allowed == verdict.allowed
        )
