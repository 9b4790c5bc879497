from __future__ import annotations

import copy
from ipaddress import ip_network
from typing import Any

import pytest
import yaml

from coordinator.attachment_identity import BRIDGE_COOKIE, COOKIE_OWNER, COOKIE_OWNER_MASK, cookie_for_slot
from coordinator.flows.classes import load_network_classes
from coordinator.flows.compiler import BridgeFacts, PortFacts, attachment_flows, bridge_flows
from coordinator.flows.model import Ct, CtCommit, Drop, Flood, Flow, Goto, Output
from coordinator.flows.pipeline import FlowViolation, PipelineError, load_pipeline, parse_pipeline
from coordinator.flows.render import render_flows
from coordinator.policy.scope import Scope

PIPELINE = load_pipeline()
PORT = PortFacts(ofport=5, mac="02:aa:bb:cc:dd:01", slot=1)


def _raw() -> dict[str, Any]:
    from importlib import resources

    loaded: dict[str, Any] = yaml.safe_load(
        resources.files("coordinator.programs").joinpath("pipeline.yaml").read_text()
    )
    return loaded


def test_table_numbers_follow_declaration_order() -> None:
    assert [t.number for t in PIPELINE.tables] == list(range(len(PIPELINE.tables)))
    assert PIPELINE.number("classify") == 0


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        (
            Flow("egress_ct", 3000, (("nw_dst", "1.2.3.4"),), (Ct(1, "egress_policy"),), 1),
            "match field 'nw_dst'",
        ),
        (Flow("classify", 3000, (), (Output(1),), 1), "action 'output'"),
        (Flow("classify", 3000, (), (Goto("egress_policy"),), 1), "may not continue"),
        (Flow("classify", 10, (), (Goto("egress_spoof"),), 1), "priority outside"),
        (Flow("nope", 3000, (), (Drop(),), 1), "no table named"),
        (Flow("classify", 3000, (), (), 1), "no actions"),
    ],
)
def test_flow_violations_are_caught(flow: Flow, message: str) -> None:
    with pytest.raises(FlowViolation, match=message):
        PIPELINE.check(flow)


def test_goto_must_point_forward() -> None:
    raw = _raw()
    raw["tables"][1]["next"] = ["classify"]
    with pytest.raises(PipelineError, match="later table"):
        parse_pipeline(raw)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["tables"][0].update(actions=["controller"]), "unknown"),
        (lambda r: r["tables"][0].update(priorities=["nope"]), "unknown range"),
        (lambda r: r["tables"][0].update(miss="normal"), "miss"),
        (lambda r: r["priorities"].update(bad=[5, 1]), "out of order"),
        (lambda r: r["tables"].append(copy.deepcopy(r["tables"][0])), "duplicate"),
        (lambda r: r["tables"][1]["match"].append("pkt_mark"), "cannot be offloaded"),
        # Deciding fragments by the conntrack tuple would pin the policy tables to software.
        (lambda r: r["tables"][4]["match"].append("ct_tp_dst"), "cannot be offloaded"),
        (lambda r: r["tables"][0]["match"].append("reg0"), "cannot be offloaded"),
        (lambda r: r["tables"][1]["match"].append("nd_target"), "software_ok"),
    ],
)
def test_malformed_pipeline_is_refused(mutate: Any, message: str) -> None:
    raw = _raw()
    mutate(raw)
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(raw)


def test_cookies_carry_the_owner_prefix() -> None:
    assert BRIDGE_COOKIE & COOKIE_OWNER_MASK == COOKIE_OWNER
    assert cookie_for_slot(7) & COOKIE_OWNER_MASK == COOKIE_OWNER
    with pytest.raises(ValueError):
        cookie_for_slot(0)
    with pytest.raises(ValueError):
        cookie_for_slot(1 << 16)


