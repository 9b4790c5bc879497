from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.event_kinds import Event, EventKind
from coordinator.policy.scope import Scope
from coordinator.store.db import AttachmentLimitReached, PoolExhausted, Store, StoreError
from coordinator.store.fence_rows import PRUNE_EVERY
from coordinator.store.records import AttachmentState, NewAttachment, PolicyState
from coordinator.store.schema import MIGRATIONS


def _slots(vfs: int, sfs: int) -> list[EswitchDevice]:
    return [EswitchDevice(DeviceKind.VF, 0, 0, i, f"pf0vf{i}") for i in range(vfs)] + [
        EswitchDevice(DeviceKind.SF, 0, 0, 1000 + i, f"en0pf0sf{1000 + i}") for i in range(sfs)
    ]


def _new(n: int, kind: DeviceKind | None = None, owner: str = "host-a") -> NewAttachment:
    return NewAttachment(f"att-{n}", owner, f"req-{n}", f"sb-{n}", "hi-1", kind, "dpu-ovs-isolated")


def _macs(slot: EswitchDevice) -> str:
    kind = 0 if slot.kind is DeviceKind.VF else 1
    return f"02:00:00:{kind:02x}:{slot.number >> 8:02x}:{slot.number & 0xFF:02x}"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state.db", event_log_size=100)
    s.sync_devices(_slots(2, 2))
    return s


def test_open_sets_wal_full_sync_and_schema_version(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    assert s.schema_version == len(MIGRATIONS)
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()
    # Reopening migrates nothing and keeps the data.
    assert Store(tmp_path / "state.db").schema_version == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "state.db").close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this daemon"):
        Store(tmp_path / "state.db")


def test_corrupt_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises((StoreError, sqlite3.DatabaseError)):
        Store(path)


def test_claims_are_exclusive_and_pool_stats_follow(store: Store) -> None:
    a = store.create_attachment(_new(1, DeviceKind.VF), mac_for=_macs, max_attachments=10)
    b = store.create_attachment(_new(2, DeviceKind.VF), mac_for=_macs, max_attachments=10)
    assert a.device != b.device and a.slot != b.slot and a.state is AttachmentState.ATTACHING
    with pytest.raises(PoolExhausted, match="no free VF"):
        store.create_attachment(_new(3, DeviceKind.VF), mac_for=_macs, max_attachments=10)
    stats = {p.kind: (p.total, p.free) for p in store.pool_stats()}
    assert stats == {DeviceKind.VF: (2, 0), DeviceKind.SF: (2, 2)}
    # ANY falls through to SFs once VFs are gone.
    c = store.create_attachment(_new(4), mac_for=_macs, max_attachments=10)
    assert c.device.kind is DeviceKind.SF


def test_max_attachments(store: Store) -> None:
    store.create_attachment(_new(1), mac_for=_macs, max_attachments=1)
    with pytest.raises(AttachmentLimitReached):
        store.create_attachment(_new(2), mac_for=_macs, max_attachments=1)
    assert store.count() == 1


def test_failed_claim_leaves_no_row_and_no_event(store: Store) -> None:
    before = store.last_event_seq()
    with pytest.raises(sqlite3.IntegrityError):
        store.create_attachment(_new(1), mac_for=lambda s: "02:00:00:00:00:01", max_attachments=10)
        store.create_attachment(_new(2), mac_for=lambda s: "02:00:00:00:00:01", max_attachments=10)
    assert store.count() == 1 and store.last_event_seq() == before + 1


def test_delete_frees_device_and_slot_but_keeps_fence(store: Store) -> None:
    a = store.create_attachment(_new(1, DeviceKind.VF), mac_for=_macs, max_attachments=10)
    store.mark_bound(a.attachment_id, ofport=7, policy_state=PolicyState.BASELINE, policy_version=0)
    bound = store.get(a.attachment_id)
    assert bound is not None and bound.state is AttachmentState.BOUND and bound.ofport == 7
    store.delete_attachment(a.attachment_id, reason="Detached", message="bye")
    assert store.get(a.attachment_id) is None
    fence = store.fence(a.attachment_id)
    assert fence is not None and fence.generation == 1 and fence.detached_at is not None
    again = store.create_attachment(_new(5, DeviceKind.VF), mac_for=_macs, max_attachments=10)
    assert again.slot == a.slot  # lowest free slot is reused once its owner is gone


