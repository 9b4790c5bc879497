"""Rows of ``flow_proofs``: per slot, the encoded proof of its last
verified sync (``coordinator.flow_proofs``), opaque here. A slot's row is
replaced by the next proof of that slot; a slot has at most one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class Database(Protocol):
    """What is used of the store's connection (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


MAX_PROOF_BYTES = 4096  # a proof naming its most winners is about 2.3 kB


def write_proofs(db: Database, proofs: Mapping[int, bytes]) -> None:
    for slot, proof in proofs.items():
        if len(proof) > MAX_PROOF_BYTES:
            raise ValueError(f"flow proof of slot {slot}: {len(proof)} bytes, more than {MAX_PROOF_BYTES}")
    db.executemany(
        """INSERT INTO flow_proofs (slot, proof) VALUES (?, ?)
           ON CONFLICT (slot) DO UPDATE SET proof = excluded.proof""",
        list(proofs.items()),
    )


def read_proofs(db: Database) -> dict[int, bytes]:
    """Every slot's proof; a row that is not bytes is left out (treated as no proof)."""
    rows = db.execute("SELECT slot, proof FROM flow_proofs").fetchall()
    return {int(slot): bytes(proof) for slot, proof in rows if isinstance(proof, bytes)}
