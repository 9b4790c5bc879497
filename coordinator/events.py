"""Wakes event watchers when the store gains events.

The store is the source of truth (resumable by seq); this only tells
waiting streams that there is something new to read.
"""

from __future__ import annotations

import asyncio
import contextlib

from coordinator.waiting import wait_within


class EventHub:
    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._generation = 0
        self._closed = False

    async def notify(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait(self, timeout: float) -> None:
        """Return after the next notify (or the timeout, or close)."""
        async with self._changed:
            if self._closed:
                return
            seen = self._generation
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_within(
                    self._changed.wait_for(lambda: self._generation != seen or self._closed), timeout
                )
