"""The text of ``ovs-appctl dpctl/*`` conntrack commands: reading dumps and
zone limits, writing flush tuples. Pure; facts about the formats are in
:mod:`coordinator.ovs.conntrack`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from coordinator.attachment_identity import MAX_ZONE
from coordinator.policy.packet import IPPROTO_ICMP, IPPROTO_ICMPV6
from coordinator.policy.revocation import ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, ConnEntry
from coordinator.toplevel import split_top_level

__all__ = [
    "MAX_LIMIT",
    "MAX_ZONE",
    "PROTOCOL_NAMES",
    "ZoneLimit",
    "flush_tuple",
    "parse_dump",
    "parse_dump_lines",
    "parse_entry",
    "parse_limits",
    "userspace_flush_problem",
]


MAX_LIMIT: Final = 0xFFFFFFFF

#: Names ``ct_dpif_format_ipproto`` prints instead of the protocol number.
PROTOCOL_NAMES: Final = {
    "icmp": IPPROTO_ICMP,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "dccp": 33,
    "icmpv6": IPPROTO_ICMPV6,
    "sctp": 132,
    "udplite": 136,
}

#: ICMPv4 types OVS's userspace ``reverse_icmp_type()`` knows; any other type in a flush tuple
#: aborts ovs-vswitchd (OVS 3.1).
_USERSPACE_FLUSHABLE_ICMP_TYPES: Final = frozenset({0, 8, 13, 14, 15, 16})


def _key_values(text: str) -> dict[str, str]:
    """``a=1,b=(x=2,y=3)`` -> {"a": "1", "b": "(x=2,y=3)"}; a part without '=' is an error."""
    result: dict[str, str] = {}
    for part in split_top_level(text):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"not key=value: {part!r}")
        result[key.strip()] = value.strip()
    return result


def _group(value: str) -> dict[str, str]:
    if not (value.startswith("(") and value.endswith(")")):
        raise ValueError(f"expected a parenthesised group: {value!r}")
    inner = value[1:-1]
    return _key_values(inner) if inner else {}


def _int(value: str, low: int, high: int) -> int:
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{number} outside {low}..{high}")
    return number


def _protocol(token: str) -> int:
    token = token.strip()
    if token in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[token]
    if token.isdigit():
        return _int(token, 0, 255)
    raise ValueError(f"unknown protocol {token!r}")


def _state(protoinfo: dict[str, str]) -> str | None:
    if "state" in protoinfo:
        return protoinfo["state"]
    orig, reply = protoinfo.get("state_orig"), protoinfo.get("state_reply")  # -m output
    if orig is None or reply is None or orig == reply:
        return orig or reply
    return f"{orig}/{reply}"


def parse_entry(line: str) -> ConnEntry | None:
    """Parse one ``dpctl/dump-conntrack`` line (plain, ``-m`` or ``-s``); None if it is not one."""
    text = line.strip()
    if not text:
        return None
    try:
        proto_token, _, rest = text.partition(",")
        protocol = _protocol(proto_token)
        fields = _key_values(rest)
        orig = _group(fields["orig"])
        _group(fields["reply"])  # must be there and well-formed; the orig tuple says it all
        src = ipaddress.ip_address(orig["src"])
        dst = ipaddress.ip_address(orig["dst"])
        if src.version != dst.version:
            raise ValueError("mixed address families")
        sport = dport = 0
        icmp_type = icmp_code = icmp_id = None
        if protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            icmp_id = _int(orig["id"], 0, 0xFFFF)
            icmp_type = _int(orig["type"], 0, 255) if "type" in orig else None
            icmp_code = _int(orig["code"], 0, 255) if "code" in orig else None
        else:
            sport = _int(orig.get("sport", "0"), 0, 0xFFFF)
            dport = _int(orig.get("dport", "0"), 0, 0xFFFF)
        protoinfo = _group(fields["protoinfo"]) if "protoinfo" in fields else {}
        return ConnEntry(
            protocol=protocol,
            src=src,
            dst=dst,
            sport=sport,
            dport=dport,
            icmp_type=icmp_type,
            icmp_code=icmp_code,
            icmp_id=icmp_id,
            zone=_int(fields.get("zone", "0"), 0, MAX_ZONE),
            mark=_int(fields.get("mark", "0"), 0, MAX_LIMIT),
            labels=int(fields.get("labels", "0"), 16),
            state=_state(protoinfo),
            line=text,
        )
    except (KeyError, ValueError):
        return None


def parse_dump_lines(text: str) -> tuple[list[ConnEntry], list[str]]:
    """Entries of a ``dpctl/dump-conntrack`` output, plus the non-empty lines that were not entries."""
    entries: list[ConnEntry] = []
    skipped: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = parse_entry(line)
        if entry is None:
            skipped.append(line)
        else:
            entries.append(entry)
    return entries, skipped


def parse_dump(text: str) -> list[ConnEntry]:
    """Entries of a ``dpctl/dump-conntrack`` output; lines that are not entries are skipped."""
    return parse_dump_lines(text)[0]


def flush_tuple(entry: ConnEntry) -> str:
    """The ``dpctl/flush-conntrack`` tuple naming exactly ``entry`` (its original direction)."""
    if entry.version == 4:
        parts = [f"ct_nw_src={entry.src}", f"ct_nw_dst={entry.dst}"]
    else:
        parts = [f"ct_ipv6_src={entry.src}", f"ct_ipv6_dst={entry.dst}"]
    parts.append(f"ct_nw_proto={entry.protocol}")
    if entry.is_icmp:
        default_type = ICMP_ECHO_REQUEST if entry.protocol == IPPROTO_ICMP else ICMPV6_ECHO_REQUEST
        icmp_type = entry.icmp_type if entry.icmp_type is not None else default_type
        # Order matters to OVS: icmp_* are only accepted after ct_nw_proto.
        parts += [
            f"icmp_type={icmp_type}",
            f"icmp_code={entry.icmp_code or 0}",
            f"icmp_id={entry.icmp_id or 0}",
        ]
    else:
        parts += [f"ct_tp_src={entry.sport}", f"ct_tp_dst={entry.dport}"]
    return ",".join(parts)


def userspace_flush_problem(entry: ConnEntry) -> str | None:
    """Why flushing ``entry`` by tuple would abort OVS 3.1's userspace conntrack, or None if safe."""
    if entry.protocol == IPPROTO_ICMPV6:
        return "flushing an ICMPv6 entry by tuple aborts ovs-vswitchd (userspace conntrack, OVS 3.1)"
    if entry.protocol == IPPROTO_ICMP:
        icmp_type = entry.icmp_type if entry.icmp_type is not None else ICMP_ECHO_REQUEST
        if icmp_type not in _USERSPACE_FLUSHABLE_ICMP_TYPES:
            return (
                f"flushing an ICMP type {icmp_type} entry by tuple aborts ovs-vswitchd (userspace conntrack)"
            )
    return None


@dataclass(frozen=True)
class ZoneLimit:
    """A zone's connection limit (0 = unlimited) and how many connections count against it."""

    zone: int
    limit: int
    count: int


def parse_limits(text: str) -> tuple[int | None, dict[int, ZoneLimit]]:
    """Parse ``dpctl/ct-get-limits`` output: (default limit or None, zone -> ZoneLimit).

    Lines look like ``default limit=0`` and ``zone=7,limit=2,count=0``; others are skipped.
    """
    default: int | None = None
    zones: dict[int, ZoneLimit] = {}
    for raw in text.splitlines():
        line = raw.strip()
        try:
            if line.startswith("default limit="):
                default = _int(line.partition("=")[2], 0, MAX_LIMIT)
                continue
            if not line.startswith("zone="):
                continue
            fields = _key_values(line)
            zone = _int(fields["zone"], 0, MAX_ZONE)
            zones[zone] = ZoneLimit(
                zone=zone,
                limit=_int(fields["limit"], 0, MAX_LIMIT),
                count=_int(fields.get("count", "0"), 0, MAX_LIMIT),
            )
        except (KeyError, ValueError):
            continue
    return default, zones
