"""ConntrackControl against the real userspace conntrack of a private OVS: two namespaces A and B
on a netdev bridge whose flows send IP through ct(zone=7), commit new connections and pass
established ones; real TCP/UDP/ICMP connections between them."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.ovs.conntrack import ConnEntry, ConntrackControl, ConntrackUnsupportedError
from coordinator.policy.scope import PortRange, Protocol, Rule, RuleAction, Scope
from tests.conftest import NetnsFactory

pytestmark = pytest.mark.ovs

NETPROBE = str(Path(__file__).with_name("netprobe.py"))
ZONE = 7
A_V4, B_V4 = "198.51.100.10", "198.51.100.20"
A_V6, B_V6 = "2001:db8::10", "2001:db8::20"
TCP_PORTS = (443, 8080)
UDP_PORT = 5353

# Neighbour discovery bypasses conntrack (the userspace conntrack marks it +inv); all other IP
# goes through ct(zone=7): new connections are committed, established/related ones pass.
FLOWS = f"""\
table=0,priority=110,icmp6,icmp_type=135,actions=NORMAL
table=0,priority=110,icmp6,icmp_type=136,actions=NORMAL
table=0,priority=100,arp,actions=NORMAL
table=0,priority=100,ip,actions=ct(zone={ZONE},table=1)
table=0,priority=100,ipv6,actions=ct(zone={ZONE},table=1)
table=1,priority=100,ct_state=+trk+new,ip,actions=ct(commit,zone={ZONE}),NORMAL
table=1,priority=100,ct_state=+trk+new,ipv6,actions=ct(commit,zone={ZONE}),NORMAL
table=1,priority=100,ct_state=+trk+est,actions=NORMAL
table=1,priority=100,ct_state=+trk+rel,actions=NORMAL
"""


class Hold:
    """A TCP connection from a namespace kept open by netprobe; :meth:`works` does a round trip."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        self.port = port
        self.proc = netns.popen_in_netns(
            ns, [sys.executable, NETPROBE, "hold", host, str(port)], stdin=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "connected":
            self.close()
            raise AssertionError(f"hold {host}:{port} did not connect: {line!r}")

    def works(self) -> bool:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Lab:
    ovs: OvsInstance
    bridge: str
    a: str
    b: str
    ct: ConntrackControl
    holds: list[Hold] = field(default_factory=list)

    def flows(self, text: str, command: str = "add-flows") -> None:
        self.ovs.ofctl(command, self.bridge, "-", input=text)

    def hold(self, port: int, host: str = B_V4) -> Hold:
        hold = Hold(self.a, host, port)
        self.holds.append(hold)
        return hold

    def tcp(self, host: str, port: int) -> bool:
        return self._probe(self.a, "connect", host, port)

    def udp(self, host: str, port: int = UDP_PORT) -> bool:
        return self._probe(self.a, "udp", host, port)

    def ping(self, host: str, *, ns: str | None = None) -> bool:
        proc = netns.run_in_netns(ns or self.a, ["ping", "-c", "1", "-W", "2", host], check=False)
        return proc.returncode == 0

    def _probe(self, ns: str, kind: str, host: str, port: int) -> bool:
        argv = [sys.executable, NETPROBE, kind, host, str(port), "--timeout", "1"]
        return netns.run_in_netns(ns, argv, check=False).returncode == 0


@pytest_asyncio.fixture
async def lab(private_ovs: OvsInstance, netns_factory: NetnsFactory) -> AsyncIterator[Lab]:
    ovs = private_ovs
    bridge = netns.unique_name("brct")
    a, b = netns_factory("cta-"), netns_factory("ctb-")
    ovs.vsctl(
        "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev", "fail_mode=secure"
    )  # fmt: skip
    for ofport, (ns, v4, v6) in enumerate(((a, A_V4, A_V6), (b, B_V4, B_V6)), start=1):
        port = netns.unique_name("ctp")
        netns.create_veth_pair(port, ovs.netns, "eth0", ns)
        netns.set_link(ovs.netns, port)
        netns.set_link(ns, "eth0")
        netns.add_address(ns, "eth0", f"{v4}/24")
        netns.add_address(ns, "eth0", f"{v6}/64", nodad=True)
        ovs.vsctl("add-port", bridge, port, "--", "set", "interface", port, f"ofport_request={ofport}")
    server = netns.popen_in_netns(
        b,
        [sys.executable, NETPROBE, "serve", "--tcp", ",".join(map(str, TCP_PORTS)), "--udp", str(UDP_PORT),
         "--udp-addresses", f"{B_V4},{B_V6}"],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    lab = Lab(ovs, bridge, a, b, ConntrackControl(ovs.vswitchd_ctl, timeout=10))
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        lab.flows(FLOWS)
        yield lab
    finally:
        await lab.ct.close()
        for hold in lab.holds:
            hold.close()
        server.kill()
        server.wait()


def key(entry: ConnEntry) -> tuple[object, ...]:
    """What identifies a test connection regardless of its ephemeral source port / ICMP id."""
    return (entry.protocol, str(entry.src), str(entry.dst), entry.dport, entry.icmp_type)


def keys(entries: list[ConnEntry]) -> list[tuple[object, ...]]:
    return sorted(map(key, entries), key=str)


def only(entries: list[ConnEntry], *wanted: object) -> ConnEntry:
    [match] = [e for e in entries if key(e) == wanted]
    return match


async def test_dump_parses_real_connections(lab: Lab) -> None:
    held = lab.hold(443)
    assert lab.tcp(B_V6, 8080)
    assert lab.udp(B_V4) and lab.udp(B_V6)
    assert lab.ping(B_V4) and lab.ping(B_V6)
    assert lab.ping(A_V4, ns=lab.b)  # initiated towards A

    entries = await lab.ct.dump(ZONE)
    raw = lab.ovs.dpctl_dump_conntrack(ZONE)
    assert len(entries) == len(raw) == 7, raw  # every line parsed
    assert keys(entries) == sorted(
        [
            (6, A_V4, B_V4, 443, None),
            (6, A_V6, B_V6, 8080, None),
            (17, A_V4, B_V4, UDP_PORT, None),
            (17, A_V6, B_V6, UDP_PORT, None),
            (1, A_V4, B_V4, 0, 8),
            (58, A_V6, B_V6, 0, 128),
            (1, B_V4, A_V4, 0, 8),
        ],
        key=str,
    )
    assert all(e.zone == ZONE and e.mark == 0 for e in entries)
    assert only(entries, 6, A_V4, B_V4, 443, None).state == "ESTABLISHED"
    assert only(entries, 6, A_V6, B_V6, 8080, None).state == "TIME_WAIT"  # closed by the probe
    assert isinstance(only(entries, 58, A_V6, B_V6, 0, 128).src, ipaddress.IPv6Address)
    assert all(e.icmp_id is not None and e.icmp_code == 0 for e in entries if e.is_icmp)
    assert await lab.ct.dump(ZONE + 1) == []
    assert held.works()


async def test_flush_entry_removes_exactly_that_one(lab: Lab) -> None:
    lab.hold(443)
    lab.hold(8080, host=B_V6)
    assert lab.udp(B_V4) and lab.udp(B_V6)
    assert lab.ping(B_V4) and lab.ping(B_V6)
    entries = await lab.ct.dump(ZONE)
    assert len(entries) == 6

    for wanted in (
        (6, A_V4, B_V4, 443, None),
        (6, A_V6, B_V6, 8080, None),
        (17, A_V4, B_V4, UDP_PORT, None),
        (17, A_V6, B_V6, UDP_PORT, None),
        (1, A_V4, B_V4, 0, 8),
    ):
        victim = only(entries, *wanted)
        assert await lab.ct.flush_entry(victim) is True
        after = await lab.ct.dump(ZONE)
        assert keys(after) == keys([e for e in entries if e != victim]), wanted
        entries = after
        assert await lab.ct.flush_entry(victim) is False  # already gone

    # The ICMPv6 one: a tuple flush would abort ovs-vswitchd 3.1, so it is refused ...
    [icmp6] = entries
    with pytest.raises(ConntrackUnsupportedError):
        await lab.ct.flush_entry(icmp6)
    assert await lab.ct.dump(ZONE) == [icmp6]  # ... and the switch is still there.
    await lab.ct.flush_zone(ZONE)  # flushing the zone is safe
    assert await lab.ct.dump(ZONE) == []


async def test_revoke_flushes_only_what_the_scope_no_longer_allows_and_cuts_it(lab: Lab) -> None:
    https, web = lab.hold(443), lab.hold(8080)
    assert lab.udp(B_V4) and lab.ping(B_V4)
    assert keys(await lab.ct.dump(ZONE)) == sorted(
        [(6, A_V4, B_V4, 443, None), (6, A_V4, B_V4, 8080, None), (17, A_V4, B_V4, UDP_PORT, None),
         (1, A_V4, B_V4, 0, 8)],
        key=str,
    )  # fmt: skip

    # From now on nothing new may use port 443 (either way): only the +est entry carries it.
    lab.flows(
        "table=1,priority=200,ct_state=+trk+new,tcp,tp_dst=443,actions=drop\n"
        "table=1,priority=200,ct_state=+trk+new,tcp,tp_src=443,actions=drop\n"
    )
    assert https.works() and web.works()  # established connections are untouched by the flows

    allowed = (PortRange(8080, 8080),)
    scope = Scope(
        addresses=(ipaddress.ip_network(f"{A_V4}/32"),),
        egress=(
            Rule("web", RuleAction.ALLOW, protocol=Protocol.TCP, ports=allowed),
            Rule("mdns", RuleAction.ALLOW, protocol=Protocol.UDP, ports=(PortRange(UDP_PORT, UDP_PORT),)),
            Rule("ping", RuleAction.ALLOW, protocol=Protocol.ICMP),
        ),
    )
    assert await lab.ct.revoke(ZONE, scope) == 1
    assert keys(await lab.ct.dump(ZONE)) == sorted(
        [(6, A_V4, B_V4, 8080, None), (17, A_V4, B_V4, UDP_PORT, None), (1, A_V4, B_V4, 0, 8)], key=str
    )
    # The flushed connection's next packets are +new and dropped: it is cut; the other one works.
    assert not https.works()
    assert web.works()
    assert not any(e.dport == 443 for e in await lab.ct.dump(ZONE))
    assert await lab.ct.revoke(ZONE, scope) == 0  # idempotent


async def test_zone_limits_round_trip(lab: Lab) -> None:
    ct = lab.ct
    await ct.set_zone_limit(ZONE, 2)
    await ct.set_zone_limit(9, 5)
    assert await ct.get_zone_limits() == {ZONE: 2, 9: 5}
    assert await ct.get_zone_limits([ZONE, 11]) == {ZONE: 2, 11: 0}  # 11: the default (unlimited)
    await ct.set_zone_limit(9, 6)
    assert await ct.get_zone_limits([9]) == {9: 6}
    await ct.delete_zone_limit(9)
    assert await ct.get_zone_limits() == {ZONE: 2}
    await ct.delete_zone_limit(ZONE)
    assert await ct.get_zone_limits() == {}


async def test_zone_limit_is_enforced_by_the_userspace_datapath(lab: Lab) -> None:
    # Only A may open connections; B's packets pass only as +est. A connection the zone has no
    # room for is never committed, so its reply is +new from B and dropped.
    lab.flows(
        "table=1,priority=200,ct_state=+trk+new,in_port=2,actions=drop\n"
        f"table=1,priority=200,ct_state=+trk+new,in_port=1,ip,actions=ct(commit,zone={ZONE}),NORMAL\n"
    )
    await lab.ct.set_zone_limit(ZONE, 2)
    results = [lab.udp(B_V4) for _ in range(4)]
    assert results == [True, True, False, False]
    assert len(await lab.ct.dump(ZONE)) == 2
    status = await lab.ct.zone_limit_status([ZONE])
    assert (status[ZONE].limit, status[ZONE].count) == (2, 2)
    await lab.ct.delete_zone_limit(ZONE)
    assert lab.udp(B_V4)
    assert len(await lab.ct.dump(ZONE)) == 3
