"""Hypothesis strategies for valid Scopes and for packets aimed at them.

``scopes()`` draws small policies (0-6 rules per direction, 0-4 cidrs per
rule) whose addresses all lie in the documentation ranges 198.51.100.0/24,
203.0.113.0/24 and 2001:db8::/32 (the dev environment routes those).
``packets_for(scope)`` draws packets biased towards the scope's edges: port
range endpoints and their neighbours, the first and last address of each
cidr and the addresses just outside it, the sandbox's own addresses, DNS
servers, DHCP. ``framed(packet)`` sometimes turns a packet into a
fragment of its datagram or puts it in a frame the L2 guard refuses (a VLAN
tag, a foreign ethertype). All are reused by the differential test against
real OVS.

Usage::

    from tests.unit.policy.strategies import scopes, packets_for

    @given(st.data())
    def test_x(data):
        scope = data.draw(scopes())
        packet = data.draw(packets_for(scope))
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable
from dataclasses import replace

from hypothesis import strategies as st

from coordinator.policy.packet import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    CtState,
    Direction,
    Fragment,
    Packet,
)
from coordinator.policy.scope import (
    IPAddress,
    IPNetwork,
    PortRange,
    Protocol,
    RateLimit,
    Rule,
    RuleAction,
    Scope,
)
from coordinator.policy.validate import MAX_BURST_KB, MAX_RATE_KBPS

V4_RANGES: tuple[ipaddress.IPv4Network, ...] = (
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("203.0.113.0/24"),
)
V6_RANGE = ipaddress.IPv6Network("2001:db8::/32")
IPPROTO_GRE = 47

INTERESTING_PORTS = (1, 22, 53, 67, 68, 80, 443, 1023, 1024, 8080, 32768, 65535)
INTERESTING_ICMP_TYPES = (0, 3, 8, 11, 128, 129, 135, 136, 255)


# --------------------------------------------------------------------------
# Addresses


def _offsets(size: int) -> st.SearchStrategy[int]:
    # Small offsets make nested and overlapping networks likely (the
    # interesting case for first-match); large ones spread out.
    return st.one_of(st.integers(0, min(size, 256) - 1), st.integers(0, size - 1))


@st.composite
def addresses(draw: st.DrawFn, version: int | None = None) -> IPAddress:
    """An address in the test ranges."""
    if version is None:
        version = draw(st.sampled_from((4, 6)))
    if version == 4:
        base: IPNetwork = draw(st.sampled_from(V4_RANGES))
    else:
        base = V6_RANGE
    return base.network_address + draw(_offsets(base.num_addresses))


@st.composite
def networks(draw: st.DrawFn, version: int | None = None, *, narrow: bool = False) -> IPNetwork:
    """A network (no host bits) inside the test ranges; ``narrow`` keeps it
    to a few addresses (for the sandbox's own addresses)."""
    address = draw(addresses(version))
    if address.version == 4:
        prefix = draw(st.integers(28 if narrow else 24, 32))
    else:
        prefix = draw(st.integers(120, 128) if narrow else st.sampled_from((32, 48, 64, 96, 120, 126, 128)))
    return ipaddress.ip_network((address, prefix), strict=False)


# --------------------------------------------------------------------------
# Scopes


@st.composite
def port_ranges(draw: st.DrawFn) -> PortRange:
    start = draw(st.one_of(st.sampled_from(INTERESTING_PORTS), st.integers(1, 65535)))
    end = draw(
        st.one_of(
            st.just(start),
            st.integers(start, min(start + 16, 65535)),
            st.just(65535),
            st.integers(start, 65535),
        )
    )
    return PortRange(start, end)


def _icmp_values() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(INTERESTING_ICMP_TYPES), st.integers(0, 255))


