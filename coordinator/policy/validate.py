"""Turn a NetworkScope (protobuf message or its proto3 JSON mapping) into a
validated :class:`~coordinator.policy.scope.Scope`, within the documented
size limits (rules, CIDRs, ports).

A bad policy is rejected as a whole with a :class:`PolicyError` naming the
first offending field as a path relative to the NetworkScope, e.g.
``egress[3].ports[0].start``, ``addresses[1]``, ``ingress[0].icmp_type``.
Fields are checked in a fixed order (all size limits first, then the fields
in declaration order), so the same input always yields the same error.

Rules accepted (anything else is an error):

* ``version``: any uint64.
* ``addresses``: at most :data:`MAX_ADDRESSES` IPv4/IPv6 host addresses
  (``192.0.2.7`` = ``/32``, ``2001:db8::7`` = ``/128``) or networks in
  prefix-length notation without host bits set.
* ``egress`` / ``ingress``: at most :data:`MAX_RULES_PER_DIRECTION` rules each,
  kept in order (the first matching rule names a verdict). A rule has

  - ``name``: 1..63 characters of ``[A-Za-z0-9._-]``, unique in its direction;
  - ``action``: ALLOW or DENY (UNSPECIFIED is an error: a rule must say);
  - ``cidrs``: at most :data:`MAX_CIDRS_PER_RULE` networks without host bits
    set (a bare address is a /32 or /128); empty means any address. At most
    :data:`MAX_TOTAL_CIDRS` over all rules of both directions;
  - ``protocol``: ANY, TCP, UDP, ICMP (IPv4 only: an IPv6 cidr is an error)
    or ICMPV6 (IPv6 only: an IPv4 cidr is an error);
  - ``ports``: only with TCP/UDP, at most :data:`MAX_PORT_RANGES_PER_RULE`;
    ``start`` 1..65535, ``end`` 0 (= start) or start..65535;
  - ``icmp_type`` / ``icmp_code``: 0..255, only with ICMP/ICMPV6, and a code
    only together with a type.
* ``egress_default`` / ``ingress_default``: UNSPECIFIED means DENY.
* ``dns_servers``: at most :data:`MAX_DNS_SERVERS` addresses (no prefix).
* ``egress_rate_limit``: absent or ``kbps == 0`` means no limit; otherwise
  ``kbps`` 1..:data:`MAX_RATE_KBPS` and ``burst_kb``
  0..:data:`MAX_BURST_KB` (0 = let the dataplane choose).

Addresses are written in plain notation only: no netmask forms
(``10.0.0.0/255.0.0.0``), no IPv6 zone ids (``fe80::1%eth0``) and no
IPv4-mapped IPv6 (``::ffff:192.0.2.1``), because each of those either hides
what is meant or can never match traffic the way it reads.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from google.protobuf import json_format

from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.policy.json_errors import PARSE_ERRORS, clean_parse_message, kind_of, locate_parse_error
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

#: Own addresses per sandbox (anti-spoofing set).
MAX_ADDRESSES: Final = 64
#: Rules in ``egress``, and separately in ``ingress``.
MAX_RULES_PER_DIRECTION: Final = 1024
#: CIDRs in one rule.
MAX_CIDRS_PER_RULE: Final = 256
#: Port ranges in one rule.
MAX_PORT_RANGES_PER_RULE: Final = 64
#: CIDRs summed over all rules of both directions; bounds the flow count.
MAX_TOTAL_CIDRS: Final = 8192
#: DNS servers the DNS toggle opens port 53 to.
MAX_DNS_SERVERS: Final = 4
#: Rule names: length limit, and the allowed characters (so that names are
#: safe in logs, flow cookies' side tables and metrics labels).
MAX_RULE_NAME_LEN: Final = 63
RULE_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,63}")
#: Egress rate limit bounds (100 Gbit/s; 10 GB burst).
MAX_RATE_KBPS: Final = 100_000_000
MAX_BURST_KB: Final = 10_000_000

# Validated rules remembered per encoding (see _rule_of_encoding): bounded
# in count, and only small encodings (a few networks and port ranges) are
# kept, so however many distinct rules a gateway streams, this holds at most
# some 20 MB of rules no policy uses any more, typically a few.
RULE_MEMO_SIZE: Final = 2048
RULE_MEMO_MAX_ENCODING: Final = 128

MIN_PORT: Final = 1
MAX_PORT: Final = 65535
MAX_ICMP_VALUE: Final = 255

# The field name used for errors about the NetworkScope as a whole.
ROOT_FIELD: Final = "network"


class PolicyError(ValueError):
    """A NetworkScope that cannot be accepted.

    ``field`` is a path relative to the NetworkScope (``egress[3].ports[0].start``;
    ``"network"`` for the message as a whole) and ``reason`` says what is wrong.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# --------------------------------------------------------------------------
