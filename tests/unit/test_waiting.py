"""Deadlines that never lose a cancellation (the watchdog and every loop
that runs until cancelled rely on it to let the daemon stop)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

import coordinator
from coordinator.notify import Notifier, watchdog_task
from coordinator.waiting import wait_within


async def test_a_cancellation_as_the_awaited_finishes_propagates() -> None:
    inner: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(wait_within(inner, 10))
    await asyncio.sleep(0)  # the waiter now waits on inner
    inner.set_result(1)
    waiter.cancel()  # in the same loop iteration: asyncio.wait_for (< 3.12) returns 1 here
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_cancellation_cancels_the_awaited() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    inner = asyncio.ensure_future(forever())
    waiter = asyncio.create_task(wait_within(inner, 10))
    await started.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)
    assert inner.cancelled()


async def test_the_deadline_cancels_the_awaited_and_raises() -> None:
    inner = asyncio.ensure_future(asyncio.Event().wait())
    with pytest.raises(asyncio.TimeoutError):
        await wait_within(inner, 0.01)
    assert inner.cancelled()


async def test_results_and_errors_come_through() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise ValueError("no")

    assert await wait_within(answer(), 1) == 42
    with pytest.raises(ValueError, match="no"):
        await wait_within(fail(), 1)


async def test_the_watchdog_stops_when_cancelled_as_its_check_answers() -> None:
    answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def check() -> bool:
        return await answered

    task = asyncio.create_task(watchdog_task(Notifier(None), check, 10.0))
    await asyncio.sleep(0.01)  # the watchdog waits for its check
    answered.set_result(True)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done, "the watchdog swallowed its cancellation and kept running"


def test_no_module_waits_with_asyncio_wait_for() -> None:
    root = Path(coordinator.__file__).parent
    users = [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*.py"))
        if "_proto" not in p.parts
        and re.search(r"asyncio\.wait_for\(", p.read_text())
        and p.name != "waiting.py"
    ]
    assert users == [], "use coordinator.waiting.wait_within (asyncio.wait_for loses cancellations)"


async def test_a_cancelled_wait_on_a_condition_leaves_its_lock_to_the_caller() -> None:
    changed = asyncio.Condition()

    async def wait_for_change() -> None:
        async with changed:
            await wait_within(changed.wait(), 10)

    waiter = asyncio.create_task(wait_for_change())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter  # a RuntimeError "Lock is not acquired" if the wait did not unwind first
    assert not changed.locked()
