"""What the store refuses, importable without opening (or importing) SQLite."""

from __future__ import annotations

__all__ = ["AttachmentLimitReached", "PoolExhausted", "StoreError"]


class StoreError(RuntimeError):
    pass


class PoolExhausted(StoreError):
    pass


class AttachmentLimitReached(StoreError):
    pass