# Entry points


def scope_from_proto(msg: policy_pb2.NetworkScope) -> Scope:
    """Validate a NetworkScope message; raise :class:`PolicyError` if it is bad."""
    # Sizes first, before parsing any string, so an oversized policy costs
    # little to reject whatever it contains. Only the rules of a policy with
    # no more rules than allowed are looked up (small ones validated, if not
    # remembered yet), which also tells the size check their counts.
    if len(msg.egress) > MAX_RULES_PER_DIRECTION or len(msg.ingress) > MAX_RULES_PER_DIRECTION:
        _check_sizes(msg, None)  # refuses it, at its first size over a limit
    known = (_known_rules(msg.egress), _known_rules(msg.ingress))
    _check_sizes(msg, known)
    addresses = tuple(_parse_network(text, f"addresses[{i}]") for i, text in enumerate(msg.addresses))
    egress = _parse_rules(msg.egress, known[0], "egress")
    ingress = _parse_rules(msg.ingress, known[1], "ingress")
    egress_default = _parse_default_action(msg.egress_default, "egress_default")
    ingress_default = _parse_default_action(msg.ingress_default, "ingress_default")
    dns_servers = tuple(_parse_address(text, f"dns_servers[{i}]") for i, text in enumerate(msg.dns_servers))
    rate_limit = _parse_rate_limit(msg)
    return Scope(
        version=msg.version,
        addresses=addresses,
        egress=egress,
        ingress=ingress,
        egress_default=egress_default,
        ingress_default=ingress_default,
        allow_dhcp=msg.allow_dhcp,
        dns_servers=dns_servers,
        egress_rate_limit=rate_limit,
    )


def scope_from_mapping(data: object) -> Scope:
    """Validate a NetworkScope in the canonical proto3 JSON mapping (a dict as
    loaded from JSON or YAML; proto or JSON field names, enum names or numbers).

    Parse errors are reported as :class:`PolicyError` with the path (in proto
    field names) of the offending entry.
    """
    if not isinstance(data, Mapping):
        raise PolicyError(ROOT_FIELD, f"expected a mapping (NetworkScope), got {kind_of(data)}")
    msg = policy_pb2.NetworkScope()
    try:
        json_format.ParseDict(dict(data), msg)
    except PARSE_ERRORS as exc:
        # json_format's messages locate the error only partly (no index inside
        # nested lists), so find the exact entry by parsing piece by piece.
        located = locate_parse_error(policy_pb2.NetworkScope(), data, "")
        if located is None:
            raise PolicyError(ROOT_FIELD, clean_parse_message(exc)) from exc
        raise PolicyError(located[0] or ROOT_FIELD, located[1]) from exc
    return scope_from_proto(msg)


def scope_to_proto(scope: Scope) -> policy_pb2.NetworkScope:
    """The NetworkScope message for a Scope. For a valid Scope ``s``,
    ``scope_from_proto(scope_to_proto(s)) == s``."""
    msg = policy_pb2.NetworkScope(
        version=scope.version,
        addresses=[str(net) for net in scope.addresses],
        egress=[rule_to_proto(rule) for rule in scope.egress],
        ingress=[rule_to_proto(rule) for rule in scope.ingress],
        egress_default=_ACTION_TO_PROTO[scope.egress_default],
        ingress_default=_ACTION_TO_PROTO[scope.ingress_default],
        allow_dhcp=scope.allow_dhcp,
        dns_servers=[str(addr) for addr in scope.dns_servers],
    )
    if scope.egress_rate_limit is not None:
        msg.egress_rate_limit.kbps = scope.egress_rate_limit.kbps
        msg.egress_rate_limit.burst_kb = scope.egress_rate_limit.burst_kb
    return msg


def scope_to_mapping(scope: Scope) -> dict[str, Any]:
    """The canonical proto3 JSON mapping of a Scope, with proto field names
    (the reference gateway's YAML file format)."""
    return json_format.MessageToDict(scope_to_proto(scope), preserving_proto_field_name=True)


# --------------------------------------------------------------------------
# Enum tables

