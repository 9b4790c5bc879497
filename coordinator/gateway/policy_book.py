"""The latest policy the gateway sent per sandbox in this process's life,
and the attaches waiting for one (WAIT_INITIAL)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from coordinator.policy.scope import Scope
from coordinator.waiting import wait_within


class PolicyDenied(Exception):
    """The gateway will not give this coordinator the sandbox's policy."""


@dataclass
class _Entry:
    scope: Scope | None = None  # None: nothing yet, or withdrawn (REMOVED)
    denied: str = ""
    changed: asyncio.Event | None = None


class PolicyBook:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def _entry(self, sandbox_id: str) -> _Entry:
        entry = self._entries.setdefault(sandbox_id, _Entry())
        if entry.changed is None:
            entry.changed = asyncio.Event()
        return entry

    def offer(self, sandbox_id: str, scope: Scope | None) -> None:
        entry = self._entry(sandbox_id)
        entry.scope, entry.denied = scope, ""
        assert entry.changed is not None
        entry.changed.set()
        entry.changed = asyncio.Event()

    def deny(self, sandbox_id: str, reason: str) -> None:
        entry = self._entry(sandbox_id)
        entry.scope, entry.denied = None, reason
        assert entry.changed is not None
        entry.changed.set()
        entry.changed = asyncio.Event()

    def latest(self, sandbox_id: str) -> Scope | None:
        entry = self._entries.get(sandbox_id)
        return entry.scope if entry else None

    def forget(self, sandbox_id: str) -> None:
        self._entries.pop(sandbox_id, None)

    async def wait(self, sandbox_id: str, timeout: float) -> Scope:
        """The sandbox's policy, as soon as there is one; TimeoutError after
        ``timeout`` seconds, PolicyDenied if the gateway refuses it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            entry = self._entry(sandbox_id)
            if entry.scope is not None:
                return entry.scope
            if entry.denied:
                raise PolicyDenied(entry.denied)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no policy for sandbox {sandbox_id} within {timeout:g}s")
            assert entry.changed is not None
            try:
                await wait_within(entry.changed.wait(), remaining)
            except asyncio.TimeoutError:
                continue
