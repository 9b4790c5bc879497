"""OCSF security events: the shape of each mapped event, the append-only
file (rotation, resume), the store follower and the config key."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from coordinator import ocsf
from coordinator.api.security_interceptor import parse_peer
from coordinator.config import ConfigError, config_from_mapping
from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.event_kinds import EventKind
from coordinator.events import EventHub
from coordinator.security_events import event_from_store, start_security_events
from coordinator.security_log import SecurityEventLog
from coordinator.store.db import Store
from coordinator.store.records import EventRecord, NewAttachment, PolicyState
from coordinator.store.worker import AsyncStore

HOST = "spiffe://bluefield.local/host/host-a"
ADMIN = "spiffe://bluefield.local/admin/admin"
BASE_KEYS = {
    "time", "class_uid", "class_name", "category_uid", "category_name", "activity_id", "activity_name",
    "type_uid", "type_name", "severity_id", "severity", "message", "metadata",
}  # fmt: skip


def _record(
    type_: str, status: bool, reason: str = "", message: str = "", seq: int = 7, actor: str = ""
) -> EventRecord:
    # A type outside the vocabulary stays a string: what a row of a newer
    # version would hold.
    kind = EventKind(type_) if type_ in {k.value for k in EventKind} else type_
    return EventRecord(seq, "att-1", "sb-1", HOST, kind, status, reason, message, 1700000000.25, actor)  # type: ignore[arg-type]


def _check_base(event: dict[str, Any], class_uid: int, activity_id: int) -> None:
    assert event.keys() >= BASE_KEYS
    assert event["class_uid"] == class_uid and event["activity_id"] == activity_id
    assert event["category_uid"] == class_uid // 1000
    assert event["type_uid"] == class_uid * 100 + activity_id
    assert event["metadata"]["version"] == "1.1.0"
    assert event["metadata"]["product"]["name"] == "bluefield-coordinator"
    json.dumps(event)  # one JSON object, nothing exotic in it


def test_bound_attachment_is_an_api_create() -> None:
    event = event_from_store(_record("DpuAttachmentBound", True, "Bound", "representor pf0vf0 on ofport 3"))
    assert event is not None
    _check_base(event, 6003, 1)
    assert event["type_uid"] == 600301 and event["status_id"] == 1 and event["severity_id"] == 1
    assert event["api"]["operation"] == "Attach"
    assert event["actor"]["user"]["uid"] == HOST
    assert event["resources"] == [
        {
            "uid": "att-1",
            "type": "attachment",
            "labels": ["sandbox_id=sb-1"],
            "owner": {"uid": HOST, "name": HOST},
        }
    ]
    assert event["time"] == 1700000000250
    assert event["metadata"]["sequence"] == 7 and event["metadata"]["uid"] == "event-7"


def test_detach_names_who_detached() -> None:
    event = event_from_store(
        _record("DpuAttachmentBound", False, "Detached", f"detached by {ADMIN}", actor=ADMIN)
    )
    assert event is not None
    _check_base(event, 6003, 4)
    assert event["status"] == "Success" and event["actor"]["user"]["uid"] == ADMIN


def test_failed_attach_and_rollback() -> None:
    failed = event_from_store(_record("DpuAttachmentBound", False, "AttachFailed", "ovs said no"))
    assert failed is not None
    _check_base(failed, 6003, 1)
    assert failed["status_id"] == 2 and failed["status_code"] == "AttachFailed"
    rolled = event_from_store(_record("DpuAttachmentBound", False, "RolledBack", "interrupted"))
    assert rolled is not None
    _check_base(rolled, 6003, 4)
    assert rolled["actor"]["user"]["uid"] == "bluefield-coordinator"


@pytest.mark.parametrize(
    ("type_", "status", "result", "severity"),
    [
        ("DpuPolicyApplied", True, "Pass", 1),
        ("DpuPolicyApplied", False, "Warning", 2),
        ("DpuPolicyStale", True, "Warning", 3),
        ("DpuPolicyDegraded", True, "Fail", 3),
        ("DpuAttachmentDrift", False, "Fail", 3),
    ],
)
def test_policy_conditions_are_compliance_findings(
    type_: str, status: bool, result: str, severity: int
) -> None:
    event = event_from_store(_record(type_, status, "Reason", "what happened"))
    assert event is not None
    _check_base(event, 2003, 1)
    assert event["compliance"]["status"] == result and event["compliance"]["standards"]
    assert event["compliance"]["control"] == type_ and event["compliance"]["status_code"] == "Reason"
    assert event["severity_id"] == severity
    assert event["finding_info"]["uid"] == f"att-1/{type_}" and event["finding_info"]["title"]
    assert event["resources"][0]["uid"] == "att-1"


def test_lease_takeover_is_an_api_update() -> None:
    event = event_from_store(_record("DpuLeaseTakenOver", True, "HostReconcile", "generation 1 -> 2"))
    assert event is not None
    _check_base(event, 6003, 3)
    assert event["api"]["operation"] == "Reconcile"


def test_progress_conditions_are_not_security_events() -> None:
    assert event_from_store(_record("DpuAttachInProgress", True, "Attaching")) is None
    assert event_from_store(_record("SomethingNew", True)) is None


def test_denied_api_call_shape() -> None:
    event = ocsf.api_activity(
        time_ms=1,
        operation="ExplainPacket",
        activity=ocsf.ApiActivity.READ,
        status=ocsf.Status.FAILURE,
        actor=ocsf.Peer(HOST, "host", "198.51.100.7", 50123),
        severity=ocsf.Severity.MEDIUM,
        message="refused",
        response_code=7,
        response_error="PERMISSION_DENIED",
    )
    _check_base(event, 6003, 2)
    assert event["src_endpoint"] == {"ip": "198.51.100.7", "port": 50123}
    assert event["actor"]["user"]["type"] == "User" and event["actor"]["user"]["groups"] == [{"name": "host"}]
    assert event["api"]["response"] == {"code": 7, "error": "PERMISSION_DENIED"}


def test_peer_strings() -> None:
    assert parse_peer("ipv4:198.51.100.7:50123") == ("198.51.100.7", 50123)
    assert parse_peer("ipv6:[2001:db8::7]:443") == ("2001:db8::7", 443)
    assert parse_peer("unix:/run/x.sock") == ("", 0)
    assert parse_peer("ipv4:not-an-ip:1") == ("", 0)


# -- the file ------------------------------------------------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_is_appended_one_line_per_event_and_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "security.jsonl"
    path.write_text('{"earlier": true}\n')
    sink = SecurityEventLog(path)
    assert sink.write({"n": 1}) and sink.write({"n": 2})
    assert _lines(path) == [{"earlier": True}, {"n": 1}, {"n": 2}]
    # logrotate moves the file away: the next line starts a new file.
    path.rename(tmp_path / "security.jsonl.1")
    assert sink.write({"n": 3})
    assert _lines(path) == [{"n": 3}]
    assert _lines(tmp_path / "security.jsonl.1")[-1] == {"n": 2}
    # ... or deletes it.
    path.unlink()
    assert sink.write({"n": 4})
    assert _lines(path) == [{"n": 4}]
    sink.close()


def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    SecurityEventLog(path).close()
    assert os.stat(path).st_mode & 0o077 == 0


def test_unwritable_path_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"logs\.security_events_path"):
        SecurityEventLog(tmp_path / "missing-dir" / "x.jsonl")


def test_last_sequence_skips_foreign_and_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(
        '{"metadata": {"sequence": 4}}\n{"metadata": {"sequence": 9}}\n{"class_uid": 6003}\nnot json\n{"meta'
    )
    assert SecurityEventLog(path).last_sequence() == 9
    assert SecurityEventLog(tmp_path / "empty.jsonl").last_sequence() == 0


def test_config_key_is_validated() -> None:
    assert config_from_mapping({}).logs.security_events_path == ""
    config = config_from_mapping({"logs": {"security_events_path": "/var/log/bluefield-coordinator/s.jsonl"}})
    assert config.logs.security_events_path.endswith("s.jsonl")
    with pytest.raises(ConfigError, match=r"logs\.security_events_path: expected an absolute path"):
        config_from_mapping({"logs": {"security_events_path": "relative.jsonl"}})
    with pytest.raises(ConfigError, match=r"logs\.nope: unknown key"):
        config_from_mapping({"logs": {"nope": 1}})


# -- following the store -------------------------------------------------------


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "state.db")
    store.sync_devices([EswitchDevice(DeviceKind.VF, 0, 0, i, f"pf0vf{i}") for i in range(4)])
    return store


def _attach_and_detach(store: Store, n: int) -> str:
    new = NewAttachment(f"att-{n}", HOST, f"req-{n}", f"sb-{n}", "hi-1", DeviceKind.VF, "dpu-ovs-isolated")
    record = store.create_attachment(new, mac_for=lambda _: "02:00:00:00:00:01", max_attachments=10)
    store.mark_bound(record.attachment_id, ofport=3, policy_state=PolicyState.BASELINE, policy_version=0)
    store.delete_attachment(
        record.attachment_id, reason="Detached", message=f"detached by {HOST}", actor=HOST
    )
    return record.attachment_id


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_follower_writes_store_events_and_resumes_after_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = tmp_path / "security.jsonl"
    config = config_from_mapping({"logs": {"security_events_path": str(path)}})
    first = _attach_and_detach(store, 1)
    events = EventHub()
    security = start_security_events(config, AsyncStore(store), events)
    assert len(security.interceptors) == 1 and len(security.tasks) == 1
    # Events from before the start (start-up convergence) are not lost.
    await _until(lambda: path.exists() and len(_lines(path)) == 2)
    second = _attach_and_detach(store, 2)
    await events.notify()
    await _until(lambda: len(_lines(path)) == 4)
    lines = _lines(path)
    assert [(e["resources"][0]["uid"], e["activity_name"]) for e in lines] == [
        (first, "Create"), (first, "Delete"), (second, "Create"), (second, "Delete"),
    ]  # fmt: skip
    seqs = [e["metadata"]["sequence"] for e in lines]
    assert seqs == sorted(seqs)
    await events.close()
    security.close()

    # A restart resumes after the last line written: nothing twice.
    third = _attach_and_detach(store, 3)
    events = EventHub()
    security = start_security_events(config, AsyncStore(store), events)
    await _until(lambda: len(_lines(path)) == 6)
    await asyncio.sleep(0.1)
    assert [e["resources"][0]["uid"] for e in _lines(path)[4:]] == [third, third]
    assert len(_lines(path)) == 6
    await events.close()
    security.close()
    store.close()


async def test_off_by_default_runs_nothing(tmp_path: Path) -> None:
    security = start_security_events(config_from_mapping({}), _store(tmp_path), EventHub())
    assert security.interceptors == [] and security.tasks == [] and security.sink is None
    security.certificate_problem("server.cert", "/x", "boom")  # no file, no error


async def test_certificate_reload_failure_is_a_failed_finding(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    config = config_from_mapping({"logs": {"security_events_path": str(path)}})
    events = EventHub()
    security = start_security_events(config, _store(tmp_path), events)
    security.certificate_problem("server.client_ca", "/etc/bluefield-coordinator/tls/ca.pem", "not PEM")
    (event,) = _lines(path)
    _check_base(event, 2003, 1)
    assert event["compliance"]["status"] == "Fail" and event["severity_id"] == 4
    assert event["resources"] == [
        {"uid": "/etc/bluefield-coordinator/tls/ca.pem", "type": "certificate", "name": "server.client_ca"}
    ]
    await events.close()
    security.close()
