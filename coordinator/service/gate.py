"""The operation gate: which operations may run now.

Counts the operations in flight; a re-programming of the whole switch
waits for them and then runs alone, shutdown drains them. Meanwhile
operations that must not be lost (policy updates) wait and the others
(attach, detach) are refused with UNAVAILABLE. Also the Attach admission:
the ``max_attach_qps`` bucket and the refusal while the switch is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from coordinator.admission import TokenBucket
from coordinator.errors import ResourceExhausted, Unavailable
from coordinator.waiting import wait_within

log = logging.getLogger(__name__)

T = TypeVar("T")


class OperationGate:
    def __init__(self, max_attach_qps: float) -> None:
        self._admission = TokenBucket(max_attach_qps)
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._converging: str | None = None
        self._converged = asyncio.Event()
        self._converged.set()
        self._converge_wanted = asyncio.Event()
        self._converge_lock = asyncio.Lock()
        self._stopping = False
        self.switch_lost: str | None = None

    @asynccontextmanager
    async def operation(self, what: str, *, wait: bool) -> AsyncIterator[None]:
        """Counts an operation in flight. While the switch is re-programmed
        or the daemon stops, ``wait`` operations (policy updates, which must
        not be lost) wait; the others are refused with UNAVAILABLE."""
        while True:
            if self._stopping and not wait:
                raise Unavailable(f"{what}: the coordinator is shutting down; retry against its successor")
            if self._converging is None:
                break
            if not wait:
                raise Unavailable(
                    f"{what}: the switch is being re-programmed ({self._converging}); retry shortly"
                )
            await self._converged.wait()
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    @asynccontextmanager
    async def alone(self, reason: str) -> AsyncIterator[None]:
        """Run the body with no other operation in flight: new ones wait or
        are refused (see ``operation``) until it is done."""
        async with self._converge_lock:
            self._converging = reason
            self._converged.clear()
            self._converge_wanted.set()
            try:
                await self._idle.wait()
                yield
            finally:
                self._converging = None
                self._converge_wanted.clear()
                self._converged.set()

    async def unless_converging(self, what: str, waiting: Awaitable[T]) -> T:
        """``waiting`` inside an operation, for what is not the daemon's to
        hurry (the gateway's policy, for as long as the caller asked): given
        up with UNAVAILABLE as soon as a re-programming of the switch wants
        to run, which waits for every operation in flight and must not wait
        for this one."""
        waited: asyncio.Future[T] = asyncio.ensure_future(waiting)
        wanted = asyncio.ensure_future(self._converge_wanted.wait())
        try:
            await asyncio.wait((waited, wanted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            wanted.cancel()
            if not waited.done():
                waited.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waited
        if waited.cancelled():
            raise Unavailable(
                f"{what}: the switch is being re-programmed ({self._converging}); retry shortly"
            )
        return waited.result()

    @property
    def converging(self) -> str | None:
        """Why the switch is being re-programmed now (None: it is not)."""
        return self._converging

    def mark_switch_lost(self, reason: str) -> None:
        if self.switch_lost is None:
            log.warning("switch needs re-programming: %s", reason)
        self.switch_lost = reason

    def refuse_attach_if_switch_lost(self) -> None:
        if self.switch_lost is not None:
            raise Unavailable(f"the switch is being re-programmed ({self.switch_lost}); retry shortly")

    def admit_attach(self) -> None:
        if not self._admission.try_take():
            raise ResourceExhausted(
                f"limits.max_attach_qps ({self._admission.rate:g}/s) exceeded; retry with backoff"
            )

    async def drain(self, timeout: float) -> bool:
        """Refuse new attaches and detaches; wait up to ``timeout`` for those
        in flight. True if none is left."""
        self._stopping = True
        try:
            await wait_within(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def in_flight(self) -> int:
        return self._active
