"""The store's reads do not wait behind another caller's commit (they run
on a connection and thread of their own) yet see every write made before
they were asked; writes stay one after another."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.store.db import Store
from coordinator.store.records import AttachmentState
from coordinator.store.worker import AsyncStore
from tests.unit.store_rows import DRIFT, mac_of, new_attachment

SLOW_COMMIT_S = 0.5


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    sync = Store(tmp_path / "state.db")
    sync.sync_devices([EswitchDevice(DeviceKind.VF, 0, 0, i, f"pf0vf{i}") for i in range(3)])
    wrapped = AsyncStore(sync)
    try:
        yield wrapped
    finally:
        await wrapped.close()


async def test_a_read_does_not_wait_for_another_callers_commit(store: AsyncStore) -> None:
    first = await store.create_attachment(new_attachment(1), mac_for=mac_of, max_attachments=10)

    def slow_commit(statement: str) -> None:
        if statement.strip().upper() == "COMMIT":
            time.sleep(SLOW_COMMIT_S)

    store.sync._db.set_trace_callback(slow_commit)
    writing = asyncio.ensure_future(
        store.create_attachment(new_attachment(2), mac_for=mac_of, max_attachments=10)
    )
    await asyncio.sleep(0.05)  # the write is committing now
    reading = asyncio.ensure_future(store.get(first.attachment_id))
    done, _ = await asyncio.wait({writing, reading}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {reading}
    found = reading.result()
    assert found is not None and found.attachment_id == first.attachment_id
    await writing
    store.sync._db.set_trace_callback(None)


async def test_a_read_sees_every_write_made_before_it(store: AsyncStore) -> None:
    record = await store.create_attachment(new_attachment(1), mac_for=mac_of, max_attachments=10)
    seen = await store.get(record.attachment_id)
    assert seen is not None and seen.state is AttachmentState.ATTACHING
    await store.mark_detaching(record.attachment_id)
    seen = await store.get(record.attachment_id)
    assert seen is not None and seen.state is AttachmentState.DETACHING
    await store.delete_attachment(record.attachment_id, reason="Detached", message="test")
    assert await store.get(record.attachment_id) is None
    assert [a.attachment_id for a in await store.list_attachments()] == []
    fence = await store.fence(record.attachment_id)
    assert fence is not None and fence.detached_at is not None


async def test_the_reader_cannot_write(store: AsyncStore) -> None:
    with pytest.raises(Exception, match="readonly"):
        await store.read(lambda: store.reads.record_event("a", "s", "", DRIFT))


async def test_liveness_notices_a_write_stuck_in_its_commit(store: AsyncStore) -> None:
    await asyncio.wait_for(store.answers(), 5)
    stuck = threading.Event()
    store.sync._db.set_trace_callback(lambda sql: stuck.wait() if sql.strip().upper() == "COMMIT" else None)
    writing = asyncio.ensure_future(
        store.create_attachment(new_attachment(1), mac_for=mac_of, max_attachments=10)
    )
    await asyncio.sleep(0.05)
    assert await store.get("att-0") is None  # reads still answer
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(store.answers(), 0.3)
    stuck.set()
    await writing
    store.sync._db.set_trace_callback(None)


async def test_a_read_by_key_never_waits_for_a_lock_on_the_loop(
    store: AsyncStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads by key run on the caller's thread (the loop), so their
    # connection must never sit in SQLite's busy wait (five seconds by
    # default): a busy database sends the read to the reader's thread.
    record = await store.create_attachment(new_attachment(1), mac_for=mac_of, max_attachments=10)
    assert store._by_key._db.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert store.reads._db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    on_loop = threading.get_ident()
    threads: list[int] = []
    real_get = Store.get

    def get(self: Store, attachment_id: str) -> object:
        threads.append(threading.get_ident())
        if self is store._by_key:
            raise sqlite3.OperationalError("database is locked")
        return real_get(self, attachment_id)

    monkeypatch.setattr(Store, "get", get)
    found = await store.get(record.attachment_id)
    assert found is not None and found.attachment_id == record.attachment_id
    assert threads[0] == on_loop and threads[1] != on_loop  # tried on the loop, read on the reader's thread
    monkeypatch.undo()
    threads.clear()
    assert [r.attachment_id for r in await store.attachments_of("sb-1", AttachmentState.ATTACHING)] == [
        record.attachment_id
    ]
