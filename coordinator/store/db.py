"""SQLite store of attachments, lease fences, the device pool, the last
good policy per sandbox and the event log: WAL, synchronous=FULL,
migrations, integrity check at open. Every multi-step change is one transaction, so a crash leaves
either all of it or none of it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.event_kinds import Event, EventKind
from coordinator.leases import next_generation
from coordinator.policy.scope import Scope
from coordinator.store import fence_rows, policy_rows, proof_rows
from coordinator.store.errors import (
    AttachmentLimitReached,
    PoolExhausted,
    StoreError,
    TransactionLost,
    UnreadablePolicy,
)
from coordinator.store.policy_rows import PolicyToKeep
from coordinator.store.records import (
    AttachmentRecord,
    AttachmentState,
    DevicePresence,
    EventRecord,
    Fence,
    NewAttachment,
    PolicyState,
    PoolStats,
    StoredPolicy,
)
from coordinator.store.rows import SELECT_ATTACHMENT, attachment_from_row, device_from_row, event_from_row
from coordinator.store.schema import migrate
from coordinator.store.slots import free_slot, pool_stats

__all__ = ["EVERYONE", "AttachmentLimitReached", "PoolExhausted", "Store", "StoreError", "UnreadablePolicy"]
# What a read raises when it would wait for a lock, on a connection that
# does not wait (``ReadOnlyStore(wait=False)``); other failures of SQLite too.
CannotRead = sqlite3.OperationalError
# Owner of coordinator-wide events (health, firmware) that every caller sees;
# never a certificate identity. Owner "" stays admins-only.
EVERYONE = "*"


class Store:
    def __init__(
        self,
        path: Path,
        *,
        event_log_size: int = 10000,
        detached_fences_kept: int = fence_rows.KEPT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._event_log_size = event_log_size
        self._detached_fences = fence_rows.DetachedFences(detached_fences_kept)
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the
        # write lock is taken before any read a decision depends on.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # Held through each transaction: another thread's waits for it (never
        # joins it), and close() never frees the connection under a commit.
        self._using = threading.RLock()
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._check_integrity()
        self._migrate()

    def close(self) -> None:
        with self._using:
            self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _check_integrity(self) -> None:
        result = self._db.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise StoreError(f"store {self._path} failed its integrity check: {result}")

    def _migrate(self) -> None:
        migrate(self._path, self.schema_version, self._txn)

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database (PASSIVE: no waiting
        for readers), so the next commit writes the WAL from its start."""
        with self._using:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        with self._using:
            if self._db.in_transaction:
                # Called inside another method's transaction: part of it, commits
                # (or rolls back) with it.
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Also when COMMIT failed: SQLite may leave the transaction open (a
                # deferred constraint, busy), and later writes would join it, never committed.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def group(self) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction (one commit, one fsync) around several calls, whose
        own transactions join it: none of it is kept if the commit fails."""
        return self._txn()

    @contextmanager
    def part(self) -> Iterator[None]:
        """Inside ``group``: a call whose changes, if it raises, are undone
        alone (a savepoint), the rest of the group unharmed."""
        self._db.execute("SAVEPOINT part")
        try:
            yield
        except BaseException as exc:
            if not self._db.in_transaction:  # SQLite rolled the whole group back
                raise TransactionLost(f"store transaction rolled back: {exc}") from exc
            self._db.execute("ROLLBACK TO part")
            self._db.execute("RELEASE part")
            raise
        self._db.execute("RELEASE part")

    # -- device pool -------------------------------------------------------

    def sync_devices(self, slots: list[EswitchDevice]) -> DevicePresence:
        """Record the backend's inventory; devices no longer offered are kept
        (a claimed one must stay referable) but marked absent. Returns which
        device ids turned absent or present again (new ones included)."""
        with self._txn() as db:
            before = {r[0] for r in db.execute("SELECT device_id FROM devices WHERE present = 1")}
            db.execute("UPDATE devices SET present = 0")
            for s in slots:
                db.execute(
                    """INSERT INTO devices (device_id, kind, controller, pf, number, representor,
                                            host_pci_address, present)
                       VALUES (?, ?, ?, ?, ?, ?, ?, 1)
                       ON CONFLICT (device_id) DO UPDATE SET representor = excluded.representor,
                           host_pci_address = excluded.host_pci_address, present = 1""",
                    (
                        s.device_id,
                        s.kind.value,
                        s.controller,
                        s.pf,
                        s.number,
                        s.representor,
                        s.host_pci_address,
                    ),
                )
        now = {s.device_id for s in slots}
        return DevicePresence(appeared=frozenset(now - before), vanished=frozenset(before - now))

    def pool_stats(self) -> list[PoolStats]:
        return pool_stats(self._db)

    # -- attachments -------------------------------------------------------

    def create_attachment(
        self, new: NewAttachment, *, mac_for: Callable[[EswitchDevice], str], max_attachments: int
    ) -> AttachmentRecord:
        """Claim a free device, a slot and a lease generation, insert the
        ATTACHING row and its event: all in one transaction."""
        now = self._clock()
        with self._txn() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM attachments").fetchone()
            if count >= max_attachments:
                raise AttachmentLimitReached(f"max_attachments ({max_attachments}) reached")
            kinds = [new.kind.value] if new.kind else [k.value for k in DeviceKind]
            row = db.execute(
                f"""SELECT d.* FROM devices d LEFT JOIN attachments a ON a.device_id = d.device_id
                    WHERE a.attachment_id IS NULL AND d.present = 1
                      AND d.kind IN ({",".join("?" * len(kinds))})
                    ORDER BY d.kind = 'sf', d.pf, d.number LIMIT 1""",
                kinds,
            ).fetchone()
            if row is None:
                wanted = new.kind.value.upper() if new.kind else "VF or SF"
                raise PoolExhausted(f"no free {wanted} device")
            slot = device_from_row(row)
            generation = next_generation(fence_rows.generation(db, new.attachment_id))
            db.execute(
                """INSERT INTO lease_fences (attachment_id, owner, sandbox_id, generation) VALUES (?, ?, ?, ?)
                   ON CONFLICT (attachment_id) DO UPDATE SET generation = excluded.generation,
                       detached_at = NULL""",
                (new.attachment_id, new.owner, new.sandbox_id, generation),
            )
            slot_number = free_slot(db)
            db.execute(
                """INSERT INTO attachments (attachment_id, owner, request_id, sandbox_id, host_instance_id,
                       lease_generation, device_id, mac, slot, network_class, state, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ATTACHING', ?, ?)""",
                (
                    new.attachment_id,
                    new.owner,
                    new.request_id,
                    new.sandbox_id,
                    new.host_instance_id,
                    generation,
                    slot.device_id,
                    mac_for(slot),
                    slot_number,
                    new.network_class,
                    now,
                    now,
                ),
            )
            self._append_event(
                db,
                new.attachment_id,
                new.sandbox_id,
                new.owner,
                Event(
                    EventKind.ATTACH_IN_PROGRESS,
                    True,
                    "Attaching",
                    f"claimed {slot.kind.value.upper()} {slot.device_id}",
                ),
            )
        record = self.get(new.attachment_id)
        if record is None:  # pragma: no cover - just inserted
            raise StoreError("attachment vanished after insert")
        return record

    def get(self, attachment_id: str) -> AttachmentRecord | None:
        row = self._db.execute(SELECT_ATTACHMENT + " WHERE a.attachment_id = ?", (attachment_id,)).fetchone()
        return attachment_from_row(row) if row else None

    def find_by_request(self, owner: str, request_id: str) -> AttachmentRecord | None:
        row = self._db.execute(
            SELECT_ATTACHMENT + " WHERE a.owner = ? AND a.request_id = ?", (owner, request_id)
        ).fetchone()
        return attachment_from_row(row) if row else None

    def list_attachments(
        self,
        *,
        owner: str | None = None,
        sandbox_id: str = "",
        host_instance_id: str = "",
        state: AttachmentState | None = None,
    ) -> list[AttachmentRecord]:
        clauses, params = [], []
        for column, value in (
            ("a.owner", owner),
            ("a.sandbox_id", sandbox_id),
            ("a.host_instance_id", host_instance_id),
            ("a.state", state.value if state else None),
        ):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(SELECT_ATTACHMENT + where + " ORDER BY a.created_at, a.attachment_id", params)
        return [attachment_from_row(r) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM attachments").fetchone()[0])

    def mark_bound(
        self,
        attachment_id: str,
        *,
        ofport: int,
        policy_state: PolicyState,
        policy_version: int,
        representor: str = "",
        last_good: Scope | None = None,
    ) -> AttachmentRecord:
        """``last_good``: also the sandbox's new last good policy, in the same
        commit (one fsync; a crash before it leaves the attachment ATTACHING)."""
        now = self._clock()
        with self._txn() as db:
            db.execute(
                """UPDATE attachments SET state = 'BOUND', ofport = ?, policy_state = ?, policy_version = ?,
                       policy_applied_at = ?, updated_at = ?, representor = ? WHERE attachment_id = ?""",
                (ofport, policy_state.value, policy_version, now, now, representor, attachment_id),
            )
            record = self._require(db, attachment_id)
            if last_good is not None:
                self.save_policy(record.sandbox_id, last_good)
            where = f"representor {record.device.representor} on ofport {ofport}"
            self.append_event(record, Event(EventKind.ATTACHMENT_BOUND, True, "Bound", where))
        return record

    def mark_detaching(self, attachment_id: str) -> AttachmentRecord:
        with self._txn() as db:
            db.execute(
                "UPDATE attachments SET state = 'DETACHING', updated_at = ? WHERE attachment_id = ?",
                (self._clock(), attachment_id),
            )
            return self._require(db, attachment_id)

    def delete_attachment(self, attachment_id: str, *, reason: str, message: str, actor: str = "") -> None:
        """Remove the row (freeing its device and slot); the fence stays
        (among the newest ``detached_fences_kept`` detached ones).
        ``actor``: the caller identity that asked for it, if one did."""
        now = self._clock()
        with self._txn() as db:
            record = self._require(db, attachment_id)
            db.execute("DELETE FROM attachments WHERE attachment_id = ?", (attachment_id,))
            self._detached_fences.detached(db, attachment_id, now)
            self.append_event(record, Event(EventKind.ATTACHMENT_BOUND, False, reason, message, actor))

    def take_over(self, attachment_id: str, host_instance_id: str) -> AttachmentRecord:
        """A new host instance takes the attachment over: the lease generation
        (row and fence) goes up by one in one transaction, so the previous
        instance's calls with the old generation are refused from now on."""
        with self._txn() as db:
            old = self._require(db, attachment_id)
            fence = fence_rows.generation(db, attachment_id)
            generation = next_generation(max(fence or 0, old.lease_generation))
            db.execute(
                "UPDATE lease_fences SET generation = ? WHERE attachment_id = ?", (generation, attachment_id)
            )
            db.execute(
                """UPDATE attachments SET lease_generation = ?, host_instance_id = ?, updated_at = ?
                   WHERE attachment_id = ?""",
                (generation, host_instance_id, self._clock(), attachment_id),
            )
            record = self._require(db, attachment_id)
            self._append_event(
                db, attachment_id, record.sandbox_id, record.owner, Event(EventKind.LEASE_TAKEN_OVER, True, "HostReconcile",
                f"host instance {host_instance_id!r} took over from {old.host_instance_id!r}; "
                f"lease generation {old.lease_generation} -> {generation}"),
            )  # fmt: skip
        return record

    def record_event(
        self,
        attachment_id: str,
        sandbox_id: str,
        owner: str,
        event: Event,
    ) -> None:
        """An event not tied to a stored attachment (drift of something no
        attachment holds); ``owner`` "" = seen by admins only."""
        with self._txn() as db:
            self._append_event(db, attachment_id, sandbox_id, owner, event)

    def _require(self, db: sqlite3.Connection, attachment_id: str) -> AttachmentRecord:
        row = db.execute(SELECT_ATTACHMENT + " WHERE a.attachment_id = ?", (attachment_id,)).fetchone()
        if row is None:
            raise StoreError(f"attachment {attachment_id} not in the store")
        return attachment_from_row(row)

    def fence(self, attachment_id: str) -> Fence | None:
        return fence_rows.read(self._db, attachment_id)

    # -- policies ------------------------------------------------------------

    def save_policy(self, sandbox_id: str, scope: Scope) -> None:
        """``scope`` becomes the sandbox's last good policy."""
        policy_rows.write_policy(self._db, sandbox_id, scope, self._clock())

    def policy(self, sandbox_id: str) -> StoredPolicy | None:
        """The sandbox's last good policy; raises UnreadablePolicy if the
        stored one no longer decodes."""
        return policy_rows.read_policy(self._db, sandbox_id)

    def policies(self) -> dict[str, StoredPolicy | UnreadablePolicy]:
        """Every sandbox's last good policy in one read (see ``read_policies``):
        an unusable one as its UnreadablePolicy, not raised."""
        return policy_rows.read_policies(self._db)

    def policy_version(self, sandbox_id: str) -> int | None:
        """The version of the sandbox's last good policy, without decoding it."""
        return policy_rows.read_policy_version(self._db, sandbox_id)

    def delete_policy(self, sandbox_id: str) -> None:
        policy_rows.delete_policy(self._db, sandbox_id)

    # -- flow proofs ---------------------------------------------------------

    def flow_proofs(self) -> dict[int, bytes]:
        return proof_rows.read_proofs(self._db)

    def keep_flow_proofs(self, proofs: Mapping[int, bytes]) -> None:
        proof_rows.write_proofs(self._db, proofs)

    def record_policy_results(
        self,
        updates: Sequence[tuple[str, PolicyState, int, Event | None]],
        *,
        last_good: PolicyToKeep | None = None,
    ) -> list[AttachmentRecord]:
        """Record attachments' policy states (attachment id, state, version,
        event) and, with ``last_good``, that policy as the sandbox's last
        good one, in one transaction: an apply costs one
        commit, as does a transition of every attachment at once, and the
        store never says APPLIED for a policy it would not restore."""
        now = self._clock()
        records = []
        with self._txn() as db:
            for attachment_id, state, version, event in updates:
                db.execute(
                    """UPDATE attachments SET policy_state = ?, policy_version = ?, policy_applied_at = ?,
                           updated_at = ? WHERE attachment_id = ?""",
                    (state.value, version, now, now, attachment_id),
                )
                record = self._require(db, attachment_id)
                if event is not None:
                    self._append_event(db, attachment_id, record.sandbox_id, record.owner, event)
                records.append(record)
            if last_good is not None:
                policy_rows.write_policy(
                    db, last_good.sandbox_id, last_good.scope, now, stored=last_good.stored()
                )
        return records

    def set_policy_status(
        self, attachment_id: str, state: PolicyState, version: int, *, event: Event | None
    ) -> AttachmentRecord:
        """Record an attachment's policy state (and its event) atomically."""
        [record] = self.record_policy_results([(attachment_id, state, version, event)])
        return record

    def append_event(self, record: AttachmentRecord, event: Event) -> None:
        with self._txn() as db:
            self._append_event(db, record.attachment_id, record.sandbox_id, record.owner, event)

    def append_coordinator_event(self, event: Event) -> None:
        """An event about the coordinator as a whole (health, firmware): no
        attachment or sandbox; owner ``EVERYONE``, so every watcher sees it."""
        with self._txn() as db:
            self._append_event(db, "", "", EVERYONE, event)

    def last_coordinator_event(self, kind: EventKind) -> EventRecord | None:
        """The newest coordinator-wide event of ``kind`` still in the log."""
        row = self._db.execute(
            "SELECT * FROM events WHERE owner = ? AND type = ? ORDER BY seq DESC LIMIT 1",
            (EVERYONE, kind.value),
        ).fetchone()
        return event_from_row(row) if row else None

    def _append_event(
        self,
        db: sqlite3.Connection,
        attachment_id: str,
        sandbox_id: str,
        owner: str,
        event: Event,
    ) -> None:
        cursor = db.execute(
            """INSERT INTO events (attachment_id, sandbox_id, owner, type, status, reason, message, time, actor)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (attachment_id, sandbox_id, owner, event.kind.value, int(event.status), event.reason,
             event.message, self._clock(), event.actor),
        )  # fmt: skip
        seq = cursor.lastrowid or 0
        db.execute("DELETE FROM events WHERE seq <= ?", (seq - self._event_log_size,))

    def events_since(
        self, since_seq: int, *, owner: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        query = "SELECT * FROM events WHERE seq > ?"
        params: list[Any] = [since_seq]
        if owner is not None:
            # A caller's own events plus the coordinator-wide ones.
            query += " AND owner IN (?, ?)"
            params += [owner, EVERYONE]
        rows = self._db.execute(query + " ORDER BY seq LIMIT ?", [*params, limit]).fetchall()
        return [event_from_row(r) for r in rows]

    def last_event_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def oldest_event_seq(self) -> int:
        row = self._db.execute("SELECT MIN(seq) FROM events").fetchone()
        return int(row[0]) if row and row[0] is not None else 0
