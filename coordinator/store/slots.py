"""The device pool's figures and which slot a new attachment gets, on the
connection ``db`` hands them."""

from __future__ import annotations

from coordinator.attachment_identity import MAX_SLOT
from coordinator.eswitch.base import DeviceKind
from coordinator.store.errors import AttachmentLimitReached
from coordinator.store.policy_rows import Database
from coordinator.store.records import PoolStats


def pool_stats(db: Database) -> list[PoolStats]:
    """Present devices of each kind, and how many of them are free."""
    rows = db.execute(
        """SELECT d.kind, COUNT(*) AS total, SUM(a.attachment_id IS NULL) AS free
           FROM devices d LEFT JOIN attachments a ON a.device_id = d.device_id
           WHERE d.present = 1 GROUP BY d.kind"""
    ).fetchall()
    by_kind = {r["kind"]: (r["total"], r["free"]) for r in rows}
    return [PoolStats(k, *by_kind.get(k.value, (0, 0))) for k in DeviceKind]


def free_slot(db: Database) -> int:
    """The lowest unused slot: slots are reused only after their attachment
    (and so its cookie and conntrack zone) is gone."""
    row = db.execute(
        """SELECT 1 AS s WHERE NOT EXISTS (SELECT 1 FROM attachments WHERE slot = 1)
           UNION ALL
           SELECT a.slot + 1 FROM attachments a
           WHERE a.slot < ? AND NOT EXISTS (SELECT 1 FROM attachments b WHERE b.slot = a.slot + 1)
           ORDER BY s LIMIT 1""",
        (MAX_SLOT,),
    ).fetchone()
    if row is None:
        raise AttachmentLimitReached("no free conntrack zone")
    return int(row[0])