_RULE_ACTIONS: Final[Mapping[int, RuleAction]] = {
    policy_pb2.ACTION_ALLOW: RuleAction.ALLOW,
    policy_pb2.ACTION_DENY: RuleAction.DENY,
}
_ACTION_TO_PROTO: Final[Mapping[RuleAction, policy_pb2.Action]] = {
    RuleAction.ALLOW: policy_pb2.ACTION_ALLOW,
    RuleAction.DENY: policy_pb2.ACTION_DENY,
}
_PROTOCOLS: Final[Mapping[int, Protocol]] = {
    policy_pb2.PROTOCOL_ANY: Protocol.ANY,
    policy_pb2.PROTOCOL_TCP: Protocol.TCP,
    policy_pb2.PROTOCOL_UDP: Protocol.UDP,
    policy_pb2.PROTOCOL_ICMP: Protocol.ICMP,
    policy_pb2.PROTOCOL_ICMPV6: Protocol.ICMPV6,
}
_PROTOCOL_TO_PROTO: Final[Mapping[Protocol, policy_pb2.Protocol]] = {
    Protocol.ANY: policy_pb2.PROTOCOL_ANY,
    Protocol.TCP: policy_pb2.PROTOCOL_TCP,
    Protocol.UDP: policy_pb2.PROTOCOL_UDP,
    Protocol.ICMP: policy_pb2.PROTOCOL_ICMP,
    Protocol.ICMPV6: policy_pb2.PROTOCOL_ICMPV6,
}


# --------------------------------------------------------------------------
# Sizes


def _check_count(count: int, limit: int, field: str, what: str) -> None:
    if count > limit:
        raise PolicyError(field, f"too many {what}: {count} (limit {limit})")


def _check_sizes(
    msg: policy_pb2.NetworkScope, known: tuple[list[Rule | None], list[Rule | None]] | None
) -> None:
    _check_count(len(msg.addresses), MAX_ADDRESSES, "addresses", "addresses")
    total_cidrs = 0
    for d, (direction, rules) in enumerate((("egress", msg.egress), ("ingress", msg.ingress))):
        _check_count(len(rules), MAX_RULES_PER_DIRECTION, direction, "rules")
        for i, rule in enumerate(known[d] if known is not None else [None] * len(rules)):
            # A known Rule has as many networks and port ranges as its message.
            if rule is not None:
                cidrs, ports = len(rule.cidrs), len(rule.ports)
            else:
                cidrs, ports = len(rules[i].cidrs), len(rules[i].ports)
            # A thousand rules fit: their paths are spelled out only for one that does not.
            if (
                cidrs > MAX_CIDRS_PER_RULE
                or ports > MAX_PORT_RANGES_PER_RULE
                or total_cidrs + cidrs > MAX_TOTAL_CIDRS
            ):
                _refuse_rule_size(f"{direction}[{i}]", cidrs, ports, total_cidrs)
            total_cidrs += cidrs
    _check_count(len(msg.dns_servers), MAX_DNS_SERVERS, "dns_servers", "DNS servers")


def _refuse_rule_size(path: str, cidrs: int, ports: int, total_cidrs: int) -> None:
    """The error of a rule over a size limit, the first limit it breaks in check order."""
    _check_count(cidrs, MAX_CIDRS_PER_RULE, f"{path}.cidrs", "CIDRs")
    _check_count(ports, MAX_PORT_RANGES_PER_RULE, f"{path}.ports", "port ranges")
    # Name the first CIDR past the limit.
    raise PolicyError(
        f"{path}.cidrs[{MAX_TOTAL_CIDRS - total_cidrs}]",
        f"too many CIDRs over all rules (limit {MAX_TOTAL_CIDRS})",
    )


# --------------------------------------------------------------------------
# Addresses

_PREFIX_LENGTH = re.compile(r"[0-9]{1,3}")


