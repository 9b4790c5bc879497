"""Group commit: writes asked while another commits share one commit (one
fsync), each answered only once it is durable; a write that fails is undone
alone; a commit that fails fails every write of its group and keeps none
of them; after a failed commit the next write is committed again."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.event_kinds import Event, EventKind
from coordinator.store.db import Store
from coordinator.store.errors import TransactionLost
from coordinator.store.worker import AsyncStore
from tests.unit.store_rows import DRIFT, mac_of, new_attachment

GROUP = 4


def _pool(store: Store) -> None:
    store.sync_devices([EswitchDevice(DeviceKind.VF, 0, 0, i, f"pf0vf{i}") for i in range(GROUP + 2)])


def _violate_a_deferred_constraint(store: Store) -> None:
    """A write that succeeds but makes its transaction's COMMIT fail: an
    attachment of a device that does not exist, its check deferred to the
    commit (a real refusal of SQLite at commit time)."""
    db = store._db
    db.execute("PRAGMA defer_foreign_keys=ON")
    db.execute(
        """INSERT INTO attachments (attachment_id, owner, request_id, sandbox_id, host_instance_id,
               lease_generation, device_id, mac, slot, network_class, state, created_at, updated_at)
           VALUES ('bad', 'host-a', 'req-bad', 'sb-bad', 'hi-1', 1, 'no-such-device', 'mac-bad', 999,
               'c', 'ATTACHING', 0, 0)"""
    )


class Commits:
    """Counts the COMMITs on the writer's connection; the first one can be
    held until released, so the writes asked meanwhile queue up behind it."""

    def __init__(self, store: Store, *, hold_first: bool) -> None:
        self.count = 0
        self.release = threading.Event()
        self._hold = hold_first
        store._db.set_trace_callback(self._seen)

    def _seen(self, statement: str) -> None:
        if statement.strip().upper() == "COMMIT":
            self.count += 1
            if self._hold and self.count == 1:
                self.release.wait(5)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    sync = Store(tmp_path / "state.db")
    _pool(sync)
    wrapped = AsyncStore(sync)
    try:
        yield wrapped
    finally:
        sync._db.set_trace_callback(None)
        await wrapped.close()


async def _behind_a_held_commit(
    store: AsyncStore, writes: list[Callable[[], object]]
) -> tuple[Commits, list[object]]:
    """Run ``writes`` while the store commits an earlier write: they queue up
    and are taken as one group. Returns their results (or exceptions)."""
    commits = Commits(store.sync, hold_first=True)
    first = asyncio.ensure_future(store.record_event("x", "sb-x", "", DRIFT))
    await asyncio.sleep(0.1)  # the first write is in its COMMIT now
    asked = [asyncio.ensure_future(store.run(w)) for w in writes]
    await asyncio.sleep(0.05)
    assert not any(a.done() for a in asked)  # none answered before its commit
    commits.release.set()
    await first
    return commits, list(await asyncio.gather(*asked, return_exceptions=True))


def _claim(store: AsyncStore, n: int) -> Callable[[], object]:
    return lambda: store.sync.create_attachment(new_attachment(n), mac_for=mac_of, max_attachments=100)


async def test_writes_asked_during_a_commit_share_the_next_one(store: AsyncStore) -> None:
    commits, results = await _behind_a_held_commit(store, [_claim(store, n) for n in range(GROUP)])
    assert commits.count == 2  # the held one, then one for the whole group
    assert not [r for r in results if isinstance(r, BaseException)]
    # Durable and visible to another connection once answered.
    assert sorted(a.attachment_id for a in await store.list_attachments()) == [
        f"att-{n}" for n in range(GROUP)
    ]


async def test_a_failing_write_is_undone_alone(store: AsyncStore) -> None:
    def half_then_fail() -> None:
        store.sync.create_attachment(new_attachment(99), mac_for=mac_of, max_attachments=100)
        raise ValueError("refused after writing")

    _, results = await _behind_a_held_commit(store, [_claim(store, 0), half_then_fail, _claim(store, 1)])
    assert isinstance(results[1], ValueError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert sorted(a.attachment_id for a in await store.list_attachments()) == ["att-0", "att-1"]
    assert await store.fence("att-99") is None


async def test_a_failed_commit_fails_every_write_of_its_group_and_keeps_none(store: AsyncStore) -> None:
    writes = [_claim(store, n) for n in range(GROUP)]
    writes.insert(2, lambda: _violate_a_deferred_constraint(store.sync))
    _, results = await _behind_a_held_commit(store, writes)
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    # Nothing of the group is left: no attachment, no fence, no event.
    assert await store.list_attachments() == []
    assert [await store.fence(f"att-{n}") for n in range(GROUP)] == [None] * GROUP
    assert [e.attachment_id for e in await store.events_since(0)] == ["x"]
    # The writer goes on: the next write is committed on its own.
    await store.create_attachment(new_attachment(7), mac_for=mac_of, max_attachments=100)
    assert [a.attachment_id for a in await store.list_attachments()] == ["att-7"]


def test_after_a_failed_commit_the_next_write_is_committed(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    _pool(store)
    with pytest.raises(sqlite3.IntegrityError), store.group():
        _violate_a_deferred_constraint(store)
    store.create_attachment(new_attachment(1), mac_for=mac_of, max_attachments=100)
    other = sqlite3.connect(str(tmp_path / "state.db"))
    try:
        ids = [r[0] for r in other.execute("SELECT attachment_id FROM attachments")]
    finally:
        other.close()
        store.close()
    assert ids == ["att-1"]


async def test_a_write_that_makes_sqlite_roll_back_the_whole_group_fails_it_all(store: AsyncStore) -> None:
    """SQLite rolls the whole transaction back itself on some errors (disk
    full): the writes of the group made before that one are gone too."""
    db = store.sync._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages + 2}")

    def fill_the_disk() -> None:
        store.sync.record_event(
            "big", "sb-big", "", Event(EventKind.ATTACHMENT_DRIFT, False, "T", "x" * 200_000)
        )

    _, results = await _behind_a_held_commit(store, [_claim(store, 0), fill_the_disk, _claim(store, 1)])
    assert isinstance(results[1], sqlite3.OperationalError) and "full" in str(results[1])
    assert isinstance(results[0], TransactionLost) and isinstance(results[2], TransactionLost)
    db.execute("PRAGMA max_page_count=1073741823")
    assert await store.list_attachments() == []
    assert [e.attachment_id for e in await store.events_since(0)] == ["x"]
    await store.create_attachment(new_attachment(7), mac_for=mac_of, max_attachments=100)
    assert [a.attachment_id for a in await store.list_attachments()] == ["att-7"]


async def test_closing_the_store_waits_for_a_transaction_under_way(tmp_path: Path) -> None:
    """A write still running on the writer's thread (its caller gone) when
    the store is closed: close waits for its transaction to end instead of
    closing the connection between two of its statements (a statement on a
    connection closed under it crashed the process)."""
    sync = Store(tmp_path / "state.db")
    wrapped = AsyncStore(sync)
    between = threading.Event()

    def two_statements() -> None:
        sync.record_event("a", "sb-a", "", DRIFT)
        between.wait(5)
        sync.record_event("b", "sb-b", "", DRIFT)

    writing = asyncio.ensure_future(wrapped.run(two_statements))
    await asyncio.sleep(0.1)  # between its two statements now
    closing = threading.Thread(target=sync.close)
    closing.start()
    closing.join(0.2)
    assert closing.is_alive()  # waiting for the transaction
    between.set()
    await writing
    closing.join(5)
    assert not closing.is_alive()


async def test_the_wal_is_checkpointed_between_commits_so_it_stays_small(
    store: AsyncStore, tmp_path: Path
) -> None:
    """SQLite writes its WAL over from the start only once a checkpoint
    has copied all of it (by itself at 4 MB); until then every commit
    appends, and an append's fsync costs about twice an overwrite's. The
    writer checkpoints when it is idle, so the WAL stays a few commits
    long however much is written."""
    wal = tmp_path / "state.db-wal"
    proof = bytes(range(256)) * 15  # with the other slots', over two pages a commit
    sizes = []
    for n in range(200):
        proofs = {slot: proof + (n + slot).to_bytes(4, "big") for slot in range(1, 5)}
        await store.run(lambda proofs=proofs: store.sync.keep_flow_proofs(proofs))
        await asyncio.sleep(0.002)  # the writer is idle now and then, as between applies
        sizes.append(wal.stat().st_size)
    # 200 commits of ~3 pages and more would be over 2.4 MB of WAL without a checkpoint.
    assert max(sizes) < 1024 * 1024
    assert sizes[-1] == max(sizes[100:])  # written over: it no longer grows
