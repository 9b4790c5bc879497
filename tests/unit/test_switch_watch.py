"""The switch watch re-programs the switch only for a loss that is still
there when looked at again: a port a concurrent detach removed between the
watch's read of the store and its read of the switch is no loss, nor are
two such ports one after the other (an attach storm)."""

from __future__ import annotations

import asyncio
from typing import Any

from coordinator.watches.switch import watch_switch


class _Service:
    def __init__(self, answers: list[str | None]) -> None:
        self._answers = answers
        self.lost: list[str] = []
        self.reconverged = asyncio.Event()

    async def switch_intact(self) -> str | None:
        return self._answers.pop(0) if self._answers else None

    def mark_switch_lost(self, reason: str) -> None:
        self.lost.append(reason)

    async def reconverge(self, reason: str) -> Any:
        self.reconverged.set()
        return type("Report", (), {"attachments": 0, "flows_added": 0})()


async def _watch(service: _Service) -> None:
    task = asyncio.ensure_future(watch_switch(service, 0.01))  # type: ignore[arg-type]
    try:
        while service._answers:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_port_that_moved_only_for_a_moment_is_not_a_loss() -> None:
    service = _Service(["port pf0vf1 is now OpenFlow port none, its flows use 84", None, None])
    await _watch(service)
    assert service.lost == [] and not service.reconverged.is_set()


async def test_two_ports_that_each_moved_for_a_moment_are_not_a_loss() -> None:
    service = _Service([
        "port pf0vf0 is now OpenFlow port none, its flows use 160",
        "port pf0vf3 is now OpenFlow port none, its flows use 171",
        None,
    ])  # fmt: skip
    await _watch(service)
    assert service.lost == [] and not service.reconverged.is_set()


async def test_a_loss_seen_twice_re_programs_the_switch() -> None:
    lost = "bridge holds 0 of its 12 base flows (ovs-vswitchd restarted?)"
    service = _Service([lost, lost])
    await _watch(service)
    assert service.lost == [lost] and service.reconverged.is_set()
