"""Offload status through the API on the emulated stack: OVS's userspace
datapath cannot offload, so Health and GetAttachment say "unavailable"
(not an error) and count the attachment's datapath flows as software ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.api.auth import RoleMap
from coordinator.api.authorize import acting_as
from coordinator.api.servicer import CoordinatorServicer
from coordinator.callers import Caller
from coordinator.config import AuthConfig
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.base import DeviceKind
from coordinator.offload_status import offload_monitor
from tests.integration.stack import HOST, UPLINK_V4, Stack, Uplink, build_stack, probe_ping

pytestmark = pytest.mark.ovs

BRIDGE = "br-offl"
GUEST_V4 = "198.51.100.20"


class AsHost(RoleMap):
    """Every call comes from HOST (the mTLS path has its own tests)."""

    def caller_from_auth_context(self, auth_context: dict[str, Any]) -> Caller:
        return HOST


class Context:
    """The part of a grpc.aio context the servicer uses."""

    def auth_context(self) -> dict[str, Any]:
        return {}

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


@pytest_asyncio.fixture
async def stack(tmp_path: Path, private_ovs: OvsInstance) -> AsyncIterator[tuple[Stack, Uplink]]:
    uplink = Uplink.create(private_ovs, "uplink")
    try:
        s = await build_stack(tmp_path, private_ovs, BRIDGE, "uplink", vfs=1, sfs=0)
        try:
            yield s, uplink
        finally:
            for record in s.store.list_attachments():
                await s.service.detach(HOST, record.attachment_id, record.lease_generation)
            await s.close()
    finally:
        uplink.close()


async def test_health_and_get_attachment_report_offload_unavailable(stack: tuple[Stack, Uplink]) -> None:
    with acting_as(HOST):  # the servicer is called directly, not through the server's authorizer
        await _offload_unavailable(stack)


async def _offload_unavailable(stack: tuple[Stack, Uplink]) -> None:
    s, _ = stack
    record = await s.attach("sb-offload", DeviceKind.VF)
    ns = s.configure_guest(record, f"{GUEST_V4}/24")
    probe_ping(ns, UPLINK_V4)  # allowed or not, it puts datapath flows in from the representor
    monitor = offload_monitor(s.config)
    servicer = CoordinatorServicer(
        s.service, s.async_store, s.events, AsHost(AuthConfig()), "emulated", offload=monitor
    )
    context: Any = Context()

    health = await servicer.Health(pb.HealthRequest(), context)
    assert health.HasField("offload")
    assert health.offload.state == pb.OFFLOAD_STATE_UNAVAILABLE, health.offload.detail
    assert health.offload.offloaded == 0 and health.offload.partially_offloaded == 0
    assert health.offload.not_offloaded >= 1
    assert "datapath_type=netdev does not offload" in health.offload.detail

    got = await servicer.GetAttachment(pb.GetAttachmentRequest(attachment_id=record.attachment_id), context)
    assert got.attachment_id == record.attachment_id
    assert got.offload.state == pb.OFFLOAD_STATE_UNAVAILABLE
    assert got.offload.offloaded == 0
    assert 1 <= got.offload.not_offloaded <= health.offload.not_offloaded
    # Both answers came from one dump (the cache), not one dump per RPC.
    assert monitor.dumps == 1

    # Without a monitor the fields stay unset rather than claiming anything.
    plain = CoordinatorServicer(s.service, s.async_store, s.events, AsHost(AuthConfig()), "emulated")
    assert not (await plain.Health(pb.HealthRequest(), context)).HasField("offload")
    got = await plain.GetAttachment(pb.GetAttachmentRequest(attachment_id=record.attachment_id), context)
    assert not got.HasField("offload")
