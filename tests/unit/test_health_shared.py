"""Attach's health gate: concurrent attaches that find the cached report
expired wait for one check together; a check begun before an
invalidation is not cached."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from coordinator.eswitch.base import HealthFact
from coordinator.service.gate import OperationGate
from coordinator.service.health_checks import ServiceHealth


class SlowSwitch:
    def __init__(self) -> None:
        self.checks = 0
        self.release = asyncio.Event()

    async def switch_health(self) -> list[HealthFact]:
        self.checks += 1
        await self.release.wait()
        return [HealthFact("ovsdb", True, "ok", required=True)]

    async def eswitch_health(self) -> list[HealthFact]:
        return []


def _health(switch: SlowSwitch) -> ServiceHealth:
    ctx: Any = SimpleNamespace(dataplane=switch, policy_source=None)
    return ServiceHealth(ctx, OperationGate(0))


async def test_concurrent_attaches_share_one_check() -> None:
    switch = SlowSwitch()
    health = _health(switch)
    waiting = [asyncio.ensure_future(health.report(fresh=False)) for _ in range(8)]
    await asyncio.sleep(0.01)
    waiting[0].cancel()  # one caller gone: the others still get the report
    switch.release.set()
    reports = await asyncio.gather(*waiting[1:])
    assert switch.checks == 1
    assert all(not r.failing_required() for r in reports)
    await health.report(fresh=False)  # cached now
    assert switch.checks == 1
    await health.report(fresh=True)  # Health asks afresh
    assert switch.checks == 2


async def test_a_check_begun_before_an_invalidation_is_not_cached() -> None:
    switch = SlowSwitch()
    health = _health(switch)
    first = asyncio.ensure_future(health.report(fresh=False))
    await asyncio.sleep(0.01)
    health.invalidate()
    switch.release.set()
    await first
    await health.report(fresh=False)
    assert switch.checks == 2
