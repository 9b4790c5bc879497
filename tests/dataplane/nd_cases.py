"""The adversarial cases of IPv6 neighbour discovery (see cases.py for what
a case is and where frames are captured).

Neighbour discovery passes under every policy, so it must stay what it is:
messages between neighbours on one link. A receiver takes a message only
with hop limit 255 (RFC 4861, 7.1), which no router forwards, and the
destinations are link-local, the solicited-node and all-nodes groups, or an
address on the guest's own /64. Anything else - a solicitation carrying
made-up options to a host behind the router, a hop limit a router left, a
global multicast group - would be a way around a deny-all policy.

The guest's address is 2001:db8::10, so 2001:db8::/64 is on its link;
2001:db8:ff::5 (the fabric's server) is not.
"""

from __future__ import annotations

from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptUnknown,
    IPv6,
    IPv6ExtHdrFragment,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Padding, Raw

from tests.dataplane.cases import (
    GUEST,
    GUEST_V6,
    NOWHERE,
    PEER_V6,
    SERVER_V6,
    UPLINK,
    Case,
    Env,
    Tag,
    _one,
    link_local,
)

# Every place the bridge's floods reach from a guest, or from the uplink.
FLOODED_FROM_GUEST = frozenset({"uplink", "peer", "classed"})
FLOODED_FROM_UPLINK = frozenset({"guest", "peer", "classed"})
ON_LINK_V6 = "2001:db8::1"  # the router's address on the guest's /64
ROUTER_LL = "fe80::1"
GUEST_SOLICITED, GUEST_SOLICITED_MAC = "ff02::1:ff00:10", "33:33:ff:00:00:10"
PEER_SOLICITED, PEER_SOLICITED_MAC = "ff02::1:ff00:20", "33:33:ff:00:00:20"
ALL_NODES, ALL_NODES_MAC = "ff02::1", "33:33:00:00:00:01"
ROUTED_OFF_LINK = "2001:db8:10a::5"  # in the guest's 2001:db8:100::/44, not on its /64
FOREIGN_MAC = "02:00:5e:00:53:99"


def _solicit(
    env: Env, tag: Tag, *, dst: str, mac_dst: str, target: str, src: str = "", hlim: int = 255
) -> Packet:
    return (
        Ether(src=env.guest_mac, dst=mac_dst)
        / IPv6(src=src or link_local(env.guest_mac), dst=dst, hlim=hlim)
        / ICMPv6ND_NS(tgt=target)
        / ICMPv6NDOptSrcLLAddr(lladdr=env.guest_mac)
        / Padding(tag(0) * 2)
    )


def _advertise(
    env: Env, tag: Tag, *, dst: str, mac_dst: str, src: str = GUEST_V6, target: str = GUEST_V6
) -> Packet:
    return (
        Ether(src=env.guest_mac, dst=mac_dst)
        / IPv6(src=src, dst=dst, hlim=255)
        / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=env.guest_mac)
        / Padding(tag(0) * 2)
    )


def _from_uplink(env: Env, tag: Tag, ip: Packet, nd: Packet, mac_dst: str = "") -> Packet:
    return Ether(src=env.uplink_mac, dst=mac_dst or env.guest_mac) / ip / nd / Padding(tag(0) * 2)


def _uplink_solicit(env: Env, tag: Tag, *, src: str, dst: str, mac_dst: str = "") -> Packet:
    """A solicitation from the uplink for the guest's address."""
    ip = IPv6(src=src, dst=dst, hlim=255)
    return _from_uplink(
        env, tag, ip, ICMPv6ND_NS(tgt=GUEST_V6) / ICMPv6NDOptSrcLLAddr(lladdr=env.uplink_mac), mac_dst
    )


def _options_off_link(env: Env, tag: Tag) -> Packet:
    # An option of a type no receiver knows carries whatever the guest likes.
    data = tag(0) + bytes(6)
    return (
        Ether(src=env.guest_mac, dst=env.uplink_mac)
        / IPv6(src=GUEST_V6, dst=SERVER_V6, hlim=255)
        / ICMPv6ND_NS(tgt=SERVER_V6)
        / ICMPv6NDOptSrcLLAddr(lladdr=env.guest_mac)
        / ICMPv6NDOptUnknown(type=200, len=2, data=data)
    )


