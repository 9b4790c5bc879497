"""The one splitter of OVS's nested text (flows, datapath actions, conntrack entries)."""

from __future__ import annotations

import pytest

from coordinator.flows.trace import TraceParseError, split_actions
from coordinator.toplevel import split_top_level


def test_commas_inside_parentheses_stay() -> None:
    assert split_top_level("ct(commit,zone=5),2,clone(3,4)") == ["ct(commit,zone=5)", "2", "clone(3,4)"]
    assert split_top_level("a=1,b=(x=2,y=(3,4))") == ["a=1", "b=(x=2,y=(3,4))"]
    assert split_top_level("a,,b") == ["a", "", "b"]
    assert split_top_level("") == [""]


def test_a_longer_separator() -> None:
    head = "ufid:1, recirc_id(0),in_port(2),eth(src=a,dst=b), packets:0, used:never"
    assert split_top_level(head, ", ") == [
        "ufid:1",
        "recirc_id(0),in_port(2),eth(src=a,dst=b)",
        "packets:0",
        "used:never",
    ]


@pytest.mark.parametrize("text", ["a(b,c", "a),b", "(()"])
def test_unbalanced_parentheses(text: str) -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        split_top_level(text)
    assert "".join(split_top_level(text, strict=False)).replace(",", "") == text.replace(",", "")
    with pytest.raises(TraceParseError, match="unbalanced"):
        split_actions(text)


def test_actions_are_stripped_and_empty_ones_dropped() -> None:
    assert split_actions(" 1, ct(zone=2,nat) ,,3") == ["1", "ct(zone=2,nat)", "3"]
