"""The policies the bench applies, as NetworkScopes and as OVN ACLs.

Rule ``i`` of an N-rule policy allows TCP to (egress) or from (ingress)
one /32 on one port; every rule is distinct, so each costs its own flows.
Addresses come only from the documentation ranges (198.51.100.0/24,
203.0.113.0/24); the only traffic with them is the scale case's SYNs from
the uplink (``bench/conntrack_load.py``).
"""

from __future__ import annotations

from typing import Any

from bench.ovn import PORT, Acl
from coordinator.policy.scope import Protocol, Rule, RuleAction, Scope
from coordinator.policy.validate import scope_from_mapping

GUEST_MAC = "02:bf:00:00:00:0a"
GUEST_V4 = "198.51.100.10"
FIRST_PORT = 1024

ALLOW_PRIORITY = 1000
DENY_PRIORITY = 2000
DEFAULT_PRIORITY = 1


def _rule(index: int, *, changed: bool = False) -> dict[str, Any]:
    # Half the rules egress, half ingress; the changed variant of a rule
    # differs only in its port, so a one-rule change is exactly that.
    port = FIRST_PORT + index + (30000 if changed else 0)
    return {
        "name": f"r{index}",
        "action": "ACTION_ALLOW",
        "protocol": "PROTOCOL_TCP",
        "cidrs": [f"203.0.113.{index % 256}/32"],
        "ports": [{"start": port}],
    }


def n_rule_mapping(rules: int, *, version: int = 1, changed: bool = False) -> dict[str, Any]:
    """``rules`` rules split over egress and ingress (proto3 JSON mapping, as
    the reference gateway's policy files hold it); ``changed`` alters rule 0 only."""
    return {
        "version": version,
        "addresses": [GUEST_V4],
        "egress": [_rule(i, changed=changed and i == 0) for i in range(0, rules, 2)],
        "ingress": [_rule(i) for i in range(1, rules, 2)],
    }


def n_rule_scope(rules: int, *, version: int = 1, changed: bool = False) -> Scope:
    return scope_from_mapping(n_rule_mapping(rules, version=version, changed=changed))


def empty_scope() -> Scope:
    """The same sandbox with no rules: what every policy's own flows are counted against."""
    return scope_from_mapping({"version": 1, "addresses": [GUEST_V4]})


def cross_product_scope(cidrs: int = 20, port_ranges: int = 10) -> Scope:
    """One egress rule: ``cidrs`` networks x ``port_ranges`` ranges (each needs several masks)."""
    rule = {
        "name": "cross",
        "action": "ACTION_ALLOW",
        "protocol": "PROTOCOL_TCP",
        "cidrs": [f"203.0.113.{4 * i}/30" for i in range(cidrs)],
        "ports": [{"start": 2000 + 100 * i + 1, "end": 2000 + 100 * i + 50} for i in range(port_ranges)],
    }
    return scope_from_mapping({"version": 1, "addresses": [GUEST_V4], "egress": [rule]})


# -- OVN -----------------------------------------------------------------------


def ovn_acls(scope: Scope) -> list[Acl]:
    """The scope's rules as OVN ACLs: allow-related per allow rule, drop per
    deny rule above them, default drop in both directions."""
    acls: list[Acl] = []
    for direction, rules, own, remote in (
        ("from-lport", scope.egress, f'inport == "{PORT}"', "dst"),
        ("to-lport", scope.ingress, f'outport == "{PORT}"', "src"),
    ):
        for rule in rules:
            for family in (4, 6):
                match = _acl_match(rule, family, own, remote)
                if match is None:
                    continue
                deny = rule.action is RuleAction.DENY
                acls.append(
                    Acl(
                        direction,
                        DENY_PRIORITY if deny else ALLOW_PRIORITY,
                        match,
                        "drop" if deny else "allow-related",
                    )
                )
        acls.append(Acl(direction, DEFAULT_PRIORITY, f"{own} && ip", "drop"))
    return acls


def _acl_match(rule: Rule, family: int, own: str, remote: str) -> str | None:
    ip = f"ip{family}"
    terms = [own, ip]
    if rule.cidrs:
        nets = [str(n) for n in rule.cidrs if n.version == family]
        if not nets:
            return None
        terms.append(f"{ip}.{remote} == {{{', '.join(nets)}}}")
    if rule.protocol.has_ports:
        proto = rule.protocol.value
        terms.append(proto)
        if rule.ports:
            ranges = [
                f"{proto}.dst == {p.start}" if p.start == p.end else f"{p.start} <= {proto}.dst <= {p.end}"
                for p in rule.ports
            ]
            terms.append(f"({' || '.join(ranges)})")
    elif rule.protocol.is_icmp:
        icmp = "icmp4" if rule.protocol is Protocol.ICMP else "icmp6"
        if (family == 4) != (rule.protocol is Protocol.ICMP):
            return None
        terms.append(icmp)
        if rule.icmp_type is not None:
            terms.append(f"{icmp}.type == {rule.icmp_type}")
        if rule.icmp_code is not None:
            terms.append(f"{icmp}.code == {rule.icmp_code}")
    return " && ".join(terms)
