"""Schema migrations. Each entry upgrades from version N-1 to N; the list
only ever grows, and a released migration is never edited."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from coordinator.store.errors import StoreError

MIGRATIONS: tuple[str, ...] = (
    # 1: attachments, fences, device pool, event log.
    """
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('vf', 'sf')),
        controller INTEGER NOT NULL,
        pf INTEGER NOT NULL,
        number INTEGER NOT NULL,
        representor TEXT NOT NULL,
        host_pci_address TEXT NOT NULL DEFAULT '',
        present INTEGER NOT NULL DEFAULT 1,
        UNIQUE (kind, controller, pf, number)
    );
    CREATE TABLE attachments (
        attachment_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        request_id TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        host_instance_id TEXT NOT NULL,
        lease_generation INTEGER NOT NULL,
        -- The claim: a device belongs to at most one attachment.
        device_id TEXT NOT NULL UNIQUE REFERENCES devices (device_id),
        mac TEXT NOT NULL UNIQUE,
        -- Slot doubles as conntrack zone and the low bits of the flow cookie.
        slot INTEGER NOT NULL UNIQUE CHECK (slot BETWEEN 1 AND 65535),
        network_class TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('ATTACHING', 'BOUND', 'DETACHING')),
        ofport INTEGER NOT NULL DEFAULT -1,
        policy_version INTEGER NOT NULL DEFAULT 0,
        policy_state TEXT NOT NULL DEFAULT 'PENDING',
        policy_applied_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (owner, request_id)
    );
    CREATE INDEX attachments_sandbox ON attachments (sandbox_id);
    -- Kept after detach: generations never go backwards for an id.
    CREATE TABLE lease_fences (
        attachment_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        generation INTEGER NOT NULL CHECK (generation >= 1),
        detached_at REAL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        attachment_id TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        type TEXT NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        time REAL NOT NULL
    );
    """,
    # 2: the last good policy per sandbox, so enforcement can be rebuilt
    # after a restart without (and before) the gateway.
    """
    CREATE TABLE sandbox_policies (
        sandbox_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        scope_json TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 3: the representor an attachment's device actually got (an SF's name
    # is known only once it exists).
    """
    ALTER TABLE attachments ADD COLUMN representor TEXT NOT NULL DEFAULT '';
    """,
    # 4: who asked for an event's change (a caller identity; '' = nobody in
    # particular). Detach events written before named the caller only in
    # their message, "detached by <identity>": that becomes their actor.
    """
    ALTER TABLE events ADD COLUMN actor TEXT NOT NULL DEFAULT '';
    UPDATE events SET actor = substr(message, length('detached by ') + 1)
        WHERE type = 'DpuAttachmentBound' AND status = 0 AND reason = 'Detached'
            AND substr(message, 1, length('detached by ')) = 'detached by ';
    """,
    # 5: the policy in its binary encoding. SQLite cannot change a column's
    # type in place, so the table is rebuilt: column scope (type BLOB, which
    # has no affinity: each value keeps the storage class it was written
    # with) holds bytes from now on, and the text earlier versions wrote,
    # which still reads.
    """
    CREATE TABLE sandbox_policies_v5 (
        sandbox_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        scope BLOB NOT NULL,
        updated_at REAL NOT NULL
    );
    INSERT INTO sandbox_policies_v5 (sandbox_id, version, scope, updated_at)
        SELECT sandbox_id, version, scope_json, updated_at FROM sandbox_policies;
    DROP TABLE sandbox_policies;
    ALTER TABLE sandbox_policies_v5 RENAME TO sandbox_policies;
    """,
    # 6: per slot, the proof that the flows of its last verified sync were
    # its attachment's intent (see ``flow_proofs``): a restart that finds
    # the same flows and inputs need not compile them.
    """
    CREATE TABLE flow_proofs (
        slot INTEGER PRIMARY KEY CHECK (slot BETWEEN 1 AND 65535),
        proof BLOB NOT NULL
    );
    """,
    # 7: the fences of detached attachments by age, so the oldest can go
    # (``Store.delete_attachment``) without a scan of every fence.
    """
    CREATE INDEX lease_fences_detached ON lease_fences (detached_at) WHERE detached_at IS NOT NULL;
    """,
)


def migrate(path: Path, current: int, transaction: Callable[[], AbstractContextManager[Any]]) -> None:
    """Bring the store at ``path``, at schema version ``current``, to the
    newest: each migration and its new version in one ``transaction``."""
    if current > len(MIGRATIONS):
        raise StoreError(
            f"store {path} has schema version {current}, newer than this daemon knows "
            f"({len(MIGRATIONS)}); refusing to touch it"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        with transaction() as db:
            for statement in MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={version}")