def test_baseline_class_flows_are_valid_tagged_and_isolating() -> None:
    scope = load_network_classes()["dpu-ovs-isolated"]
    flows = attachment_flows(PIPELINE, PORT, scope)
    PIPELINE.check_all(flows)
    assert {f.cookie for f in flows} == {PORT.cookie}
    # No IP is sent through conntrack (nothing is allowed) and nothing is
    # committed: the only ways out of egress_spoof are ARP and DHCP.
    assert not [f for f in flows if f.table in ("egress_ct", "egress_commit", "ingress_commit")]
    exits = [f for f in flows if f.table == "egress_spoof" and Goto("forward") in f.actions]
    kinds = sorted(f.match_dict()["dl_type"] for f in exits)
    assert kinds == ["0x0800", "0x0806"]
    dhcp = next(f for f in exits if f.match_dict()["dl_type"] == "0x0800")
    assert dhcp.match_dict()["tp_dst"] == "67" and dhcp.match_dict()["dl_src"] == PORT.mac
    # Only the client's broadcasts, from no address: no way to another guest or host.
    assert dhcp.match_dict()["nw_src"] == "0.0.0.0" and dhcp.match_dict()["nw_dst"] == "255.255.255.255"
    arp = next(f for f in exits if f.match_dict()["dl_type"] == "0x0806")
    assert arp.match_dict()["arp_sha"] == PORT.mac
    # Before its policy, a guest may only probe (sender 0.0.0.0).
    assert arp.match_dict()["arp_spa"] == "0.0.0.0" and arp.match_dict()["arp_op"] == "1"


def test_the_l2_guard_admits_only_untagged_ipv4_ipv6_and_arp() -> None:
    bridge = bridge_flows(PIPELINE, BridgeFacts(uplink_ofport=1))
    for flows, ofport in ((attachment_flows(PIPELINE, PORT, Scope()), PORT.ofport), (bridge, 1)):
        first = [f for f in flows if f.table == "classify"]
        # (The uplink's neighbour discovery has flows of its own, to uplink_nd.)
        assert sorted({f.match_dict()["dl_type"] for f in first}) == ["0x0800", "0x0806", "0x86dd"]
        assert all(f.match_dict() == {**f.match_dict(), "in_port": str(ofport), "vlan_tci": "0x0000/0x1000"}
                   for f in first)  # fmt: skip


def test_address_probes_go_to_the_uplink_only() -> None:
    [probe] = [f for f in bridge_flows(PIPELINE, BridgeFacts(uplink_ofport=1)) if "arp_spa" in f.match_dict()]
    assert probe.table == "forward" and probe.actions == (Output(1),)
    assert probe.priority > max(
        f.priority for f in bridge_flows(PIPELINE, BridgeFacts(uplink_ofport=1)) if Flood() in f.actions
    )
    [no_uplink] = [
        f for f in bridge_flows(PIPELINE, BridgeFacts(uplink_ofport=None)) if "arp_spa" in f.match_dict()
    ]
    assert no_uplink.actions == (Drop(),)


def test_commits_recirculate_through_a_tracked_valid_check() -> None:
    flows = attachment_flows(PIPELINE, PORT, Scope(addresses=(ip_network("198.51.100.10/32"),)))
    commits = [a for f in flows for a in f.actions if isinstance(a, CtCommit)]
    assert {a.table for a in commits} == {"egress_committed", "ingress_deliver"}
    [deliver] = [f for f in flows if f.table == "ingress_deliver"]
    assert deliver.match_dict()["ct_state"] == "+trk-inv" and deliver.match_dict()["ct_mark"] == "0x1/0x1"
    assert deliver.actions == (Output(PORT.ofport),)
    later = [f for f in flows if f.match_dict().get("ip_frag") == "later"]
    assert {(f.table, f.actions) for f in later} == {
        ("egress_policy", (Goto("egress_commit"),)),
        ("ingress_policy", (Goto("ingress_commit"),)),
    }


def test_deny_all_has_no_dhcp() -> None:
    flows = attachment_flows(PIPELINE, PORT, load_network_classes()["dpu-ovs-deny-all"])
    assert not [f for f in flows if f.match_dict().get("tp_dst") in ("67", "68")]


def test_rendering_is_deterministic_and_uses_table_numbers() -> None:
    flows = bridge_flows(PIPELINE, BridgeFacts(uplink_ofport=1)) + attachment_flows(PIPELINE, PORT, Scope())
    text = render_flows(flows, PIPELINE)
    assert text == render_flows(list(reversed(flows)), PIPELINE)
    assert "cookie=0xbfc0000000000000,table=7,priority=10 actions=output:1" in text
    assert all("goto_table:" not in line or "table=" in line for line in text)


def test_no_uplink_means_no_default_route() -> None:
    flows = bridge_flows(PIPELINE, BridgeFacts(uplink_ofport=None))
    assert not [f for f in flows if any(isinstance(a, Output) for a in f.actions)]
