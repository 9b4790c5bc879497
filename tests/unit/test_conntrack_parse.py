"""coordinator.ovs.conntrack without a switch: the dump parser on lines captured from OVS 3.1.0
(userspace datapath), the pure ``revoked`` decision, flush tuples, limits output, and the
ovs-appctl wrapper against a fake ``ovs-appctl`` on PATH."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.ovs.conntrack import (
    ConnEntry,
    ConntrackControl,
    ConntrackError,
    ConntrackUnsupportedError,
    ZoneLimit,
    connection_direction,
    connection_packet,
    flush_tuple,
    parse_dump,
    parse_dump_lines,
    parse_entry,
    parse_limits,
    revoked,
    userspace_flush_problem,
)
from coordinator.policy.packet import CtState, Direction
from coordinator.policy.scope import PortRange, Protocol, Rule, RuleAction, Scope
from tests.fake_unixctl import FakeControlSocket

ip = ipaddress.ip_address
net = ipaddress.ip_network

# --------------------------------------------------------------------------- captured samples
# `ovs-appctl dpctl/dump-conntrack zone=7` of OVS 3.1.0, datapath_type=netdev, real traffic
# between two namespaces (A = 198.51.100.10 / 2001:db8::10, B = .20 / ::20).

TCP_EST = (
    "tcp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=58766,dport=443),"
    "reply=(src=198.51.100.20,dst=198.51.100.10,sport=443,dport=58766),zone=7,protoinfo=(state=ESTABLISHED)"
)
TCP_TIME_WAIT = (
    "tcp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=33870,dport=443),"
    "reply=(src=198.51.100.20,dst=198.51.100.10,sport=443,dport=33870),zone=7,protoinfo=(state=TIME_WAIT)"
)
TCP6_EST = (
    "tcp,orig=(src=2001:db8::10,dst=2001:db8::20,sport=54296,dport=8080),"
    "reply=(src=2001:db8::20,dst=2001:db8::10,sport=8080,dport=54296),zone=7,protoinfo=(state=ESTABLISHED)"
)
UDP = (
    "udp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=42203,dport=5353),"
    "reply=(src=198.51.100.20,dst=198.51.100.10,sport=5353,dport=42203),zone=7"
)
UDP6 = (
    "udp,orig=(src=2001:db8::10,dst=2001:db8::20,sport=47811,dport=5353),"
    "reply=(src=2001:db8::20,dst=2001:db8::10,sport=5353,dport=47811),zone=7"
)
ICMP = (
    "icmp,orig=(src=198.51.100.10,dst=198.51.100.20,id=13241,type=8,code=0),"
    "reply=(src=198.51.100.20,dst=198.51.100.10,id=13241,type=0,code=0),zone=7"
)
ICMP_FROM_B = (  # `ping` from B to A: initiated towards the guest
    "icmp,orig=(src=198.51.100.20,dst=198.51.100.10,id=14202,type=8,code=0),"
    "reply=(src=198.51.100.10,dst=198.51.100.20,id=14202,type=0,code=0),zone=7"
)
ICMP6 = (
    "icmpv6,orig=(src=2001:db8::10,dst=2001:db8::20,id=14098,type=128,code=0),"
    "reply=(src=2001:db8::20,dst=2001:db8::10,id=14098,type=129,code=0),zone=7"
)
UDP_MARK_LABELS = (  # committed with exec(set_field:0x2a->ct_mark,set_field:0x1->ct_label)
    "udp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=34207,dport=5355),"
    "reply=(src=198.51.100.20,dst=198.51.100.10,sport=5355,dport=34207),zone=7,mark=42,labels=0x1"
)
UDP_ZONE0 = (  # zone 0: OVS prints no zone= at all
    "udp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=56893,dport=9999),"
    "reply=(src=198.51.100.20,dst=198.51.100.10,sport=9999,dport=56893)"
)
RAW_253 = (  # an IP protocol without a name (raw socket, protocol 253)
    "253,orig=(src=198.51.100.10,dst=198.51.100.20,sport=0,dport=0),"
    "reply=(src=198.51.100.20,dst=198.51.100.10,sport=0,dport=0),zone=7"
)
SCTP6 = (
    "sctp,orig=(src=2001:db8::10,dst=2001:db8::20,sport=0,dport=0),"
    "reply=(src=2001:db8::20,dst=2001:db8::10,sport=0,dport=0),zone=7"
)
# `dump-conntrack -m -s` forms.
UDP_VERBOSE_STATS = (
    "udp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=34207,dport=5355),"
    "reply=(src=198.51.100.20,dst=198.51.100.10,sport=5355,dport=34207),"
    "id=0,zone=7,status=0,timeout=58,mark=42,labels=0x1"
)
ICMP6_VERBOSE = (  # the top-level id= must not be confused with the ICMP id inside orig=()
    "icmpv6,orig=(src=2001:db8::10,dst=2001:db8::20,id=14098,type=128,code=0),"
    "reply=(src=2001:db8::20,dst=2001:db8::10,id=14098,type=129,code=0),id=0,zone=7,status=0"
)
TCP6_VERBOSE = (
    "tcp,orig=(src=2001:db8::10,dst=2001:db8::20,sport=50360,dport=8080),"
    "reply=(src=2001:db8::20,dst=2001:db8::10,sport=8080,dport=50360),id=0,zone=7,status=0,"
    "protoinfo=(state_orig=FIN_WAIT_2,state_reply=FIN_WAIT_2,wscale_orig=10,wscale_reply=10,"
    "flags_orig=WINDOW_SCALE,flags_reply=WINDOW_SCALE)"
)
TCP6_STATS = (
    "tcp,orig=(src=2001:db8::10,dst=2001:db8::20,sport=50360,dport=8080),"
    "reply=(src=2001:db8::20,dst=2001:db8::10,sport=8080,dport=50360),zone=7,timeout=26,"
    "protoinfo=(state=TIME_WAIT)"
)
# Not captured: the form newer OVS releases print without -m (ICMP id only; from OVS's
# ct_dpif_format_tuple_icmp).
ICMP_ID_ONLY = "icmp,orig=(src=198.51.100.10,dst=198.51.100.20,id=77),reply=(src=198.51.100.20,dst=198.51.100.10,id=77),zone=7"

# `ovs-appctl dpctl/ct-get-limits` after `ct-set-limits zone=7,limit=2 zone=9,limit=5 zone=10,limit=6`.
LIMITS = "default limit=0\nzone=7,limit=2,count=0\nzone=9,limit=5,count=0\nzone=10,limit=6,count=0\n"

A4, B4 = ip("198.51.100.10"), ip("198.51.100.20")
A6, B6 = ip("2001:db8::10"), ip("2001:db8::20")


# --------------------------------------------------------------------------- parser


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (TCP_EST, ConnEntry(6, A4, B4, 58766, 443, zone=7, state="ESTABLISHED")),
        (TCP_TIME_WAIT, ConnEntry(6, A4, B4, 33870, 443, zone=7, state="TIME_WAIT")),
        (TCP6_EST, ConnEntry(6, A6, B6, 54296, 8080, zone=7, state="ESTABLISHED")),
        (UDP, ConnEntry(17, A4, B4, 42203, 5353, zone=7)),
        (UDP6, ConnEntry(17, A6, B6, 47811, 5353, zone=7)),
        (ICMP, ConnEntry(1, A4, B4, icmp_type=8, icmp_code=0, icmp_id=13241, zone=7)),
        (ICMP_FROM_B, ConnEntry(1, B4, A4, icmp_type=8, icmp_code=0, icmp_id=14202, zone=7)),
        (ICMP6, ConnEntry(58, A6, B6, icmp_type=128, icmp_code=0, icmp_id=14098, zone=7)),
        (UDP_MARK_LABELS, ConnEntry(17, A4, B4, 34207, 5355, zone=7, mark=42, labels=1)),
        (UDP_ZONE0, ConnEntry(17, A4, B4, 56893, 9999, zone=0)),
        (RAW_253, ConnEntry(253, A4, B4, zone=7)),
        (SCTP6, ConnEntry(132, A6, B6, zone=7)),
        (UDP_VERBOSE_STATS, ConnEntry(17, A4, B4, 34207, 5355, zone=7, mark=42, labels=1)),
        (ICMP6_VERBOSE, ConnEntry(58, A6, B6, icmp_type=128, icmp_code=0, icmp_id=14098, zone=7)),
        (TCP6_VERBOSE, ConnEntry(6, A6, B6, 50360, 8080, zone=7, state="FIN_WAIT_2")),
        (TCP6_STATS, ConnEntry(6, A6, B6, 50360, 8080, zone=7, state="TIME_WAIT")),
        (ICMP_ID_ONLY, ConnEntry(1, A4, B4, icmp_id=77, zone=7)),
    ],
)
def test_parse_captured_samples(line: str, expected: ConnEntry) -> None:
    entry = parse_entry(line)
    assert entry == expected
    assert entry is not None and entry.line == line


def test_address_objects_and_properties() -> None:
    tcp6 = parse_entry(TCP6_EST)
    icmp = parse_entry(ICMP)
    assert tcp6 is not None and icmp is not None
    assert isinstance(tcp6.src, ipaddress.IPv6Address) and tcp6.version == 6 and not tcp6.is_icmp
    assert isinstance(icmp.dst, ipaddress.IPv4Address) and icmp.version == 4 and icmp.is_icmp
    assert icmp.sport == icmp.dport == 0
    assert parse_entry(TCP_EST) != parse_entry(TCP_TIME_WAIT)  # different connections


def test_verbose_tcp_states_that_differ_are_both_kept() -> None:
    line = TCP6_VERBOSE.replace("state_reply=FIN_WAIT_2", "state_reply=TIME_WAIT")
    entry = parse_entry(line)
    assert entry is not None and entry.state == "FIN_WAIT_2/TIME_WAIT"


UNKNOWN_LINES = [
    "Unsupported address family: 0. HEX:",
    "00000000  00 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00 |................|",
    "ovs-vswitchd: something else",
    "tcp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=1,dport=2",  # truncated
    "tcp,orig=(src=198.51.100.10,dst=2001:db8::20,sport=1,dport=2),reply=()",  # mixed families
    "tcp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=70000,dport=2),reply=()",  # bad port
    "tcp,reply=(src=198.51.100.20,dst=198.51.100.10,sport=443,dport=1)",  # no orig
    "icmp,orig=(src=198.51.100.10,dst=198.51.100.20,type=8,code=0),reply=()",  # ICMP without id
    "frob,orig=(src=198.51.100.10,dst=198.51.100.20,sport=1,dport=2),reply=()",  # unknown protocol
    "300,orig=(src=198.51.100.10,dst=198.51.100.20,sport=1,dport=2),reply=()",  # protocol > 255
    "udp,orig=(src=198.51.100.10,dst=198.51.100.20,sport=1,dport=2),reply=(),zone=x",
]


@pytest.mark.parametrize("line", UNKNOWN_LINES)
def test_unknown_lines_are_not_entries(line: str) -> None:
    assert parse_entry(line) is None


def test_dump_skips_unknown_lines_and_counts_them() -> None:
    text = "\n".join([TCP_EST, "", UNKNOWN_LINES[0], UNKNOWN_LINES[1], UDP6, "  ", ICMP6]) + "\n"
    entries, skipped = parse_dump_lines(text)
    assert [e.protocol for e in entries] == [6, 17, 58]
    assert skipped == UNKNOWN_LINES[:2]
    assert parse_dump(text) == entries
    assert parse_dump("") == []


def test_parse_limits() -> None:
    default, zones = parse_limits(LIMITS)
    assert default == 0
    assert zones == {
        7: ZoneLimit(7, 2, 0),
        9: ZoneLimit(9, 5, 0),
        10: ZoneLimit(10, 6, 0),
    }
    assert parse_limits("garbage\nzone=x,limit=1\n") == (None, {})


# --------------------------------------------------------------------------- flush tuples


def entry(line: str) -> ConnEntry:
    parsed = parse_entry(line)
    assert parsed is not None
    return parsed


def test_flush_tuples() -> None:
    assert flush_tuple(entry(TCP_EST)) == (
        "ct_nw_src=198.51.100.10,ct_nw_dst=198.51.100.20,ct_nw_proto=6,ct_tp_src=58766,ct_tp_dst=443"
    )
    assert flush_tuple(entry(UDP6)) == (
        "ct_ipv6_src=2001:db8::10,ct_ipv6_dst=2001:db8::20,ct_nw_proto=17,ct_tp_src=47811,ct_tp_dst=5353"
    )
    assert flush_tuple(entry(ICMP)) == (
        "ct_nw_src=198.51.100.10,ct_nw_dst=198.51.100.20,ct_nw_proto=1,icmp_type=8,icmp_code=0,icmp_id=13241"
    )
    assert flush_tuple(entry(ICMP_ID_ONLY)).endswith("ct_nw_proto=1,icmp_type=8,icmp_code=0,icmp_id=77")
    assert flush_tuple(entry(ICMP6)) == (
        "ct_ipv6_src=2001:db8::10,ct_ipv6_dst=2001:db8::20,ct_nw_proto=58,icmp_type=128,icmp_code=0,icmp_id=14098"
    )
    assert flush_tuple(entry(RAW_253)).endswith("ct_nw_proto=253,ct_tp_src=0,ct_tp_dst=0")


def test_userspace_flush_problems() -> None:
    assert userspace_flush_problem(entry(ICMP6)) is not None
    assert userspace_flush_problem(entry(ICMP)) is None
    assert userspace_flush_problem(entry(ICMP_ID_ONLY)) is None
    assert userspace_flush_problem(ConnEntry(1, A4, B4, icmp_type=17, icmp_code=0, icmp_id=1)) is not None
    for line in (TCP_EST, TCP6_EST, UDP, UDP6, RAW_253, SCTP6):
        assert userspace_flush_problem(entry(line)) is None


# --------------------------------------------------------------------------- revoked


def allow(
    name: str, protocol: Protocol, *ports: int, cidrs: tuple[str, ...] = (), icmp_type: int | None = None
) -> Rule:
    return Rule(
        name=name,
        action=RuleAction.ALLOW,
        cidrs=tuple(net(c) for c in cidrs),
        protocol=protocol,
        ports=tuple(PortRange(p, p) for p in ports),
        icmp_type=icmp_type,
    )


OWN = (net("198.51.100.10/32"), net("2001:db8::10/128"))
SCOPE = Scope(
    version=2,
    addresses=OWN,
    egress=(
        allow("web", Protocol.TCP, 8080, cidrs=("198.51.100.0/24",)),
        allow("mdns", Protocol.UDP, 5353),
        allow("ping", Protocol.ICMP, icmp_type=8),
        allow("ping6", Protocol.ICMPV6),
    ),
    ingress=(allow("ping-in", Protocol.ICMP),),
)


def conn(
    proto: int, src: str, dst: str, sport: int = 0, dport: int = 0, icmp_type: int | None = None
) -> ConnEntry:
    icmp_id = None if icmp_type is None else 1
    return ConnEntry(
        proto, ip(src), ip(dst), sport, dport, icmp_type, 0 if icmp_id else None, icmp_id, zone=7
    )


@pytest.mark.parametrize(
    ("case", "connection", "is_revoked"),
    [
        # initiated by the guest (egress)
        ("egress tcp to a port no longer allowed", entry(TCP_EST), True),
        ("egress tcp still allowed", conn(6, "198.51.100.10", "198.51.100.20", 40000, 8080), False),
        ("egress tcp allowed port, cidr no longer matches", conn(6, "198.51.100.10", "203.0.113.5", 1, 8080), True),
        ("egress udp still allowed", entry(UDP), False),
        ("egress icmp echo still allowed", entry(ICMP), False),
        ("egress icmp without type in dump = echo", entry(ICMP_ID_ONLY), False),
        ("egress icmp timestamp not allowed", conn(1, "198.51.100.10", "198.51.100.20", icmp_type=13), True),
        ("egress icmpv6 still allowed", entry(ICMP6), False),
        ("egress raw protocol 253 denied by default", entry(RAW_253), True),
        # initiated towards the guest (ingress)
        ("ingress icmp still allowed", entry(ICMP_FROM_B), False),
        ("ingress tcp denied", conn(6, "198.51.100.20", "198.51.100.10", 40000, 22), True),
        ("ingress tcp to the egress-allowed port is still ingress", conn(6, "198.51.100.20", "198.51.100.10", 1, 8080), True),
        # the IPv6 tuple never matches the IPv4-only cidr of "web"
        ("egress tcp6 to allowed port but v4-only cidr", entry(TCP6_EST), True),
    ],
)  # fmt: skip
def test_revoked_table(case: str, connection: ConnEntry, is_revoked: bool) -> None:
    assert (revoked([connection], SCOPE) == [connection]) is is_revoked, case


def test_direction_follows_the_original_source() -> None:
    assert connection_direction(entry(TCP_EST), OWN) is Direction.EGRESS
    assert connection_direction(entry(ICMP_FROM_B), OWN) is Direction.INGRESS
    # single addresses work as well as networks
    assert connection_direction(entry(TCP6_EST), [ip("2001:db8::10")]) is Direction.EGRESS
    assert connection_direction(entry(TCP6_EST), [ip("198.51.100.10")]) is Direction.INGRESS
    packet = connection_packet(entry(ICMP6), Direction.EGRESS)
    assert (packet.protocol, packet.icmp_type, packet.icmp_code, packet.ct_state) == (58, 128, 0, CtState.NEW)
    packet = connection_packet(entry(SCTP6), Direction.EGRESS)
    assert (packet.src_port, packet.dst_port) == (0, 0)


def test_connection_of_another_family() -> None:
    # The scope lost the guest's IPv6 address: a connection the guest opened from it no longer
    # counts as the guest's own (it is taken as initiated towards the guest), and with no address
    # of that family nothing of it passes, even with ingress open; the IPv4 one stays.
    v4_only = Scope(addresses=OWN[:1], egress=(allow("any-tcp", Protocol.TCP),))
    tcp6 = entry(TCP6_EST)
    assert connection_direction(tcp6, v4_only.addresses) is Direction.INGRESS
    assert revoked([tcp6, entry(TCP_EST)], v4_only) == [tcp6]
    open_ingress = Scope(addresses=OWN[:1], egress=v4_only.egress, ingress_default=RuleAction.ALLOW)
    assert revoked([tcp6, entry(TCP_EST)], open_ingress) == [tcp6]
    # With both addresses, the same connection is the guest's and allowed.
    both = Scope(addresses=OWN, egress=v4_only.egress)
    assert revoked([tcp6, entry(TCP_EST)], both) == []


def test_own_addresses_override_and_order() -> None:
    everything = [entry(line) for line in (TCP_EST, UDP, ICMP, ICMP_FROM_B, ICMP6, TCP6_EST, RAW_253)]
    assert revoked(everything, SCOPE) == [entry(TCP_EST), entry(TCP6_EST), entry(RAW_253)]
    assert revoked(everything, SCOPE, own_addresses=OWN) == revoked(everything, SCOPE)
    # With no own addresses every connection counts as initiated towards the guest: only B's
    # ping (to the guest, allowed by "ping-in") survives.
    assert revoked(everything, SCOPE, own_addresses=()) == [e for e in everything if e != entry(ICMP_FROM_B)]
    assert revoked([], SCOPE) == []


def test_dhcp_from_unspecified_source_is_egress() -> None:
    dhcp = conn(17, "0.0.0.0", "255.255.255.255", 68, 67)
    assert connection_direction(dhcp, OWN) is Direction.EGRESS
    assert revoked([dhcp], Scope(addresses=OWN, allow_dhcp=True)) == []
    assert revoked([dhcp], Scope(addresses=OWN)) == [dhcp]


def test_deny_rule_revokes_an_allowed_port() -> None:
    deny = Rule("no-b", RuleAction.DENY, cidrs=(net("198.51.100.20/32"),))
    scope = Scope(addresses=OWN, egress=(*SCOPE.egress, deny))
    assert revoked([entry(UDP)], scope) == [entry(UDP)]


# --------------------------------------------------------------------------- the wrapper, faked

LIMITS_TEXT = "default limit=0\nzone=7,limit=2,count=1\nzone=8,limit=0,count=0\n"
DUMP_TEXT = "\n".join([TCP_EST, UDP, ICMP6, UNKNOWN_LINES[0], ICMP_FROM_B]) + "\n"


def _answer(method: str, params: list[str]) -> tuple[str, str | None]:
    """What ovs-vswitchd answers on its control socket (the error texts are OVS 3.1's)."""
    flat = " ".join(params)
    if method == "dpctl/flush-conntrack" and "ct_tp_src=1," in flat:
        return "", "ovs-vswitchd: failed to flush conntrack (No such file or directory)"
    if method == "dpctl/flush-conntrack" and "ct_tp_src=2," in flat:
        return "", "ovs-vswitchd: invalid L4 fields (Invalid argument)"
    if method == "dpctl/dump-conntrack":
        return DUMP_TEXT, None
    if method == "dpctl/ct-get-limits":
        return LIMITS_TEXT, None
    return "", None


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeControlSocket]:
    async with FakeControlSocket(tmp_path / "c.ctl", _answer) as socket:
        yield socket


