"""A refused bundle is named by what the switch refused, and only then."""

from __future__ import annotations

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from coordinator.ovs.ofchannel import Outcome, Outgoing
from coordinator.ovs.ofmessages import BundleError, by_position, check_bundle, named_changes
from coordinator.ovs.ofwire import ErrorReply, FlowKey

KEY = FlowKey(0x2A, 3, 100, (b"\x80\x00\x00\x04\x00\x00\x00\x02",), b"")
REFUSED = Outcome(error=ErrorReply(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_TABLE_FULL))


def _sent(changes: int) -> list[Outgoing]:
    return [Outgoing(b"", xid) for xid in range(changes + 2)]  # open, the changes, commit


def _refused(at: int, changes: int) -> list[Outcome]:
    return [REFUSED if i == at else Outcome() for i in range(changes + 2)]


def test_a_refused_change_is_named_by_what_it_touches() -> None:
    label = named_changes([0x2A, KEY, KEY], deleted=2)
    for at, name in [
        (1, "delete of cookie 0x2a"),
        (2, "delete of table 3 priority 100"),
        (3, "add of table 3"),
    ]:
        with pytest.raises(BundleError, match=f"{name}.*OFPFMFC_TABLE_FULL"):
            check_bundle(_sent(3), _refused(at, 3), label)
    with pytest.raises(BundleError, match="change 2: "):
        check_bundle(_sent(3), _refused(2, 3), by_position)
    with pytest.raises(BundleError, match="change 4: "):  # one more than named
        check_bundle(_sent(4), _refused(4, 4), label)


def test_labels_are_asked_only_of_a_refused_change() -> None:
    asked: list[int] = []

    def label(i: int) -> str:
        asked.append(i)
        return str(i)

    commit = Outcome(replies=[])
    with pytest.raises(BundleError, match="no commit reply"):
        check_bundle(_sent(1000), [*_refused(-1, 1000)[:-1], commit], label)
    assert asked == []
    with pytest.raises(BundleError):
        check_bundle(_sent(1000), _refused(500, 1000), label)
    assert asked == [499]
