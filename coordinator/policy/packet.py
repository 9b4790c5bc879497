"""A packet as the policy sees it: the fields the NetworkScope can match on,
its conntrack state, and the framing the L2 guard looks at (a VLAN tag, the
ethertype) and whether it is a fragment. Used by the reference evaluator,
ExplainPacket and the differential tests of the OpenFlow compiler."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from coordinator.policy.scope import IPAddress

IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58

PORT_PROTOCOLS: Final = frozenset({IPPROTO_TCP, IPPROTO_UDP})
ICMP_PROTOCOLS: Final = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_BY_VERSION: Final = {4: ETHERTYPE_IPV4, 6: ETHERTYPE_IPV6}
MAX_VLAN_ID: Final = 4095


class Direction(enum.Enum):
    """Seen from the sandbox: EGRESS leaves it, INGRESS is delivered to it."""

    EGRESS = "egress"
    INGRESS = "ingress"


class Fragment(enum.Enum):
    """Where a packet sits in its datagram. A FIRST fragment carries the L4
    header; a LATER one carries none (its ports and ICMP type/code are 0)."""

    NONE = "no"
    FIRST = "first"
    LATER = "later"


class CtState(enum.Enum):
    """Conntrack state; the values are OVS ``ct_state`` flag names."""

    NEW = "new"
    ESTABLISHED = "est"
    RELATED = "rel"
    INVALID = "inv"


@dataclass(frozen=True)
class Packet:
    """One packet. ``src_port``/``dst_port`` are 0 unless TCP/UDP;
    ``icmp_type``/``icmp_code`` are 0 unless ICMP/ICMPv6 (protocol 1 or 58),
    so that equal packets compare equal; all four are 0 in a LATER fragment.

    Framing: ``vlan_id`` is the VLAN id of the frame's (outer) tag, None when
    it has none (0 is a priority tag); ``ethertype`` is None for the address
    family's own (IPv4 or IPv6) and otherwise the frame's ethertype, in which
    case the addresses and L4 fields are not looked at."""

    direction: Direction
    protocol: int
    src_ip: IPAddress
    dst_ip: IPAddress
    src_port: int = 0
    dst_port: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    ct_state: CtState = CtState.NEW
    vlan_id: int | None = None
    ethertype: int | None = None
    fragment: Fragment = Fragment.NONE

    def __post_init__(self) -> None:
        if self.vlan_id is not None and not 0 <= self.vlan_id <= MAX_VLAN_ID:
            raise ValueError(f"vlan_id {self.vlan_id} is outside 0..{MAX_VLAN_ID}")
        if self.ethertype is not None:
            if not 0 <= self.ethertype <= 0xFFFF:
                raise ValueError(f"ethertype {self.ethertype:#x} is outside 0..0xffff")
            if self.ethertype in ETHERTYPE_BY_VERSION.values():
                raise ValueError("ethertype is for other frames; an IP packet's follows its addresses")
        if not 0 <= self.protocol <= 255:
            raise ValueError(f"IP protocol {self.protocol} is outside 0..255")
        if self.src_ip.version != self.dst_ip.version:
            raise ValueError(f"mixed address families: {self.src_ip} -> {self.dst_ip}")
        for name, value in (("src_port", self.src_port), ("dst_port", self.dst_port)):
            if not 0 <= value <= 65535:
                raise ValueError(f"{name} {value} is outside 0..65535")
            if value and self.protocol not in PORT_PROTOCOLS:
                raise ValueError(f"{name} must be 0 for IP protocol {self.protocol}")
        for name, value in (("icmp_type", self.icmp_type), ("icmp_code", self.icmp_code)):
            if not 0 <= value <= 255:
                raise ValueError(f"{name} {value} is outside 0..255")
            if value and self.protocol not in ICMP_PROTOCOLS:
                raise ValueError(f"{name} must be 0 for IP protocol {self.protocol}")
        if self.fragment is Fragment.LATER and (
            self.src_port or self.dst_port or self.icmp_type or self.icmp_code
        ):
            raise ValueError("a later fragment carries no L4 header: ports and ICMP type/code must be 0")

    @property
    def untagged_ip(self) -> bool:
        """Whether the L2 guard lets the frame in as IP: no VLAN tag, and the
        address family's own ethertype."""
        return self.vlan_id is None and self.ethertype is None

    @property
    def version(self) -> int:
        """IP version, 4 or 6."""
        return self.src_ip.version
