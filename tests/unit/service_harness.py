"""The attachment service on a real store (SQLite in a temp dir) and the
recording fake switch, for the service's fast unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator import faults
from coordinator.callers import Caller, Role
from coordinator.config import config_from_mapping
from coordinator.events import EventHub
from coordinator.flows.classes import load_network_classes
from coordinator.flows.pipeline import load_pipeline
from coordinator.gateway.client import StreamStatus
from coordinator.ovs.port_keys import is_parked
from coordinator.policy.scope import Scope
from coordinator.policy.validate import scope_from_mapping
from coordinator.service import AttachmentService, AttachParams
from coordinator.store.db import Store
from coordinator.store.records import AttachmentRecord, EventRecord
from coordinator.store.worker import AsyncStore
from tests.unit.fake_dataplane import FakeDataplane

HOST = Caller("spiffe://bluefield.local/host/host-a", Role.HOST)
ADMIN = Caller("spiffe://bluefield.local/admin/ops", Role.ADMIN)
PIPELINE = load_pipeline()
CLASSES = load_network_classes()


def scope(version: int, address: str = "198.51.100.10", *, rate_kbps: int = 0) -> Scope:
    mapping: dict[str, Any] = {
        "version": version,
        "addresses": [address],
        "egress": [{"name": "web", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP",
                    "cidrs": ["203.0.113.5/32"], "ports": [{"start": 443}]}],
    }  # fmt: skip
    if rate_kbps:
        mapping["egress_rate_limit"] = {"kbps": rate_kbps}
    return scope_from_mapping(mapping)


@dataclass
class FakeStream:
    """The gateway stream as the service sees it: who is registered."""

    status: StreamStatus = field(default_factory=lambda: StreamStatus(connected=True))
    registered: set[str] = field(default_factory=set)

    def register(self, sandbox_ids: Iterable[str]) -> None:
        self.registered.update(sandbox_ids)

    def unregister(self, sandbox_ids: Iterable[str]) -> None:
        self.registered.difference_update(sandbox_ids)


@dataclass
class Observed:
    """What the service reported for metrics."""

    corrections: list[str] = field(default_factory=list)
    applies: list[bool] = field(default_factory=list)

    def policy_applied(self, seconds: float, *, ok: bool) -> None:
        self.applies.append(ok)

    def corrected(self, kind: str) -> None:
        self.corrections.append(kind)


@dataclass
class Harness:
    service: AttachmentService
    switch: FakeDataplane
    store: Store  # the same database, read directly between operations
    observed: Observed

    async def attach(self, sandbox: str, **kw: Any) -> AttachmentRecord:
        params = AttachParams(
            sandbox, "hi-1", f"req-{sandbox}", None, "", kw.pop("initial", "BASELINE"), **kw
        )
        return await self.service.attach(HOST, params)

    def current(self, record: AttachmentRecord) -> AttachmentRecord:
        found = self.store.get(record.attachment_id)
        assert found is not None
        return found

    def reasons(self, kind: str = "") -> list[str]:
        return [e.reason for e in self.events() if not kind or e.type == kind]

    def events(self) -> list[EventRecord]:
        return self.store.events_since(0, limit=10_000)

    def world_is_empty_of(self, record: AttachmentRecord) -> bool:
        """No flows, port (a parked one aside), prepared device, meter or zone
        limit of ``record``."""
        sw = self.switch
        return (
            not sw.flows_of(record)
            and (record.device.representor not in sw.ports or is_parked(sw.ports[record.device.representor]))
            and record.device.device_id not in sw.prepared
            and record.slot not in sw.meters
            and record.slot not in sw.zone_limits
        )


@asynccontextmanager
async def harness(
    tmp: Path, *, switch: FakeDataplane | None = None, **sections: Any
) -> AsyncIterator[Harness]:
    """A started service; ``sections``: more config (e.g. ``policy={...}``)."""
    config = config_from_mapping(
        {
            **sections,
            "store": {"path": str(tmp / "state.db")},
            "ovs": {"bridge": "br-unit", "uplink": ""},
            "eswitch": {"mac_salt": "unit"},
        }
    )
    store = AsyncStore(Store(Path(config.store.path), event_log_size=config.store.event_log_size))
    fake = switch or FakeDataplane(PIPELINE)
    service = AttachmentService(
        config=config,
        store=store,
        dataplane=fake,
        network_classes=CLASSES,
        events=EventHub(),
        mac_salt="unit",
    )
    observed = Observed()
    service.observer = observed
    try:
        await service.start()
        yield Harness(service, fake, store.sync, observed)
    finally:
        faults.disable_all()
        await store.close()
