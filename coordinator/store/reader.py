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
    def __init__(self, writer: Store) -> None:
        super().__init__(writer._path, event_log_size=writer._event_log_size, clock=writer._clock)
        self._db.execute("PRAGMA query_only=ON")

    def _check_integrity(self) -> None:
        """Checked by the writer's connection when it opened."""

    def _migrate(self) -> None:
        """Migrated by the writer's connection when it opened."""
