"""coordinator.ovs.offload: ``dpctl/dump-flows -m`` parsing and counting.

USERSPACE_M and USERSPACE_PLAIN were captured from OVS 3.1.0 (Debian 12),
``datapath_type=netdev``, a private instance with two veth ports ``pf0vf0``
(ofport 1, datapath port 2) and ``p0`` (ofport 2, datapath port 3), conntrack
flows in zone 5 and ping traffic, with ``ovs-appctl -t .../ovs-vswitchd.ctl
dpctl/dump-flows -m`` and without ``-m``. Lines are unmodified (a subset of
the ``-m`` dump, the whole plain dump).

The kernel/TC samples are written from OVS's source, since this machine has
no openvswitch kernel module nor TC offload: the line layout of
``format_dpif_flow()`` in lib/dpctl.c (``ufid:``, key with masks,
``packets:``, ``bytes:``, ``used:``, ``flags:``, ``offloaded:yes|partial``,
``dp:LAYER``, ``actions:``), ``dp:tc`` with ``offloaded:yes`` only when TC
reports the flower filter in hardware (``parse_tc_flower_to_attrs()`` in
lib/netdev-offload-tc.c), ``dp:ovs`` and never offloaded for flows of the
kernel module (``dpif_netlink_flow_to_dpif_flow()`` in lib/dpif-netlink.c),
and flow bodies like those of tests/system-offloads-traffic.at.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.ovs.offload import (
    FlowCounts,
    OffloadState,
    dump_flows,
    dump_flows_argv,
    parse_dump_flows,
    parse_flow_line,
)
from coordinator.ovs.trace import TraceError
from tests.conftest import NetnsFactory

# --------------------------------------------------------------------------- captured: userspace datapath

USERSPACE_M = """\
flow-dump from the main thread:
ufid:1eac8f28-eddb-4502-8922-5cc43e2c261d, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(pf0vf0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:01/00:00:00:00:00:00,dst=33:33:00:00:00:16/00:00:00:00:00:00),eth_type(0x86dd),ipv6(src=::/::,dst=ff02::16/::,label=0/0,proto=58/0,tclass=0/0,hlimit=1/0,frag=no),icmpv6(type=143/0,code=0/0), packets:4, bytes:336, used:0.590s, dp:ovs, actions:drop, dp-extra-info:miniflow_bits(4,1)
ufid:7fad7022-a133-47da-941c-b79b5b8d7730, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(p0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:02/00:00:00:00:00:00,dst=02:00:00:00:00:01/00:00:00:00:00:00),eth_type(0x0800),ipv4(src=198.51.100.1/0.0.0.0,dst=198.51.100.10/0.0.0.0,proto=1/0,tos=0/0,ttl=64/0,frag=no),icmp(type=0/0,code=0/0), packets:4, bytes:392, used:1.010s, dp:ovs, actions:ct(zone=5),recirc(0x2), dp-extra-info:miniflow_bits(4,1)
ufid:398d4c41-9843-4657-b309-59c845f268ca, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(p0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:02,dst=02:00:00:00:00:01),eth_type(0x0806),arp(sip=198.51.100.1/0.0.0.0,tip=198.51.100.10/0.0.0.0,op=2/0,sha=02:00:00:00:00:02/00:00:00:00:00:00,tha=02:00:00:00:00:01/00:00:00:00:00:00), packets:0, bytes:0, used:never, dp:ovs, actions:pf0vf0, dp-extra-info:miniflow_bits(5,0)
ufid:8cab3f25-23aa-4911-87c1-34d80c767f0c, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(pf0vf0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:01/00:00:00:00:00:00,dst=02:00:00:00:00:02/00:00:00:00:00:00),eth_type(0x0800),ipv4(src=198.51.100.10/0.0.0.0,dst=198.51.100.1/0.0.0.0,proto=1/0,tos=0/0,ttl=64/0,frag=no),icmp(type=8/0,code=0/0), packets:2, bytes:196, used:1.218s, dp:ovs, actions:ct(zone=5),recirc(0x1), dp-extra-info:miniflow_bits(4,1)
ufid:532a5735-5ff7-4042-80dd-799798d5d7b6, skb_priority(0/0),skb_mark(0/0),ct_state(0x2a/0x23),ct_zone(0x5/0),ct_mark(0/0),ct_label(0/0),ct_tuple4(src=198.51.100.10/0.0.0.0,dst=198.51.100.1/0.0.0.0,proto=1/0,tp_src=8/0,tp_dst=0/0),recirc_id(0x2),dp_hash(0/0),in_port(p0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:02,dst=02:00:00:00:00:01),eth_type(0x0800),ipv4(src=198.51.100.1/0.0.0.0,dst=198.51.100.10/0.0.0.0,proto=1/0,tos=0/0,ttl=64/0,frag=no),icmp(type=0/0,code=0/0), packets:2, bytes:196, used:1.218s, dp:ovs, actions:pf0vf0, dp-extra-info:miniflow_bits(5,1)
ufid:0eb2271b-9257-4c1f-b5f1-2ad71f6c4ce8, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(pf0vf0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:01,dst=ff:ff:ff:ff:ff:ff),eth_type(0x0806),arp(sip=198.51.100.10,tip=198.51.100.1,op=1,sha=02:00:00:00:00:01/00:00:00:00:00:00,tha=00:00:00:00:00:00/00:00:00:00:00:00), packets:0, bytes:0, used:never, dp:ovs, actions:br0,p0, dp-extra-info:miniflow_bits(5,2)
ufid:abdd7e4d-ac8a-4eb0-9ba6-aa451d26521f, skb_priority(0/0),skb_mark(0/0),ct_state(0x21/0x21),ct_zone(0x5/0),ct_mark(0/0),ct_label(0/0),ct_tuple4(src=198.51.100.10/0.0.0.0,dst=198.51.100.1/0.0.0.0,proto=1/0,tp_src=8/0,tp_dst=0/0),recirc_id(0x1),dp_hash(0/0),in_port(pf0vf0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:01/00:00:00:00:00:00,dst=02:00:00:00:00:02/00:00:00:00:00:00),eth_type(0x0800),ipv4(src=198.51.100.10/0.0.0.0,dst=198.51.100.1/0.0.0.0,proto=1/0,tos=0/0,ttl=64/0,frag=no),icmp(type=8/0,code=0/0), packets:0, bytes:0, used:never, dp:ovs, actions:ct(commit,zone=5),p0, dp-extra-info:miniflow_bits(4,1)
ufid:c014d63b-89ca-4e88-a28b-b422138819fa, skb_priority(0/0),skb_mark(0/0),ct_state(0x22/0x23),ct_zone(0x5/0),ct_mark(0/0),ct_label(0/0),ct_tuple4(src=198.51.100.10/0.0.0.0,dst=198.51.100.1/0.0.0.0,proto=1/0,tp_src=8/0,tp_dst=0/0),recirc_id(0x1),dp_hash(0/0),in_port(pf0vf0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800),ipv4(src=198.51.100.10/0.0.0.0,dst=198.51.100.1/0.0.0.0,proto=1/0,tos=0/0,ttl=64/0,frag=no),icmp(type=8/0,code=0/0), packets:1, bytes:98, used:1.218s, dp:ovs, actions:p0, dp-extra-info:miniflow_bits(5,1)
"""

USERSPACE_PLAIN = """\
flow-dump from the main thread:
recirc_id(0),in_port(2),packet_type(ns=0,id=0),eth_type(0x86dd),ipv6(frag=no), packets:4, bytes:336, used:0.595s, actions:drop
recirc_id(0),in_port(3),packet_type(ns=0,id=0),eth_type(0x0800),ipv4(frag=no), packets:4, bytes:392, used:1.015s, actions:ct(zone=5),recirc(0x2)
recirc_id(0),in_port(3),packet_type(ns=0,id=0),eth_type(0x86dd),ipv6(frag=no), packets:1, bytes:90, used:0.659s, actions:drop
recirc_id(0),in_port(3),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:02,dst=02:00:00:00:00:01),eth_type(0x0806), packets:0, bytes:0, used:never, actions:2
recirc_id(0),in_port(2),packet_type(ns=0,id=0),eth_type(0x0800),ipv4(frag=no), packets:2, bytes:196, used:1.223s, actions:ct(zone=5),recirc(0x1)
ct_state(-new+est+trk),recirc_id(0x2),in_port(3),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:02,dst=02:00:00:00:00:01),eth_type(0x0800),ipv4(frag=no), packets:2, bytes:196, used:1.223s, actions:2
ct_state(+new-est+trk),recirc_id(0x2),in_port(3),packet_type(ns=0,id=0),eth_type(0x0800),ipv4(frag=no), packets:1, bytes:98, used:1.015s, actions:drop
recirc_id(0),in_port(2),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:01,dst=ff:ff:ff:ff:ff:ff),eth_type(0x0806),arp(sip=198.51.100.10,tip=198.51.100.1,op=1), packets:0, bytes:0, used:never, actions:1,3
ct_state(+new+trk),recirc_id(0x1),in_port(2),packet_type(ns=0,id=0),eth_type(0x0800),ipv4(frag=no), packets:0, bytes:0, used:never, actions:ct(commit,zone=5),3
ct_state(-new+est+trk),recirc_id(0x1),in_port(2),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800),ipv4(frag=no), packets:1, bytes:98, used:1.223s, actions:3
"""

# --------------------------------------------------------------------------- written: kernel datapath + TC

KERNEL_TC_M = """\
ufid:4c1d8e2a-0b6f-4f0e-9a51-2d3c5e7f9a10, skb_priority(0/0),skb_mark(0/0),ct_state(0x21/0x21),ct_zone(0x5/0xffff),ct_mark(0/0),ct_label(0/0),recirc_id(0x1),dp_hash(0/0),in_port(pf0vf0),packet_type(ns=0/0,id=0/0),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800),ipv4(src=198.51.100.10/0.0.0.0,dst=203.0.113.5/0.0.0.0,proto=6,tos=0/0,ttl=0/0,frag=no),tcp(src=0/0,dst=443), packets:1520, bytes:2117440, used:0.120s, flags:S., offloaded:yes, dp:tc, actions:ct(commit,zone=5),p0
ufid:9e27b1f4-3c58-4d2a-8f6e-0a1b2c3d4e5f, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(pf0vf0),packet_type(ns=0/0,id=0/0),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800),ipv4(src=198.51.100.10/0.0.0.0,dst=203.0.113.5/0.0.0.0,proto=6/0,tos=0/0,ttl=0/0,frag=no), packets:1533, bytes:2118212, used:0.120s, offloaded:yes, dp:tc, actions:ct(zone=5),recirc(0x1)
ufid:a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d, skb_priority(0/0),skb_mark(0/0),ct_state(0x22/0x22),ct_zone(0x5/0xffff),ct_mark(0/0),ct_label(0/0),recirc_id(0x2),dp_hash(0/0),in_port(p0),packet_type(ns=0/0,id=0/0),eth(src=02:00:00:00:00:02,dst=02:00:00:00:00:01),eth_type(0x0800),ipv4(src=203.0.113.5/0.0.0.0,dst=198.51.100.10/0.0.0.0,proto=6,tos=0/0,ttl=0/0,frag=no),tcp(src=443,dst=0/0), packets:2210, bytes:3271040, used:0.100s, flags:P., offloaded:yes, dp:tc, actions:pf0vf0
ufid:b7c8d9e0-f1a2-4b3c-9d4e-5f6a7b8c9d0e, skb_priority(0/0),skb_mark(0/0),ct_state(0x21/0x21),ct_zone(0x5/0xffff),ct_mark(0/0),ct_label(0/0),recirc_id(0x1),dp_hash(0/0),in_port(pf0vf0),packet_type(ns=0/0,id=0/0),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800),ipv4(src=198.51.100.10/0.0.0.0,dst=203.0.113.5/0.0.0.0,proto=1,tos=0/0,ttl=0/0,frag=no),icmp(type=8/0,code=0/0), packets:3, bytes:294, used:1.504s, dp:tc, actions:ct(commit,zone=5),p0
ufid:c4d5e6f7-a8b9-4c0d-8e1f-2a3b4c5d6e7f, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(pf0vf1),packet_type(ns=0/0,id=0/0),eth(src=02:00:00:00:00:03,dst=ff:ff:ff:ff:ff:ff),eth_type(0x0806),arp(sip=198.51.100.11,tip=198.51.100.1,op=1/0xff,sha=02:00:00:00:00:03/00:00:00:00:00:00,tha=00:00:00:00:00:00/00:00:00:00:00:00), packets:1, bytes:42, used:2.010s, dp:ovs, actions:p0,pf0vf0
"""

DPDK_M = """\
flow-dump from pmd on cpu core: 1
ufid:11111111-2222-4333-8444-555555555555, recirc_id(0),dp_hash(0/0),skb_priority(0/0),in_port(pf0vf0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800),ipv4(src=198.51.100.10/0.0.0.0,dst=203.0.113.5/0.0.0.0,proto=17/0,tos=0/0,ttl=64/0,frag=no),udp(src=0/0,dst=0/0), packets:120, bytes:7200, used:0.010s, offloaded:partial, dp:ovs, actions:p0, dp-extra-info:miniflow_bits(4,1)
ufid:66666666-7777-4888-9999-aaaaaaaaaaaa, recirc_id(0),dp_hash(0/0),skb_priority(0/0),in_port(p0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:02,dst=02:00:00:00:00:01),eth_type(0x0800),ipv4(src=203.0.113.5/0.0.0.0,dst=198.51.100.10/0.0.0.0,proto=17/0,tos=0/0,ttl=64/0,frag=no),udp(src=0/0,dst=0/0), packets:118, bytes:7080, used:0.010s, offloaded:yes, dp:dpdk, actions:pf0vf0
"""


def test_userspace_capture_is_unavailable_with_counts() -> None:
    report = parse_dump_flows(USERSPACE_M)
    assert report.state is OffloadState.UNAVAILABLE
    assert report.unparsed == ()
    assert report.total == FlowCounts(offloaded=0, partial=0, not_offloaded=8)
    assert report.total.offloaded_ratio == 0.0
    assert dict(report.by_in_port) == {"pf0vf0": FlowCounts(0, 0, 5), "p0": FlowCounts(0, 0, 3)}
    # Egress flows enter from the representor, ingress flows output to it.
    assert report.for_ports(["pf0vf0"]).total == 7
    assert all(f.dp_layer == "ovs" for f in report.flows)


def test_userspace_state_also_from_datapath_type() -> None:
    body = USERSPACE_M.split("\n", 1)[1]  # without the "flow-dump from" header
    assert parse_dump_flows(body, datapath_type="netdev").state is OffloadState.UNAVAILABLE
    assert parse_dump_flows("", datapath_type="netdev").state is OffloadState.UNAVAILABLE
    assert parse_dump_flows("").state is OffloadState.UNAVAILABLE


def test_plain_dump_has_no_offload_information() -> None:
    report = parse_dump_flows(USERSPACE_PLAIN)
    assert report.state is OffloadState.UNAVAILABLE
    assert report.total.total == 10 and report.unparsed == ()
    assert {k: v.total for k, v in report.by_in_port.items()} == {"2": 5, "3": 5}
    assert report.flows[-3].output_ports == ("1", "3")
    assert report.flows[-2].output_ports == ("3",)
    assert report.flows[0].dp_layer is None


def test_kernel_tc_offload_counts() -> None:
    report = parse_dump_flows(KERNEL_TC_M, datapath_type="system")
    assert report.state is OffloadState.AVAILABLE
    # Three in hardware; one TC flow not in hardware (dp:tc without offloaded:yes); one kernel flow.
    assert report.total == FlowCounts(offloaded=3, partial=0, not_offloaded=2)
    assert report.total.offloaded_ratio == pytest.approx(0.6)
    assert dict(report.by_in_port) == {
        "pf0vf0": FlowCounts(2, 0, 1),
        "p0": FlowCounts(1, 0, 0),
        "pf0vf1": FlowCounts(0, 0, 1),
    }
    assert report.for_ports(["pf0vf0"]) == FlowCounts(3, 0, 2)  # the ARP flood outputs to pf0vf0 too
    tc_sw = report.flows[3]
    assert (tc_sw.dp_layer, tc_sw.offloaded) == ("tc", False)
    # Inferred without the datapath type too: dp:tc is offload information.
    assert parse_dump_flows(KERNEL_TC_M).state is OffloadState.AVAILABLE


def test_kernel_datapath_without_offloaded_flows_is_available() -> None:
    kernel_only = KERNEL_TC_M.splitlines()[-1] + "\n"
    report = parse_dump_flows(kernel_only, datapath_type="system")
    assert report.state is OffloadState.AVAILABLE
    assert report.total == FlowCounts(0, 0, 1)
    assert parse_dump_flows(kernel_only).state is OffloadState.AVAILABLE  # -m kernel flows name their layer
    assert parse_dump_flows("", datapath_type="system").state is OffloadState.AVAILABLE
    assert parse_dump_flows("", datapath_type="system").total.offloaded_ratio is None


def test_dpdk_partial_and_full_offload() -> None:
    report = parse_dump_flows(DPDK_M, datapath_type="netdev")
    assert report.state is OffloadState.AVAILABLE
    assert report.total == FlowCounts(offloaded=1, partial=1, not_offloaded=0)
    assert report.flows[0].partial and report.flows[0].offloaded


def test_flow_line_fields() -> None:
    flow = parse_flow_line(KERNEL_TC_M.splitlines()[0])
    assert flow is not None
    assert (flow.in_port, flow.offloaded, flow.partial, flow.dp_layer) == ("pf0vf0", True, False, "tc")
    assert flow.output_ports == ("p0",)
    for line in ("", "flow-dump from the main thread:", "garbage", "in_port(1), actions:drop"):
        assert parse_flow_line(line) is None


def test_unparsed_lines_are_kept() -> None:
    report = parse_dump_flows("ovs-vswitchd: datapath not found\n" + KERNEL_TC_M)
    assert report.unparsed == ("ovs-vswitchd: datapath not found",)
    assert report.total.total == 5


def test_argv() -> None:
    assert dump_flows_argv("/run/openvswitch/ovs-vswitchd.ctl") == [
        "-t",
        "/run/openvswitch/ovs-vswitchd.ctl",
        "dpctl/dump-flows",
        "-m",
        "--names",
    ]
    assert dump_flows_argv("ctl", "offloaded", names=False)[-1] == "type=offloaded"


def _fake_appctl(tmp_path: Path, output: str, status: int = 0) -> Path:
    (tmp_path / "out.txt").write_text(output)
    script = tmp_path / "ovs-appctl"
    script.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/argv\ncat {tmp_path}/out.txt\n'
        + (f"echo 'ovs-appctl: cannot connect' >&2\nexit {status}\n" if status else "")
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


async def test_dump_flows_runs_appctl(tmp_path: Path) -> None:
    script = _fake_appctl(tmp_path, KERNEL_TC_M)
    report = await dump_flows("/run/ovs.ctl", datapath_type="system", executable=[str(script)])
    assert report.total.offloaded == 3
    assert (tmp_path / "argv").read_text().split() == [
        "-t",
        "/run/ovs.ctl",
        "dpctl/dump-flows",
        "-m",
        "--names",
    ]


async def test_dump_flows_failure_is_an_error(tmp_path: Path) -> None:
    script = _fake_appctl(tmp_path, "", status=1)
    with pytest.raises(TraceError, match="cannot connect"):
        await dump_flows("/run/ovs.ctl", executable=[str(script)])


@pytest.mark.ovs
async def test_live_userspace_datapath(private_ovs: OvsInstance, netns_factory: NetnsFactory) -> None:
    """Against a real ovs-vswitchd (userspace datapath): traffic makes flows,
    and the report says offload is unavailable rather than failing."""
    ovs = private_ovs
    guest, uplink = netns_factory("og-"), netns_factory("ou-")
    ovs.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev", "fail_mode=secure")
    for rep, ns, mac, ip in (
        ("pf0vf0", guest, "02:00:00:00:00:01", "198.51.100.10/24"),
        ("p0", uplink, "02:00:00:00:00:02", "198.51.100.1/24"),
    ):
        netns.create_veth_pair(rep, ovs.netns, "eth0", ns)
        netns.set_link(ovs.netns, rep)
        netns.set_link(ns, "eth0", mac=mac)
        netns.add_address(ns, "eth0", ip)
        ovs.vsctl("add-port", "br0", rep)
    ovs.ofctl("add-flow", "br0", "actions=NORMAL")
    subprocess.run(
        ["ip", "netns", "exec", guest, "ping", "-c", "2", "-i", "0.2", "-W", "2", "198.51.100.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    report = await dump_flows(ovs.vswitchd_ctl, datapath_type="netdev")
    assert report.state is OffloadState.UNAVAILABLE
    assert report.unparsed == ()
    assert report.by_in_port["pf0vf0"].not_offloaded >= 1
    assert report.total.offloaded == 0
