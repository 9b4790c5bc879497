"""The validated, immutable form of a NetworkScope: the sandbox's own
addresses, egress and ingress rules, defaults, DHCP/DNS toggles and rate
limit, as the gateway's policy stream carries it.

Everything downstream of validation (compiler, evaluator, store) works on
these types, never on protobuf messages, so a policy that got this far is
known to be well-formed.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RuleAction(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class Protocol(enum.Enum):
    ANY = "any"
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"

    @property
    def has_ports(self) -> bool:
        return self in (Protocol.TCP, Protocol.UDP)

    @property
    def is_icmp(self) -> bool:
        return self in (Protocol.ICMP, Protocol.ICMPV6)


@dataclass(frozen=True, order=True)
class PortRange:
    """Inclusive range of L4 ports, 1 <= start <= end <= 65535."""

    start: int
    end: int


@dataclass(frozen=True)
class Rule:
    """One egress or ingress rule. Empty ``cidrs`` means any address; empty
    ``ports`` means any port. ``icmp_type``/``icmp_code`` only for ICMP."""

    name: str
    action: RuleAction
    cidrs: tuple[IPNetwork, ...] = ()
    protocol: Protocol = Protocol.ANY
    ports: tuple[PortRange, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None

    def __hash__(self) -> int:
        # Rules key the compiler's and the codec's caches, a thousand to a
        # policy and looked up on every change: the hash of the fields
        # (Python-level for networks and port ranges) is worked out once.
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            fields = (
                self.name,
                self.action,
                self.cidrs,
                self.protocol,
                self.ports,
                self.icmp_type,
                self.icmp_code,
            )
            cached = hash(fields)
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, object]:
        # The remembered hash is this process's own (string hashes are salted per process).
        return {key: value for key, value in self.__dict__.items() if key != "_hash"}


@dataclass(frozen=True)
class RateLimit:
    kbps: int
    burst_kb: int


@dataclass(frozen=True)
class Scope:
    """A sandbox's L2/L3/L4 policy. Defaults deny in both directions."""

    version: int = 0
    addresses: tuple[IPNetwork, ...] = ()
    egress: tuple[Rule, ...] = ()
    ingress: tuple[Rule, ...] = ()
    egress_default: RuleAction = RuleAction.DENY
    ingress_default: RuleAction = RuleAction.DENY
    allow_dhcp: bool = False
    dns_servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    egress_rate_limit: RateLimit | None = field(default=None)
