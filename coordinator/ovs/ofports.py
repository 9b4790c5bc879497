"""OpenFlow ports over the channel: reading their descriptions and setting
their configuration bits (port-mod), which is how a parked port is made
inert.

A port-mod must name the port's current hardware address (OVS refuses
another with OFPPMFC_BAD_HW_ADDR), so the address comes from a port
description read just before. OVS keeps a port's configuration in memory
only: after an ovs-vswitchd restart every port starts with none, and
whoever set bits sets them again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from coordinator.ovs.ofchannel import Outcome, Outgoing, Reply
from coordinator.ovs.ofencode import DATAPATH
from coordinator.ovs.ofmessages import parse, serialize
from coordinator.ovs.openflow import OpenFlowError

Exchange = Callable[[Sequence[Outgoing]], Awaitable[list[Outcome]]]

# What a parked port is set to: nothing it sends is taken in (NO_RECV),
# nothing is sent out of it - an output or a flood naming it is skipped
# (NO_FWD) - and it raises no packet-in. OpenFlow 1.3 has no NO_FLOOD;
# OVS skips a NO_FWD port in a flood as in any output.
PARKED: int = ofp.OFPPC_NO_RECV | ofp.OFPPC_NO_FWD | ofp.OFPPC_NO_PACKET_IN

__all__ = ["PARKED", "PortDesc", "port_descs", "set_port_config"]


@dataclass(frozen=True)
class PortDesc:
    number: int
    name: str
    hw_addr: str
    config: int  # OFPPC_* bits

    @property
    def parked(self) -> bool:
        return self.config & PARKED == PARKED


def _desc_request(xid: int) -> Outgoing:
    return Outgoing(serialize(parser.OFPPortDescStatsRequest(DATAPATH, 0), xid), xid, Reply.MULTIPART)


def descs_of(outcome: Outcome) -> dict[str, PortDesc]:
    """The bridge's ports by name (OpenFlow's LOCAL port left out), from a
    port description reply."""
    if outcome.error is not None:
        raise OpenFlowError(f"reading port descriptions: {outcome.error.describe()}")
    try:
        ports = [port for reply in outcome.replies for port in parse(reply).body]
        found = {}
        for port in ports:
            number = int(port.port_no)
            if number >= ofp.OFPP_MAX:
                continue  # LOCAL and the other reserved numbers
            name = port.name.decode("utf-8", "replace") if isinstance(port.name, bytes) else str(port.name)
            name = name.rstrip("\0")
            found[name] = PortDesc(number, name, str(port.hw_addr), int(port.config))
    except Exception as exc:  # os-ken's parser raises whatever a bad reply trips
        raise OpenFlowError(f"reading port descriptions: unreadable reply ({type(exc).__name__})") from exc
    return found


async def port_descs(exchange: Exchange, xid: Callable[[], int]) -> dict[str, PortDesc]:
    """Every port of the bridge, by name, as OVS describes it now."""
    [outcome] = await exchange([_desc_request(xid())])
    return descs_of(outcome)


async def set_port_config(exchange: Exchange, xid: Callable[[], int], port: PortDesc, config: int) -> None:
    """Set ``port``'s PARKED bits to those of ``config`` (the others are left
    as they are). Raises OpenFlowError if OVS refuses, e.g. because the port
    is gone or its address changed since ``port`` was read."""
    message = parser.OFPPortMod(DATAPATH, port.number, port.hw_addr, config & PARKED, PARKED, 0)
    [outcome] = await exchange([Outgoing(serialize(message, x := xid()), x)])
    if outcome.error is not None:
        raise OpenFlowError(f"configuring port {port.name} ({port.number}): {outcome.error.describe()}")
