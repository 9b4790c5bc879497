"""Stored rows back into records: the one place that knows the column names
of attachments, devices and events as the store reads them."""

from __future__ import annotations

from typing import Any, Protocol

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.event_kinds import EventKind
from coordinator.store.records import AttachmentRecord, AttachmentState, EventRecord, PolicyState

__all__ = ["SELECT_ATTACHMENT", "Row", "attachment_from_row", "device_from_row", "event_from_row"]


class Row(Protocol):
    """What is read of a row (``sqlite3.Row`` is one): columns by name."""

    def __getitem__(self, key: str) -> Any: ...

    def keys(self) -> list[str]: ...


SELECT_ATTACHMENT = """SELECT a.*, d.kind, d.controller, d.pf, d.number, d.host_pci_address,
        COALESCE(NULLIF(a.representor, ''), d.representor) AS device_representor
    FROM attachments a JOIN devices d ON d.device_id = a.device_id"""


def event_from_row(r: Row) -> EventRecord:
    return EventRecord(
        r["seq"],
        r["attachment_id"],
        r["sandbox_id"],
        r["owner"],
        EventKind(r["type"]),
        bool(r["status"]),
        r["reason"],
        r["message"],
        r["time"],
        r["actor"],
    )


def device_from_row(row: Row) -> EswitchDevice:
    return EswitchDevice(
        kind=DeviceKind(row["kind"]),
        controller=row["controller"],
        pf=row["pf"],
        number=row["number"],
        # Row's `in` looks at values, not column names.
        representor=row["device_representor"] if "device_representor" in row.keys() else row["representor"],  # noqa: SIM118
        host_pci_address=row["host_pci_address"],
    )


def attachment_from_row(row: Row) -> AttachmentRecord:
    return AttachmentRecord(
        attachment_id=row["attachment_id"],
        owner=row["owner"],
        request_id=row["request_id"],
        sandbox_id=row["sandbox_id"],
        host_instance_id=row["host_instance_id"],
        lease_generation=row["lease_generation"],
        device=device_from_row(row),
        mac=row["mac"],
        slot=row["slot"],
        network_class=row["network_class"],
        state=AttachmentState(row["state"]),
        ofport=row["ofport"],
        policy_version=row["policy_version"],
        policy_state=PolicyState(row["policy_state"]),
        policy_applied_at=row["policy_applied_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