@st.composite
def rules(draw: st.DrawFn, name: str) -> Rule:
    action = draw(st.sampled_from(RuleAction))
    protocol = draw(st.sampled_from(Protocol))
    # ICMP rules only take cidrs of their own family (validation rejects others).
    version = {Protocol.ICMP: 4, Protocol.ICMPV6: 6}.get(protocol)
    cidrs = tuple(draw(st.lists(networks(version), max_size=4)))
    ports: tuple[PortRange, ...] = ()
    if protocol.has_ports:
        ports = tuple(draw(st.lists(port_ranges(), max_size=3)))
    icmp_type = icmp_code = None
    if protocol.is_icmp:
        icmp_type = draw(st.none() | _icmp_values())
        if icmp_type is not None:
            icmp_code = draw(st.none() | st.integers(0, 3) | st.integers(0, 255))
    return Rule(
        name=name,
        action=action,
        cidrs=cidrs,
        protocol=protocol,
        ports=ports,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
    )


@st.composite
def _rule_lists(draw: st.DrawFn, prefix: str) -> tuple[Rule, ...]:
    count = draw(st.integers(0, 6))
    return tuple(draw(rules(f"{prefix}-{i}")) for i in range(count))


@st.composite
def scopes(draw: st.DrawFn) -> Scope:
    """A small valid Scope (round-trips through validation unchanged)."""
    rate_limit = draw(
        st.none()
        | st.builds(RateLimit, kbps=st.integers(1, MAX_RATE_KBPS), burst_kb=st.integers(0, MAX_BURST_KB))
    )
    # Usually with own addresses: without any, all egress is anti-spoof.
    with_own = draw(st.sampled_from((True,) * 7 + (False,)))
    own = st.lists(networks(narrow=True), min_size=1, max_size=3) if with_own else st.just([])
    return Scope(
        version=draw(st.integers(0, 2**64 - 1)),
        addresses=tuple(draw(own)),
        egress=draw(_rule_lists("eg")),
        ingress=draw(_rule_lists("in")),
        egress_default=draw(st.sampled_from(RuleAction)),
        ingress_default=draw(st.sampled_from(RuleAction)),
        allow_dhcp=draw(st.booleans()),
        dns_servers=tuple(draw(st.lists(addresses(), max_size=2, unique=True))),
        egress_rate_limit=rate_limit,
    )


# --------------------------------------------------------------------------
# Packets


