"""The last good policy per sandbox, as rows of ``sandbox_policies``: written
in one statement in the codec's stored form, read back validated."""

from __future__ import annotations

from typing import Any, Protocol

from coordinator.policy.codec import scope_from_stored, scope_to_stored
from coordinator.policy.scope import Scope
from coordinator.store.errors import UnreadablePolicy
from coordinator.store.records import StoredPolicy

__all__ = [
    "Database",
    "PolicyToKeep",
    "delete_policy",
    "read_policies",
    "read_policy",
    "read_policy_version",
    "write_policy",
]


class Database(Protocol):
    """What is used of the store's connection (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


class PolicyToKeep:
    """A sandbox's policy on its way to becoming the last good one, its
    stored form worked out once, by whoever asks first: an apply asks while
    the switch reads its flows back (its CPU then overlaps the switch's
    work instead of following it), the store's write otherwise."""

    __slots__ = ("_stored", "sandbox_id", "scope")

    def __init__(self, sandbox_id: str, scope: Scope) -> None:
        self.sandbox_id = sandbox_id
        self.scope = scope
        self._stored: bytes | None = None

    def stored(self) -> bytes:
        if self._stored is None:
            self._stored = scope_to_stored(self.scope)
        return self._stored


def write_policy(
    db: Database, sandbox_id: str, scope: Scope, now: float, *, stored: bytes | None = None
) -> None:
    """``scope`` becomes the sandbox's last good policy (one statement: atomic
    without a transaction of its own); ``stored``: its stored form, when
    already worked out."""
    db.execute(
        """INSERT INTO sandbox_policies (sandbox_id, version, scope, updated_at) VALUES (?, ?, ?, ?)
           ON CONFLICT (sandbox_id) DO UPDATE SET version = excluded.version,
               scope = excluded.scope, updated_at = excluded.updated_at""",
        (sandbox_id, scope.version, scope_to_stored(scope) if stored is None else stored, now),
    )


def read_policy(db: Database, sandbox_id: str) -> StoredPolicy | None:
    """The sandbox's last good policy; raises UnreadablePolicy if the stored
    one no longer decodes or validates."""
    row = db.execute(
        "SELECT version, scope FROM sandbox_policies WHERE sandbox_id = ?", (sandbox_id,)
    ).fetchone()
    if row is None:
        return None
    version = int(row[0])
    try:
        return StoredPolicy(version, scope_from_stored(row[1]))
    except ValueError as exc:  # PolicyError, or text that is not JSON at all
        raise UnreadablePolicy(sandbox_id, version, str(exc)) from exc


def read_policies(db: Database) -> dict[str, StoredPolicy | UnreadablePolicy]:
    """Every sandbox's last good policy, by sandbox (a policy that no longer
    decodes or validates as its UnreadablePolicy, not raised). Each distinct
    stored value is decoded once: sandboxes that hold the same policy share
    one Scope, so a start with a thousand alike costs one decode, not a
    thousand."""
    decoded: dict[object, Scope | ValueError] = {}
    found: dict[str, StoredPolicy | UnreadablePolicy] = {}
    for sandbox_id, version, value in db.execute("SELECT sandbox_id, version, scope FROM sandbox_policies"):
        key = (type(value), value)  # b"x" and "x" are not the same stored form
        scope = decoded.get(key)
        if scope is None:
            try:
                scope = scope_from_stored(value)
            except ValueError as exc:
                scope = exc
            decoded[key] = scope
        if isinstance(scope, ValueError):
            found[sandbox_id] = UnreadablePolicy(sandbox_id, int(version), str(scope))
        else:
            found[sandbox_id] = StoredPolicy(int(version), scope)
    return found


def read_policy_version(db: Database, sandbox_id: str) -> int | None:
    """The version of the sandbox's last good policy, without decoding it."""
    row = db.execute("SELECT version FROM sandbox_policies WHERE sandbox_id = ?", (sandbox_id,)).fetchone()
    return int(row[0]) if row else None


def delete_policy(db: Database, sandbox_id: str) -> None:
    db.execute("DELETE FROM sandbox_policies WHERE sandbox_id = ?", (sandbox_id,))
