"""Reference evaluator: what a NetworkScope decides for one packet.

This is the contract the OpenFlow compiler is checked against (by
differential testing), so it is written plainly from the semantics below and
shares no code with the compiler. Do not optimise it.

``evaluate(scope, packet)`` decides, in this order:

0. The L2 guard: a frame with a VLAN tag (any, priority tags included) or
   with another ethertype than its IP family's is denied as ``"l2-guard"``.
   (ARP, the third ethertype the guard lets in, is not a NetworkScope
   matter and not described here.)
a. DHCP: if ``scope.allow_dhcp`` and the packet is IPv4 UDP from port 68
   to port 67 sent to 255.255.255.255 from 0.0.0.0 or from an address in
   ``scope.addresses`` (EGRESS, the client's broadcast request), or from
   port 67 to port 68 (INGRESS, the server's answer, whatever its
   addresses: it goes to an address the client does not have yet), it is
   allowed as ``"dhcp"``, whatever its conntrack state. Nothing below is
   consulted. (A unicast request - a renewal - is decided like any packet
   below.)
b. Own addresses: an EGRESS packet whose source, or an INGRESS packet whose
   destination, is outside every network of ``scope.addresses`` is denied
   as ``"anti-spoof"`` (so with no addresses of a family, nothing of that
   family passes either way, but DHCP).
c. Conntrack: INVALID is denied as ``"invalid"``; ESTABLISHED and RELATED
   (replies to, and ICMP errors about, allowed connections) are allowed as
   ``"established"``.
d. A NEW LATER fragment (no L4 header) is allowed as ``"fragment"``: it
   goes on to the commit, whose reassembly releases it only together with
   the rest of its datagram, which the datagram's FIRST fragment (decided
   like an unfragmented packet, below) must have reached. A lone, late,
   overlapping or too small fragment never leaves (conntrack's reassembly
   drops it), which is beyond what one packet can show.
   Otherwise a NEW packet is matched against the rules of its direction. The remote
   address is the destination for EGRESS and the source for INGRESS. A rule
   matches when

   - its cidrs are empty, or the remote address is in one of them (a cidr of
     the other address family never matches); and
   - its protocol matches: ANY matches every packet; TCP and UDP match IP
     protocol 6 and 17 and, if the rule has port ranges, a destination port
     inside one of them; ICMP matches protocol 1 on IPv4 and ICMPV6 protocol
     58 on IPv6, and then the ICMP type if the rule sets one and the ICMP
     code if the rule sets one.
e. Deny wins: if any DENY rule matches, the packet is denied, named after the
   first matching DENY rule in list order. Otherwise, if any ALLOW rule
   matches, it is allowed, named after the first matching ALLOW rule.
   Otherwise, EGRESS only: a UDP or TCP packet to port 53 of one of
   ``scope.dns_servers`` is allowed as ``"dns"``. Otherwise the direction's
   default action applies, named ``"default"``.

A verdict names a rule (its name, with its index in the direction's list) or
one of the fixed names above, which then has no index. Rule names may
coincide with the fixed names; the index tells them apart.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

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
from coordinator.policy.scope import Protocol, Rule, RuleAction, Scope

VERDICT_DEFAULT: Final = "default"
VERDICT_ESTABLISHED: Final = "established"
VERDICT_INVALID: Final = "invalid"
VERDICT_ANTI_SPOOF: Final = "anti-spoof"
VERDICT_DHCP: Final = "dhcp"
VERDICT_DNS: Final = "dns"
VERDICT_L2_GUARD: Final = "l2-guard"
VERDICT_FRAGMENT: Final = "fragment"

DHCP_CLIENT_PORT: Final = 68
DHCP_SERVER_PORT: Final = 67
DNS_PORT: Final = 53
LIMITED_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")
UNSPECIFIED: Final = ipaddress.IPv4Address("0.0.0.0")


@dataclass(frozen=True)
class Verdict:
    """``rule`` is a rule name or one of the fixed names; ``direction_rule_index``
    is the rule's index in ``scope.egress``/``scope.ingress`` when a rule decided."""

    allowed: bool
    rule: str
    direction_rule_index: int | None = None


