"""NetworkScope validation: accepted policies, every rejection path (with the
exact field path), limits, and round trips."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.policy.scope import PortRange, Protocol, RateLimit, Rule, RuleAction, Scope
from coordinator.policy.validate import (
    MAX_ADDRESSES,
    MAX_BURST_KB,
    MAX_CIDRS_PER_RULE,
    MAX_DNS_SERVERS,
    MAX_PORT_RANGES_PER_RULE,
    MAX_RATE_KBPS,
    MAX_RULES_PER_DIRECTION,
    MAX_TOTAL_CIDRS,
    PolicyError,
    scope_from_mapping,
    scope_from_proto,
    scope_to_mapping,
    scope_to_proto,
)
from tests.unit.policy.strategies import scopes

net = ipaddress.ip_network
addr = ipaddress.ip_address


def allow(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "action": "ACTION_ALLOW", **fields}


def deny(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "action": "ACTION_DENY", **fields}


GOOD: dict[str, Any] = {
    "version": "42",
    "addresses": ["198.51.100.10", "2001:db8::10", "198.51.100.64/26"],
    "egress": [
        deny("no-metadata", cidrs=["169.254.169.254/32"]),
        allow(
            "web",
            cidrs=["203.0.113.0/24", "2001:db8:1::/48"],
            protocol="PROTOCOL_TCP",
            ports=[{"start": 80}, {"start": 443, "end": 443}, {"start": 8000, "end": 8099}],
        ),
        allow("ping", protocol="PROTOCOL_ICMP", icmp_type=8, icmp_code=0),
        allow("ping6", protocol="PROTOCOL_ICMPV6", cidrs=["2001:db8::/32"], icmp_type=128),
        allow("ntp", protocol="PROTOCOL_UDP", ports=[{"start": 123}]),
    ],
    "ingress": [
        allow("ssh", cidrs=["198.51.100.0/24"], protocol="PROTOCOL_TCP", ports=[{"start": 22}]),
        allow("any-icmp", protocol="PROTOCOL_ICMP"),
    ],
    "egress_default": "ACTION_DENY",
    "ingress_default": "ACTION_UNSPECIFIED",
    "allow_dhcp": True,
    "dns_servers": ["198.51.100.1", "2001:db8::53"],
    "egress_rate_limit": {"kbps": 100000, "burst_kb": 0},
}

EXPECTED = Scope(
    version=42,
    addresses=(net("198.51.100.10/32"), net("2001:db8::10/128"), net("198.51.100.64/26")),
    egress=(
        Rule("no-metadata", RuleAction.DENY, cidrs=(net("169.254.169.254/32"),)),
        Rule(
            "web",
            RuleAction.ALLOW,
            cidrs=(net("203.0.113.0/24"), net("2001:db8:1::/48")),
            protocol=Protocol.TCP,
            ports=(PortRange(80, 80), PortRange(443, 443), PortRange(8000, 8099)),
        ),
        Rule("ping", RuleAction.ALLOW, protocol=Protocol.ICMP, icmp_type=8, icmp_code=0),
        Rule(
            "ping6", RuleAction.ALLOW, cidrs=(net("2001:db8::/32"),), protocol=Protocol.ICMPV6, icmp_type=128
        ),
        Rule("ntp", RuleAction.ALLOW, protocol=Protocol.UDP, ports=(PortRange(123, 123),)),
    ),
    ingress=(
        Rule(
            "ssh",
            RuleAction.ALLOW,
            cidrs=(net("198.51.100.0/24"),),
            protocol=Protocol.TCP,
            ports=(PortRange(22, 22),),
        ),
        Rule("any-icmp", RuleAction.ALLOW, protocol=Protocol.ICMP),
    ),
    egress_default=RuleAction.DENY,
    ingress_default=RuleAction.DENY,
    allow_dhcp=True,
    dns_servers=(addr("198.51.100.1"), addr("2001:db8::53")),
    egress_rate_limit=RateLimit(kbps=100000, burst_kb=0),
)


def good() -> dict[str, Any]:
    return copy.deepcopy(GOOD)


# --------------------------------------------------------------------------
# Accepted policies


def test_good_policy_from_mapping() -> None:
    assert scope_from_mapping(good()) == EXPECTED


def test_good_policy_from_proto() -> None:
    msg = policy_pb2.NetworkScope(
        version=42,
        addresses=["198.51.100.10", "2001:db8::10", "198.51.100.64/26"],
        egress=[
            policy_pb2.Rule(name="no-metadata", action=policy_pb2.ACTION_DENY, cidrs=["169.254.169.254/32"]),
            policy_pb2.Rule(
                name="web",
                action=policy_pb2.ACTION_ALLOW,
                cidrs=["203.0.113.0/24", "2001:db8:1::/48"],
                protocol=policy_pb2.PROTOCOL_TCP,
                ports=[
                    policy_pb2.PortRange(start=80),
                    policy_pb2.PortRange(start=443, end=443),
                    policy_pb2.PortRange(start=8000, end=8099),
                ],
            ),
            policy_pb2.Rule(
                name="ping",
                action=policy_pb2.ACTION_ALLOW,
                protocol=policy_pb2.PROTOCOL_ICMP,
                icmp_type=8,
                icmp_code=0,
            ),
            policy_pb2.Rule(
                name="ping6",
                action=policy_pb2.ACTION_ALLOW,
                protocol=policy_pb2.PROTOCOL_ICMPV6,
                cidrs=["2001:db8::/32"],
                icmp_type=128,
            ),
            policy_pb2.Rule(
                name="ntp",
                action=policy_pb2.ACTION_ALLOW,
                protocol=policy_pb2.PROTOCOL_UDP,
                ports=[policy_pb2.PortRange(start=123)],
            ),
        ],
        ingress=[
            policy_pb2.Rule(
                name="ssh",
                action=policy_pb2.ACTION_ALLOW,
                cidrs=["198.51.100.0/24"],
                protocol=policy_pb2.PROTOCOL_TCP,
                ports=[policy_pb2.PortRange(start=22)],
            ),
            policy_pb2.Rule(
                name="any-icmp", action=policy_pb2.ACTION_ALLOW, protocol=policy_pb2.PROTOCOL_ICMP
            ),
        ],
        egress_default=policy_pb2.ACTION_DENY,
        allow_dhcp=True,
        dns_servers=["198.51.100.1", "2001:db8::53"],
        egress_rate_limit=policy_pb2.RateLimit(kbps=100000),
    )
    assert scope_from_proto(msg) == EXPECTED


def test_json_field_names_and_enum_numbers_are_accepted() -> None:
    data = {
        "addresses": ["198.51.100.10"],
        "egress": [{"name": "a", "action": 1, "protocol": "PROTOCOL_TCP", "ports": [{"start": 80}]}],
        "egressDefault": "ACTION_ALLOW",
        "ingressDefault": 2,
        "allowDhcp": True,
        "dnsServers": ["198.51.100.1"],
        "egressRateLimit": {"kbps": 10, "burstKb": 5},
    }
    scope = scope_from_mapping(data)
    assert scope.egress == (Rule("a", RuleAction.ALLOW, protocol=Protocol.TCP, ports=(PortRange(80, 80),)),)
    assert scope.egress_default is RuleAction.ALLOW
    assert scope.ingress_default is RuleAction.DENY
    assert scope.allow_dhcp
    assert scope.egress_rate_limit == RateLimit(10, 5)


def test_empty_policy_is_all_defaults() -> None:
    assert scope_from_mapping({}) == Scope()
    assert scope_from_proto(policy_pb2.NetworkScope()) == Scope()


@pytest.mark.parametrize("text", ["0", "18446744073709551615"])
def test_version_is_any_uint64(text: str) -> None:
    assert scope_from_mapping({"version": text}).version == int(text)


def test_default_actions() -> None:
    assert scope_from_mapping({}).egress_default is RuleAction.DENY
    scope = scope_from_mapping({"egress_default": "ACTION_ALLOW", "ingress_default": "ACTION_ALLOW"})
    assert (scope.egress_default, scope.ingress_default) == (RuleAction.ALLOW, RuleAction.ALLOW)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, None),
        ({}, None),
        ({"kbps": 0, "burst_kb": 100}, None),
        ({"kbps": 1}, RateLimit(1, 0)),
        ({"kbps": MAX_RATE_KBPS, "burst_kb": MAX_BURST_KB}, RateLimit(MAX_RATE_KBPS, MAX_BURST_KB)),
    ],
)
def test_rate_limit(limit: dict[str, int] | None, expected: RateLimit | None) -> None:
    data = {} if limit is None else {"egress_rate_limit": limit}
    assert scope_from_mapping(data).egress_rate_limit == expected


def test_bare_addresses_are_host_networks() -> None:
    scope = scope_from_mapping(
        {"addresses": ["198.51.100.7", "2001:db8::7"], "egress": [allow("a", cidrs=["203.0.113.9"])]}
    )
    assert scope.addresses == (net("198.51.100.7/32"), net("2001:db8::7/128"))
    assert scope.egress[0].cidrs == (net("203.0.113.9/32"),)


def test_port_end_zero_means_start() -> None:
    scope = scope_from_mapping(
        {"egress": [allow("a", protocol="PROTOCOL_UDP", ports=[{"start": 5}, {"start": 6, "end": 0}])]}
    )
    assert scope.egress[0].ports == (PortRange(5, 5), PortRange(6, 6))


def test_order_is_preserved() -> None:
    names = [f"r{i}" for i in (5, 1, 9, 0, 3)]
    cidrs = ["203.0.113.128/25", "198.51.100.0/24", "203.0.113.0/25"]
    scope = scope_from_mapping({"egress": [allow(n, cidrs=cidrs) for n in names], "ingress": [deny("r5")]})
    assert [r.name for r in scope.egress] == names
    assert [str(c) for c in scope.egress[0].cidrs] == cidrs
    # Names need only be unique within a direction.
    assert scope.ingress[0].name == "r5"


def test_empty_cidrs_and_ports_mean_any() -> None:
    scope = scope_from_mapping({"egress": [allow("a", protocol="PROTOCOL_TCP")]})
    assert scope.egress[0].cidrs == ()
    assert scope.egress[0].ports == ()


@pytest.mark.parametrize("name", ["a", "A-z_0.9", "x" * 63, "dns", "default"])
def test_rule_names_accepted(name: str) -> None:
    assert scope_from_mapping({"egress": [allow(name)]}).egress[0].name == name


@pytest.mark.parametrize(("icmp_type", "icmp_code"), [(0, None), (255, 255), (3, 0)])
def test_icmp_type_and_code_bounds(icmp_type: int, icmp_code: int | None) -> None:
    rule = allow("a", protocol="PROTOCOL_ICMP", icmp_type=icmp_type)
    if icmp_code is not None:
        rule["icmp_code"] = icmp_code
    parsed = scope_from_mapping({"egress": [rule]}).egress[0]
    assert (parsed.icmp_type, parsed.icmp_code) == (icmp_type, icmp_code)


# --------------------------------------------------------------------------
# Rejections: each names the exact field


def _ports_rule(*ranges: dict[str, Any], protocol: str = "PROTOCOL_TCP") -> dict[str, Any]:
    return allow("p", protocol=protocol, ports=list(ranges))


REJECTIONS: list[tuple[str, dict[Any, Any], str, str]] = [
    # addresses
    ("address-garbage", {"addresses": ["198.51.100.1", "bogus"]}, "addresses[1]", "not an IP address"),
    ("address-host-bits", {"addresses": ["198.51.100.1/24"]}, "addresses[0]", "host bits set"),
    ("address-v6-host-bits", {"addresses": ["2001:db8::1/64"]}, "addresses[0]", "host bits set"),
    ("address-netmask-form", {"addresses": ["198.51.100.0/255.255.255.0"]}, "addresses[0]", "prefix length"),
    ("address-prefix-too-long", {"addresses": ["198.51.100.0/33"]}, "addresses[0]", "too long"),
    ("address-empty", {"addresses": [""]}, "addresses[0]", "not an IP address"),
    ("address-zone", {"addresses": ["fe80::1%eth0"]}, "addresses[0]", "zone"),
    ("address-mapped", {"addresses": ["::ffff:198.51.100.1"]}, "addresses[0]", "IPv4-mapped"),
    ("address-space", {"addresses": [" 198.51.100.1"]}, "addresses[0]", "not an IP address"),
    # rule names
    ("name-missing", {"egress": [allow("a"), {"action": "ACTION_ALLOW"}]}, "egress[1].name", "needs a name"),
    ("name-too-long", {"ingress": [allow("x" * 64)]}, "ingress[0].name", "longer than 63"),
    ("name-bad-char", {"egress": [allow("a b")]}, "egress[0].name", "only letters"),
    ("name-unicode", {"egress": [allow("é")]}, "egress[0].name", "only letters"),
    ("name-duplicate", {"egress": [allow("a"), deny("b"), deny("a")]}, "egress[2].name", "duplicate"),
    # actions
    ("action-missing", {"egress": [{"name": "a"}]}, "egress[0].action", "must say"),
    (
        "action-unspecified",
        {"ingress": [{"name": "a", "action": "ACTION_UNSPECIFIED"}]},
        "ingress[0].action",
        "must say",
    ),
    ("action-unknown-number", {"egress": [{"name": "a", "action": 7}]}, "egress[0].action", "unknown action"),
    (
        "action-unknown-name",
        {"egress": [{"name": "a", "action": "ALLOW"}]},
        "egress[0].action",
        "ACTION_ALLOW",
    ),
    ("default-unknown", {"ingress_default": 9}, "ingress_default", "unknown action"),
    ("default-bad-name", {"egress_default": "DENY"}, "egress_default", "invalid value"),
    # protocol
    ("protocol-unknown", {"egress": [allow("a", protocol=9)]}, "egress[0].protocol", "unknown protocol"),
    ("protocol-bad-name", {"egress": [allow("a", protocol="tcp")]}, "egress[0].protocol", "PROTOCOL_TCP"),
    # cidrs
    (
        "cidr-host-bits",
        {"egress": [allow("a"), allow("b"), allow("c", cidrs=["203.0.113.0/24", "10.0.0.1/8"])]},
        "egress[2].cidrs[1]",
        "host bits set",
    ),
    (
        "cidr-garbage",
        {"ingress": [allow("a", cidrs=["203.0.113.0/24x"])]},
        "ingress[0].cidrs[0]",
        "prefix length",
    ),
    (
        "cidr-v6-in-icmp",
        {"egress": [allow("a", protocol="PROTOCOL_ICMP", cidrs=["203.0.113.0/24", "2001:db8::/32"])]},
        "egress[0].cidrs[1]",
        "IPv6",
    ),
    (
        "cidr-v4-in-icmpv6",
        {"ingress": [allow("a", protocol="PROTOCOL_ICMPV6", cidrs=["203.0.113.0/24"])]},
        "ingress[0].cidrs[0]",
        "IPv4",
    ),
    # ports
    ("ports-with-any", {"egress": [allow("a", ports=[{"start": 80}])]}, "egress[0].ports", "TCP or UDP"),
    (
        "ports-with-icmp",
        {"egress": [allow("a", protocol="PROTOCOL_ICMP", ports=[{"start": 80}])]},
        "egress[0].ports",
        "TCP or UDP",
    ),
    (
        "port-start-zero",
        {"egress": [allow("x"), _ports_rule({"start": 80}, {"start": 0, "end": 10})]},
        "egress[1].ports[1].start",
        "outside 1..65535",
    ),
    ("port-start-missing", {"egress": [_ports_rule({"end": 10})]}, "egress[0].ports[0].start", "outside"),
    (
        "port-start-too-big",
        {"egress": [_ports_rule({"start": 65536})]},
        "egress[0].ports[0].start",
        "outside",
    ),
    (
        "port-end-too-big",
        {"ingress": [_ports_rule({"start": 1, "end": 65536}, protocol="PROTOCOL_UDP")]},
        "ingress[0].ports[0].end",
        "outside",
    ),
    (
        "port-end-below-start",
        {"egress": [_ports_rule({"start": 90, "end": 80})]},
        "egress[0].ports[0].end",
        "below",
    ),
    (
        "port-not-a-number",
        {"egress": [_ports_rule({"start": 80}, {"start": "http"})]},
        "egress[0].ports[1].start",
        "http",
    ),
    ("port-negative", {"egress": [_ports_rule({"start": -1})]}, "egress[0].ports[0].start", "out of range"),
    # icmp
    (
        "icmp-type-with-tcp",
        {"egress": [allow("a", protocol="PROTOCOL_TCP", icmp_type=8)]},
        "egress[0].icmp_type",
        "ICMP",
    ),
    ("icmp-code-with-any", {"egress": [allow("a", icmp_code=0)]}, "egress[0].icmp_code", "ICMP"),
    (
        "icmp-code-without-type",
        {"ingress": [allow("a", protocol="PROTOCOL_ICMPV6", icmp_code=0)]},
        "ingress[0].icmp_code",
        "needs icmp_type",
    ),
    (
        "icmp-type-too-big",
        {"egress": [allow("a", protocol="PROTOCOL_ICMP", icmp_type=256)]},
        "egress[0].icmp_type",
        "0..255",
    ),
    (
        "icmp-code-too-big",
        {"egress": [allow("a", protocol="PROTOCOL_ICMP", icmp_type=3, icmp_code=256)]},
        "egress[0].icmp_code",
        "0..255",
    ),
    # dns servers
    ("dns-network", {"dns_servers": ["198.51.100.1", "198.51.100.0/24"]}, "dns_servers[1]", "not a network"),
    ("dns-garbage", {"dns_servers": ["dns.example"]}, "dns_servers[0]", "not an IP address"),
    # rate limit
    ("rate-too-high", {"egress_rate_limit": {"kbps": MAX_RATE_KBPS + 1}}, "egress_rate_limit.kbps", "over"),
    (
        "burst-too-high",
        {"egress_rate_limit": {"kbps": 1, "burst_kb": MAX_BURST_KB + 1}},
        "egress_rate_limit.burst_kb",
        "over",
    ),
    ("rate-not-integer", {"egress_rate_limit": {"kbps": 1.5}}, "egress_rate_limit.kbps", "integer"),
    # shapes the JSON mapping rejects
    ("unknown-top-field", {"addresses": [], "bogus": 1}, "bogus", "unknown field"),
    (
        "unknown-rule-field",
        {"egress": [allow("a"), allow("b", cidr=["203.0.113.0/24"])]},
        "egress[1].cidr",
        "unknown field",
    ),
    (
        "unknown-port-field",
        {"egress": [_ports_rule({"begin": 1})]},
        "egress[0].ports[0].begin",
        "unknown field",
    ),
    ("addresses-not-list", {"addresses": "198.51.100.1"}, "addresses", "expected a list"),
    ("address-not-string", {"addresses": ["198.51.100.1", 5]}, "addresses[1]", "string"),
    ("egress-not-list", {"egress": allow("a")}, "egress", "expected a list"),
    ("rule-not-mapping", {"ingress": [allow("a"), "allow all"]}, "ingress[1]", "expected a mapping"),
    ("rule-null", {"egress": [None]}, "egress[0]", "null"),
    ("version-negative", {"version": -1}, "version", "out of range"),
    ("version-too-big", {"version": 2**64}, "version", "out of range"),
    ("dhcp-not-bool", {"allow_dhcp": "yes"}, "allow_dhcp", "true or false"),
    ("rate-limit-not-mapping", {"egress_rate_limit": 5}, "egress_rate_limit", "expected a mapping"),
    ("non-string-key", {1: 2}, "1", "unknown field"),
]


@pytest.mark.parametrize(
    ("data", "field", "reason"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_rejections_name_the_field(data: dict[Any, Any], field: str, reason: str) -> None:
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping(data)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value) == f"{field}: {caught.value.reason}"


@pytest.mark.parametrize("data", [None, [], "egress: []", 5])
def test_non_mapping_is_rejected(data: object) -> None:
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping(data)
    assert caught.value.field == "network"


def test_proto_with_unknown_enum_values_is_rejected() -> None:
    msg = policy_pb2.NetworkScope(egress=[policy_pb2.Rule(name="a", action=policy_pb2.ACTION_ALLOW)])
    msg.egress[0].protocol = 17  # type: ignore[assignment]  # open enum: any int reaches us on the wire
    with pytest.raises(PolicyError) as caught:
        scope_from_proto(msg)
    assert caught.value.field == "egress[0].protocol"


def test_policy_error_is_a_value_error() -> None:
    err = PolicyError("egress[3].ports[0].start", "port 0 is outside 1..65535")
    assert isinstance(err, ValueError)
    assert str(err) == "egress[3].ports[0].start: port 0 is outside 1..65535"
    assert (err.field, err.reason) == ("egress[3].ports[0].start", "port 0 is outside 1..65535")


def test_first_error_in_field_order_is_reported() -> None:
    data = {
        "addresses": ["198.51.100.1", "bad"],
        "egress": [allow("a", cidrs=["bad"])],
        "dns_servers": ["bad"],
    }
    for _ in range(3):
        with pytest.raises(PolicyError) as caught:
            scope_from_mapping(data)
        assert caught.value.field == "addresses[1]"


# --------------------------------------------------------------------------
# Limits: the limit itself is fine, one more is rejected


def _v4(i: int, prefix: int = 32) -> str:
    return str(ipaddress.IPv4Network((0x0A000000 + (i << (32 - prefix)), prefix)))


def test_address_limit() -> None:
    addresses = [_v4(i) for i in range(MAX_ADDRESSES)]
    assert len(scope_from_mapping({"addresses": addresses}).addresses) == MAX_ADDRESSES
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping({"addresses": [*addresses, _v4(MAX_ADDRESSES)]})
    assert caught.value.field == "addresses"
    assert "too many addresses" in caught.value.reason


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_rule_limit(direction: str) -> None:
    rules = [allow(f"r{i}") for i in range(MAX_RULES_PER_DIRECTION)]
    assert len(getattr(scope_from_mapping({direction: rules}), direction)) == MAX_RULES_PER_DIRECTION
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping({direction: [*rules, allow("one-more")]})
    assert caught.value.field == direction


def test_cidrs_per_rule_limit() -> None:
    cidrs = [_v4(i) for i in range(MAX_CIDRS_PER_RULE)]
    assert (
        len(scope_from_mapping({"egress": [allow("a", cidrs=cidrs)]}).egress[0].cidrs) == MAX_CIDRS_PER_RULE
    )
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping({"egress": [allow("a"), allow("b", cidrs=[*cidrs, _v4(MAX_CIDRS_PER_RULE)])]})
    assert caught.value.field == "egress[1].cidrs"


def test_port_ranges_per_rule_limit() -> None:
    ports = [{"start": 10 * i + 1} for i in range(MAX_PORT_RANGES_PER_RULE)]
    scope = scope_from_mapping({"ingress": [_ports_rule(*ports)]})
    assert len(scope.ingress[0].ports) == MAX_PORT_RANGES_PER_RULE
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping({"ingress": [_ports_rule(*ports, {"start": 9999})]})
    assert caught.value.field == "ingress[0].ports"


def test_total_cidr_limit_over_both_directions() -> None:
    per_rule = MAX_CIDRS_PER_RULE
    rules_needed = MAX_TOTAL_CIDRS // per_rule
    half = rules_needed // 2

    def rules(first: int, count: int) -> list[dict[str, Any]]:
        return [
            allow(f"r{first + r}", cidrs=[_v4((first + r) * per_rule + i) for i in range(per_rule)])
            for r in range(count)
        ]

    data: dict[str, Any] = {"egress": rules(0, half), "ingress": rules(half, rules_needed - half)}
    scope = scope_from_mapping(data)
    assert sum(len(r.cidrs) for r in scope.egress + scope.ingress) == MAX_TOTAL_CIDRS
    data["ingress"].append(allow("extra", cidrs=["203.0.113.0/24", "198.51.100.0/24"]))
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping(data)
    assert caught.value.field == f"ingress[{rules_needed - half}].cidrs[0]"
    assert "over all rules" in caught.value.reason


def test_dns_server_limit() -> None:
    servers = [_v4(i).removesuffix("/32") for i in range(MAX_DNS_SERVERS)]
    assert len(scope_from_mapping({"dns_servers": servers}).dns_servers) == MAX_DNS_SERVERS
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping({"dns_servers": [*servers, "198.51.100.53"]})
    assert caught.value.field == "dns_servers"


def test_limits_are_checked_before_contents() -> None:
    # An oversized list is rejected for its size even though its first entry is also bad.
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping({"addresses": ["bad"] * (MAX_ADDRESSES + 1)})
    assert caught.value.field == "addresses"


# --------------------------------------------------------------------------
# Round trips and robustness


def test_round_trip_of_the_good_policy() -> None:
    assert scope_from_proto(scope_to_proto(EXPECTED)) == EXPECTED
    assert scope_from_mapping(scope_to_mapping(EXPECTED)) == EXPECTED


def test_mapping_form_uses_proto_names() -> None:
    data = scope_to_mapping(EXPECTED)
    assert data["egress_default"] == "ACTION_DENY"
    assert data["egress"][1]["ports"][0] == {"start": 80, "end": 80}
    assert data["egress_rate_limit"] == {"kbps": 100000}


@settings(max_examples=200)
@given(scopes())
def test_generated_scopes_round_trip(scope: Scope) -> None:
    assert scope_from_proto(scope_to_proto(scope)) == scope
    assert scope_from_mapping(scope_to_mapping(scope)) == scope
    # Through the wire format too.
    wire = scope_to_proto(scope).SerializeToString()
    assert scope_from_proto(policy_pb2.NetworkScope.FromString(wire)) == scope


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "version",
        "addresses",
        "egress",
        "ingress",
        "egress_default",
        "allowDhcp",
        "dns_servers",
        "egress_rate_limit",
        "name",
        "action",
        "cidrs",
        "protocol",
        "ports",
        "start",
        "end",
        "icmp_type",
        "kbps",
    ]
)
_shaped = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.sampled_from(["ACTION_ALLOW", "PROTOCOL_TCP", "1.2.3.4"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=16,
)


@settings(max_examples=300)
@given(st.one_of(_json, st.dictionaries(_keys, _shaped, max_size=5)))
def test_arbitrary_input_gives_a_scope_or_a_policy_error(data: object) -> None:
    try:
        scope = scope_from_mapping(data)
    except PolicyError as err:
        assert isinstance(err.field, str)
        assert err.reason
    else:
        assert isinstance(scope, Scope)