async def test_wrapper_commands(fake: FakeControlSocket) -> None:
    async with ConntrackControl(fake.path, timeout=3) as ct:
        assert [e.protocol for e in await ct.dump(7)] == [6, 17, 58, 1]
        assert await ct.flush_entry(entry(TCP_EST)) is True
        await ct.flush_zone(7)
        await ct.set_zone_limit(7, 2)
        await ct.set_default_zone_limit(100)
        assert await ct.get_zone_limits([8, 7]) == {7: 2, 8: 0}
        assert (await ct.zone_limit_status())[7] == ZoneLimit(7, 2, 1)
        await ct.delete_zone_limit(7)
        await ct.set_zone_limits([9, 8, 9], 5, per_call=1)
        await ct.enable_fragment_reassembly()
    assert fake.requests == [
        ["dpctl/dump-conntrack", "zone=7"],
        ["dpctl/flush-conntrack", "zone=7",
         "ct_nw_src=198.51.100.10,ct_nw_dst=198.51.100.20,ct_nw_proto=6,ct_tp_src=58766,ct_tp_dst=443"],
        ["dpctl/flush-conntrack", "zone=7"],
        ["dpctl/ct-set-limits", "zone=7,limit=2"],
        ["dpctl/ct-set-limits", "default=100"],
        ["dpctl/ct-get-limits", "zone=7,8"],
        ["dpctl/ct-get-limits"],
        ["dpctl/ct-del-limits", "zone=7"],
        ["dpctl/ct-set-limits", "zone=8,limit=5"],
        ["dpctl/ct-set-limits", "zone=9,limit=5"],
        ["dpctl/ipf-set-enabled", "v4"],
        ["dpctl/ipf-set-enabled", "v6"],
    ]  # fmt: skip
    assert fake.connections == 1  # every call over the one connection, no process each


