"""Waiting for something with a deadline, without losing a cancellation.

``asyncio.wait_for`` before Python 3.12 swallows a cancellation that
arrives in the same loop iteration as the awaited thing finishing: it
returns the result and the task carries on as if nothing had asked it to
stop (CPython gh-86296, fixed in 3.12 by building ``wait_for`` on
``asyncio.timeout``, which 3.10 and 3.11 lack). A loop that runs until
cancelled - the watchdog, the watches, an event stream whose caller went
away - then never ends, and the daemon's shutdown waits for it for ever.
``asyncio.wait`` has no such race, so the deadline is built on it here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["all_of", "wait_within"]


async def wait_within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """The result of ``awaitable``, or ``asyncio.TimeoutError`` once
    ``timeout`` seconds have passed (it is cancelled then, and waited for).
    A cancellation of the caller always propagates, and cancels it too."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        # Wait for it to unwind (a Condition's wait re-acquires its lock
        # there, which the caller is about to release); then ours goes on.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})
        raise
    if not done:
        task.cancel()
        # Let it run its cleanup; a cancellation of ours meanwhile still
        # propagates from here.
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            return task.result()  # it finished in the same moment: keep its answer
        raise asyncio.TimeoutError
    return task.result()


async def all_of(*steps: Awaitable[object]) -> None:
    """Run ``steps`` side by side; the first failure is raised once every
    one has finished (a rollback that follows must not race a step still
    running)."""
    for outcome in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
