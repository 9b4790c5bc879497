"""The whole-switch sync over several connections through the real
``ChannelSwitch.sync_many`` and ``oflanes``, against a stand-in switch that
takes each exchange's messages in the order they are written and records
every bundle commit, discard and flow read: a refused range is followed by
no commit, also when a range between had nothing to send, and no range is
committed before the read-back of the one before it is answered."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator, Mapping, Sequence

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from coordinator.flows.model import Drop, Flow
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs import ofsweep, ofsync
from coordinator.ovs.ofchannel import OpenFlowChannel, Outcome, Outgoing
from coordinator.ovs.ofencode import DATAPATH
from coordinator.ovs.ofmessages import BUNDLE_FLAGS, serialize
from coordinator.ovs.ofwire import ErrorReply, WireError, bundle_ctrl_type, bundle_id_of
from coordinator.ovs.openflow import OpenFlowError

PIPELINE = load_pipeline()
COOKIES = [0xBFC0_0000_0000_0000 | slot for slot in range(1, 33)]  # 8 slots a range: ranges 0 to 4
STATS_COOKIE = struct.Struct("!Q")  # of a flow-stats request, at offset 32


class _Desired(Mapping[int, list[Flow]]):
    """One flow a cookie; none for the cookies of range ``empty``."""

    def __init__(self, empty: int = -1) -> None:
        self.empty = empty

    def __getitem__(self, cookie: int) -> list[Flow]:
        slot = cookie & 0xFFFF
        if slot // ofsweep.RANGE_SLOTS == self.empty:
            return []
        return [Flow("egress_policy", 1000, (("in_port", str(slot)),), (Drop(),), cookie)]

    def __iter__(self) -> Iterator[int]:
        return iter(COOKIES)

    def __len__(self) -> int:
        return len(COOKIES)


class _Switch:
    """Answers each exchange in the order it is written; the commit of range
    ``refuse`` is refused, after ``slow`` turns of the loop; a flow read is
    answered after ``read_turns``."""

    def __init__(self, refuse: int | None = None, slow: int = 200, read_turns: int = 0) -> None:
        self.refuse = refuse
        self.slow = slow
        self.read_turns = read_turns
        self.range_of: dict[int, int] = {}  # bundle id -> range
        self.log: list[tuple[str, int]] = []

    def prepared(self, switch: ofsync.ChannelSwitch):  # type: ignore[no-untyped-def]
        real = switch.prepare_bundle

        def prepare(changes: Sequence[bytes]) -> list[Outgoing]:
            bundle = real(changes)
            (cookie,) = struct.unpack_from("!Q", changes[0], 8)
            self.range_of[bundle_id_of(bundle[0].message)] = (cookie & 0xFFFF) // ofsweep.RANGE_SLOTS
            return bundle

        return prepare

    async def exchange(self, messages: Sequence[Outgoing], lane: int = 0) -> list[Outcome]:
        outcomes = []
        for out in messages:
            if out.message[1] == ofp.OFPT_MULTIPART_REQUEST:  # a flow read
                (cookie,) = STATS_COOKIE.unpack_from(out.message, 32)
                for _ in range(self.read_turns):
                    await asyncio.sleep(0)
                self.log.append(("read", (cookie & 0xFFFF) // ofsweep.RANGE_SLOTS))
                outcomes.append(Outcome())
                continue
            try:
                kind, bundle = bundle_ctrl_type(out.message), bundle_id_of(out.message)
            except WireError:
                outcomes.append(Outcome())  # an add
                continue
            number = self.range_of[bundle]
            if kind == ofp.ONF_BCT_COMMIT_REQUEST:
                if number == self.refuse:
                    for _ in range(self.slow):
                        await asyncio.sleep(0)
                self.log.append(("commit", number))
                if number == self.refuse:
                    outcomes.append(Outcome(error=ErrorReply(ofp.OFPET_BAD_REQUEST, 0)))
                    continue
                reply = ofp.ONF_BCT_COMMIT_REPLY
            elif kind == ofp.ONF_BCT_DISCARD_REQUEST:
                self.log.append(("discard", number))
                reply = ofp.ONF_BCT_DISCARD_REPLY
            else:
                reply = ofp.ONF_BCT_OPEN_REPLY
            ctrl = parser.ONFBundleCtrlMsg(DATAPATH, bundle, reply, BUNDLE_FLAGS, [])
            outcomes.append(Outcome(replies=[serialize(ctrl, out.xid)]))
        await asyncio.sleep(0)
        return outcomes


def _over_lanes(monkeypatch: pytest.MonkeyPatch, fake: _Switch, lanes: int = 4) -> ofsync.ChannelSwitch:
    monkeypatch.setattr(ofsweep, "RANGE_SLOTS", 8)
    channel = OpenFlowChannel(lambda: "/nonexistent", timeout=0.1)
    others = [
        OpenFlowChannel(lambda: "/nonexistent", timeout=0.1, xids=channel.xids) for _ in range(lanes - 1)
    ]
    switch = ofsync.ChannelSwitch(channel, PIPELINE, lanes=others)
    monkeypatch.setattr(switch, "_exchange", fake.exchange)
    monkeypatch.setattr(switch, "prepare_bundle", fake.prepared(switch))
    # The read-backs are not judged here (tests/unit/test_ofsweep.py).
    monkeypatch.setattr(switch, "_flows_of", lambda outcome, what, mask=-1: [])

    async def verified(*args: object) -> None:
        return None

    monkeypatch.setattr(ofsync, "verify_read_back", verified)
    return switch


@pytest.mark.parametrize("empty", [None, 1, 2])
def test_nothing_is_committed_after_a_refused_range_also_past_one_with_nothing_to_send(
    monkeypatch: pytest.MonkeyPatch, empty: int | None
) -> None:
    """Range 0 is refused, slowly. A range with nothing to send ends at once
    without a turn to wait for; the range after it still waits for range
    0's commit, and so is discarded with every other one sent."""
    fake = _Switch(refuse=0)
    switch = _over_lanes(monkeypatch, fake)
    with pytest.raises(OpenFlowError, match="bundle refused"):
        asyncio.run(ofsweep.sync_in_ranges(switch, _Desired(-1 if empty is None else empty), []))
    assert [n for kind, n in fake.log if kind == "commit"] == [0]
    assert [n for kind, n in fake.log if kind == "discard"] == [n for n in range(1, 5) if n != empty]


def test_no_range_is_committed_before_the_read_back_of_the_one_before_it_is_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the switch, connections are served in turns: a commit on one
    could otherwise be taken before the read-back asked on another, which
    would then show a place the later range took as missing."""
    fake = _Switch(read_turns=50)
    switch = _over_lanes(monkeypatch, fake)
    changes, _ = asyncio.run(ofsweep.sync_in_ranges(switch, _Desired(), []))
    assert set(changes) == set(COOKIES)
    log = fake.log
    assert [n for kind, n in log if kind == "commit"] == list(range(5))
    for n in range(1, 5):
        assert log.index(("read", n - 1)) < log.index(("commit", n))
