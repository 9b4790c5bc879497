"""The event vocabulary: closed, stored by its wire names, the actor of a
change carried as a field (and taken over from older rows' messages once,
when the store is upgraded)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.event_kinds import Event, EventKind
from coordinator.security_events import event_from_store
from coordinator.store.db import Store
from coordinator.store.records import NewAttachment, PolicyState
from coordinator.store.schema import MIGRATIONS

HOST = "spiffe://bluefield.local/host/host-a"
ADMIN = "spiffe://bluefield.local/admin/admin"
README = Path(__file__).resolve().parents[2] / "README.md"


def _store(path: Path) -> Store:
    store = Store(path)
    store.sync_devices([EswitchDevice(DeviceKind.VF, 0, 0, i, f"pf0vf{i}") for i in range(2)])
    return store


def _bound(store: Store, n: int = 1) -> str:
    new = NewAttachment(f"att-{n}", HOST, f"req-{n}", f"sb-{n}", "hi-1", DeviceKind.VF, "c")
    record = store.create_attachment(new, mac_for=lambda _: f"02:00:00:00:00:0{n}", max_attachments=10)
    store.mark_bound(record.attachment_id, ofport=3, policy_state=PolicyState.BASELINE, policy_version=0)
    return record.attachment_id


def test_every_kind_keeps_its_wire_name_through_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path / "state.db")
    record = store.get(_bound(store))
    assert record is not None
    for kind in EventKind:
        store.append_event(record, Event(kind, True, "Reason", f"a {kind.name}"))
    stored = [e for e in store.events_since(0) if e.reason == "Reason"]
    assert [e.type for e in stored] == list(EventKind)
    assert all(type(e.type) is EventKind for e in stored)
    raw = [r[0] for r in store._db.execute("SELECT type FROM events WHERE reason = 'Reason' ORDER BY seq")]
    assert raw == [k.value for k in EventKind]
    assert f"{EventKind.POLICY_STALE}" == str(EventKind.POLICY_STALE) == "DpuPolicyStale"


def test_the_documented_kinds_are_the_vocabulary() -> None:
    documented = set(re.findall(r"\bDpu[A-Z][A-Za-z]+", README.read_text()))
    assert documented and documented <= {k.value for k in EventKind}


def test_a_plain_string_is_not_an_event_kind() -> None:
    with pytest.raises(TypeError, match="EventKind"):
        Event("DpuPolicyApplied", True, "Applied", "")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EventKind("DpuSomethingElse")


def test_the_actor_of_a_detach_is_a_field_not_the_message(tmp_path: Path) -> None:
    store = _store(tmp_path / "state.db")
    store.delete_attachment(_bound(store), reason="Detached", message="anything at all", actor=ADMIN)
    (removed,) = [e for e in store.events_since(0) if e.reason == "Detached"]
    assert removed.actor == ADMIN and removed.owner == HOST
    event = event_from_store(removed)
    assert event is not None and event["actor"]["user"]["uid"] == ADMIN
    # No actor recorded: the attachment's owner asked for it.
    store.delete_attachment(_bound(store, 2), reason="Detached", message=f"detached by {ADMIN}")
    (second,) = [e for e in store.events_since(removed.seq) if e.reason == "Detached"]
    event = event_from_store(second)
    assert second.actor == "" and event is not None and event["actor"]["user"]["uid"] == HOST


def test_upgrading_a_store_names_the_actor_of_earlier_detaches(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for migration in MIGRATIONS[:3]:  # the schema before events had an actor
        db.executescript(migration)
    rows = [
        ("att-1", "DpuAttachmentBound", 0, "Detached", f"detached by {ADMIN}"),
        ("att-2", "DpuAttachmentBound", 0, "Detached", "DETACHING interrupted by a restart: detach finished"),
        ("att-3", "DpuAttachmentBound", 0, "RolledBack", "detached by nobody"),
        ("att-4", "DpuPolicyApplied", 1, "Applied", "detached by nobody"),
    ]
    db.executemany(
        "INSERT INTO events (attachment_id, sandbox_id, owner, type, status, reason, message, time)"
        " VALUES (?, 'sb', ?, ?, ?, ?, ?, 1.0)",
        [(a, HOST, t, s, r, m) for a, t, s, r, m in rows],
    )
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    store = Store(path)
    events = store.events_since(0)
    assert [(e.attachment_id, e.actor) for e in events] == [
        ("att-1", ADMIN), ("att-2", ""), ("att-3", ""), ("att-4", ""),
    ]  # fmt: skip
    assert [e.type for e in events[:2]] == [EventKind.ATTACHMENT_BOUND] * 2
    first = event_from_store(events[0])
    assert first is not None and first["actor"]["user"]["uid"] == ADMIN
