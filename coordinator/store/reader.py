"""A second connection to the store's database, for reads only.

``AsyncStore`` runs plain reads on a thread of their own through it: in
WAL mode a reader sees the last commit while a write (and its fsync) is
under way on the writer's connection, so reads never wait behind another
caller's commit. The writer's connection checked and migrated the
database; this one only reads (``query_only``).
"""

from __future__ import annotations

from coordinator.store.db import Store


class ReadOnlyStore(Store):
    def __init__(self, writer: Store, *, wait: bool = True) -> None:
        """``wait=False``: a read that would wait for a lock raises
        sqlite3.OperationalError at once instead (SQLite's busy timeout 0)."""
        super().__init__(writer._path, event_log_size=writer._event_log_size, clock=writer._clock)
        self._db.execute("PRAGMA query_only=ON")
        if not wait:
            self._db.execute("PRAGMA busy_timeout=0")

    def _check_integrity(self) -> None:
        """Checked by the writer's connection when it opened."""

    def _migrate(self) -> None:
        """Migrated by the writer's connection when it opened."""
