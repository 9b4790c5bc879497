"""Which conntrack entries a policy change revokes: pure, beside the evaluator.

When a NetworkScope is narrowed, connections the new scope would no longer admit must not live on
as ``+est`` entries. :func:`revoked` decides which those are: the packet that opened each
connection, replayed as ``ct_state=new`` against the new scope with the reference evaluator; a
connection whose first packet would be denied is revoked. Flushing them is
:class:`coordinator.ovs.conntrack.ConntrackControl`'s job.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from coordinator.policy.evaluator import evaluate
from coordinator.policy.packet import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    PORT_PROTOCOLS,
    CtState,
    Direction,
    Packet,
)
from coordinator.policy.scope import IPNetwork, Scope

__all__ = [
    "ICMPV6_ECHO_REQUEST",
    "ICMP_ECHO_REQUEST",
    "ConnEntry",
    "IPAddress",
    "OwnAddress",
    "connection_direction",
    "connection_packet",
    "revoked",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ICMP_ECHO_REQUEST: Final = 8
ICMPV6_ECHO_REQUEST: Final = 128


@dataclass(frozen=True)
class ConnEntry:
    """One conntrack entry, described by its original direction (the packet that opened it).

    ``sport``/``dport`` are those of the dump (0 for ICMP and for protocols without ports);
    ``icmp_type``/``icmp_code``/``icmp_id`` are set only for ICMP and ICMPv6 (type and code may be
    None when the dump does not print them). ``state`` is the TCP state text (``ESTABLISHED``,
    ``TIME_WAIT``...) or None. ``line`` is the dump line the entry came from (not compared).
    """

    protocol: int
    src: IPAddress
    dst: IPAddress
    sport: int = 0
    dport: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    zone: int = 0
    mark: int = 0
    labels: int = 0
    state: str | None = None
    line: str = field(default="", compare=False, repr=False)

    @property
    def version(self) -> int:
        """IP version, 4 or 6."""
        return self.src.version

    @property
    def is_icmp(self) -> bool:
        return self.protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6)


OwnAddress = IPNetwork | IPAddress


def _is_own(address: IPAddress, own: Iterable[OwnAddress]) -> bool:
    for item in own:
        if item.version != address.version:
            continue
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            if address in item:
                return True
        elif address == item:
            return True
    return False


def connection_direction(entry: ConnEntry, own_addresses: Iterable[OwnAddress]) -> Direction:
    """EGRESS if the guest opened the connection (its original source is one of the guest's own
    addresses, or unspecified: a client without an address yet, e.g. DHCP), else INGRESS."""
    if entry.src.is_unspecified or _is_own(entry.src, own_addresses):
        return Direction.EGRESS
    return Direction.INGRESS


def connection_packet(entry: ConnEntry, direction: Direction) -> Packet:
    """The packet that opened ``entry``, as the policy sees it, with ``ct_state`` NEW."""
    ports = entry.protocol in PORT_PROTOCOLS
    icmp_type = icmp_code = 0
    if entry.is_icmp:
        default_type = ICMP_ECHO_REQUEST if entry.protocol == IPPROTO_ICMP else ICMPV6_ECHO_REQUEST
        icmp_type = entry.icmp_type if entry.icmp_type is not None else default_type
        icmp_code = entry.icmp_code or 0
    return Packet(
        direction=direction,
        protocol=entry.protocol,
        src_ip=entry.src,
        dst_ip=entry.dst,
        src_port=entry.sport if ports else 0,
        dst_port=entry.dport if ports else 0,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        ct_state=CtState.NEW,
    )


def revoked(
    entries: Iterable[ConnEntry], scope: Scope, own_addresses: Iterable[OwnAddress] | None = None
) -> list[ConnEntry]:
    """The entries ``scope`` no longer allows, in input order.

    Each connection's first packet (direction by :func:`connection_direction` against
    ``own_addresses``, by default ``scope.addresses``) is evaluated as NEW with the reference
    evaluator; a connection whose first packet would be denied is revoked.
    """
    own = tuple(scope.addresses if own_addresses is None else own_addresses)
    result = []
    for entry in entries:
        packet = connection_packet(entry, connection_direction(entry, own))
        if not evaluate(scope, packet).allowed:
            result.append(entry)
    return result
