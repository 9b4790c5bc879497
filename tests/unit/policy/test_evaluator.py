"""The reference evaluator, step by step (see its module docstring)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from coordinator.policy.evaluator import Verdict, evaluate, rule_matches
from coordinator.policy.packet import CtState, Direction, Fragment, Packet
from coordinator.policy.scope import PortRange, Protocol, Rule, RuleAction, Scope
from tests.unit.policy.strategies import packets_for, scopes

ip = ipaddress.ip_address
net = ipaddress.ip_network

E = Direction.EGRESS
I = Direction.INGRESS  # noqa: E741
NEW, EST, REL, INV = CtState.NEW, CtState.ESTABLISHED, CtState.RELATED, CtState.INVALID
TCP, UDP, ICMP, ICMP6, GRE = 6, 17, 1, 58, 47

ME4, ME6 = "198.51.100.10", "2001:db8::10"


def pkt(
    direction: Direction,
    proto: int,
    src: str,
    dst: str,
    sport: int = 0,
    dport: int = 0,
    itype: int = 0,
    icode: int = 0,
    ct: CtState = NEW,
) -> Packet:
    return Packet(direction, proto, ip(src), ip(dst), sport, dport, itype, icode, ct)


def out(proto: int, dst: str, dport: int = 0, **kw: object) -> Packet:
    """Egress from our IPv4 (or IPv6, by dst family) address."""
    src = ME6 if ":" in dst else ME4
    return pkt(E, proto, src, dst, 40000 if proto in (TCP, UDP) else 0, dport, **kw)  # type: ignore[arg-type]


def inc(proto: int, src: str, dport: int = 0, **kw: object) -> Packet:
    """Ingress to our address from ``src``."""
    dst = ME6 if ":" in src else ME4
    return pkt(I, proto, src, dst, 40000 if proto in (TCP, UDP) else 0, dport, **kw)  # type: ignore[arg-type]


def allow(name: str, *cidrs: str, **kw: object) -> Rule:
    return Rule(name, RuleAction.ALLOW, cidrs=tuple(net(c) for c in cidrs), **kw)  # type: ignore[arg-type]


def deny(name: str, *cidrs: str, **kw: object) -> Rule:
    return Rule(name, RuleAction.DENY, cidrs=tuple(net(c) for c in cidrs), **kw)  # type: ignore[arg-type]


def tcp(*ranges: tuple[int, int]) -> dict[str, object]:
    return {"protocol": Protocol.TCP, "ports": tuple(PortRange(a, b) for a, b in ranges)}


def udp(*ranges: tuple[int, int]) -> dict[str, object]:
    return {"protocol": Protocol.UDP, "ports": tuple(PortRange(a, b) for a, b in ranges)}


BASE = Scope(addresses=(net(f"{ME4}/32"), net(f"{ME6}/128"), net("198.51.100.64/30")))


def scope(**kw: object) -> Scope:
    return replace(BASE, **kw)  # type: ignore[arg-type]


ALLOWED, DENIED = True, False

CASES: list[tuple[str, Scope, Packet, Verdict]] = [
    # a. DHCP
    (
        "dhcp-from-unspecified",
        scope(allow_dhcp=True),
        pkt(E, UDP, "0.0.0.0", "255.255.255.255", 68, 67),
        Verdict(ALLOWED, "dhcp"),
    ),
    (
        "dhcp-bypasses-invalid-and-deny",
        scope(allow_dhcp=True, egress=(deny("all"),)),
        pkt(E, UDP, "0.0.0.0", "255.255.255.255", 68, 67, ct=INV),
        Verdict(ALLOWED, "dhcp"),
    ),
    (
        "dhcp-off-is-spoofed",
        scope(),
        pkt(E, UDP, "0.0.0.0", "255.255.255.255", 68, 67),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "dhcp-off-own-address-default",
        scope(),
        pkt(E, UDP, ME4, "198.51.100.1", 68, 67),
        Verdict(DENIED, "default"),
    ),
    (
        "dhcp-wrong-source-port",
        scope(allow_dhcp=True),
        pkt(E, UDP, "0.0.0.0", "255.255.255.255", 67, 67),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "dhcp-tcp-is-not-dhcp",
        scope(allow_dhcp=True),
        pkt(E, TCP, ME4, "198.51.100.1", 68, 67),
        Verdict(DENIED, "default"),
    ),
    (
        "dhcp-request-ports-not-on-ingress",
        scope(allow_dhcp=True),
        pkt(I, UDP, "198.51.100.1", ME4, 68, 67),
        Verdict(DENIED, "default"),
    ),
    (
        "dhcp-broadcast-from-own-address",
        scope(allow_dhcp=True),
        pkt(E, UDP, ME4, "255.255.255.255", 68, 67),
        Verdict(ALLOWED, "dhcp"),
    ),
    (
        "dhcp-unicast-renewal-is-policed",
        scope(allow_dhcp=True),
        pkt(E, UDP, ME4, "198.51.100.1", 68, 67),
        Verdict(DENIED, "default"),
    ),
    (
        "dhcp-from-a-foreign-source-is-spoofed",
        scope(allow_dhcp=True),
        pkt(E, UDP, "198.51.100.99", "255.255.255.255", 68, 67),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "dhcp-unicast-from-unspecified-is-spoofed",
        scope(allow_dhcp=True),
        pkt(E, UDP, "0.0.0.0", "203.0.113.5", 68, 67),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "dhcp-answer-on-ingress-to-any-address",
        scope(allow_dhcp=True),
        pkt(I, UDP, "198.51.100.1", "198.51.100.77", 67, 68),
        Verdict(ALLOWED, "dhcp"),
    ),
    (
        "dhcp-not-ipv6",
        scope(allow_dhcp=True),
        pkt(E, UDP, "2001:db8::99", "2001:db8::1", 68, 67),
        Verdict(DENIED, "anti-spoof"),
    ),
    # b. anti-spoofing
    (
        "spoofed-source",
        scope(egress_default=RuleAction.ALLOW),
        pkt(E, TCP, "198.51.100.11", "203.0.113.5", 1, 80),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "spoofed-even-when-established",
        scope(egress_default=RuleAction.ALLOW),
        pkt(E, TCP, "198.51.100.11", "203.0.113.5", 1, 80, ct=EST),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "own-network-source",
        scope(egress_default=RuleAction.ALLOW),
        pkt(E, TCP, "198.51.100.67", "203.0.113.5", 1, 80),
        Verdict(ALLOWED, "default"),
    ),
    (
        "just-outside-own-network",
        scope(egress_default=RuleAction.ALLOW),
        pkt(E, TCP, "198.51.100.68", "203.0.113.5", 1, 80),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "own-ipv6",
        scope(egress_default=RuleAction.ALLOW),
        out(TCP, "2001:db8:1::1", 80),
        Verdict(ALLOWED, "default"),
    ),
    (
        "no-addresses-no-egress",
        Scope(egress_default=RuleAction.ALLOW),
        out(TCP, "203.0.113.5", 80),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "ingress-destination-must-be-own",
        scope(ingress_default=RuleAction.ALLOW),
        pkt(I, TCP, "203.0.113.5", "198.51.100.200", 1, 22),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "ingress-to-own-address-default",
        scope(ingress_default=RuleAction.ALLOW),
        pkt(I, TCP, "203.0.113.5", ME4, 1, 22),
        Verdict(ALLOWED, "default"),
    ),
    # c. conntrack
    (
        "invalid-beats-allow",
        scope(egress=(allow("all"),)),
        out(TCP, "203.0.113.5", 80, ct=INV),
        Verdict(DENIED, "invalid"),
    ),
    (
        "established-beats-deny",
        scope(egress=(deny("all"),)),
        out(TCP, "203.0.113.5", 80, ct=EST),
        Verdict(ALLOWED, "established"),
    ),
    (
        "related-ingress",
        scope(ingress=(deny("all"),)),
        inc(ICMP, "203.0.113.5", itype=3, icode=4, ct=REL),
        Verdict(ALLOWED, "established"),
    ),
    (
        "invalid-ingress",
        scope(ingress_default=RuleAction.ALLOW),
        inc(TCP, "203.0.113.5", 22, ct=INV),
        Verdict(DENIED, "invalid"),
    ),
    # d./e. rules
    (
        "deny-wins-over-earlier-allow",
        scope(egress=(allow("web", **tcp((80, 80))), deny("bad", "203.0.113.0/24"))),
        out(TCP, "203.0.113.5", 80),
        Verdict(DENIED, "bad", 1),
    ),
    (
        "first-matching-deny-named",
        scope(
            egress=(deny("d0", "198.51.100.0/24"), deny("d1", "203.0.113.0/25"), deny("d2", "203.0.113.0/24"))
        ),
        out(TCP, "203.0.113.5", 80),
        Verdict(DENIED, "d1", 1),
    ),
    (
        "first-matching-allow-named",
        scope(egress=(allow("a0", **udp()), allow("a1", "203.0.113.0/24"), allow("a2"))),
        out(TCP, "203.0.113.5", 80),
        Verdict(ALLOWED, "a1", 1),
    ),
    (
        "non-matching-deny-ignored",
        scope(egress=(deny("d", **tcp((22, 22))), allow("a", **tcp()))),
        out(TCP, "203.0.113.5", 80),
        Verdict(ALLOWED, "a", 1),
    ),
    (
        "no-match-default-deny",
        scope(egress=(allow("a", "198.51.100.0/24"),)),
        out(TCP, "203.0.113.5", 80),
        Verdict(DENIED, "default"),
    ),
    (
        "no-match-default-allow",
        scope(egress=(deny("a", "198.51.100.0/24"),), egress_default=RuleAction.ALLOW),
        out(TCP, "203.0.113.5", 80),
        Verdict(ALLOWED, "default"),
    ),
    (
        "ingress-uses-source-as-remote",
        scope(ingress=(allow("ssh", "203.0.113.0/24", **tcp((22, 22))),)),
        inc(TCP, "203.0.113.7", 22),
        Verdict(ALLOWED, "ssh", 0),
    ),
    (
        "ingress-does-not-use-destination",
        scope(ingress=(allow("me", f"{ME4}/32"),)),
        inc(TCP, "203.0.113.7", 22),
        Verdict(DENIED, "default"),
    ),
    (
        "egress-rules-do-not-apply-to-ingress",
        scope(egress=(allow("all"),)),
        inc(TCP, "203.0.113.7", 22),
        Verdict(DENIED, "default"),
    ),
    (
        "ingress-default-allow",
        scope(ingress_default=RuleAction.ALLOW),
        inc(UDP, "203.0.113.7", 5000),
        Verdict(ALLOWED, "default"),
    ),
    # cidrs: boundaries and families
    (
        "cidr-first-address",
        scope(egress=(allow("a", "203.0.113.64/26"),)),
        out(GRE, "203.0.113.64"),
        Verdict(ALLOWED, "a", 0),
    ),
    (
        "cidr-last-address",
        scope(egress=(allow("a", "203.0.113.64/26"),)),
        out(GRE, "203.0.113.127"),
        Verdict(ALLOWED, "a", 0),
    ),
    (
        "cidr-below",
        scope(egress=(allow("a", "203.0.113.64/26"),)),
        out(GRE, "203.0.113.63"),
        Verdict(DENIED, "default"),
    ),
    (
        "cidr-above",
        scope(egress=(allow("a", "203.0.113.64/26"),)),
        out(GRE, "203.0.113.128"),
        Verdict(DENIED, "default"),
    ),
    (
        "v4-cidr-never-matches-v6",
        scope(egress=(deny("v4", "0.0.0.0/0"), allow("all"))),
        out(TCP, "2001:db8::1", 80),
        Verdict(ALLOWED, "all", 1),
    ),
    (
        "v6-cidr-never-matches-v4",
        scope(egress=(deny("v6", "::/0"), allow("all"))),
        out(TCP, "203.0.113.1", 80),
        Verdict(ALLOWED, "all", 1),
    ),
    (
        "mixed-cidrs",
        scope(egress=(allow("m", "203.0.113.0/24", "2001:db8:5::/48"),)),
        out(UDP, "2001:db8:5::9", 9),
        Verdict(ALLOWED, "m", 0),
    ),
    (
        "empty-cidrs-any-family",
        scope(egress=(allow("any"),)),
        out(ICMP6, "2001:db8::1", itype=128),
        Verdict(ALLOWED, "any", 0),
    ),
    # protocols and ports
    ("any-matches-gre", scope(egress=(allow("any"),)), out(GRE, "203.0.113.1"), Verdict(ALLOWED, "any", 0)),
    (
        "tcp-rule-not-udp",
        scope(egress=(allow("t", **tcp()),)),
        out(UDP, "203.0.113.1", 80),
        Verdict(DENIED, "default"),
    ),
    (
        "udp-rule-not-tcp",
        scope(egress=(allow("u", **udp()),)),
        out(TCP, "203.0.113.1", 80),
        Verdict(DENIED, "default"),
    ),
    (
        "tcp-rule-not-gre",
        scope(egress=(allow("t", **tcp()),)),
        out(GRE, "203.0.113.1"),
        Verdict(DENIED, "default"),
    ),
    (
        "tcp-no-ports-any-port",
        scope(egress=(allow("t", **tcp()),)),
        out(TCP, "203.0.113.1", 1),
        Verdict(ALLOWED, "t", 0),
    ),
    (
        "port-range-start",
        scope(egress=(allow("r", **tcp((8000, 8099))),)),
        out(TCP, "203.0.113.1", 8000),
        Verdict(ALLOWED, "r", 0),
    ),
    (
        "port-range-end",
        scope(egress=(allow("r", **tcp((8000, 8099))),)),
        out(TCP, "203.0.113.1", 8099),
        Verdict(ALLOWED, "r", 0),
    ),
    (
        "port-below-range",
        scope(egress=(allow("r", **tcp((8000, 8099))),)),
        out(TCP, "203.0.113.1", 7999),
        Verdict(DENIED, "default"),
    ),
    (
        "port-above-range",
        scope(egress=(allow("r", **tcp((8000, 8099))),)),
        out(TCP, "203.0.113.1", 8100),
        Verdict(DENIED, "default"),
    ),
    (
        "second-range",
        scope(egress=(allow("r", **udp((53, 53), (123, 123))),)),
        out(UDP, "203.0.113.1", 123),
        Verdict(ALLOWED, "r", 0),
    ),
    (
        "port-zero-outside-full-range",
        scope(egress=(allow("r", **udp((1, 65535))),)),
        out(UDP, "203.0.113.1", 0),
        Verdict(DENIED, "default"),
    ),
    (
        "source-port-ignored",
        scope(egress=(allow("r", **tcp((80, 80))),)),
        pkt(E, TCP, ME4, "203.0.113.1", 80, 81),
        Verdict(DENIED, "default"),
    ),
    # ICMP
    (
        "icmp-any-type",
        scope(egress=(allow("p", protocol=Protocol.ICMP),)),
        out(ICMP, "203.0.113.1", itype=13),
        Verdict(ALLOWED, "p", 0),
    ),
    (
        "icmp-type-match",
        scope(egress=(allow("p", protocol=Protocol.ICMP, icmp_type=8),)),
        out(ICMP, "203.0.113.1", itype=8, icode=5),
        Verdict(ALLOWED, "p", 0),
    ),
    (
        "icmp-type-mismatch",
        scope(egress=(allow("p", protocol=Protocol.ICMP, icmp_type=8),)),
        out(ICMP, "203.0.113.1", itype=0),
        Verdict(DENIED, "default"),
    ),
    (
        "icmp-code-match",
        scope(ingress=(allow("frag", protocol=Protocol.ICMP, icmp_type=3, icmp_code=4),)),
        inc(ICMP, "203.0.113.1", itype=3, icode=4),
        Verdict(ALLOWED, "frag", 0),
    ),
    (
        "icmp-code-mismatch",
        scope(ingress=(allow("frag", protocol=Protocol.ICMP, icmp_type=3, icmp_code=4),)),
        inc(ICMP, "203.0.113.1", itype=3, icode=3),
        Verdict(DENIED, "default"),
    ),
    (
        "icmp-rule-not-icmpv6",
        scope(egress=(allow("p", protocol=Protocol.ICMP),)),
        out(ICMP6, "2001:db8::1", itype=128),
        Verdict(DENIED, "default"),
    ),
    (
        "icmp-rule-not-proto1-over-ipv6",
        scope(egress=(allow("p", protocol=Protocol.ICMP),)),
        out(ICMP, "2001:db8::1", itype=8),
        Verdict(DENIED, "default"),
    ),
    (
        "icmpv6-rule",
        scope(egress=(allow("p6", protocol=Protocol.ICMPV6, icmp_type=128),)),
        out(ICMP6, "2001:db8::1", itype=128),
        Verdict(ALLOWED, "p6", 0),
    ),
    (
        "icmpv6-rule-not-icmp",
        scope(egress=(allow("p6", protocol=Protocol.ICMPV6),)),
        out(ICMP, "203.0.113.1", itype=8),
        Verdict(DENIED, "default"),
    ),
    (
        "icmpv6-rule-not-proto58-over-ipv4",
        scope(egress=(allow("p6", protocol=Protocol.ICMPV6),)),
        out(ICMP6, "203.0.113.1", itype=128),
        Verdict(DENIED, "default"),
    ),
    (
        "icmp-rule-not-tcp",
        scope(egress=(allow("p", protocol=Protocol.ICMP),)),
        out(TCP, "203.0.113.1", 8),
        Verdict(DENIED, "default"),
    ),
    # DNS
    (
        "dns-udp",
        scope(dns_servers=(ip("198.51.100.1"),)),
        out(UDP, "198.51.100.1", 53),
        Verdict(ALLOWED, "dns"),
    ),
    (
        "dns-tcp-v6",
        scope(dns_servers=(ip("2001:db8::53"),)),
        out(TCP, "2001:db8::53", 53),
        Verdict(ALLOWED, "dns"),
    ),
    (
        "dns-other-server",
        scope(dns_servers=(ip("198.51.100.1"),)),
        out(UDP, "198.51.100.2", 53),
        Verdict(DENIED, "default"),
    ),
    (
        "dns-other-port",
        scope(dns_servers=(ip("198.51.100.1"),)),
        out(UDP, "198.51.100.1", 54),
        Verdict(DENIED, "default"),
    ),
    (
        "dns-not-icmp",
        scope(dns_servers=(ip("198.51.100.1"),)),
        out(ICMP, "198.51.100.1", itype=8),
        Verdict(DENIED, "default"),
    ),
    (
        "dns-deny-rule-wins",
        scope(dns_servers=(ip("198.51.100.1"),), egress=(deny("no-udp", **udp()),)),
        out(UDP, "198.51.100.1", 53),
        Verdict(DENIED, "no-udp", 0),
    ),
    (
        "dns-allow-rule-named",
        scope(dns_servers=(ip("198.51.100.1"),), egress=(allow("mine", **udp((53, 53))),)),
        out(UDP, "198.51.100.1", 53),
        Verdict(ALLOWED, "mine", 0),
    ),
    (
        "dns-not-ingress",
        scope(dns_servers=(ip(ME4),)),
        pkt(I, UDP, "203.0.113.1", ME4, 1, 53),
        Verdict(DENIED, "default"),
    ),
    (
        "dns-from-spoofed-source",
        scope(dns_servers=(ip("198.51.100.1"),)),
        pkt(E, UDP, "198.51.100.99", "198.51.100.1", 1, 53),
        Verdict(DENIED, "anti-spoof"),
    ),
    (
        "rule-named-like-fixed-name",
        scope(egress=(allow("dns", **udp((53, 53))),)),
        out(UDP, "203.0.113.1", 53),
        Verdict(ALLOWED, "dns", 0),
    ),
]


@pytest.mark.parametrize(("scope_", "packet", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_evaluate(scope_: Scope, packet: Packet, expected: Verdict) -> None:
    assert evaluate(scope_, packet) == expected


# --------------------------------------------------------------------------
# Packet validation


@pytest.mark.parametrize(
    "make",
    [
        lambda: pkt(E, TCP, ME4, "2001:db8::1", 1, 80),
        lambda: pkt(E, TCP, ME4, "203.0.113.1", 1, 65536),
        lambda: pkt(E, TCP, ME4, "203.0.113.1", -1, 80),
        lambda: pkt(E, GRE, ME4, "203.0.113.1", 0, 80),
        lambda: pkt(E, ICMP, ME4, "203.0.113.1", 1, 0),
        lambda: pkt(E, TCP, ME4, "203.0.113.1", 1, 80, itype=8),
        lambda: pkt(E, ICMP, ME4, "203.0.113.1", itype=256),
        lambda: pkt(E, ICMP6, ME6, "2001:db8::1", itype=1, icode=-1),
        lambda: pkt(E, 256, ME4, "203.0.113.1"),
    ],
)
def test_bad_packets_are_rejected(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


# --------------------------------------------------------------------------
# Properties over generated scopes and packets


def _own_local_end(scope_: Scope, packet: Packet) -> bool:
    local = packet.src_ip if packet.direction is Direction.EGRESS else packet.dst_ip
    return any(local in n for n in scope_.addresses if n.version == local.version)


@settings(max_examples=400)
@given(st.data())
def test_verdicts_are_consistent(data: st.DataObject) -> None:
    scope_ = data.draw(scopes())
    packet = data.draw(packets_for(scope_))
    verdict = evaluate(scope_, packet)
    assert evaluate(scope_, packet) == verdict
    rules = scope_.egress if packet.direction is Direction.EGRESS else scope_.ingress
    if verdict.direction_rule_index is not None:
        rule = rules[verdict.direction_rule_index]
        assert rule.name == verdict.rule
        assert verdict.allowed == (rule.action is RuleAction.ALLOW)
        assert rule_matches(rule, packet)
        assert packet.ct_state is CtState.NEW
    else:
        assert verdict.rule in ("default", "established", "invalid", "anti-spoof", "dhcp", "dns")
    # Deny wins: for a NEW packet from our own address that is not DHCP, a
    # matching DENY rule always denies.
    bypass = verdict.rule == "dhcp"
    own = _own_local_end(scope_, packet)
    if packet.ct_state is CtState.NEW and own and not bypass:
        matching = [i for i, r in enumerate(rules) if rule_matches(r, packet)]
        denies = [i for i in matching if rules[i].action is RuleAction.DENY]
        allows = [i for i in matching if rules[i].action is RuleAction.ALLOW]
        if denies:
            assert verdict == Verdict(False, rules[denies[0]].name, denies[0])
        elif allows:
            assert verdict == Verdict(True, rules[allows[0]].name, allows[0])
        else:
            assert verdict.rule in ("dns", "default")


def test_packets_for_reaches_rule_edges() -> None:
    scope_ = Scope(
        addresses=(net("198.51.100.10/32"),),
        egress=(allow("r", "203.0.113.64/26", **tcp((1000, 2000))),),
    )
    edges = packets_for(scope_)
    settings_ = settings(max_examples=5000, database=None)

    def to_port(port: int) -> Callable[[Packet], bool]:
        return lambda p: p.dst_port == port

    def egress_to(address: str) -> Callable[[Packet], bool]:
        return lambda p: p.direction is Direction.EGRESS and p.dst_ip == ip(address)

    for port in (999, 1000, 2000, 2001):
        assert find(edges, to_port(port), settings=settings_).dst_port == port
    for address in ("203.0.113.63", "203.0.113.64", "203.0.113.127", "203.0.113.128"):
        assert find(edges, egress_to(address), settings=settings_).dst_ip == ip(address)
    matching = find(edges, lambda p: evaluate(scope_, p).rule == "r", settings=settings_)
    assert evaluate(scope_, matching).allowed


# -- the L2 guard and fragments ----------------------------------------------

OPEN_BOTH = Scope(
    addresses=(net(ME4), net(ME6)),
    egress_default=RuleAction.ALLOW,
    ingress_default=RuleAction.ALLOW,
    allow_dhcp=True,
)


@pytest.mark.parametrize(
    "framing",
    [{"vlan_id": 100}, {"vlan_id": 0}, {"ethertype": 0x8847}, {"ethertype": 0x05FF}, {"ethertype": 0x0806}],
)
def test_the_l2_guard_comes_before_everything(framing: dict[str, int]) -> None:
    for packet in (
        pkt(E, TCP, ME4, "203.0.113.1", 40000, 443),
        pkt(I, UDP, "2001:db8::1", ME6, 40000, 53, ct=EST),
        pkt(E, UDP, "0.0.0.0", "255.255.255.255", 68, 67),  # DHCP would pass untagged
    ):
        assert evaluate(OPEN_BOTH, replace(packet, **framing)) == Verdict(False, "l2-guard")  # type: ignore[arg-type]


def test_fragments() -> None:
    closed = Scope(addresses=(net(ME4),), egress=(Rule("web", RuleAction.ALLOW, protocol=Protocol.TCP,
                   ports=(PortRange(443, 443),)),))  # fmt: skip
    first = replace(pkt(E, TCP, ME4, "203.0.113.1", 40000, 443), fragment=Fragment.FIRST)
    assert evaluate(closed, first) == Verdict(True, "web", 0)
    assert not evaluate(closed, replace(first, dst_port=22)).allowed
    later = replace(pkt(E, TCP, ME4, "203.0.113.1"), fragment=Fragment.LATER)
    assert evaluate(closed, later) == Verdict(True, "fragment")
    assert evaluate(closed, replace(later, ct_state=INV)) == Verdict(False, "invalid")
    assert evaluate(closed, replace(later, src_ip=ip("198.51.100.11"))) == Verdict(False, "anti-spoof")


def test_packet_framing_is_validated() -> None:
    base = pkt(E, TCP, ME4, "203.0.113.1", 40000, 443)
    with pytest.raises(ValueError, match="later fragment"):
        replace(base, fragment=Fragment.LATER)
    with pytest.raises(ValueError, match="vlan_id"):
        replace(base, vlan_id=4096)
    with pytest.raises(ValueError, match="ethertype"):
        replace(base, ethertype=0x86DD)
    with pytest.raises(ValueError, match="ethertype"):
        replace(base, ethertype=0x10000)