def _parse_ip(text: str, field: str, what: str) -> IPAddress:
    if "%" in text:
        raise PolicyError(field, f"{text!r}: zone ids are not allowed")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise PolicyError(field, f"{text!r} is not {what}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise PolicyError(field, f"{text!r} is an IPv4-mapped IPv6 address; write it as IPv4")
    return address


def _parse_network(text: str, field: str) -> IPNetwork:
    """A network in prefix-length notation, or a bare address as a host network."""
    address_text, slash, prefix_text = text.partition("/")
    address = _parse_ip(address_text, field, "an IP address or CIDR network")
    prefixlen: int
    if not slash:
        prefixlen = address.max_prefixlen
    elif _PREFIX_LENGTH.fullmatch(prefix_text) is None:
        raise PolicyError(field, f"{text!r}: the prefix length must be a number of bits")
    else:
        prefixlen = int(prefix_text)
        if prefixlen > address.max_prefixlen:
            raise PolicyError(
                field, f"{text!r}: prefix length /{prefixlen} is too long for IPv{address.version}"
            )
    network = ipaddress.ip_network((address, prefixlen), strict=False)
    if network.network_address != address:
        raise PolicyError(field, f"{text!r} has host bits set (the network is {network})")
    return network


def _parse_address(text: str, field: str) -> IPAddress:
    if "/" in text:
        raise PolicyError(field, f"{text!r}: expected an address, not a network")
    return _parse_ip(text, field, "an IP address")


# --------------------------------------------------------------------------
# Rules


def _known_rules(rules: Sequence[policy_pb2.Rule]) -> list[Rule | None]:
    """Each rule's Rule if it is known valid (a small encoding, remembered or
    validated now), else None (it is checked in full, with its path)."""
    known: list[Rule | None] = []
    for msg in rules:
        encoding = msg.SerializeToString()
        known.append(_valid_rule(encoding) if len(encoding) <= RULE_MEMO_MAX_ENCODING else None)
    return known


def _parse_rules(
    rules: Sequence[policy_pb2.Rule], known: Sequence[Rule | None], direction: str
) -> tuple[Rule, ...]:
    seen: dict[str, int] = {}
    parsed: list[Rule] = []
    for i, rule in enumerate(known):
        # A rule known valid skips to the one check that depends on the
        # others (its name's uniqueness); any other rule is checked here,
        # with its path, in the fixed order, so its error is always the same.
        name = rule.name if rule is not None else _parse_rule_name(rules[i].name, f"{direction}[{i}].name")
        if name in seen:
            raise PolicyError(
                f"{direction}[{i}].name", f"duplicate rule name {name!r} (also {direction}[{seen[name]}])"
            )
        seen[name] = i
        parsed.append(rule if rule is not None else _parse_rule(rules[i], f"{direction}[{i}]", name))
    return tuple(parsed)


def _rule_of_encoding(encoding: bytes) -> Rule | None:
    """The Rule an encoded rule message validates to, None if it does not.

    Whether a rule is valid, and what it means, depends on its own fields
    alone, never on its position or direction: so the Rules of small
    encodings are remembered (``_valid_rule``), and a policy change that
    touches one rule revalidates that one while the rest are looked up."""
    msg = policy_pb2.Rule.FromString(encoding)
    try:
        return _parse_rule(msg, "", _parse_rule_name(msg.name, ""))
    except PolicyError:
        return None


_valid_rule = functools.lru_cache(maxsize=RULE_MEMO_SIZE)(_rule_of_encoding)


def forget_validated_rules() -> None:
    """Forget every remembered rule (what a measurement of the cold cost needs)."""
    _valid_rule.cache_clear()


def _parse_rule_name(name: str, field: str) -> str:
    if not name:
        raise PolicyError(field, "a rule needs a name")
    if len(name) > MAX_RULE_NAME_LEN:
        raise PolicyError(field, f"name longer than {MAX_RULE_NAME_LEN} characters")
    if RULE_NAME_PATTERN.fullmatch(name) is None:
        raise PolicyError(field, f"{name!r}: only letters, digits, '.', '_' and '-' are allowed")
    return name


def _parse_rule(msg: policy_pb2.Rule, path: str, name: str) -> Rule:
    action = _RULE_ACTIONS.get(msg.action)
    if action is None:
        if msg.action == policy_pb2.ACTION_UNSPECIFIED:
            raise PolicyError(f"{path}.action", "a rule must say ACTION_ALLOW or ACTION_DENY")
        raise PolicyError(f"{path}.action", f"unknown action {msg.action}")
    protocol = _PROTOCOLS.get(msg.protocol)
    if protocol is None:
        raise PolicyError(f"{path}.protocol", f"unknown protocol {msg.protocol}")
    cidrs = tuple(_parse_rule_cidr(text, f"{path}.cidrs[{k}]", protocol) for k, text in enumerate(msg.cidrs))
    ports = _parse_ports(msg.ports, path, protocol)
    icmp_type, icmp_code = _parse_icmp(msg, path, protocol)
    return Rule(
        name=name,
        action=action,
        cidrs=cidrs,
        protocol=protocol,
        ports=ports,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
    )


def _parse_rule_cidr(text: str, field: str, protocol: Protocol) -> IPNetwork:
    network = _parse_network(text, field)
    # ICMP and ICMPv6 each exist in one family only; a cidr of the other
    # family could never match, which is surely not what was meant.
    if protocol is Protocol.ICMP and network.version == 6:
        raise PolicyError(field, f"IPv6 network {network} in an ICMP rule (ICMP is IPv4; use ICMPV6)")
    if protocol is Protocol.ICMPV6 and network.version == 4:
        raise PolicyError(field, f"IPv4 network {network} in an ICMPV6 rule (ICMPv6 is IPv6; use ICMP)")
    return network


def _parse_ports(
    ranges: Sequence[policy_pb2.PortRange], path: str, protocol: Protocol
) -> tuple[PortRange, ...]:
    if ranges and not protocol.has_ports:
        raise PolicyError(f"{path}.ports", f"port ranges need protocol TCP or UDP, not {protocol.name}")
    parsed: list[PortRange] = []
    for j, msg in enumerate(ranges):
        field = f"{path}.ports[{j}]"
        start = msg.start
        if not MIN_PORT <= start <= MAX_PORT:
            raise PolicyError(f"{field}.start", f"port {start} is outside {MIN_PORT}..{MAX_PORT}")
        end = msg.end if msg.end != 0 else start
        if end > MAX_PORT:
            raise PolicyError(f"{field}.end", f"port {end} is outside {MIN_PORT}..{MAX_PORT}")
        if end < start:
            raise PolicyError(f"{field}.end", f"end {end} is below start {start}")
        parsed.append(PortRange(start, end))
    return tuple(parsed)


def _parse_icmp(msg: policy_pb2.Rule, path: str, protocol: Protocol) -> tuple[int | None, int | None]:
    icmp_type = msg.icmp_type if msg.HasField("icmp_type") else None
    icmp_code = msg.icmp_code if msg.HasField("icmp_code") else None
    for name, value in (("icmp_type", icmp_type), ("icmp_code", icmp_code)):
        if value is None:
            continue
        if not protocol.is_icmp:
            raise PolicyError(f"{path}.{name}", f"{name} needs protocol ICMP or ICMPV6, not {protocol.name}")
        if value > MAX_ICMP_VALUE:
            raise PolicyError(f"{path}.{name}", f"{value} is outside 0..{MAX_ICMP_VALUE}")
    if icmp_code is not None and icmp_type is None:
        raise PolicyError(f"{path}.icmp_code", "icmp_code needs icmp_type")
    return icmp_type, icmp_code


def rule_to_proto(rule: Rule) -> policy_pb2.Rule:
    """The Rule message of a validated rule."""
    msg = policy_pb2.Rule(
        name=rule.name,
        action=_ACTION_TO_PROTO[rule.action],
        cidrs=[str(net) for net in rule.cidrs],
        protocol=_PROTOCOL_TO_PROTO[rule.protocol],
        ports=[policy_pb2.PortRange(start=r.start, end=r.end) for r in rule.ports],
    )
    if rule.icmp_type is not None:
        msg.icmp_type = rule.icmp_type
    if rule.icmp_code is not None:
        msg.icmp_code = rule.icmp_code
    return msg


# --------------------------------------------------------------------------
# Scope-wide settings


def _parse_default_action(value: int, field: str) -> RuleAction:
    if value == policy_pb2.ACTION_UNSPECIFIED:
        return RuleAction.DENY  # deny unless the policy says otherwise
    action = _RULE_ACTIONS.get(value)
    if action is None:
        raise PolicyError(field, f"unknown action {value}")
    return action


def _parse_rate_limit(msg: policy_pb2.NetworkScope) -> RateLimit | None:
    if not msg.HasField("egress_rate_limit"):
        return None
    limit = msg.egress_rate_limit
    if limit.burst_kb > MAX_BURST_KB:
        raise PolicyError("egress_rate_limit.burst_kb", f"{limit.burst_kb} is over {MAX_BURST_KB}")
    if limit.kbps == 0:
        return None
    if limit.kbps > MAX_RATE_KBPS:
        raise PolicyError("egress_rate_limit.kbps", f"{limit.kbps} is over {MAX_RATE_KBPS}")
    return RateLimit(kbps=limit.kbps, burst_kb=limit.burst_kb)
