"""NetworkScope + attachment facts -> the attachment's flows (pure).

The bridge-wide flows (uplink classification, flooding of ARP/ND, the
default route to the uplink) carry the bridge cookie; every flow of one
attachment carries that attachment's cookie so it can be read back,
diffed and removed as a unit.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from coordinator.attachment_identity import (
    BRIDGE_COOKIE,
    check_slot,
    cookie_for_slot,
    meter_of_slot,
    zone_of_slot,
)
from coordinator.flows.builder import ETH_IPV6, PROTO_ICMPV6, UNTAGGED, FlowBuilder
from coordinator.flows.model import (
    Ct,
    CtClear,
    CtCommit,
    Drop,
    Flood,
    Flow,
    FlowAction,
    Goto,
    Match,
    Meter,
    Output,
)
from coordinator.flows.nd import (
    bridge_nd_flows,
    egress_nd_flows,
    ingress_nd_flows,
    on_link_prefixes,
    uplink_claim_drops,
)
from coordinator.flows.pipeline import Pipeline
from coordinator.flows.rules import CT_NEW, dns_rules, egress_side, ingress_side, rule_flows
from coordinator.policy.scope import RuleAction, Scope

ETH_ARP = "0x0806"
ETH_IP = "0x0800"
# The L2 guard: the only ethertypes the pipeline handles (and no VLAN tag).
GUARDED_ETHERTYPES = (ETH_IP, ETH_IPV6, ETH_ARP)
ARP_REQUEST = "1"
UNSPECIFIED_V4 = "0.0.0.0"
LIMITED_BROADCAST_V4 = "255.255.255.255"
PROTO_UDP = "17"
BROADCAST = "ff:ff:ff:ff:ff:ff"
ROUTER_ADVERT = "134"
DHCPV6_SERVER_PORT = "547"
FRAG_LATER = "later"

CT_INVALID = "+trk+inv"
CT_ESTABLISHED = "+trk+est-inv"
CT_RELATED = "+trk+rel-inv"
CT_TRACKED_VALID = "+trk-inv"
# The ct_mark bit every commit sets: a connection an allow decision let in.
# Out of a commit only packets of such connections go on; conntrack can hand
# back there fragments of other datagrams (the rest of a list that did not
# fit its batch), which carry the state of a connection not committed yet.
COMMITTED_MARK = 0x1
COMMITTED = (("ct_state", CT_TRACKED_VALID), ("ct_mark", f"{COMMITTED_MARK:#x}/{COMMITTED_MARK:#x}"))


@dataclass(frozen=True)
class BridgeFacts:
    uplink_ofport: int | None  # None: no uplink configured


@dataclass(frozen=True)
class PortFacts:
    """What the compiler needs to know about one attachment's port; its
    conntrack zone, cookie and meter follow from its slot."""

    ofport: int
    mac: str
    slot: int

    def __post_init__(self) -> None:
        check_slot(self.slot)

    @property
    def zone(self) -> int:
        return zone_of_slot(self.slot)

    @property
    def cookie(self) -> int:
        return cookie_for_slot(self.slot)

    @property
    def meter(self) -> int:
        return meter_of_slot(self.slot)


def bridge_flows(pipeline: Pipeline, bridge: BridgeFacts) -> list[Flow]:
    b = FlowBuilder(pipeline, BRIDGE_COOKIE)
    uplink = bridge.uplink_ofport
    if uplink is not None:
        for eth in GUARDED_ETHERTYPES:
            b.add("classify", ("base", 0), _guarded(uplink, eth), Goto("ingress_classify"))
    # Out of a commit: only what conntrack tracked, found valid and an allow
    # decision committed goes on.
    b.add("egress_committed", ("base", 0), COMMITTED, Goto("forward"))
    # Address probes (RFC 5227, sender 0.0.0.0) teach no one anything; they
    # go to the fabric only, so a guest without addresses (a network class
    # before its policy) never reaches another guest with ARP.
    probe = (("dl_type", ETH_ARP), ("arp_op", ARP_REQUEST), ("arp_spa", UNSPECIFIED_V4))
    b.add("forward", ("base", 20), probe, Output(uplink) if uplink is not None else Drop())
    # Address resolution must reach every port; everything else is policed
    # per attachment and never flooded (so a receiver's ingress policy is
    # never bypassed by broadcast or multicast IP).
    for table in ("forward", "ingress_classify"):
        b.add(table, ("base", 10), (("dl_dst", BROADCAST), ("dl_type", ETH_ARP)), Flood())
    bridge_nd_flows(b, uplink)
    if uplink is not None:
        b.add("forward", ("default_action", 0), (), Output(uplink))
    return b.flows


# The flows of an attachment that are not its rules' depend on the port and
# on the scope without its rules and version; a policy change rarely alters
# those, so they are remembered (the same checked Flow objects, whose
# encodings the switch adapter has memoised). Keyed by the whole scope but
# its rules, so no field of it can be forgotten in the key.
BASE_FLOWS_KEPT = 256  # attachments; about 30 flows each
_base_flows: dict[tuple[int, PortFacts, Scope], tuple[Pipeline, tuple[Flow, ...]]] = {}


def _base_flows_of(pipeline: Pipeline, port: PortFacts, scope: Scope) -> tuple[Flow, ...]:
    key = (id(pipeline), port, dataclasses.replace(scope, version=0, egress=(), ingress=()))
    found = _base_flows.get(key)
    if found is not None and found[0] is pipeline:
        return found[1]
    b = FlowBuilder(pipeline, port.cookie)
    _classify(b, port, scope)
    _egress_spoof(b, port, scope)
    _egress_conntrack(b, port, scope)
    _forward(b, port)
    _ingress(b, port, scope)
    if len(_base_flows) >= BASE_FLOWS_KEPT:
        _base_flows.clear()
    _base_flows[key] = (pipeline, tuple(b.flows))
    return _base_flows[key][1]


def forget_base_flows() -> None:
    """Start the memo of base flows over (tests compare with a fresh compile)."""
    _base_flows.clear()


def attachment_flows(pipeline: Pipeline, port: PortFacts, scope: Scope) -> list[Flow]:
    b = FlowBuilder(pipeline, port.cookie)
    b.flows += _base_flows_of(pipeline, port, scope)
    families = [f for f in (4, 6) if _own_networks(scope, f)]
    b.flows += rule_flows(
        pipeline,
        egress_side(port.ofport),
        (*scope.egress, *dns_rules(scope)),
        families,
        cookie=port.cookie,
        slot=port.slot,
    )
    b.flows += rule_flows(
        pipeline, ingress_side(port.mac), scope.ingress, families, cookie=port.cookie, slot=port.slot
    )
    return b.flows


def cut_flows(pipeline: Pipeline, port: PortFacts) -> list[Flow]:
    """Two drops above every other flow of the attachment: all it sends
    (at classify, by its port) and all unicast towards it (at
    ingress_classify, by its MAC). Stricter than deny-all (not even
    address probes) and far fewer flows, so many attachments stop in one
    small bundle; the attachment's cookie, so read-back and reconcile treat
    them as its flows (a sync to its desired flows removes them)."""
    b = FlowBuilder(pipeline, port.cookie)
    b.add("classify", ("cut", 0), (("in_port", str(port.ofport)),), Drop())
    b.add("ingress_classify", ("cut", 0), (("dl_dst", port.mac),), Drop())
    return b.flows


def _own_networks(scope: Scope, version: int) -> list[str]:
    nets = [n for n in scope.addresses if n.version == version]
    # A scope may list an address twice; one flow each is enough.
    return list(dict.fromkeys(str(n.network_address) if n.num_addresses == 1 else str(n) for n in nets))


def default_burst_kb(kbps: int) -> int:
    """A burst (kilobits) of 100 ms at the rate, and at least 16."""
    return max(kbps // 10, 16)


def _guarded(ofport: int, eth: str) -> Match:
    return (("in_port", str(ofport)), ("vlan_tci", UNTAGGED), ("dl_type", eth))


def _classify(b: FlowBuilder, port: PortFacts, scope: Scope) -> None:
    police = (Meter(port.meter),) if scope.egress_rate_limit else ()
    for eth in GUARDED_ETHERTYPES:
        b.add("classify", ("base", 20), _guarded(port.ofport, eth), *police, Goto("egress_spoof"))
    # ARP claiming one of this guest's addresses comes only from the guest
    # itself (whose flows above outrank this one; egress_spoof checks it).
    # From anywhere else - the uplink - it would teach every guest and the
    # fabric to send this guest's traffic elsewhere.
    for net in _own_networks(scope, 4):
        b.add("classify", ("base", 10), (("dl_type", ETH_ARP), ("arp_spa", net)), Drop())
    # Neighbour discovery from the uplink claiming them likewise.
    if _own_networks(scope, 6):
        uplink_claim_drops(b, _own_v6(port, scope))


def _egress_spoof(b: FlowBuilder, port: PortFacts, scope: Scope) -> None:
    src = (("in_port", str(port.ofport)),)
    own_mac = (*src, ("dl_src", port.mac))
    # A guest never serves DHCP or advertises routes.
    b.add(
        "egress_spoof",
        ("guard", 0),
        (*src, ("dl_type", ETH_IP), ("nw_proto", PROTO_UDP), ("tp_src", "67")),
        Drop(),
    )
    b.add(
        "egress_spoof",
        ("guard", 0),
        (*src, ("dl_type", ETH_IPV6), ("nw_proto", PROTO_UDP), ("tp_src", DHCPV6_SERVER_PORT)),
        Drop(),
    )
    b.add(
        "egress_spoof",
        ("guard", 0),
        (*src, ("dl_type", ETH_IPV6), ("nw_proto", PROTO_ICMPV6), ("icmpv6_type", ROUTER_ADVERT)),
        Drop(),
    )
    v4 = _own_networks(scope, 4)
    if scope.allow_dhcp:
        # The DHCP client's broadcasts, from no address yet or an own one,
        # pass before any address or policy check. Nothing else does: a
        # unicast request (a renewal) is policed like any packet, and the
        # exception can carry no made-up source and reach no other guest or
        # fabric host (a client falls back to broadcasting when a renewal
        # gets no answer).
        for client in (UNSPECIFIED_V4, *v4):
            b.add(
                "egress_spoof",
                ("base", 30),
                (*own_mac, ("dl_type", ETH_IP), ("nw_src", client), ("nw_dst", LIMITED_BROADCAST_V4),
                 ("nw_proto", PROTO_UDP), ("tp_src", "68"), ("tp_dst", "67")),
                Goto("forward"),
            )  # fmt: skip
    arp = (*own_mac, ("dl_type", ETH_ARP), ("arp_sha", port.mac))
    # ARP only for own addresses, or as an address probe (sender 0.0.0.0,
    # which forward sends to the fabric only). Without an IPv4 address (a
    # network class before the policy, DHCP) that leaves probes alone.
    for net in v4:
        b.add("egress_spoof", ("base", 10), (*arp, ("arp_spa", net)), Goto("forward"))
    b.add("egress_spoof", ("base", 10), (*arp, ("arp_op", ARP_REQUEST), ("arp_spa", UNSPECIFIED_V4)),
          Goto("forward"))  # fmt: skip
    for net in v4:
        b.add(
            "egress_spoof", ("base", 0), (*own_mac, ("dl_type", ETH_IP), ("nw_src", net)), Goto("egress_ct")
        )
    v6 = _own_networks(scope, 6)
    if v6:
        on_link = on_link_prefixes(n for n in scope.addresses if isinstance(n, ipaddress.IPv6Network))
        egress_nd_flows(b, port.ofport, port.mac, _own_v6(port, scope), on_link)
    for net in v6:
        b.add(
            "egress_spoof",
            ("base", 0),
            (*own_mac, ("dl_type", ETH_IPV6), ("ipv6_src", net)),
            Goto("egress_ct"),
        )


def link_local_v6(mac: str) -> str:
    """The EUI-64 link-local address (RFC 4291) of ``mac``: the only one a
    guest may use (as OVN's and Neutron's port security have it)."""
    octets = bytes.fromhex(parse_mac(mac).replace(":", ""))
    interface_id = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    return str(ipaddress.IPv6Address(bytes.fromhex("fe80000000000000") + interface_id))


def _own_v6(port: PortFacts, scope: Scope) -> list[str]:
    """The scope's IPv6 networks and the link-local address of the MAC: the
    only sources and neighbour-discovery targets a guest may use (any
    other link-local would let it claim the gateway's or another guest's)."""
    return [*_own_networks(scope, 6), link_local_v6(port.mac)]


def _ip_types(scope: Scope) -> list[str]:
    types = []
    if _own_networks(scope, 4):
        types.append(ETH_IP)
    if _own_networks(scope, 6):
        types.append(ETH_IPV6)
    return types


def _egress_conntrack(b: FlowBuilder, port: PortFacts, scope: Scope) -> None:
    src = (("in_port", str(port.ofport)),)
    for eth in _ip_types(scope):
        b.add("egress_ct", ("base", 0), (*src, ("dl_type", eth)), Ct(port.zone, "egress_policy"))
        _state_flows(b, "egress_policy", (*src, ("dl_type", eth)), Goto("forward"), "egress_commit")
        allow_new = scope.egress_default is RuleAction.ALLOW
        b.add(
            "egress_policy",
            ("default_action", 0),
            (*src, ("dl_type", eth), ("ct_state", CT_NEW)),
            Goto("egress_commit") if allow_new else Drop(),
        )
        b.add(
            "egress_commit",
            ("base", 0),
            (*src, ("dl_type", eth)),
            CtCommit(port.zone, "egress_committed", COMMITTED_MARK),
        )


def _state_flows(b: FlowBuilder, table: str, match: Match, pass_action: FlowAction, commit: str) -> None:
    b.add(table, ("guard", 0), (*match, ("ct_state", CT_INVALID)), Drop())
    b.add(table, ("base", 0), (*match, ("ct_state", CT_ESTABLISHED)), pass_action)
    b.add(table, ("base", 0), (*match, ("ct_state", CT_RELATED)), pass_action)
    # A later fragment carries no L4 header to decide on. Conntrack gave it
    # the state of its reassembled datagram; the commit reassembles again
    # and releases it only together with the rest of the datagram - so only
    # if the first fragment, which the rules below decide, got there too.
    # (In the kernel datapath the reassembled datagram itself runs the
    # pipeline and this flow never matches.)
    b.add(table, ("guard", 0), (*match, ("ct_state", CT_NEW), ("ip_frag", FRAG_LATER)), Goto(commit))


def _forward(b: FlowBuilder, port: PortFacts) -> None:
    # Local delivery re-enters at ingress_classify so the receiver's ingress
    # policy and conntrack zone apply; the sender's ct state must not leak.
    b.add("forward", ("base", 0), (("dl_dst", port.mac),), CtClear(), Goto("ingress_classify"))


def _ingress(b: FlowBuilder, port: PortFacts, scope: Scope) -> None:
    dst = (("dl_dst", port.mac),)
    deliver = Output(port.ofport)
    b.add("ingress_classify", ("base", 10), (*dst, ("dl_type", ETH_ARP)), deliver)
    if scope.allow_dhcp:
        b.add(
            "ingress_classify",
            ("base", 10),
            (*dst, ("dl_type", ETH_IP), ("nw_proto", PROTO_UDP), ("tp_src", "67"), ("tp_dst", "68")),
            deliver,
        )
    if _own_networks(scope, 6):
        ingress_nd_flows(b, port.ofport, port.mac, _own_v6(port, scope))
    for eth, field in ((ETH_IP, "nw_dst"), (ETH_IPV6, "ipv6_dst")):
        # Only traffic addressed to the guest's own addresses is tracked;
        # the rest misses and is dropped.
        for net in _own_networks(scope, 4 if eth == ETH_IP else 6):
            b.add("ingress_classify", ("base", 0), (*dst, ("dl_type", eth), (field, net)),
                  Ct(port.zone, "ingress_policy"))  # fmt: skip
    for eth in _ip_types(scope):
        _state_flows(b, "ingress_policy", (*dst, ("dl_type", eth)), deliver, "ingress_commit")
        allow_new = scope.ingress_default is RuleAction.ALLOW
        b.add(
            "ingress_policy",
            ("default_action", 0),
            (*dst, ("dl_type", eth), ("ct_state", CT_NEW)),
            Goto("ingress_commit") if allow_new else Drop(),
        )
        b.add(
            "ingress_commit",
            ("base", 0),
            (*dst, ("dl_type", eth)),
            CtCommit(port.zone, "ingress_deliver", COMMITTED_MARK),
        )
    if _ip_types(scope):
        b.add("ingress_deliver", ("base", 0), (*dst, *COMMITTED), deliver)


def parse_mac(value: str) -> str:
    """Normalise a MAC to lower-case colon form; raise ValueError if bad."""
    parts = value.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValueError(f"not a MAC address: {value!r}")
    return ":".join(parts)


__all__ = [
    "BridgeFacts",
    "PortFacts",
    "attachment_flows",
    "bridge_flows",
    "cut_flows",
    "link_local_v6",
    "parse_mac",
]
