"""Per-key locks: one holder per key at a time, gone once nobody holds or
waits, also when a waiter is cancelled or the holder raises."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.keyed_lock import KeyedLocks


async def test_one_holder_per_key_and_nothing_kept() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    order: list[str] = []

    async def work(key: str, name: str) -> None:
        async with locks[key]:
            assert key not in inside
            inside.append(key)
            order.append(name)
            await asyncio.sleep(0.01)
            inside.remove(key)

    await asyncio.gather(work("a", "a1"), work("a", "a2"), work("b", "b1"), work("a", "a3"))
    assert [n for n in order if n.startswith("a")] == ["a1", "a2", "a3"]
    assert len(locks) == 0


async def test_cancelled_waiter_and_failing_holder_leave_nothing() -> None:
    locks = KeyedLocks()
    release = asyncio.Event()

    async def hold() -> None:
        async with locks["k"]:
            await release.wait()
            raise RuntimeError("holder failed")

    holder = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(locks["k"].__aenter__())
    await asyncio.sleep(0)
    assert len(locks) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    with pytest.raises(RuntimeError):
        await holder
    assert len(locks) == 0
