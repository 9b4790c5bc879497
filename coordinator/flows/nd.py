"""IPv6 neighbour discovery flows (pure).

Neighbour discovery passes whatever a policy says, so these flows keep it
to what it is: messages between neighbours on one link that claim only what
their sender owns. Anything else would be a way around a deny-all policy (a
solicitation carrying made-up options to a host behind the router) or a way
to take another's traffic.

- Hop limit 255, in both directions: a receiver takes nothing else
  (RFC 4861, 7.1), and no router forwards it so. Unfragmented: receivers
  ignore fragmented ND (RFC 6980).
- Destinations. A solicitation goes to a solicited-node group, or to a
  neighbour's unicast address (to confirm it is still there); an
  advertisement to all nodes, or to the solicitor. A neighbour's unicast
  address is link-local, or on one of the guest's own /64s - a /64 the
  scope lists, or the /64 of an address or longer prefix it lists: on the
  guest's link, so nothing the router sends on elsewhere. A wider prefix
  is routed to the guest, not its link, and adds no destination.
- From a guest: sources only its own addresses (the scope's, or the EUI-64
  link-local of its MAC); duplicate address detection only for those;
  advertisements claim only those, from those; link-layer options carry
  only its own MAC (or none). Open vSwitch reads a message with a repeated
  option as one without options and without a target (where Linux takes
  the first option): a solicitation without a target is dropped.
- From the uplink: nothing claiming a guest's address - an advertisement
  for it, a solicitation from it - as with ARP; no duplicate address
  detection for it (it makes the guest give the address up while
  tentative); and nothing without a target (a repeated option), which a
  receiver would read by its first option.
- Towards a guest, unicast: only to its own addresses.

What does not fit is dropped, never policed as ordinary ICMPv6.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from coordinator.flows.builder import ETH_IPV6, PROTO_ICMPV6, UNTAGGED, ZERO_MAC, FlowBuilder
from coordinator.flows.model import Drop, Flood, Goto, Match, Output

ND_SOLICIT = "135"
ND_ADVERT = "136"
ND_TYPES = (ND_SOLICIT, ND_ADVERT)
HOP_LIMIT = "255"
SOLICITED_NODES = "ff02::1:ff00:0/104"
ALL_NODES = "ff02::1"
LINK_LOCAL_UNICAST = "fe80::/10"
UNSPECIFIED_V6 = "::"
IPV6_MULTICAST = "33:33:00:00:00:00/ff:ff:00:00:00:00"
ON_LINK_PREFIX = 64  # the subnet of an IPv6 link (RFC 4291, 2.5.4)
# What every neighbour discovery message that passes has: hop limit 255,
# and no fragment header - receivers ignore fragmented ND (RFC 6980), so a
# first fragment would only carry whatever follows it.
ON_ONE_LINK: Match = (("nw_ttl", HOP_LIMIT), ("ip_frag", "no"))


def _nd(nd_type: str) -> Match:
    return (("dl_type", ETH_IPV6), ("nw_proto", PROTO_ICMPV6), ("icmpv6_type", nd_type))


def on_link_prefixes(networks: Iterable[ipaddress.IPv6Network]) -> list[str]:
    """The guest's own /64s: the /64 of each listed address or prefix of
    /64 or longer. (A wider prefix - at worst ::/0 - would make every
    address a neighbour's.)"""
    links = {n.supernet(new_prefix=ON_LINK_PREFIX) for n in networks if n.prefixlen >= ON_LINK_PREFIX}
    return [str(n) for n in sorted(links)]


def bridge_nd_flows(b: FlowBuilder, uplink: int | None) -> None:
    """The floods (solicitations to a solicited-node group, advertisements
    to all nodes) and the uplink's way through ``uplink_nd``."""
    for table in ("forward", "ingress_classify"):
        for nd_type, group in ((ND_SOLICIT, SOLICITED_NODES), (ND_ADVERT, ALL_NODES)):
            b.add(table, ("base", 10),
                  (("dl_dst", IPV6_MULTICAST), *_nd(nd_type), *ON_ONE_LINK, ("ipv6_dst", group)),
                  Flood())  # fmt: skip
    if uplink is None:
        return
    for nd_type in ND_TYPES:
        guarded = (("in_port", str(uplink)), ("vlan_tci", UNTAGGED))
        b.add("classify", ("base", 5), (*guarded, *_nd(nd_type)), Goto("uplink_nd"))
        b.add("uplink_nd", ("guard", 0), (*_nd(nd_type), ("nd_target", UNSPECIFIED_V6)), Drop())
    b.add("uplink_nd", ("base", 0), (), Goto("ingress_classify"))


def egress_nd_flows(
    b: FlowBuilder, ofport: int, mac: str, own: Sequence[str], on_link: Sequence[str]
) -> None:
    """``own``: the guest's IPv6 networks and its link-local address."""
    port = (("in_port", str(ofport)),)
    src = (*port, ("dl_src", mac))
    neighbours = (LINK_LOCAL_UNICAST, *on_link)
    shapes = (
        (ND_SOLICIT, own, (SOLICITED_NODES, *neighbours)),
        (ND_SOLICIT, (UNSPECIFIED_V6,), (SOLICITED_NODES,)),  # duplicate address detection
        (ND_ADVERT, own, (ALL_NODES, *neighbours)),
    )
    for nd_type, sources, destinations in shapes:
        for source in sources:
            for destination in destinations:
                b.add("egress_spoof", ("base", 20),
                      (*src, *_nd(nd_type), *ON_ONE_LINK, ("ipv6_src", source),
                       ("ipv6_dst", destination)),
                      Goto("egress_nd"))  # fmt: skip
    for nd_type in ND_TYPES:
        b.add("egress_spoof", ("base", 15), (*port, *_nd(nd_type)), Drop())
    icmp = (*src, ("dl_type", ETH_IPV6), ("nw_proto", PROTO_ICMPV6))
    b.add(
        "egress_nd", ("guard", 0), (*icmp, ("icmpv6_type", ND_SOLICIT), ("nd_target", UNSPECIFIED_V6)), Drop()
    )
    # Receivers learn a solicitation's source address -> its source
    # link-layer address: our own MAC, or none. Duplicate address detection
    # (no option) only for our own addresses: for another's, it makes the
    # owner give up its address while tentative.
    for source in own:
        for sll in (mac, ZERO_MAC):
            b.add("egress_nd", ("base", 0),
                  (*icmp, ("ipv6_src", source), ("icmpv6_type", ND_SOLICIT), ("nd_sll", sll)), Goto("forward"))  # fmt: skip
    for target in own:
        b.add("egress_nd", ("base", 0),
              (*icmp, ("ipv6_src", UNSPECIFIED_V6), ("icmpv6_type", ND_SOLICIT), ("nd_target", target),
               ("nd_sll", ZERO_MAC)),
              Goto("forward"))  # fmt: skip
    for target in own:
        for tll in (mac, ZERO_MAC):
            b.add("egress_nd", ("base", 0),
                  (*icmp, ("icmpv6_type", ND_ADVERT), ("nd_target", target), ("nd_tll", tll)), Goto("forward"))  # fmt: skip


def ingress_nd_flows(b: FlowBuilder, ofport: int, mac: str, own: Sequence[str]) -> None:
    for nd_type in ND_TYPES:
        for destination in own:
            b.add("ingress_classify", ("base", 10),
                  (("dl_dst", mac), *_nd(nd_type), *ON_ONE_LINK, ("ipv6_dst", destination)),
                  Output(ofport))  # fmt: skip


def uplink_claim_drops(b: FlowBuilder, own: Sequence[str]) -> None:
    for address in own:
        b.add("uplink_nd", ("guard", 0), (*_nd(ND_ADVERT), ("nd_target", address)), Drop())
        b.add("uplink_nd", ("guard", 0), (*_nd(ND_SOLICIT), ("ipv6_src", address)), Drop())
        b.add("uplink_nd", ("guard", 0),
              (*_nd(ND_SOLICIT), ("ipv6_src", UNSPECIFIED_V6), ("nd_target", address)), Drop())  # fmt: skip