def test_fences_of_detached_attachments_are_bounded_newest_kept(tmp_path: Path) -> None:
    """A host that attaches and detaches for ever must not grow the store
    for ever: the fences of the newest detached attachments stay (a Detach
    retried after a lost answer is still told it is done), older ones go,
    and a live attachment's fence always stays."""
    clock = iter(range(1, 1_000_000))
    store = Store(tmp_path / "state.db", detached_fences_kept=5, clock=lambda: float(next(clock)))
    store.sync_devices(_slots(2, 0))
    live = store.create_attachment(_new(0), mac_for=_macs, max_attachments=10)
    for i in range(1, 301):
        a = store.create_attachment(_new(i), mac_for=_macs, max_attachments=10)
        store.delete_attachment(a.attachment_id, reason="Detached", message="bye")
    (rows,) = store._db.execute("SELECT COUNT(*) FROM lease_fences").fetchone()
    assert rows <= 1 + 5 + PRUNE_EVERY
    assert store.fence(live.attachment_id) is not None
    assert store.fence("att-300") is not None and store.fence("att-1") is None


def test_slots_fill_gaps(store: Store) -> None:
    records = [store.create_attachment(_new(i), mac_for=_macs, max_attachments=10) for i in range(3)]
    assert [r.slot for r in records] == [1, 2, 3]
    store.delete_attachment(records[1].attachment_id, reason="x", message="x")
    assert store.create_attachment(_new(9), mac_for=_macs, max_attachments=10).slot == 2


def test_request_lookup_is_per_owner(store: Store) -> None:
    store.create_attachment(_new(1), mac_for=_macs, max_attachments=10)
    assert store.find_by_request("host-a", "req-1") is not None
    assert store.find_by_request("host-b", "req-1") is None


def test_list_filters(store: Store) -> None:
    store.create_attachment(_new(1), mac_for=_macs, max_attachments=10)
    store.create_attachment(_new(2, owner="host-b"), mac_for=_macs, max_attachments=10)
    assert [r.attachment_id for r in store.list_attachments(owner="host-b")] == ["att-2"]
    assert [r.attachment_id for r in store.list_attachments(sandbox_id="sb-1")] == ["att-1"]
    assert len(store.list_attachments(state=AttachmentState.ATTACHING)) == 2
    assert store.list_attachments(state=AttachmentState.BOUND) == []


def test_event_log_is_bounded_and_resumable(store: Store) -> None:
    for i in range(80):
        a = store.create_attachment(_new(i), mac_for=_macs, max_attachments=1000) if i < 4 else None
        if a is None:
            record = store.list_attachments()[0]
            store.append_event(record, Event(EventKind.POLICY_APPLIED, True, "Applied", f"n={i}"))
    events = store.events_since(0, limit=1000)
    assert len(events) == 80
    for i in range(80):
        store.append_event(
            store.list_attachments()[0], Event(EventKind.POLICY_APPLIED, True, "Applied", f"m={i}")
        )
    kept = store.events_since(0, limit=1000)
    assert len(kept) == 100 and kept[-1].seq == store.last_event_seq() == 160
    assert [e.seq for e in store.events_since(150)] == list(range(151, 161))
    assert store.events_since(0, owner="nobody") == []


def test_the_representor_a_device_got_is_remembered(store: Store) -> None:
    a = store.create_attachment(_new(1, DeviceKind.SF), mac_for=_macs, max_attachments=10)
    assert a.device.representor == "en0pf0sf1000"  # the inventory's expectation
    bound = store.mark_bound(
        a.attachment_id,
        ofport=3,
        policy_state=PolicyState.BASELINE,
        policy_version=0,
        representor="en3f0pf0sf1000",
    )
    assert bound.device.representor == "en3f0pf0sf1000"
    assert store.list_attachments()[0].device.representor == "en3f0pf0sf1000"


POLICY = Scope(version=7, allow_dhcp=True)


def _commits(store: Store) -> list[str]:
    seen: list[str] = []
    store._db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


def test_bound_under_a_policy_is_one_commit(store: Store) -> None:
    scope = POLICY
    a = store.create_attachment(_new(1), mac_for=_macs, max_attachments=10)
    commits = _commits(store)
    bound = store.mark_bound(
        a.attachment_id,
        ofport=4,
        policy_state=PolicyState.APPLIED,
        policy_version=scope.version,
        last_good=scope,
    )
    assert len(commits) == 1
    assert (bound.state, bound.ofport, bound.policy_version) == (AttachmentState.BOUND, 4, scope.version)
    saved = store.policy("sb-1")
    assert saved is not None and saved.version == scope.version


def test_a_failed_bind_keeps_neither_the_policy_nor_the_state(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = store.create_attachment(_new(1), mac_for=_macs, max_attachments=10)

    def fail(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_append_event", fail)
    with pytest.raises(sqlite3.OperationalError):
        store.mark_bound(
            a.attachment_id, ofport=4, policy_state=PolicyState.APPLIED, policy_version=7, last_good=POLICY
        )
    monkeypatch.undo()
    assert store.policy("sb-1") is None
    again = store.get(a.attachment_id)
    assert again is not None and again.state is AttachmentState.ATTACHING
    # The store is usable afterwards (the transaction was closed).
    store.mark_bound(a.attachment_id, ofport=4, policy_state=PolicyState.BASELINE, policy_version=0)