def _inside(networks_: Iterable[IPNetwork], version: int) -> list[IPAddress]:
    """First, middle and last address of each network of the family."""
    found: set[IPAddress] = set()
    for network in networks_:
        if network.version == version:
            first = network.network_address
            found.update((first, first + network.num_addresses // 2, network.broadcast_address))
    return sorted(found)


def _outside(networks_: Iterable[IPNetwork], version: int) -> list[IPAddress]:
    """The addresses just below and just above each network of the family."""
    found: set[IPAddress] = set()
    for network in networks_:
        if network.version == version:
            for step, edge in ((-1, network.network_address), (1, network.broadcast_address)):
                # No neighbour when the network touches the end of the address space.
                with contextlib.suppress(ipaddress.AddressValueError):
                    found.add(edge + step)
    return sorted(found)


@st.composite
def _pick(
    draw: st.DrawFn, inside: list[IPAddress], outside: list[IPAddress], version: int, inside_weight: int = 3
) -> IPAddress:
    """Mostly an address inside, sometimes just outside, sometimes any of the family."""
    # An explicit weighted choice: one_of() over repeated branches does not
    # weight them (Hypothesis steers towards the branch with most variety).
    kinds = ["inside"] * (inside_weight if inside else 0) + ["outside"] * bool(outside) + ["any"]
    kind = draw(st.sampled_from(kinds))
    if kind == "inside":
        return draw(st.sampled_from(inside))
    if kind == "outside":
        return draw(st.sampled_from(outside))
    return draw(addresses(version))


@st.composite
def _mostly(draw: st.DrawFn, preferred: st.SearchStrategy[int], other: st.SearchStrategy[int]) -> int:
    """Three times in four from ``preferred`` (an explicit choice, see _pick)."""
    return draw(preferred if draw(st.sampled_from((True, True, True, False))) else other)


def _port_edges(rules_: Iterable[Rule]) -> list[int]:
    """Each range's endpoints and their outer neighbours, plus well-known ports."""
    found = set(INTERESTING_PORTS)
    for rule in rules_:
        for port_range in rule.ports:
            for port in (port_range.start - 1, port_range.start, port_range.end, port_range.end + 1):
                if 0 <= port <= 65535:
                    found.add(port)
    return sorted(found)


def _icmp_edges(rules_: Iterable[Rule], attribute: str) -> list[int]:
    found = set(INTERESTING_ICMP_TYPES)
    for rule in rules_:
        value = getattr(rule, attribute)
        if value is not None:
            found.update(v for v in (value - 1, value, value + 1) if 0 <= v <= 255)
    return sorted(found)


_RULE_IP_PROTOCOL = {
    Protocol.TCP: IPPROTO_TCP,
    Protocol.UDP: IPPROTO_UDP,
    Protocol.ICMP: IPPROTO_ICMP,
    Protocol.ICMPV6: IPPROTO_ICMPV6,
}


@st.composite
def _dhcp_request(draw: st.DrawFn, scope: Scope) -> Packet:
    src = draw(
        st.one_of(
            st.just(ipaddress.IPv4Address("0.0.0.0")),
            _pick(_inside(scope.addresses, 4), _outside(scope.addresses, 4), 4),
        )
    )
    dst = draw(
        st.sampled_from((ipaddress.IPv4Address("255.255.255.255"), ipaddress.IPv4Address("198.51.100.1")))
    )
    return Packet(
        direction=draw(st.sampled_from(Direction)),
        protocol=IPPROTO_UDP,
        src_ip=src,
        dst_ip=dst,
        src_port=68,
        dst_port=67,
        ct_state=draw(st.sampled_from(CtState)),
    )


@st.composite
def _packet(draw: st.DrawFn, scope: Scope, aim: bool) -> Packet:
    """A packet; with ``aim``, one shaped after a rule drawn from the scope, so
    that it matches the rule or just misses it."""
    targets = [(Direction.EGRESS, rule) for rule in scope.egress]
    targets += [(Direction.INGRESS, rule) for rule in scope.ingress]
    rule: Rule | None = None
    if aim and targets:
        direction, rule = draw(st.sampled_from(targets))
        relevant: tuple[Rule, ...] = (rule,)
    else:
        direction = draw(st.sampled_from(Direction))
        relevant = scope.egress + scope.ingress

    # The rule's families when aiming, else mostly the sandbox's own.
    own_families = sorted({network.version for network in scope.addresses})
    families = [*own_families, *own_families, 4, 6]
    if rule is not None and rule.cidrs:
        families = sorted({cidr.version for cidr in rule.cidrs})
    if rule is not None and rule.protocol is Protocol.ICMP:
        families = [4]
    elif rule is not None and rule.protocol is Protocol.ICMPV6:
        families = [6]
    version = draw(st.sampled_from(families))

    # Own source addresses mostly, or nearly everything egress is anti-spoof.
    local = draw(_pick(_inside(scope.addresses, version), _outside(scope.addresses, version), version, 8))
    remote_networks = [cidr for r in relevant for cidr in r.cidrs]
    remote_inside = _inside(remote_networks, version)
    if rule is None:
        remote_inside += [server for server in scope.dns_servers if server.version == version]
    remote = draw(_pick(remote_inside, _outside(remote_networks, version), version))
    src_ip, dst_ip = (local, remote) if direction is Direction.EGRESS else (remote, local)

    icmp = IPPROTO_ICMP if version == 4 else IPPROTO_ICMPV6
    wrong_icmp = IPPROTO_ICMPV6 if version == 4 else IPPROTO_ICMP
    # Weighted by repetition: mostly TCP/UDP/the family's ICMP; sometimes
    # other protocols and ICMP of the other family (never matches ICMP rules);
    # when aiming, mostly the rule's own protocol.
    protocols = [IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDP, icmp, icmp, IPPROTO_GRE, wrong_icmp]
    if rule is not None and rule.protocol in _RULE_IP_PROTOCOL:
        protocols += [_RULE_IP_PROTOCOL[rule.protocol]] * 8
    protocol = draw(st.sampled_from(protocols))

    src_port = dst_port = icmp_type = icmp_code = 0
    if protocol in (IPPROTO_TCP, IPPROTO_UDP):
        dst_port = draw(_mostly(st.sampled_from(_port_edges(relevant)), st.integers(0, 65535)))
        src_port = draw(_mostly(st.sampled_from((53, 68, 1024, 40000, 65535)), st.integers(0, 65535)))
    elif protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        icmp_type = draw(_mostly(st.sampled_from(_icmp_edges(relevant, "icmp_type")), st.integers(0, 255)))
        icmp_code = draw(_mostly(st.sampled_from(_icmp_edges(relevant, "icmp_code")), st.integers(0, 3)))
    # NEW is where the rules decide, so draw it most often.
    ct_state = draw(st.sampled_from((CtState.NEW, CtState.NEW, CtState.NEW, *CtState)))
    return Packet(
        direction=direction,
        protocol=protocol,
        src_ip=src_ip,
        dst_ip=dst_ip,
        src_port=src_port,
        dst_port=dst_port,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        ct_state=ct_state,
    )


@st.composite
def _dns_query(draw: st.DrawFn, scope: Scope) -> Packet:
    """Egress to one of the scope's DNS servers, on or next to port 53."""
    server = draw(st.sampled_from(scope.dns_servers))
    own = scope.addresses
    return Packet(
        direction=Direction.EGRESS,
        protocol=draw(st.sampled_from((IPPROTO_UDP, IPPROTO_TCP))),
        src_ip=draw(_pick(_inside(own, server.version), _outside(own, server.version), server.version, 8)),
        dst_ip=server,
        src_port=draw(st.integers(1024, 65535)),
        dst_port=draw(st.sampled_from((53, 53, 53, 52, 54))),
        ct_state=draw(st.sampled_from((CtState.NEW, CtState.NEW, CtState.NEW, *CtState))),
    )


@st.composite
def packets_for(draw: st.DrawFn, scope: Scope) -> Packet:
    """Packets likely to land on the edges of ``scope``'s rules: mostly aimed
    at one rule, some anywhere near the scope, some DHCP requests and DNS
    queries."""
    kinds = ["aimed", "aimed", "aimed", "near", "near", "dhcp"] + ["dns"] * bool(scope.dns_servers)
    kind = draw(st.sampled_from(kinds))
    if kind == "dhcp":
        return draw(_dhcp_request(scope))
    if kind == "dns":
        return draw(_dns_query(scope))
    return draw(_packet(scope, aim=kind == "aimed"))


# Ethertypes a hostile guest might use instead of IP: MPLS, PPPoE discovery
# and session, LLDP, an experimental one, 802.1X, and the value Open vSwitch
# gives 802.3 frames that are not LLC/SNAP (OUI 0).
FOREIGN_ETHERTYPES = (0x8847, 0x8863, 0x8864, 0x88CC, 0x88B5, 0x888E, 0x05FF)


@st.composite
def framed(draw: st.DrawFn, packet: Packet) -> Packet:
    """``packet`` mostly as is; sometimes a FIRST or LATER fragment of its
    datagram, tagged (802.1Q or a priority tag) or of a foreign ethertype."""
    kind = draw(
        st.sampled_from(["as is"] * 14 + ["first", "later", "later", "vlan", "priority", "ethertype"])
    )
    if kind == "as is":
        return packet
    if kind == "first":
        return replace(packet, fragment=Fragment.FIRST)
    if kind == "later":
        return replace(packet, fragment=Fragment.LATER, src_port=0, dst_port=0, icmp_type=0, icmp_code=0)
    if kind == "vlan":
        return replace(packet, vlan_id=draw(st.integers(1, 4095)))
    if kind == "priority":
        return replace(packet, vlan_id=0)
    return replace(packet, ethertype=draw(st.sampled_from(FOREIGN_ETHERTYPES)))