async def test_wrapper_datapath_argument(fake: FakeControlSocket) -> None:
    async with ConntrackControl(fake.path, timeout=2, datapath="netdev@ovs-netdev") as ct:
        await ct.dump(3)
        await ct.set_zone_limit(3, 9)
    assert fake.requests == [
        ["dpctl/dump-conntrack", "netdev@ovs-netdev", "zone=3"],
        ["dpctl/ct-set-limits", "netdev@ovs-netdev", "zone=3,limit=9"],
    ]


async def test_wrapper_missing_entry_and_errors(fake: FakeControlSocket) -> None:
    async with ConntrackControl(fake.path, timeout=2) as ct:
        assert await ct.flush_entry(conn(6, "198.51.100.10", "198.51.100.20", 1, 443)) is False
        with pytest.raises(ConntrackError) as info:
            await ct.flush_entry(conn(6, "198.51.100.10", "198.51.100.20", 2, 443))
        assert await ct.dump(7)  # an error answer leaves the connection usable
    assert "dpctl/flush-conntrack zone=7" in str(info.value)
    assert "invalid L4 fields" in str(info.value) and "invalid L4 fields" in info.value.stderr
    assert info.value.argv[:3] == ["ovs-appctl", "-t", str(fake.path)]
    assert fake.connections == 1