def evaluate(scope: Scope, packet: Packet) -> Verdict:
    """The verdict of ``scope`` for ``packet`` (see the module docstring)."""
    egress = packet.direction is Direction.EGRESS

    # 0. the L2 guard
    if not packet.untagged_ip:
        return Verdict(False, VERDICT_L2_GUARD)

    # a. DHCP
    if scope.allow_dhcp and (is_dhcp_request(scope, packet) if egress else is_dhcp_answer(packet)):
        return Verdict(True, VERDICT_DHCP)

    # b. own addresses
    if not (source_is_own(scope, packet) if egress else destination_is_own(scope, packet)):
        return Verdict(False, VERDICT_ANTI_SPOOF)

    # c. conntrack
    if packet.ct_state is CtState.INVALID:
        return Verdict(False, VERDICT_INVALID)
    if packet.ct_state in (CtState.ESTABLISHED, CtState.RELATED):
        return Verdict(True, VERDICT_ESTABLISHED)

    # d. later fragments follow their datagram; + e. rules of the packet's direction
    if packet.fragment is Fragment.LATER:
        return Verdict(True, VERDICT_FRAGMENT)
    rules = scope.egress if egress else scope.ingress
    first_deny = first_matching_rule(rules, RuleAction.DENY, packet)
    if first_deny is not None:
        return Verdict(False, rules[first_deny].name, first_deny)
    first_allow = first_matching_rule(rules, RuleAction.ALLOW, packet)
    if first_allow is not None:
        return Verdict(True, rules[first_allow].name, first_allow)

    if egress and is_dns_to_server(scope, packet):
        return Verdict(True, VERDICT_DNS)

    default = scope.egress_default if egress else scope.ingress_default
    return Verdict(default is RuleAction.ALLOW, VERDICT_DEFAULT)


def is_dhcp_request(scope: Scope, packet: Packet) -> bool:
    return (
        packet.version == 4
        and packet.protocol == IPPROTO_UDP
        and packet.src_port == DHCP_CLIENT_PORT
        and packet.dst_port == DHCP_SERVER_PORT
        and packet.dst_ip == LIMITED_BROADCAST
        and (packet.src_ip == UNSPECIFIED or source_is_own(scope, packet))
    )


def is_dhcp_answer(packet: Packet) -> bool:
    return (
        packet.version == 4
        and packet.protocol == IPPROTO_UDP
        and packet.src_port == DHCP_SERVER_PORT
        and packet.dst_port == DHCP_CLIENT_PORT
    )


def destination_is_own(scope: Scope, packet: Packet) -> bool:
    return any(
        network.version == packet.dst_ip.version and packet.dst_ip in network for network in scope.addresses
    )


def source_is_own(scope: Scope, packet: Packet) -> bool:
    return any(
        network.version == packet.src_ip.version and packet.src_ip in network for network in scope.addresses
    )


def is_dns_to_server(scope: Scope, packet: Packet) -> bool:
    if packet.protocol not in (IPPROTO_UDP, IPPROTO_TCP):
        return False
    if packet.dst_port != DNS_PORT:
        return False
    return packet.dst_ip in scope.dns_servers


def first_matching_rule(rules: tuple[Rule, ...], action: RuleAction, packet: Packet) -> int | None:
    """Index of the first rule with ``action`` that matches ``packet``."""
    for index, rule in enumerate(rules):
        if rule.action is action and rule_matches(rule, packet):
            return index
    return None


def rule_matches(rule: Rule, packet: Packet) -> bool:
    return remote_matches(rule, packet) and protocol_matches(rule, packet)


def remote_matches(rule: Rule, packet: Packet) -> bool:
    if not rule.cidrs:
        return True
    remote = packet.dst_ip if packet.direction is Direction.EGRESS else packet.src_ip
    return any(network.version == remote.version and remote in network for network in rule.cidrs)


def protocol_matches(rule: Rule, packet: Packet) -> bool:
    if rule.protocol is Protocol.ANY:
        return True
    if rule.protocol is Protocol.TCP:
        return packet.protocol == IPPROTO_TCP and port_matches(rule, packet)
    if rule.protocol is Protocol.UDP:
        return packet.protocol == IPPROTO_UDP and port_matches(rule, packet)
    if rule.protocol is Protocol.ICMP:
        return packet.version == 4 and packet.protocol == IPPROTO_ICMP and icmp_matches(rule, packet)
    if rule.protocol is Protocol.ICMPV6:
        return packet.version == 6 and packet.protocol == IPPROTO_ICMPV6 and icmp_matches(rule, packet)
    raise ValueError(f"unknown protocol {rule.protocol!r}")


def port_matches(rule: Rule, packet: Packet) -> bool:
    if not rule.ports:
        return True
    return any(port_range.start <= packet.dst_port <= port_range.end for port_range in rule.ports)


def icmp_matches(rule: Rule, packet: Packet) -> bool:
    if rule.icmp_type is not None and packet.icmp_type != rule.icmp_type:
        return False
    return not (rule.icmp_code is not None and packet.icmp_code != rule.icmp_code)
