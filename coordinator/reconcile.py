"""What to correct so the world matches the store (pure), at every start,
after an OVS restart and on an admin's request.

The store is the intent. The switch and the eswitch may hold more (a crash
between acting and recording, an operator's leftovers) or less (OVS
restarted, someone deleted a port). The plan names every correction; the
service carries it out and reports each one as a drift event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from coordinator.attachment_identity import slot_of_cookie
from coordinator.eswitch.base import EswitchDevice
from coordinator.ovs.port_keys import ATTACHMENT_KEY, ROLE_KEY, SANDBOX_KEY, is_parked
from coordinator.store.records import AttachmentRecord, AttachmentState


@dataclass(frozen=True)
class OrphanPort:
    name: str
    attachment_id: str  # from its external_ids ("" if none)
    sandbox_id: str


@dataclass(frozen=True)
class Plan:
    keep: tuple[AttachmentRecord, ...]  # BOUND: plug and (re-)install
    roll_back: tuple[AttachmentRecord, ...]  # ATTACHING: the host never got an answer
    finish_detach: tuple[AttachmentRecord, ...]  # DETACHING: the host asked for it to go
    orphan_ports: tuple[OrphanPort, ...]
    orphan_slots: tuple[int, ...]  # flows carrying our cookie of a slot no attachment holds
    orphan_devices: tuple[EswitchDevice, ...]  # prepared functions no attachment claims
    missing_ports: tuple[str, ...]  # attachment ids of BOUND attachments whose port is gone

    @property
    def corrections(self) -> int:
        return (
            len(self.roll_back)
            + len(self.finish_detach)
            + len(self.orphan_ports)
            + len(self.orphan_slots)
            + len(self.orphan_devices)
            + len(self.missing_ports)
        )


def plan(
    records: Iterable[AttachmentRecord],
    ports: Mapping[str, Mapping[str, str]],
    flow_cookies: Iterable[int],
    prepared: Iterable[EswitchDevice],
    uplink: str,
    ofports: Mapping[str, int] | None = None,
) -> Plan:
    """``ofports``: the interfaces' OpenFlow ports, where they have one."""
    records = list(records)
    keep = tuple(r for r in records if r.state is AttachmentState.BOUND)
    roll_back = tuple(r for r in records if r.state is AttachmentState.ATTACHING)
    finish = tuple(r for r in records if r.state is AttachmentState.DETACHING)
    # Rolled-back and detaching rows are torn down by their own record, so
    # their port, flows and device are not orphans (that would be done twice).
    representors = {r.device.representor for r in records}
    orphan_ports = []
    for name, ids in sorted(ports.items()):
        if ids.get(ROLE_KEY) == "uplink":
            if name != uplink:
                orphan_ports.append(OrphanPort(name, "", ""))
            continue
        # A port named like an attachment's representor is that attachment's
        # (its ids are rewritten when it is re-plugged). A parked one (a VF's,
        # between attachments) stays while it is a port of the bridge; any
        # other is an orphan.
        parked = is_parked(ids) and (ofports is None or name in ofports)
        if name not in representors and not parked:
            orphan_ports.append(OrphanPort(name, ids.get(ATTACHMENT_KEY, ""), ids.get(SANDBOX_KEY, "")))
    slots = {r.slot for r in records}
    orphan_slots = sorted(
        {s for s in (slot_of_cookie(c) for c in flow_cookies) if s is not None and s not in slots}
    )
    claimed = {r.device.device_id for r in records}
    orphan_devices = tuple(
        sorted((d for d in prepared if d.device_id not in claimed), key=lambda d: d.device_id)
    )
    missing = tuple(r.attachment_id for r in keep if r.device.representor not in ports)
    return Plan(
        keep=keep,
        roll_back=roll_back,
        finish_detach=finish,
        orphan_ports=tuple(orphan_ports),
        orphan_slots=tuple(orphan_slots),
        orphan_devices=orphan_devices,
        missing_ports=missing,
    )
