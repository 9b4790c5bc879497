"""What the store tests write: a new attachment per number, its MAC, a drift event."""

from __future__ import annotations

from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.event_kinds import Event, EventKind
from coordinator.store.records import NewAttachment

DRIFT = Event(EventKind.ATTACHMENT_DRIFT, False, "Test", "test")


def new_attachment(n: int) -> NewAttachment:
    return NewAttachment(
        f"att-{n}", "host-a", f"req-{n}", f"sb-{n}", "hi-1", DeviceKind.VF, "dpu-ovs-isolated"
    )


def mac_of(slot: EswitchDevice) -> str:
    return f"02:00:00:00:00:{slot.number:02x}"
