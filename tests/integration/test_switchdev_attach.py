"""Attach on the switchdev backend (a fake BlueField's sysfs and devlink,
a real private OVS): each failing required health check refuses Attach with
FAILED_PRECONDITION naming the check, and once fixed Attach works again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from coordinator.callers import Caller, Role
from coordinator.config import config_from_mapping
from coordinator.daemon import Adapters, build
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.errors import FailedPrecondition
from coordinator.eswitch.base import DeviceKind
from coordinator.eswitch.switchdev import SwitchdevEswitch
from coordinator.service import AttachParams
from coordinator.store.records import AttachmentRecord
from tests.fake_bluefield import FakeBlueField, Layout

pytestmark = pytest.mark.ovs

BRIDGE = "br-sd"
HOST = Caller("spiffe://bluefield.local/host/host-a", Role.HOST)
VFS = 2


@pytest.fixture
def fake(tmp_path: Path, ovs: OvsInstance) -> Iterator[FakeBlueField]:
    bf = FakeBlueField(tmp_path / "sys", layout=Layout.BLUEFIELD3, vfs=VFS)
    # The representors the fake's sysfs names, as real netdevs OVS can plug.
    names = [f"pf0vf{n}" for n in range(VFS)]
    for name in names:
        netns.create_veth_pair(name, ovs.netns, f"{name}-g", ovs.netns)
        netns.set_link(ovs.netns, name)
        netns.set_link(ovs.netns, f"{name}-g")
    ovs.vsctl("set", "Open_vSwitch", ".", "other_config:hw-offload=true")
    try:
        yield bf
    finally:
        for name in names:
            netns.run_in_netns(ovs.netns, ["ip", "link", "del", name], check=False)
        bf.close()


@pytest_asyncio.fixture
async def adapters(tmp_path: Path, ovs: OvsInstance, fake: FakeBlueField) -> AsyncIterator[Adapters]:
    config = config_from_mapping({
        "store": {"path": str(tmp_path / "state.db")},
        "ovs": {"db": ovs.db_remote, "rundir": str(ovs.rundir), "bridge": BRIDGE, "datapath_type": "netdev",
                "uplink": ""},
        "eswitch": {"backend": "switchdev", "mac_salt": "test"},
    })  # fmt: skip
    backend = SwitchdevEswitch(fake.settings(min_firmware_version="24.35.1012", firmware_required=True),
                               fake.transport())  # fmt: skip
    built = await build(config, backend)
    try:
        yield built
    finally:
        for record in await built.store.list_attachments():
            await built.service.detach(HOST, record.attachment_id, record.lease_generation)
        await built.close()


async def _attach(adapters: Adapters, sandbox: str) -> AttachmentRecord:
    await adapters.service.health()  # fresh checks, not the second-long cache
    params = AttachParams(sandbox, "hi-1", f"req-{sandbox}", DeviceKind.VF, "", "BASELINE")
    return await adapters.service.attach(HOST, params)


async def _until_check(adapters: Adapters, check: str, *, ok: bool) -> None:
    """Wait until the daemon sees the change: an ``ovs-vsctl`` returns once OVSDB has committed
    it, and the daemon's OVSDB replica hears of it a moment later."""
    deadline = time.monotonic() + 5.0
    while True:
        report = await adapters.service.health()
        if any(c.name == check and c.ok == ok for c in report.checks) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.02)


async def test_each_failing_required_check_refuses_attach_until_fixed(
    adapters: Adapters, fake: FakeBlueField, ovs: OvsInstance
) -> None:
    assert (await _attach(adapters, "sd-ok")).device.representor == "pf0vf0"
    breakages: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("eswitch_mode", lambda: fake.set_mode("legacy"), lambda: fake.set_mode("switchdev")),
        ("firmware_version", lambda: fake.set_firmware("22.31.1014"), lambda: fake.set_firmware("24.35.2000")),
        ("ovs_hw_offload",
         lambda: ovs.vsctl("set", "Open_vSwitch", ".", "other_config:hw-offload=false"),
         lambda: ovs.vsctl("set", "Open_vSwitch", ".", "other_config:hw-offload=true")),
        ("bridge_secure",
         lambda: ovs.vsctl("set-fail-mode", BRIDGE, "standalone"),
         lambda: ovs.vsctl("set-fail-mode", BRIDGE, "secure")),
    ]  # fmt: skip
    for check, brake, fix in breakages:
        brake()
        await _until_check(adapters, check, ok=False)
        rows = await adapters.store.count()
        with pytest.raises(FailedPrecondition, match=check):
            await _attach(adapters, f"sd-{check}")
        assert await adapters.store.count() == rows  # refused before anything was claimed
        fix()
        await _until_check(adapters, check, ok=True)
    # All fixed: the second VF attaches, its function carrying the assigned MAC.
    again = await _attach(adapters, "sd-again")
    port = fake.vf_port(1)
    assert again.device.representor == "pf0vf1" and port is not None and port.hw_addr == again.mac