async def test_wrapper_refuses_crashing_icmpv6_flush(fake: FakeControlSocket) -> None:
    async with ConntrackControl(fake.path, timeout=2) as ct:
        with pytest.raises(ConntrackUnsupportedError):
            await ct.flush_entry(entry(ICMP6))
    assert fake.requests == []  # nothing was sent
    async with ConntrackControl(fake.path, timeout=2, userspace_datapath=False) as kernel:
        assert await kernel.flush_entry(entry(ICMP6)) is True


async def test_wrapper_revoke_flushes_in_one_batch(fake: FakeControlSocket) -> None:
    async with ConntrackControl(fake.path, timeout=2) as ct:
        # Nothing allowed: TCP, UDP, ICMPv6 (egress) and B's ping (ingress) are all revoked;
        # the ICMPv6 one cannot be flushed in the userspace datapath.
        result = await ct.revoke_entries(7, Scope(addresses=OWN))
        assert result.flushed == (entry(TCP_EST), entry(UDP), entry(ICMP_FROM_B))
        assert result.unflushable == (entry(ICMP6),) and result.missing == ()
        assert await ct.revoke(7, SCOPE) == 1  # only the TCP connection to 443
    # Two dumps and four flushes (three, then one) in four exchanges over one connection.
    assert fake.connections == 1 and len(fake.requests) == 6
    assert [r[0] for r in fake.requests] == ["dpctl/dump-conntrack"] + ["dpctl/flush-conntrack"] * 3 + [
        "dpctl/dump-conntrack",
        "dpctl/flush-conntrack",
    ]
    assert (
        fake.requests[-1][:2] == ["dpctl/flush-conntrack", "zone=7"]
        and "ct_tp_dst=443" in fake.requests[-1][2]
    )


