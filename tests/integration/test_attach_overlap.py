"""A VF's port goes on the bridge while its function is prepared, and its
function is released while the port is parked: neither waits for the
other (a VF's representor exists whatever its function's state). Checked
on a private OVS with the emulated eswitch, by holding one step until the
other has happened (or a bound has passed)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.eswitch.emulated import FUNCTION_IFNAME
from tests.integration.invariants import inert_ports, ports_of
from tests.integration.stack import HOST, Stack, Uplink, build_stack

pytestmark = pytest.mark.ovs

BRIDGE = "br-overlap"
HOLD_S = 5.0  # how long a held step waits for the other one at most


@pytest.fixture
async def stack(tmp_path: Path, ovs: OvsInstance, uplink: Uplink) -> AsyncIterator[Stack]:
    built = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=1, sfs=0)
    try:
        yield built
    finally:
        await built.detach_all_and_close()


def _function_up(stack: Stack, device: EswitchDevice) -> bool:
    shown = netns.run_in_netns(
        stack.backend.guest_netns(device), ["ip", "-o", "link", "show", FUNCTION_IFNAME]
    )
    return ",UP" in shown.stdout or "<UP" in shown.stdout


async def test_a_vf_port_goes_on_the_bridge_while_its_function_is_prepared(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    port_added = threading.Event()
    seen_while_preparing: list[bool] = []
    real_ensure, real_prepare = stack.ovsdb.ensure_port, stack.backend.prepare

    async def ensure_port(*args: Any, **kwargs: Any) -> int:
        ofport = await real_ensure(*args, **kwargs)
        port_added.set()
        return ofport

    def prepare(device: EswitchDevice, mac: str) -> str:
        if device.kind is DeviceKind.VF:  # held until its port is on the bridge
            seen_while_preparing.append(port_added.wait(HOLD_S))
        return real_prepare(device, mac)

    monkeypatch.setattr(stack.ovsdb, "ensure_port", ensure_port)
    monkeypatch.setattr(stack.backend, "prepare", prepare)
    record = await stack.attach("ov-1", DeviceKind.VF)
    assert seen_while_preparing == [True]
    assert record.ofport > 0 and _function_up(stack, record.device)


async def test_a_vf_function_is_released_while_its_port_is_parked(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = await stack.attach("ov-2", DeviceKind.VF)
    assert _function_up(stack, record.device)
    parking_may_end = asyncio.Event()
    real_relabel = stack.ovsdb.relabel_port

    async def relabel_port(name: str, external_ids: dict[str, str]) -> None:
        await parking_may_end.wait()  # held until the function is released
        await real_relabel(name, external_ids)

    monkeypatch.setattr(stack.ovsdb, "relabel_port", relabel_port)
    detach = asyncio.ensure_future(stack.service.detach(HOST, record.attachment_id, record.lease_generation))
    deadline = time.monotonic() + HOLD_S
    while _function_up(stack, record.device) and time.monotonic() < deadline and not detach.done():
        await asyncio.sleep(0.05)
    released_first = not _function_up(stack, record.device)
    parking_may_end.set()
    assert await detach
    assert released_first, "the function was released only after its port was parked"
    assert record.device.representor in ports_of(stack.ovs, parked=True)
    assert record.device.representor in inert_ports(stack.ovs, BRIDGE)
