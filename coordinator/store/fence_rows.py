"""Rows of ``lease_fences``: per attachment id, the newest lease
generation issued for it, kept after its Detach so generations never go
backwards for an id.

A detached attachment's fence answers a Detach retried after a lost reply
("already detached", not NOT_FOUND); attachment ids are never reused, so it
guards nothing else. Only the newest ``kept`` detached fences stay, so a
host that attaches and detaches for ever does not grow the store for ever.
Finding the cut-off walks the index over every fence kept, too much for
every Detach, so ``DetachedFences`` prunes once every ``PRUNE_EVERY``
detaches, the first one after a start included.
"""

from __future__ import annotations

from typing import Any, Protocol

from coordinator.store.records import Fence

KEPT = 10_000
PRUNE_EVERY = 100


class Database(Protocol):
    """What is used of the store's connection (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


def generation(db: Database, attachment_id: str) -> int | None:
    row = db.execute(
        "SELECT generation FROM lease_fences WHERE attachment_id = ?", (attachment_id,)
    ).fetchone()
    return int(row[0]) if row else None


def read(db: Database, attachment_id: str) -> Fence | None:
    row = db.execute("SELECT * FROM lease_fences WHERE attachment_id = ?", (attachment_id,)).fetchone()
    if row is None:
        return None
    return Fence(row["attachment_id"], row["owner"], row["sandbox_id"], row["generation"], row["detached_at"])


class DetachedFences:
    """Marks fences detached and keeps the newest ``kept`` of those."""

    def __init__(self, kept: int = KEPT) -> None:
        if kept < 1:
            raise ValueError(f"detached fences kept: {kept}, at least 1")
        self._kept = kept
        self._unpruned = PRUNE_EVERY - 1

    def detached(self, db: Database, attachment_id: str, now: float) -> None:
        db.execute("UPDATE lease_fences SET detached_at = ? WHERE attachment_id = ?", (now, attachment_id))
        self._unpruned += 1
        if self._unpruned < PRUNE_EVERY:
            return
        self._unpruned = 0
        # Older than the kept-th newest: on a tie at the cut-off all stay.
        db.execute(
            """DELETE FROM lease_fences WHERE detached_at IS NOT NULL AND detached_at < (
                   SELECT detached_at FROM lease_fences WHERE detached_at IS NOT NULL
                   ORDER BY detached_at DESC LIMIT 1 OFFSET ?)""",
            (self._kept - 1,),
        )