async def test_wrapper_batch_flushes_sort_out_missing_and_failed(fake: FakeControlSocket) -> None:
    async with ConntrackControl(fake.path, timeout=2) as ct:
        gone, there = conn(6, "198.51.100.10", "198.51.100.20", 1, 443), entry(TCP_EST)
        assert await ct.flush_entries([gone, there]) == ([there], [gone])
        with pytest.raises(ConntrackError, match="invalid L4 fields"):
            await ct.flush_entries([conn(6, "198.51.100.10", "198.51.100.20", 2, 443)])
        with pytest.raises(ConntrackUnsupportedError):
            await ct.flush_entries([there, entry(ICMP6)])
        assert len(fake.requests) == 3  # the refused batch sent nothing
        await ct.flush_zones([9, 3, 9])
        assert fake.requests[-2:] == [
            ["dpctl/flush-conntrack", "zone=3"],
            ["dpctl/flush-conntrack", "zone=9"],
        ]


async def test_wrapper_timeout_and_missing_socket(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(5)

    server = await asyncio.start_unix_server(silent, path=str(tmp_path / "silent.ctl"))
    try:
        async with ConntrackControl(tmp_path / "silent.ctl", timeout=0.2) as ct:
            with pytest.raises(ConntrackError, match="no answer"):
                await ct.dump(1)
    finally:
        server.close()
    async with ConntrackControl(tmp_path / "absent.ctl", timeout=1) as ct:
        with pytest.raises(ConntrackError, match="cannot connect") as info:
            await ct.flush_zones([4])
    assert info.value.argv[-2:] == ["dpctl/flush-conntrack", "zone=4"]


async def test_wrapper_validates_arguments(fake: FakeControlSocket) -> None:
    with pytest.raises(ValueError):
        ConntrackControl("/c.ctl", timeout=0)
    ct = ConntrackControl(fake.path)
    with pytest.raises(ValueError):
        await ct.set_zone_limit(70000, 1)
    with pytest.raises(ValueError):
        await ct.set_zone_limit(1, -1)
    with pytest.raises(ValueError):
        await ct.dump(-1)
    assert fake.requests == [] and fake.connections == 0
