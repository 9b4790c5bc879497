"""What the store refuses, importable without opening (or importing) SQLite."""

from __future__ import annotations

__all__ = ["AttachmentLimitReached", "PoolExhausted", "StoreError", "TransactionLost", "UnreadablePolicy"]


class StoreError(RuntimeError):
    pass


class PoolExhausted(StoreError):
    pass


class AttachmentLimitReached(StoreError):
    pass


class TransactionLost(StoreError):
    """SQLite rolled a whole transaction back (disk full, I/O error): every
    change made in it so far is gone, not only the failing call's."""


class UnreadablePolicy(StoreError):
    """A stored policy that no longer decodes or validates (the file was
    changed behind the daemon's back, or limits tightened since)."""

    def __init__(self, sandbox_id: str, version: int, problem: str) -> None:
        super().__init__(f"stored policy of sandbox {sandbox_id} (version {version}) unusable: {problem}")
        self.version = version
        self.problem = problem
