"""One asyncio lock per key that exists only while someone holds it or
waits for it, so the number of locks never grows with the number of
distinct keys callers have sent (a dict of locks kept forever would)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class KeyedLocks:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __getitem__(self, key: str) -> _Held:
        """``async with locks[key]:`` holds ``key``'s lock."""
        return _Held(self, key)

    def locked(self, key: str) -> bool:
        """Whether someone holds ``key``'s lock right now (asking keeps nothing)."""
        entry = self._entries.get(key)
        return entry is not None and entry.lock.locked()

    def __len__(self) -> int:
        """Keys whose lock is held or awaited right now."""
        return len(self._entries)

    def _enter(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        return entry

    def _leave(self, key: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[key]


class _Held:
    def __init__(self, locks: KeyedLocks, key: str) -> None:
        self._locks, self._key = locks, key
        self._entry: _Entry | None = None

    async def __aenter__(self) -> None:
        entry = self._locks._enter(self._key)
        try:
            await entry.lock.acquire()
        except BaseException:  # cancelled while waiting
            self._locks._leave(self._key, entry)
            raise
        self._entry = entry

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        entry, self._entry = self._entry, None
        if entry is None:  # not entered: nothing to release
            return
        entry.lock.release()
        self._locks._leave(self._key, entry)