def _fragmented_solicitation(env: Env, tag: Tag) -> Packet:
    body = bytes(ICMPv6ND_NS(tgt=PEER_V6) / ICMPv6NDOptSrcLLAddr(lladdr=env.guest_mac)) + tag(0) * 2
    return (
        Ether(src=env.guest_mac, dst=PEER_SOLICITED_MAC)
        / IPv6(src=link_local(env.guest_mac), dst=PEER_SOLICITED, hlim=255)
        / IPv6ExtHdrFragment(nh=58, m=1, offset=0, id=0x7575)
        / Raw(body)
    )


def _repeated_sll(env: Env, tag: Tag) -> Packet:
    # Open vSwitch reads a repeated option as no option and no target; a
    # Linux receiver takes the first, and would learn the foreign MAC.
    return (
        Ether(src=env.guest_mac, dst=PEER_SOLICITED_MAC)
        / IPv6(src=GUEST_V6, dst=PEER_SOLICITED, hlim=255)
        / ICMPv6ND_NS(tgt=PEER_V6)
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:5e:00:53:99")
        / ICMPv6NDOptSrcLLAddr(lladdr=env.guest_mac)
        / Padding(tag(0) * 2)
    )


ND_CASES: tuple[Case, ...] = (
    # -- from the guest ----------------------------------------------------------
    Case("nd: solicitation with made-up options to a host behind the router", "guest",
         _one(_options_off_link), (NOWHERE,)),
    Case("nd: solicitation with hop limit 254", "guest",
         _one(lambda e, t: _solicit(e, t, dst=PEER_SOLICITED, mac_dst=PEER_SOLICITED_MAC, target=PEER_V6,
                                    hlim=254)), (NOWHERE,)),
    Case("nd: solicitation to a global multicast group", "guest",
         _one(lambda e, t: _solicit(e, t, dst="ff0e::1", mac_dst=ALL_NODES_MAC, target=PEER_V6)), (NOWHERE,)),
    Case("nd: solicitation with a foreign source link-layer option first", "guest",
         _one(_repeated_sll), (NOWHERE,)),
    Case("nd: advertisement to a host behind the router", "guest",
         _one(lambda e, t: _advertise(e, t, dst=SERVER_V6, mac_dst=e.uplink_mac)), (NOWHERE,)),
    Case("nd: advertisement from a foreign source address", "guest",
         _one(lambda e, t: _advertise(e, t, dst=ALL_NODES, mac_dst=ALL_NODES_MAC, src=PEER_V6)), (NOWHERE,)),
    # Receivers ignore fragmented neighbour discovery (RFC 6980), so a first
    # fragment is nothing but a carrier of whatever follows its header.
    Case("nd: fragmented solicitation (its first fragment)", "guest",
         _one(_fragmented_solicitation), (NOWHERE,)),
    # A prefix of the scope wider than /64 is routed to the guest, not its link.
    Case("nd: solicitation into the guest's routed /44, off its link", "guest",
         _one(lambda e, t: _solicit(e, t, dst=ROUTED_OFF_LINK, mac_dst=e.uplink_mac, target=ROUTED_OFF_LINK,
                                    src=GUEST_V6)), (NOWHERE,)),
    # The controls: what neighbours on one link do.
    Case("nd: unreachability detection of the router's link-local address", "guest",
         _one(lambda e, t: _solicit(e, t, dst=ROUTER_LL, mac_dst=e.uplink_mac, target=ROUTER_LL)), (UPLINK,)),
    Case("nd: unreachability detection of an address on the guest's /64", "guest",
         _one(lambda e, t: _solicit(e, t, dst=ON_LINK_V6, mac_dst=e.uplink_mac, target=ON_LINK_V6,
                                    src=GUEST_V6)), (UPLINK,)),
    Case("nd: solicited advertisement to an address on the guest's /64", "guest",
         _one(lambda e, t: _advertise(e, t, dst=ON_LINK_V6, mac_dst=e.uplink_mac)), (UPLINK,)),
    Case("nd: unsolicited advertisement of own address to all nodes", "guest",
         _one(lambda e, t: _advertise(e, t, dst=ALL_NODES, mac_dst=ALL_NODES_MAC)), (FLOODED_FROM_GUEST,)),
    # -- from the fabric ---------------------------------------------------------
    Case("nd: uplink solicitation for the guest, routed (hop limit 254)", "uplink",
         _one(lambda e, t: _from_uplink(e, t, IPv6(src=SERVER_V6, dst=GUEST_V6, hlim=254),
                                        ICMPv6ND_NS(tgt=GUEST_V6) / ICMPv6NDOptSrcLLAddr(lladdr=e.uplink_mac))),
         (NOWHERE,)),
    Case("nd: uplink advertisement to the guest's mac for another address", "uplink",
         _one(lambda e, t: _from_uplink(e, t, IPv6(src=ROUTER_LL, dst="2001:db8:ff::9", hlim=255),
                                        ICMPv6ND_NA(tgt=ROUTER_LL, S=1) / ICMPv6NDOptDstLLAddr(lladdr=e.uplink_mac))),
         (NOWHERE,)),
    # Only the peer may say where the peer's address is (as with ARP).
    Case("nd: uplink advertisement claiming the peer's address", "uplink",
         _one(lambda e, t: _from_uplink(e, t, IPv6(src=ROUTER_LL, dst=ALL_NODES, hlim=255),
                                        ICMPv6ND_NA(tgt=PEER_V6, O=1) / ICMPv6NDOptDstLLAddr(lladdr=e.uplink_mac),
                                        ALL_NODES_MAC)),
         (NOWHERE,)),
    Case("nd: uplink solicitation from the peer's address", "uplink",
         _one(lambda e, t: _uplink_solicit(e, t, src=PEER_V6, dst=GUEST_SOLICITED, mac_dst=GUEST_SOLICITED_MAC)),
         (NOWHERE,)),
    # Open vSwitch reads a repeated option as no target at all: a Linux
    # receiver takes the first, and learns the attacker's MAC for the peer.
    Case("nd: uplink advertisement claiming the peer's address, option repeated", "uplink",
         _one(lambda e, t: _from_uplink(e, t, IPv6(src=ROUTER_LL, dst=ALL_NODES, hlim=255),
                                        ICMPv6ND_NA(tgt=PEER_V6, O=1) / ICMPv6NDOptDstLLAddr(lladdr=FOREIGN_MAC)
                                        / ICMPv6NDOptDstLLAddr(lladdr=FOREIGN_MAC), ALL_NODES_MAC)),
         (NOWHERE,)),
    Case("nd: uplink advertisement to the guest claiming its own address, option repeated", "uplink",
         _one(lambda e, t: _from_uplink(e, t, IPv6(src=ROUTER_LL, dst=GUEST_V6, hlim=255),
                                        ICMPv6ND_NA(tgt=GUEST_V6, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=FOREIGN_MAC)
                                        / ICMPv6NDOptDstLLAddr(lladdr=FOREIGN_MAC))),
         (NOWHERE,)),
    # Duplicate address detection for a guest's address makes the guest give
    # it up while tentative.
    Case("nd: uplink duplicate address detection for the peer's address", "uplink",
         _one(lambda e, t: _from_uplink(e, t, IPv6(src="::", dst=PEER_SOLICITED, hlim=255),
                                        ICMPv6ND_NS(tgt=PEER_V6), PEER_SOLICITED_MAC)),
         (NOWHERE,)),
    Case("nd: uplink unreachability detection of the guest", "uplink",
         _one(lambda e, t: _uplink_solicit(e, t, src=ROUTER_LL, dst=GUEST_V6)), (GUEST,)),
    Case("nd: uplink solicitation for the guest's address", "uplink",
         _one(lambda e, t: _uplink_solicit(e, t, src=ROUTER_LL, dst=GUEST_SOLICITED, mac_dst=GUEST_SOLICITED_MAC)),
         (FLOODED_FROM_UPLINK,)),
)  # fmt: skip
