"""Port descriptions and port configuration over the OpenFlow channel,
against a private OVS: what `ovs-ofctl dump-ports-desc` shows after each
change, a refused port-mod, and a restart forgetting the bits."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
import pytest_asyncio

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.ovs.ofchannel import OpenFlowChannel
from coordinator.ovs.ofports import PARKED, port_descs, set_port_config
from coordinator.ovs.openflow import OpenFlowError

pytestmark = pytest.mark.ovs


@pytest.fixture
def bridge(ovs: OvsInstance) -> Iterator[tuple[str, str]]:
    """A bridge with one veth port (its peer in the OVS namespace too)."""
    name = netns.unique_name("bop-")
    port = netns.unique_name("bopv")[:15]
    peer = netns.unique_name("bopp")[:15]
    netns.run_in_netns(ovs.netns, ["ip", "link", "add", port, "type", "veth", "peer", "name", peer])
    netns.run_in_netns(ovs.netns, ["ip", "link", "set", port, "up"])
    ovs.vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", "fail_mode=secure",
              "protocols=OpenFlow13", "--", "add-port", name, port)  # fmt: skip
    try:
        yield name, port
    finally:
        ovs.vsctl("--if-exists", "del-br", name)
        netns.run_in_netns(ovs.netns, ["ip", "link", "del", port], check=False)


@pytest_asyncio.fixture
async def channel(ovs: OvsInstance, bridge: tuple[str, str]) -> AsyncIterator[OpenFlowChannel]:
    ch = OpenFlowChannel(lambda: str(ovs.rundir / f"{bridge[0]}.mgmt"), timeout=5.0)
    try:
        yield ch
    finally:
        await ch.close()


def _config_shown(ovs: OvsInstance, bridge: str, port: str) -> set[str]:
    text = ovs.ofctl("dump-ports-desc", bridge)
    block = re.search(rf"\(\s*{re.escape(port)}\s*\).*?config:\s*([^\n]*)", text, re.S)
    assert block is not None, text
    return set(block.group(1).split()) - {"0"}


async def test_parking_bits_set_and_cleared_as_ovs_ofctl_shows_them(
    ovs: OvsInstance, bridge: tuple[str, str], channel: OpenFlowChannel
) -> None:
    name, port = bridge
    descs = await port_descs(channel.exchange, channel.xid)
    assert set(descs) == {port}  # LOCAL left out
    desc = descs[port]
    assert desc.number > 0 and not desc.parked and _config_shown(ovs, name, port) == set()
    await set_port_config(channel.exchange, channel.xid, desc, PARKED)
    assert _config_shown(ovs, name, port) == {"NO_RECV", "NO_FWD", "NO_PACKET_IN"}
    parked = (await port_descs(channel.exchange, channel.xid))[port]
    assert parked.parked and parked.hw_addr == desc.hw_addr
    await set_port_config(channel.exchange, channel.xid, parked, 0)
    assert _config_shown(ovs, name, port) == set()
    assert not (await port_descs(channel.exchange, channel.xid))[port].parked


async def test_a_port_mod_naming_another_address_is_refused_and_changes_nothing(
    ovs: OvsInstance, bridge: tuple[str, str], channel: OpenFlowChannel
) -> None:
    name, port = bridge
    desc = (await port_descs(channel.exchange, channel.xid))[port]
    wrong = replace(
        desc, hw_addr="02:00:00:00:00:01" if desc.hw_addr != "02:00:00:00:00:01" else "02:00:00:00:00:02"
    )
    with pytest.raises(OpenFlowError, match=rf"configuring port {port}"):
        await set_port_config(channel.exchange, channel.xid, wrong, PARKED)
    assert _config_shown(ovs, name, port) == set()
