"""The adversarial cases: raw frames a compromised guest (or the fabric)
sends, and where each may arrive. One entry per case.

Every frame carries its case's marker (``tag(n)``, 8 bytes) in its payload or,
where the protocol has none, as Ethernet padding. A case lists, per marker
``n``, the places that must see it; every other place must not. Places are
the namespaces the suite captures in: ``uplink`` (the fabric), ``guest``
(the attacker, an attachment with a NetworkScope), ``peer`` (a second
attachment with its own NetworkScope) and ``classed`` (an attachment on the
baseline network class, no policy yet). Frames are sent from ``guest``,
``uplink`` or ``classed``.

The scopes (see ``GUEST_SCOPE``/``PEER_SCOPE``) allow UDP 5000 and TCP 443
to the test servers, UDP 5000 to the local subnet and to multicast, and
TCP 8080 and UDP 5000 from the fabric; everything else is denied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scapy.contrib.mpls import MPLS
from scapy.layers.igmp import IGMP
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_LSRR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrSegmentRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, LLC, SNAP, Dot1AD, Dot1Q, Dot3, Ether
from scapy.layers.ppp import PPPoE, PPPoED
from scapy.packet import Packet, Padding, Raw
from scapy.utils6 import in6_mactoifaceid

GUEST_V4, GUEST_V6 = "198.51.100.10", "2001:db8::10"
PEER_V4, PEER_V6 = "198.51.100.20", "2001:db8::20"
GATEWAY_V4 = "198.51.100.1"
SERVER_V4, SERVER_V6 = "203.0.113.5", "2001:db8:ff::5"
BROADCAST = "ff:ff:ff:ff:ff:ff"
# The peer's solicited-node multicast group (and its MAC).
PEER_SOLICITED, PEER_SOLICITED_MAC = "ff02::1:ff00:20", "33:33:ff:00:00:20"

_FABRIC_V4, _FABRIC_V6 = ["203.0.113.0/24"], ["2001:db8:ff::/64"]


def _rule(name: str, protocol: str, port: int, cidrs: list[str]) -> dict[str, Any]:
    return {"name": name, "action": "ACTION_ALLOW", "protocol": protocol, "cidrs": cidrs,
            "ports": [{"start": port}]}  # fmt: skip


GUEST_SCOPE: dict[str, Any] = {
    # The /44: a prefix routed to the guest, wider than a link's /64.
    "addresses": [GUEST_V4, GUEST_V6, "2001:db8:100::/44"],
    "egress": [
        _rule("udp-fabric", "PROTOCOL_UDP", 5000, _FABRIC_V4 + _FABRIC_V6),
        _rule("https", "PROTOCOL_TCP", 443, _FABRIC_V4 + _FABRIC_V6),
        _rule("udp-local", "PROTOCOL_UDP", 5000, ["198.51.100.0/24", "2001:db8::/64"]),
        _rule("udp-multicast", "PROTOCOL_UDP", 5000, ["224.0.0.0/4", "ff00::/8"]),
    ],
    "ingress": [
        _rule("web", "PROTOCOL_TCP", 8080, []),
        _rule("udp-in", "PROTOCOL_UDP", 5000, _FABRIC_V4 + _FABRIC_V6),
    ],
}
# The peer accepts anything from the local subnet: whatever of the guest's
# frames reached it would be visible.
PEER_SCOPE: dict[str, Any] = {
    "addresses": [PEER_V4, PEER_V6],
    "ingressDefault": "ACTION_ALLOW",
}


@dataclass(frozen=True)
class Env:
    guest_mac: str
    peer_mac: str
    classed_mac: str
    uplink_mac: str


Tag = Callable[[int], bytes]
Frames = Callable[[Env, Tag], Sequence[Packet]]


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # "guest", "uplink" or "classed"
    frames: Frames
    expect: tuple[frozenset[str], ...]  # places that see marker n, for each n
    # Seen leaking on the pipeline before the framing guard, fragment and
    # network-class work (for the record; not asserted).
    leaked_before: bool = False
    # Frames sent from the same source once conntrack has given up on
    # incomplete fragment lists (their markers count like the first ones).
    then: Frames | None = None


NOWHERE: frozenset[str] = frozenset()
UPLINK = frozenset({"uplink"})
GUEST = frozenset({"guest"})


def _out(env: Env) -> Ether:
    return Ether(src=env.guest_mac, dst=env.uplink_mac)


def _v4(env: Env, tag: Tag, dport: int = 5000, dst: str = SERVER_V4, src: str = GUEST_V4) -> Packet:
    return IP(src=src, dst=dst) / UDP(sport=40000, dport=dport) / Raw(tag(0) * 4)


def _v6(env: Env, tag: Tag, dport: int = 5000, dst: str = SERVER_V6, src: str = GUEST_V6) -> Packet:
    return IPv6(src=src, dst=dst) / UDP(sport=40000, dport=dport) / Raw(tag(0) * 4)


def _inbound(env: Env) -> Ether:
    return Ether(src=env.uplink_mac, dst=env.guest_mac)


def _snap(env: Env, oui: int, payload: Packet, code: int = 0x0800, dst: str = "") -> Packet:
    return (
        Dot3(src=env.guest_mac, dst=dst or env.uplink_mac)
        / LLC(dsap=0xAA, ssap=0xAA, ctrl=3)
        / SNAP(OUI=oui, code=code)
        / payload
    )


def _big(tag: Tag, n: int = 0) -> bytes:
    return tag(n) * 400  # 3,200 bytes: three fragments at MTU 1500


def _v4_fragments(
    env: Env, tag: Tag, dport: int, *, to_guest: bool = False, size: int = 3200
) -> list[Packet]:
    payload = Raw((tag(0) * (size // 8 + 1))[:size])
    if to_guest:
        datagram = IP(src=SERVER_V4, dst=GUEST_V4, id=0x4242) / UDP(sport=40001, dport=dport) / payload
        return [_inbound(env) / f for f in fragment(datagram, fragsize=1400)]
    datagram = (
        IP(src=GUEST_V4, dst=SERVER_V4, id=0x4343 + size % 251) / UDP(sport=40002, dport=dport) / payload
    )
    return [_out(env) / f for f in fragment(datagram, fragsize=1400)]


def _v6_fragments(env: Env, tag: Tag, dport: int, *, to_guest: bool = False) -> list[Packet]:
    src, dst, eth = (SERVER_V6, GUEST_V6, _inbound(env)) if to_guest else (GUEST_V6, SERVER_V6, _out(env))
    datagram = (
        IPv6(src=src, dst=dst)
        / IPv6ExtHdrFragment(id=0x5151 + to_guest)
        / UDP(sport=40003, dport=dport)
        / Raw(_big(tag))
    )
    return [eth / f for f in fragment6(datagram, 1400)]


def _lone_v4(env: Env, tag: Tag) -> list[Packet]:
    # A later fragment (offset 1480) whose first fragment never comes.
    return [
        _out(env) / IP(src=GUEST_V4, dst=SERVER_V4, id=0x6161, frag=185, proto=17) / Raw(_big(tag)[:1200])
    ]


def _lone_v6(env: Env, tag: Tag) -> list[Packet]:
    return [
        _out(env)
        / IPv6(src=GUEST_V6, dst=SERVER_V6)
        / IPv6ExtHdrFragment(offset=185, m=0, id=0x6262, nh=17)
        / Raw(_big(tag)[:1200])
    ]


def _split_chain_v6(env: Env, tag: Tag) -> list[Packet]:
    """A first fragment that ends inside a destination-options header, so
    its L4 header is in the second fragment (RFC 7112 forbids it). The
    datagram, UDP to an allowed port, is dropped all the same."""
    options = bytes([17, 200]) + bytes(200 * 8 + 6)  # next header UDP, 1,608 bytes long
    head = IPv6(src=GUEST_V6, dst=SERVER_V6) / IPv6ExtHdrFragment(nh=60, m=1, id=0x6464, offset=0)
    rest = IPv6(src=GUEST_V6, dst=SERVER_V6) / IPv6ExtHdrFragment(nh=60, m=0, id=0x6464, offset=168)
    udp = UDP(sport=40006, dport=5000) / Raw(tag(0) * 8)
    tail = options[1344:] + bytes(IPv6(bytes(IPv6(src=GUEST_V6, dst=SERVER_V6) / udp))[UDP])
    return [_out(env) / head / Raw(options[:1336] + tag(0)), _out(env) / rest / Raw(tail)]


def _source_routed_v4(env: Env, tag: Tag) -> Packet:
    # UDP checksum 0 (none): valid whichever destination one checks it for.
    route = IPOption_LSRR(routers=["203.0.113.99"])
    return (
        _out(env)
        / IP(src=GUEST_V4, dst=SERVER_V4, options=route)
        / UDP(sport=40050, dport=5000, chksum=0)
        / Raw(tag(0) * 4)
    )


def _source_routed_v6(env: Env, tag: Tag) -> Packet:
    # The UDP checksum as the switch checks it: against the IPv6 header's
    # destination (the first hop), not the route's last segment.
    udp = UDP(sport=40051, dport=5000) / Raw(tag(0) * 4)
    checksum = IPv6(bytes(IPv6(src=GUEST_V6, dst=SERVER_V6) / udp))[UDP].chksum
    route = IPv6ExtHdrSegmentRouting(addresses=["2001:db8:dead::1"], segleft=1)
    return (
        _out(env)
        / IPv6(src=GUEST_V6, dst=SERVER_V6)
        / route
        / UDP(sport=40051, dport=5000, chksum=checksum)
        / Raw(tag(0) * 4)
    )


def _overlap_v4(env: Env, tag: Tag) -> list[Packet]:
    """Allowed first fragment, then a second one at offset 0 that would
    rewrite the UDP header to a denied port, then the last fragment."""
    head = IP(src=GUEST_V4, dst=SERVER_V4, id=0x7171, flags="MF", proto=17)
    first = bytes(UDP(sport=40004, dport=5000, len=8 + 2800, chksum=0)) + _big(tag, 0)[: 1400 - 8]
    rewrite = bytes(UDP(sport=40004, dport=6000, len=8 + 2800, chksum=0)) + _big(tag, 1)[: 1400 - 8]
    last = IP(src=GUEST_V4, dst=SERVER_V4, id=0x7171, frag=175, proto=17) / Raw(_big(tag, 2)[:1408])
    return [_out(env) / head / Raw(first), _out(env) / head / Raw(rewrite), _out(env) / last]


def _tiny_v4(env: Env, tag: Tag) -> list[Packet]:
    """A first fragment of 16 bytes: the TCP flags (and all but the ports)
    are in the second fragment."""
    segment = bytes(TCP(sport=40005, dport=443, flags="S")) + _big(tag)[:1200]
    first = IP(src=GUEST_V4, dst=SERVER_V4, id=0x7272, flags="MF", proto=6) / Raw(segment[:16])
    rest = IP(src=GUEST_V4, dst=SERVER_V4, id=0x7272, frag=2, proto=6) / Raw(segment[16:])
    return [_out(env) / first, _out(env) / rest]


def _arp(env: Env, tag: Tag, *, mac: str, sha: str, spa: str, op: int = 1, dst: str = BROADCAST) -> Packet:
    return Ether(src=mac, dst=dst) / ARP(op=op, hwsrc=sha, psrc=spa, pdst=GATEWAY_V4) / Padding(tag(0) * 2)


def _ns(env: Env, tag: Tag, src: str, target: str, group: str = "ff02::1:ff00:1") -> Packet:
    group_mac = "33:33:" + ":".join(f"{b:02x}" for b in ipaddress.IPv6Address(group).packed[-4:])
    # A solicitation from the unspecified address (duplicate address
    # detection) carries no link-layer option.
    sll = ICMPv6NDOptSrcLLAddr(lladdr=env.guest_mac) if src != "::" else Raw(b"")
    return (
        Ether(src=env.guest_mac, dst=group_mac)
        / IPv6(src=src, dst=group)
        / ICMPv6ND_NS(tgt=target)
        / sll
        / Padding(tag(0) * 2)
    )


def link_local(mac: str) -> str:
    """The EUI-64 link-local address of ``mac``."""
    return f"fe80::{in6_mactoifaceid(mac).lower()}"


def _to_peer(env: Env, tag: Tag, dport: int = 5000, dst: str = PEER_V4) -> Packet:
    return Ether(src=env.guest_mac, dst=env.peer_mac) / _v4(env, tag, dport=dport, dst=dst)


def _dhcp(env: Env, tag: Tag, *, src: str, dst: str, mac_dst: str = BROADCAST) -> Packet:
    return (
        Ether(src=env.classed_mac, dst=mac_dst)
        / IP(src=src, dst=dst)
        / UDP(sport=68, dport=67)
        / Raw(tag(0) * 4)
    )


def _atomic_v6(env: Env, tag: Tag, dport: int) -> Packet:
    """A fragment header that fragments nothing (offset 0, no more)."""
    return (
        _out(env)
        / IPv6(src=GUEST_V6, dst=SERVER_V6)
        / IPv6ExtHdrFragment(offset=0, m=0, id=0x5353 + dport)
        / UDP(sport=40060, dport=dport)
        / Raw(tag(0) * 4)
    )


def _hop_by_hop_fragments(env: Env, tag: Tag, dport: int) -> list[Packet]:
    """Fragments whose fragment header follows a hop-by-hop options header."""
    datagram = (
        IPv6(src=GUEST_V6, dst=SERVER_V6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrFragment(id=0x5454 + dport)
        / UDP(sport=40061, dport=dport)
        / Raw(_big(tag))
    )
    return [_out(env) / f for f in fragment6(datagram, 1400)]


def _overlap_v6(env: Env, tag: Tag) -> list[Packet]:
    """As _overlap_v4, for IPv6 (whose UDP checksum is mandatory: computed
    over the datagram the first and last fragments make)."""
    payload = _big(tag, 0)[: 1400 - 8] + _big(tag, 2)[:1408]
    datagram = bytes(IPv6(src=GUEST_V6, dst=SERVER_V6) / UDP(sport=40062, dport=5000) / Raw(payload))[40:]
    rewrite = bytes(UDP(sport=40062, dport=6000, len=len(datagram))) + _big(tag, 1)[: 1400 - 8]

    def piece(offset: int, more: int, data: bytes) -> Packet:
        head = IPv6(src=GUEST_V6, dst=SERVER_V6) / IPv6ExtHdrFragment(offset=offset, m=more, id=0x7373, nh=17)
        return _out(env) / head / Raw(data)

    return [piece(0, 1, datagram[:1400]), piece(0, 1, rewrite), piece(175, 0, datagram[1400:])]


def _tiny_v6(env: Env, tag: Tag) -> list[Packet]:
    """A first fragment of 8 bytes: the TCP flags are in the second."""
    segment = bytes(TCP(sport=40063, dport=443, flags="S")) + _big(tag)[:1200]

    def piece(offset: int, more: int, data: bytes) -> Packet:
        head = IPv6(src=GUEST_V6, dst=SERVER_V6) / IPv6ExtHdrFragment(offset=offset, m=more, id=0x7474, nh=6)
        return _out(env) / head / Raw(data)

    return [piece(0, 1, segment[:8]), piece(1, 0, segment[8:])]


def _tcp(env: Env, tag: Tag, flags: str, dport: int = 22) -> Packet:
    return (
        _out(env) / IP(src=GUEST_V4, dst=SERVER_V4) / TCP(sport=40010, dport=dport, flags=flags) / Raw(tag(0))
    )


def _syn_in(env: Env, tag: Tag, dport: int, flags: str = "S", sport: int = 40020) -> Packet:
    return (
        _inbound(env)
        / IP(src=SERVER_V4, dst=GUEST_V4)
        / TCP(sport=sport, dport=dport, flags=flags)
        / Raw(tag(0))
    )


@dataclass(frozen=True)
class Sentinel:
    """A frame the policies let through from a source to ``place``: sent
    after a chunk of frames, it shows the switch has read them all."""

    place: str
    frame: Callable[[Env, bytes], Packet]  # (env, marker) -> the frame


SENTINELS: dict[str, Sentinel] = {
    "guest": Sentinel("uplink", lambda e, m: _out(e) / IP(src=GUEST_V4, dst=SERVER_V4)
                      / UDP(sport=40090, dport=5000) / Raw(m)),
    "uplink": Sentinel("guest", lambda e, m: _inbound(e) / IP(src=SERVER_V4, dst=GUEST_V4)
                       / UDP(sport=40091, dport=5000) / Raw(m)),
    # An address probe: the only thing a class's guest sends that goes out.
    "classed": Sentinel("uplink", lambda e, m: Ether(src=e.classed_mac, dst=BROADCAST)
                        / ARP(hwsrc=e.classed_mac, psrc="0.0.0.0", pdst=GATEWAY_V4) / Padding(m)),
}  # fmt: skip


def _one(build: Callable[[Env, Tag], Packet]) -> Frames:
    return lambda env, tag: [build(env, tag)]


CASES: tuple[Case, ...] = (
    # -- controls: what the policy allows arrives ---------------------------
    Case("ethernet-ii udp allowed", "guest", _one(lambda e, t: _out(e) / _v4(e, t)), (UPLINK,)),
    Case("ethernet-ii udp6 allowed", "guest", _one(lambda e, t: _out(e) / _v6(e, t)), (UPLINK,)),
    Case("ethernet-ii udp denied port", "guest", _one(lambda e, t: _out(e) / _v4(e, t, dport=6000)), (NOWHERE,)),
    # -- VLAN framing --------------------------------------------------------
    Case("802.1q tagged allowed udp", "guest",
         _one(lambda e, t: _out(e) / Dot1Q(vlan=100) / _v4(e, t)), (NOWHERE,), leaked_before=True),
    Case("802.1q tagged udp6", "guest",
         _one(lambda e, t: _out(e) / Dot1Q(vlan=100) / _v6(e, t)), (NOWHERE,), leaked_before=True),
    Case("priority tag (vid 0)", "guest",
         _one(lambda e, t: _out(e) / Dot1Q(vlan=0, prio=5) / _v4(e, t)), (NOWHERE,), leaked_before=True),
    Case("802.1ad s-tag", "guest",
         _one(lambda e, t: _out(e) / Dot1AD(vlan=200) / _v4(e, t)), (NOWHERE,), leaked_before=True),
    Case("qinq (802.1ad + 802.1q)", "guest",
         _one(lambda e, t: _out(e) / Dot1AD(vlan=200) / Dot1Q(vlan=100) / _v4(e, t)), (NOWHERE,)),
    Case("stacked 802.1q", "guest",
         _one(lambda e, t: _out(e) / Dot1Q(vlan=10) / Dot1Q(vlan=20) / _v4(e, t)), (NOWHERE,)),
    Case("tagged arp broadcast", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=BROADCAST) / Dot1Q(vlan=100)
              / ARP(hwsrc=e.guest_mac, psrc=GUEST_V4, pdst=GATEWAY_V4) / Padding(t(0) * 2)),
         (NOWHERE,), leaked_before=True),
    Case("tagged neighbour solicitation", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="33:33:ff:00:00:01") / Dot1Q(vlan=100)
              / IPv6(src=GUEST_V6, dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="2001:db8::1")
              / ICMPv6NDOptSrcLLAddr(lladdr=e.guest_mac) / Padding(t(0) * 2)),
         (NOWHERE,), leaked_before=True),
    # -- other ethertypes and 802.3 ---------------------------------------------
    Case("mpls", "guest", _one(lambda e, t: _out(e) / MPLS(label=16, s=1) / _v4(e, t)), (NOWHERE,)),
    Case("pppoe discovery", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=BROADCAST) / PPPoED() / Raw(t(0))), (NOWHERE,)),
    Case("pppoe session", "guest", _one(lambda e, t: _out(e) / PPPoE(sessionid=1) / Raw(t(0))), (NOWHERE,)),
    Case("lldp", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(t(0) * 4)),
         (NOWHERE,)),
    Case("unknown ethertype", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=e.uplink_mac, type=0x88B5) / Raw(t(0) * 4)), (NOWHERE,)),
    Case("raw 802.3 (llc, stp sap)", "guest",
         _one(lambda e, t: Dot3(src=e.guest_mac, dst="01:80:c2:00:00:00") / LLC(dsap=0x42, ssap=0x42, ctrl=3)
              / Raw(t(0) * 4)), (NOWHERE,)),
    Case("llc/snap, foreign oui", "guest", _one(lambda e, t: _snap(e, 0x00000C, _v4(e, t))), (NOWHERE,)),
    # OpenFlow sees an LLC/SNAP frame with OUI 0 as its inner ethertype: it
    # is policed exactly like the Ethernet II frame (README, policy semantics).
    Case("llc/snap oui 0, allowed udp", "guest", _one(lambda e, t: _snap(e, 0, _v4(e, t))), (UPLINK,)),
    Case("llc/snap oui 0, denied port", "guest", _one(lambda e, t: _snap(e, 0, _v4(e, t, dport=6000))),
         (NOWHERE,)),
    Case("llc/snap oui 0, spoofed source", "guest",
         _one(lambda e, t: _snap(e, 0, _v4(e, t, src="198.51.100.99"))), (NOWHERE,)),
    Case("llc/snap oui 0, arp claiming the peer's address", "guest",
         _one(lambda e, t: _snap(e, 0, ARP(op=2, hwsrc=e.guest_mac, psrc=PEER_V4, pdst=GATEWAY_V4)
                                 / Padding(t(0) * 2), code=0x0806, dst=BROADCAST)), (NOWHERE,)),
    Case("rarp", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=BROADCAST, type=0x8035)
              / ARP(op=3, hwsrc=e.guest_mac, hwdst=e.guest_mac) / Padding(t(0) * 2)), (NOWHERE,)),
    # -- what OpenFlow cannot see (README, policy semantics): IP options and
    # IPv6 extension headers are not matchable; such a packet is policed by
    # its IP header, so a source route to a denied host via an allowed first
    # hop passes - the fabric's routers drop source-routed packets.
    Case("ipv4 loose source route (option) via an allowed hop", "guest", _one(_source_routed_v4), (UPLINK,)),
    Case("ipv6 routing header via an allowed hop", "guest", _one(_source_routed_v6), (UPLINK,)),
    # -- spoofing --------------------------------------------------------------
    Case("spoofed source mac", "guest",
         _one(lambda e, t: Ether(src="02:00:5e:00:53:99", dst=e.uplink_mac) / _v4(e, t)), (NOWHERE,)),
    Case("multicast source mac", "guest",
         _one(lambda e, t: Ether(src="01:00:5e:00:00:fb", dst=e.uplink_mac) / _v4(e, t)), (NOWHERE,)),
    Case("spoofed ipv4 source", "guest", _one(lambda e, t: _out(e) / _v4(e, t, src=PEER_V4)), (NOWHERE,)),
    Case("spoofed ipv6 source", "guest", _one(lambda e, t: _out(e) / _v6(e, t, src=PEER_V6)), (NOWHERE,)),
    Case("arp claiming the peer's address", "guest",
         _one(lambda e, t: _arp(e, t, mac=e.guest_mac, sha=e.guest_mac, spa=PEER_V4, op=2)), (NOWHERE,)),
    Case("arp with a foreign sender mac", "guest",
         _one(lambda e, t: _arp(e, t, mac=e.guest_mac, sha="02:00:5e:00:53:99", spa=GUEST_V4)), (NOWHERE,)),
    # OpenFlow reads ARP fields only for hardware type 1; Linux also takes 6.
    Case("arp with hardware type 6 claiming the peer's address", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=BROADCAST)
              / ARP(hwtype=6, op=2, hwsrc=e.guest_mac, psrc=PEER_V4, pdst=GATEWAY_V4) / Padding(t(0) * 2)),
         (NOWHERE,)),
    Case("arp reply from 0.0.0.0", "guest",
         _one(lambda e, t: _arp(e, t, mac=e.guest_mac, sha=e.guest_mac, spa="0.0.0.0", op=2)), (NOWHERE,)),
    Case("arp with own addresses", "guest",
         _one(lambda e, t: _arp(e, t, mac=e.guest_mac, sha=e.guest_mac, spa=GUEST_V4)),
         (frozenset({"uplink", "peer", "classed"}),)),
    Case("neighbour advertisement for the peer's address", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="33:33:00:00:00:01") / IPv6(src=GUEST_V6, dst="ff02::1")
              / ICMPv6ND_NA(tgt=PEER_V6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=e.guest_mac)
              / Padding(t(0) * 2)), (NOWHERE,)),
    # Open vSwitch reads a repeated link-layer option as no options and no
    # target (Linux takes the first): such an advertisement claims nothing.
    Case("neighbour advertisement with a foreign target link-layer option first", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="33:33:00:00:00:01") / IPv6(src=GUEST_V6, dst="ff02::1")
              / ICMPv6ND_NA(tgt=GUEST_V6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr="02:00:5e:00:53:99")
              / ICMPv6NDOptDstLLAddr(lladdr=e.guest_mac) / Padding(t(0) * 2)), (NOWHERE,)),
    Case("neighbour solicitation from a foreign address", "guest",
         _one(lambda e, t: _ns(e, t, "2001:db8::99", "2001:db8::1")), (NOWHERE,)),
    # Receivers learn a solicitation's source -> its link-layer option: a
    # guest's link-local source is the one its MAC gives it (EUI-64).
    Case("neighbour solicitation from another link-local address", "guest",
         _one(lambda e, t: _ns(e, t, "fe80::1", PEER_V6, PEER_SOLICITED)), (NOWHERE,), leaked_before=True),
    Case("neighbour solicitation from own link-local address", "guest",
         _one(lambda e, t: _ns(e, t, link_local(e.guest_mac), PEER_V6, PEER_SOLICITED)), (frozenset({"uplink", "peer", "classed"}),)),
    # Duplicate address detection for another's address makes its owner give
    # the address up while it is tentative.
    Case("duplicate address detection for the peer's address", "guest",
         _one(lambda e, t: _ns(e, t, "::", PEER_V6, PEER_SOLICITED)), (NOWHERE,), leaked_before=True),
    Case("duplicate address detection for own address", "guest",
         _one(lambda e, t: _ns(e, t, "::", GUEST_V6, "ff02::1:ff00:10")), (frozenset({"uplink", "peer", "classed"}),)),
    Case("mld report", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="33:33:00:00:00:16")
              / IPv6(src=link_local(e.guest_mac), dst="ff02::16", hlim=1) / ICMPv6MLReport2()
              / Raw(t(0) * 2)), (NOWHERE,)),
    Case("igmp report", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="01:00:5e:00:00:16") / IP(src=GUEST_V4, dst="224.0.0.22")
              / IGMP(type=0x16, gaddr="224.0.0.251") / Raw(t(0) * 2)), (NOWHERE,)),
    Case("router advertisement", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="33:33:00:00:00:01") / IPv6(src="fe80::10", dst="ff02::1")
              / ICMPv6ND_RA() / Padding(t(0) * 2)), (NOWHERE,)),
    Case("dhcp server offer", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=BROADCAST) / IP(src=GUEST_V4, dst="255.255.255.255")
              / UDP(sport=67, dport=68) / Raw(t(0) * 4)), (NOWHERE,)),
    Case("dhcpv6 server advertise", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=e.peer_mac) / IPv6(src=GUEST_V6, dst=PEER_V6)
              / UDP(sport=547, dport=546) / Raw(t(0) * 4)), (NOWHERE,)),
    # -- between guests of different sandboxes -----------------------------
    Case("unicast udp to the peer", "guest", _one(_to_peer), (frozenset({"peer"}),)),
    Case("unicast udp to the peer, denied port", "guest", _one(lambda e, t: _to_peer(e, t, 6000)), (NOWHERE,)),
    Case("the peer's mac with a fabric address", "guest", _one(lambda e, t: _to_peer(e, t, dst=SERVER_V4)),
         (NOWHERE,)),
    Case("the fabric's mac with the peer's address", "guest", _one(lambda e, t: _out(e) / _v4(e, t, dst=PEER_V4)),
         (UPLINK,)),
    # -- conntrack -----------------------------------------------------------
    Case("tcp fin scan, denied port", "guest", _one(lambda e, t: _tcp(e, t, "F")), (NOWHERE,)),
    Case("tcp null scan, denied port", "guest", _one(lambda e, t: _tcp(e, t, "")), (NOWHERE,)),
    Case("tcp xmas scan, denied port", "guest", _one(lambda e, t: _tcp(e, t, "FPU")), (NOWHERE,)),
    Case("tcp ack scan, denied port", "guest", _one(lambda e, t: _tcp(e, t, "A")), (NOWHERE,)),
    Case("tcp syn+fin, denied port", "guest", _one(lambda e, t: _tcp(e, t, "SF")), (NOWHERE,)),
    Case("tcp syn+rst, denied port", "guest", _one(lambda e, t: _tcp(e, t, "SR")), (NOWHERE,)),
    # Conntrack finds SYN+FIN invalid whatever the port.
    Case("tcp syn+fin to an allowed port", "guest", _one(lambda e, t: _tcp(e, t, "SF", dport=443)), (NOWHERE,)),
    # Conntrack picks a connection up mid-stream (as Linux does by default):
    # a lone ACK to an allowed destination is a new, allowed connection.
    Case("tcp ack to an allowed port", "guest", _one(lambda e, t: _tcp(e, t, "A", dport=443)), (UPLINK,)),
    Case("icmp error embedding a denied tuple", "guest",
         _one(lambda e, t: _out(e) / IP(src=GUEST_V4, dst=SERVER_V4) / ICMP(type=3, code=3)
              / IP(src=SERVER_V4, dst=GUEST_V4) / TCP(sport=22, dport=40030) / Raw(t(0))), (NOWHERE,)),
    # -- broadcast and multicast never reach another guest ---------------------
    Case("ipv4 broadcast udp", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=BROADCAST) / _v4(e, t, dst="198.51.100.255")), (UPLINK,)),
    Case("ipv4 multicast udp", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="01:00:5e:00:00:fb") / _v4(e, t, dst="224.0.0.251")),
         (UPLINK,)),
    Case("ipv6 multicast udp", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="33:33:00:00:00:01") / _v6(e, t, dst="ff02::1")), (UPLINK,)),
    Case("ipv4 limited broadcast, no rule allows it", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst=BROADCAST) / _v4(e, t, dst="255.255.255.255")), (NOWHERE,)),
    Case("icmpv6 echo to all nodes, no rule allows it", "guest",
         _one(lambda e, t: Ether(src=e.guest_mac, dst="33:33:00:00:00:01") / IPv6(src=GUEST_V6, dst="ff02::1")
              / ICMPv6EchoRequest(data=t(0) * 2)), (NOWHERE,)),
    # -- fragments -----------------------------------------------------------
    Case("fragmented allowed udp", "guest", lambda e, t: _v4_fragments(e, t, 5000), (UPLINK,),
         leaked_before=True),  # "leaked": the allowed datagram did not pass
    Case("fragmented allowed udp6", "guest", lambda e, t: _v6_fragments(e, t, 5000), (UPLINK,),
         leaked_before=True),
    Case("fragmented denied udp", "guest", lambda e, t: _v4_fragments(e, t, 6000), (NOWHERE,)),
    Case("fragmented denied udp6", "guest", lambda e, t: _v6_fragments(e, t, 6000), (NOWHERE,)),
    Case("lone later fragment", "guest", _lone_v4, (NOWHERE,)),
    Case("lone later fragment, ipv6", "guest", _lone_v6, (NOWHERE,), leaked_before=True),
    Case("ipv6 first fragment whose header chain runs into the next", "guest", _split_chain_v6, (NOWHERE,)),
    Case("overlapping fragment rewriting the port", "guest", _overlap_v4, (UPLINK, NOWHERE, UPLINK),
         leaked_before=True),
    Case("tiny first fragment", "guest", _tiny_v4, (NOWHERE,)),
    Case("tiny first fragment, ipv6", "guest", _tiny_v6, (NOWHERE,)),
    Case("overlapping fragment rewriting the port, ipv6", "guest", _overlap_v6, (UPLINK, NOWHERE, UPLINK)),
    Case("ipv6 atomic fragment, allowed udp", "guest", _one(lambda e, t: _atomic_v6(e, t, 5000)), (UPLINK,)),
    Case("ipv6 atomic fragment, denied port", "guest", _one(lambda e, t: _atomic_v6(e, t, 6000)), (NOWHERE,)),
    Case("fragments after a hop-by-hop header, allowed udp6", "guest",
         lambda e, t: _hop_by_hop_fragments(e, t, 5000), (UPLINK,)),
    Case("fragments after a hop-by-hop header, denied port", "guest",
         lambda e, t: _hop_by_hop_fragments(e, t, 6000), (NOWHERE,)),
    # More fragments than a datapath batch holds: conntrack hands the rest
    # back at its next ct() - here the commit of a new, allowed datagram.
    Case("denied datagram of 46 fragments, then an allowed commit", "guest",
         lambda e, t: [*_v4_fragments(e, t, 6000, size=64000),
                       _out(e) / IP(src=GUEST_V4, dst=SERVER_V4) / UDP(sport=40041, dport=5000) / Raw(t(1) * 4)],
         (NOWHERE, UPLINK)),
    # Expired fragments come back out of the next ct() of their family -
    # here the commit of a new, allowed datagram - and must not share its
    # way out.
    Case("expired later fragment, then an allowed commit", "guest",
         lambda e, t: [_out(e) / IP(src=GUEST_V4, dst=SERVER_V4, id=0x6363, frag=185, proto=17)
                       / Raw(_big(t)[:1200])],
         (NOWHERE, UPLINK),
         then=lambda e, t: [_out(e) / IP(src=GUEST_V4, dst=SERVER_V4) / UDP(sport=40040, dport=5000)
                            / Raw(t(1) * 4)]),
    # -- from the fabric -------------------------------------------------------
    Case("uplink syn to an allowed port", "uplink", _one(lambda e, t: _syn_in(e, t, 8080)), (GUEST,)),
    Case("uplink syn to a denied port", "uplink", _one(lambda e, t: _syn_in(e, t, 23)), (NOWHERE,)),
    Case("uplink syn-ack without a syn", "uplink", _one(lambda e, t: _syn_in(e, t, 8080, "SA", sport=40022)), (NOWHERE,)),
    Case("uplink tagged syn", "uplink",
         _one(lambda e, t: _inbound(e) / Dot1Q(vlan=100) / IP(src=SERVER_V4, dst=GUEST_V4)
              / TCP(sport=40021, dport=8080, flags="S") / Raw(t(0))), (NOWHERE,), leaked_before=True),
    Case("uplink tagged arp broadcast", "uplink",
         _one(lambda e, t: Ether(src=e.uplink_mac, dst=BROADCAST) / Dot1Q(vlan=100)
              / ARP(hwsrc=e.uplink_mac, psrc=GATEWAY_V4, pdst=GUEST_V4) / Padding(t(0) * 2)),
         (NOWHERE,), leaked_before=True),
    Case("uplink arp request for the guest", "uplink",
         _one(lambda e, t: Ether(src=e.uplink_mac, dst=BROADCAST)
              / ARP(hwsrc=e.uplink_mac, psrc=GATEWAY_V4, pdst=GUEST_V4) / Padding(t(0) * 2)),
         (frozenset({"guest", "peer", "classed"}),)),
    # Only the peer may say where the peer's address is.
    Case("uplink arp claiming the peer's address", "uplink",
         _one(lambda e, t: Ether(src=e.uplink_mac, dst=BROADCAST)
              / ARP(op=2, hwsrc=e.uplink_mac, psrc=PEER_V4, pdst=GUEST_V4) / Padding(t(0) * 2)),
         (NOWHERE,), leaked_before=True),
    Case("uplink unknown ethertype", "uplink",
         _one(lambda e, t: Ether(src=e.uplink_mac, dst=e.guest_mac, type=0x88B5) / Raw(t(0) * 4)), (NOWHERE,)),
    Case("uplink to the guest's mac for the peer's address", "uplink",
         _one(lambda e, t: _inbound(e) / IP(src=SERVER_V4, dst=PEER_V4) / UDP(sport=40023, dport=5000)
              / Raw(t(0) * 4)), (NOWHERE,)),
    Case("uplink fragmented allowed udp", "uplink", lambda e, t: _v4_fragments(e, t, 5000, to_guest=True),
         (GUEST,), leaked_before=True),
    Case("uplink fragmented allowed udp6", "uplink", lambda e, t: _v6_fragments(e, t, 5000, to_guest=True),
         (GUEST,), leaked_before=True),
    Case("uplink fragmented denied udp", "uplink", lambda e, t: _v4_fragments(e, t, 6000, to_guest=True),
         (NOWHERE,)),
    # -- a guest on a network class, before its policy --------------------------
    Case("class: arp claiming the gateway", "classed",
         _one(lambda e, t: _arp(e, t, mac=e.classed_mac, sha=e.classed_mac, spa=GATEWAY_V4)), (NOWHERE,),
         leaked_before=True),
    Case("class: arp probe", "classed",
         _one(lambda e, t: _arp(e, t, mac=e.classed_mac, sha=e.classed_mac, spa="0.0.0.0")), (UPLINK,),
         leaked_before=True),
    Case("class: arp probe with a foreign sender mac", "classed",
         _one(lambda e, t: _arp(e, t, mac=e.classed_mac, sha="02:00:5e:00:53:98", spa="0.0.0.0")), (NOWHERE,)),
    Case("class: unicast arp to the peer", "classed",
         _one(lambda e, t: _arp(e, t, mac=e.classed_mac, sha=e.classed_mac, spa="0.0.0.0", dst=e.peer_mac)),
         (UPLINK,), leaked_before=True),
    Case("class: neighbour solicitation", "classed",
         _one(lambda e, t: Ether(src=e.classed_mac, dst="33:33:ff:00:00:01") / IPv6(src="::", dst="ff02::1:ff00:1")
              / ICMPv6ND_NS(tgt="2001:db8::77") / Padding(t(0) * 2)), (NOWHERE,)),
    Case("class: dhcp discover", "classed",
         _one(lambda e, t: _dhcp(e, t, src="0.0.0.0", dst="255.255.255.255")), (UPLINK,)),
    # The DHCP exception is for a client's broadcasts, not a way around the
    # policy: unicast from a made-up source to another guest or a fabric host.
    Case("class: dhcp to the peer, spoofed source", "classed",
         _one(lambda e, t: _dhcp(e, t, src=GATEWAY_V4, dst=PEER_V4, mac_dst=e.peer_mac)), (NOWHERE,),
         leaked_before=True),
    Case("class: dhcp to a fabric host", "classed",
         _one(lambda e, t: _dhcp(e, t, src="0.0.0.0", dst=SERVER_V4, mac_dst=e.uplink_mac)), (NOWHERE,),
         leaked_before=True),
)  # fmt: skip
