"""Flow identity across the two ways ovs-ofctl prints a canonical flow."""

from __future__ import annotations

from coordinator.ovs.openflow import _dumped, _flow_key

DUMPED = "cookie=0xbfc0000000000001, table=8, priority=10,ct_state=+new-est-rel-inv+trk,ip,dl_dst=02:3f:5e:00:00:00 actions=drop"
DIFFED = "table=8 priority=10,ct_state=+new-est-rel-inv+trk,ip,dl_dst=02:3f:5e:00:00:00 cookie=0xbfc0000000000001 actions=drop"


def test_dump_and_diff_spellings_are_the_same_flow() -> None:
    assert _flow_key(DUMPED) == _flow_key(DIFFED)
    key = _flow_key(DUMPED)
    assert (key.cookie, key.table, key.actions) == (0xBFC0000000000001, 8, "drop")
    assert key.match == "priority=10,ct_state=+new-est-rel-inv+trk,ip,dl_dst=02:3f:5e:00:00:00"


def test_table_zero_is_left_out_by_both() -> None:
    dumped = _flow_key("cookie=0x1, priority=3000,in_port=2 actions=goto_table:1")
    diffed = _flow_key("priority=3000,in_port=2 cookie=0x1 actions=goto_table:1")
    assert dumped == diffed and dumped.table == 0


def test_actions_cookie_and_table_tell_flows_apart() -> None:
    assert _flow_key(DUMPED) != _flow_key(DUMPED.replace("actions=drop", "actions=goto_table:9"))
    assert _flow_key(DUMPED) != _flow_key(DUMPED.replace("0xbfc0000000000001", "0xbfc0000000000002"))
    assert _flow_key(DUMPED) != _flow_key(DUMPED.replace("table=8", "table=9"))


def test_the_predicted_dump_spelling_is_the_dump_spelling() -> None:
    assert _dumped(_flow_key(DIFFED)) == DUMPED
    table0 = "cookie=0x1, priority=3000,in_port=2 actions=goto_table:1"
    assert _dumped(_flow_key("priority=3000,in_port=2 cookie=0x1 actions=goto_table:1")) == table0
