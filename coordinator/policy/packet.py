"""A packet as the policy sees it: the fields the NetworkScope can match on,
plus its conntrack state. Used by the reference evaluator, ExplainPacket and
the differential tests of the OpenFlow compiler."""

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


class Direction(enum.Enum):
    """Seen from the sandbox: EGRESS leaves it, INGRESS is delivered to it."""

    EGRESS = "egress"
    INGRESS = "ingress"


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
    so that equal packets compare equal."""

    direction: Direction
    protocol: int
    src_ip: IPAddress
    dst_ip: IPAddress
    src_port: int = 0
    dst_port: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    ct_state: CtState = CtState.NEW

    def __post_init__(self) -> None:
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

    @property
    def version(self) -> int:
        """IP version, 4 or 6."""
        return self.src_ip.version
