"""The whole-switch sync of a reconcile (``ovs.ofsweep``) without a switch:
a switch already as intended is found so with each cookie's flows asked for
one at a time, never all at once, and a place two cookies claim is the
later cookie's. Drift, and the syncs that repair it, are exercised against
a real OVS (tests/integration/test_restart_reconcile.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator, Mapping

import pytest

from coordinator.flows.model import Drop, Flow, Output
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs import ofsweep
from coordinator.ovs.ofchannel import OpenFlowChannel
from coordinator.ovs.ofencode import encode_flow_add
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.ofwire import InstalledFlow, as_installed
from coordinator.ovs.openflow import OpenFlowError, SyncResult

PIPELINE = load_pipeline()
COOKIES = [0xBFC0_0000_0000_0000 | slot for slot in range(1, 41)]
PER_COOKIE = 5
SHARED_PRIORITY = 3010


def _flows(cookie: int) -> list[Flow]:
    """Fresh Flow values (no compile memo keeps them): one shared place
    (every cookie claims it), the rest the cookie's own."""
    slot = cookie & 0xFFFF
    own = [
        Flow("egress_policy", 1000 + i, (("in_port", str(slot)),), (Drop(),), cookie)
        for i in range(PER_COOKIE - 1)
    ]
    return [
        *own,
        Flow("classify", 3010, (("dl_type", "0x0806"), ("arp_spa", "198.51.100.10")), (Drop(),), cookie),
    ]


class _Compiled(Mapping[int, list[Flow]]):
    """Each cookie's flows made when asked; how many made earlier still live then."""

    def __init__(self) -> None:
        self.live: weakref.WeakSet[Flow] = weakref.WeakSet()
        self.most_live = 0

    def __getitem__(self, cookie: int) -> list[Flow]:
        self.most_live = max(self.most_live, len(self.live))
        flows = _flows(cookie)
        self.live.update(flows)
        return flows

    def __contains__(self, cookie: object) -> bool:
        return cookie in COOKIES

    def __iter__(self) -> Iterator[int]:
        return iter(COOKIES)

    def __len__(self) -> int:
        return len(COOKIES)


def _switch() -> ChannelSwitch:
    # Nothing may be sent: the channel has nowhere to connect to.
    return ChannelSwitch(OpenFlowChannel(lambda: "/nonexistent", timeout=0.1), PIPELINE)


def _as_intended() -> list[InstalledFlow]:
    """What the switch holds once every cookie's flows are in: the shared place the last cookie's."""
    held = []
    for cookie in COOKIES:
        flows = _flows(cookie)
        held += [
            as_installed(encode_flow_add(f, PIPELINE))
            for f in (flows if cookie == COOKIES[-1] else flows[:-1])
        ]
    return held


def test_a_switch_as_intended_is_compared_with_one_cookies_flows_at_a_time() -> None:
    desired = _Compiled()
    changes, counts = asyncio.run(ofsweep.sync_in_ranges(_switch(), desired, _as_intended()))
    assert changes == {}
    # Every cookie holds its own flows; the shared one counts for the last.
    assert counts == {c: PER_COOKIE - (c != COOKIES[-1]) for c in COOKIES}
    # Asked for one cookie at a time: the flows of the one before, at most,
    # were still held when the next was made (not all forty cookies').
    assert 0 < desired.most_live <= PER_COOKIE


def test_the_shared_place_held_by_an_earlier_cookie_is_a_difference() -> None:
    # The first cookie's claim holds the shared place instead of the last's:
    # both differ, so a sync is needed (and the channel, which has no
    # switch, refuses it).
    held = [f for f in _as_intended() if f.key.priority != SHARED_PRIORITY]
    held.append(as_installed(encode_flow_add(_flows(COOKIES[0])[-1], PIPELINE)))
    with pytest.raises(OpenFlowError):
        asyncio.run(ofsweep.sync_in_ranges(_switch(), _Compiled(), held))


def test_a_flow_with_other_instructions_in_its_place_is_a_difference() -> None:
    held = _as_intended()
    first = _flows(COOKIES[0])[0]
    other = Flow(first.table, first.priority, first.match, (Output(7),), first.cookie)
    held[0] = as_installed(encode_flow_add(other, PIPELINE))
    with pytest.raises(OpenFlowError):
        asyncio.run(ofsweep.sync_in_ranges(_switch(), _Compiled(), held))


def _extra(cookie: int, port: str) -> InstalledFlow:
    return as_installed(
        encode_flow_add(Flow("egress_policy", 999, (("in_port", port),), (Drop(),), cookie), PIPELINE)
    )


def test_a_flow_of_a_cookie_not_ours_is_not_judged() -> None:
    held = [*_as_intended(), _extra(0xBFC0_0000_0000_FFFF, "4")]
    changes, _ = asyncio.run(ofsweep.sync_in_ranges(_switch(), _Compiled(), held))
    assert changes == {}


@pytest.mark.parametrize("drift", ["one missing", "one too many"])
def test_a_flow_missing_or_one_too_many_is_a_difference(drift: str) -> None:
    held = _as_intended()
    held = held[1:] if drift == "one missing" else [*held, _extra(COOKIES[0], "5")]
    with pytest.raises(OpenFlowError):
        asyncio.run(ofsweep.sync_in_ranges(_switch(), _Compiled(), held))


class _Ranges:
    """A stand-in for ``ChannelSwitch.sync_many``: what happened, in order
    (a range asked for, its bundle sent, committed once its turn came -
    or discarded - and its sync ended), each step taking some turns of the
    loop; ``refuse``: the range whose bundle is refused, ``differ``: the
    range whose read-back does not match."""

    def __init__(self, refuse: int | None = None, differ: int | None = None) -> None:
        self.log: list[tuple[str, int]] = []
        self.lanes: dict[int, int] = {}
        self.refuse = refuse
        self.differ = differ

    async def sync_many(
        self, intent, within, mask, *, installed, wanted, beside_readback=None, lane=0, turn=None
    ):  # type: ignore[no-untyped-def]
        await installed
        first = (min(intent) & 0xFFFF) // ofsweep.RANGE_SLOTS
        self.log.append(("sync", first))
        self.lanes[first] = lane
        for _ in range(4 * ofsweep.RANGE_SLOTS):  # staged: longer than the next range takes to make
            await asyncio.sleep(0)
        if turn is not None:
            try:
                await turn()
            except OpenFlowError:
                self.log.append(("discarded", first))
                raise
        if first == self.refuse:
            raise OpenFlowError(f"range {first} refused")
        self.log.append(("committed", first))
        if beside_readback is not None:
            await beside_readback()
        for _ in range(6 * ofsweep.RANGE_SLOTS):  # the read-back, parsed and compared
            await asyncio.sleep(0)
        if first == self.differ:
            raise OpenFlowError(f"range {first} read back otherwise")
        self.log.append(("synced", first))
        return {c: SyncResult(len(flows), 0, len(flows)) for c, flows in intent.items()}


class _Logged(_Compiled):
    def __init__(self, ranges: _Ranges) -> None:
        super().__init__()
        self._ranges = ranges

    def __getitem__(self, cookie: int) -> list[Flow]:
        self._ranges.log.append(("compile", (cookie & 0xFFFF) // ofsweep.RANGE_SLOTS))
        return super().__getitem__(cookie)


def _lanes(monkeypatch: pytest.MonkeyPatch, ranges: _Ranges, lanes: int) -> ChannelSwitch:
    channel = OpenFlowChannel(lambda: "/nonexistent", timeout=0.1)
    others = [
        OpenFlowChannel(lambda: "/nonexistent", timeout=0.1, xids=channel.xids) for _ in range(lanes - 1)
    ]
    switch = ChannelSwitch(channel, PIPELINE, lanes=others)
    monkeypatch.setattr(switch, "sync_many", ranges.sync_many)
    return switch


@pytest.mark.parametrize("lanes", [1, 3])
def test_ranges_go_out_side_by_side_and_are_committed_in_cookie_order(
    monkeypatch: pytest.MonkeyPatch, lanes: int
) -> None:
    """After a restart of ovs-vswitchd (nothing of ours held), every range
    is sent: each compiled and encoded while the ranges before it are in
    the switch, sent at once on the next connection, and committed once the
    one before it is; one range more than there are connections at a time."""
    monkeypatch.setattr(ofsweep, "RANGE_SLOTS", 8)  # forty slots from 1: ranges 0 to 5
    ranges = _Ranges()
    changes, counts = asyncio.run(
        ofsweep.sync_in_ranges(_lanes(monkeypatch, ranges, lanes), _Logged(ranges), [])
    )
    assert set(changes) == set(COOKIES) and counts == {c: PER_COOKIE for c in COOKIES}
    log = ranges.log
    at = log.index
    assert [e for e in log if e[0] == "committed"] == [("committed", n) for n in range(6)]
    assert ranges.lanes == {n: n % lanes for n in range(6)}
    for n in range(1, 6):
        # Compiled while the one before it was in the switch and, with
        # connections to spare, sent before that one was verified.
        compiled = [i for i, e in enumerate(log) if e == ("compile", n)]
        assert at(("sync", n - 1)) < compiled[0] and compiled[-1] < at(("sync", n))
        assert lanes == 1 or at(("sync", n)) < at(("synced", n - 1))
    for n in range(lanes + 1, 6):  # no more ranges sent than one more than the connections
        assert at(("synced", n - lanes - 1)) < at(("sync", n))
    if lanes > 1:  # several staged at once, beside the one being committed
        assert at(("sync", 2)) < at(("committed", 0))


def test_a_refused_range_is_committed_after_none_and_those_sent_behind_it_are_discarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ofsweep, "RANGE_SLOTS", 8)
    ranges = _Ranges(refuse=2)
    unretrieved: list[object] = []

    async def sweep() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context))
        await ofsweep.sync_in_ranges(_lanes(monkeypatch, ranges, 3), _Logged(ranges), [])

    with pytest.raises(OpenFlowError, match="range 2 refused"):
        asyncio.run(sweep())
    log = ranges.log
    assert [e for e in log if e[0] == "committed"] == [("committed", 0), ("committed", 1)]
    sent_after = [n for kind, n in log if kind == "sync" and n > 2]
    assert sent_after and [("discarded", n) for n in sent_after] == [e for e in log if e[0] == "discarded"]
    gc.collect()
    assert unretrieved == []


def test_a_range_read_back_otherwise_fails_the_sweep_once_the_range_after_it_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The range sent behind it is neither cut short (its bundle is in the
    switch) nor left unretrieved; the mismatch is what the caller sees and
    no range after those two is sent."""
    monkeypatch.setattr(ofsweep, "RANGE_SLOTS", 8)
    ranges = _Ranges(differ=1)
    switch = _switch()
    monkeypatch.setattr(switch, "sync_many", ranges.sync_many)
    unretrieved: list[object] = []

    async def sweep() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context))
        await ofsweep.sync_in_ranges(switch, _Logged(ranges), [])

    with pytest.raises(OpenFlowError, match="range 1 read back otherwise"):
        asyncio.run(sweep())
    assert [e for e in ranges.log if e[0] != "compile"][-1] == ("synced", 2)
    assert ("sync", 3) not in ranges.log
    gc.collect()
    assert unretrieved == []


class _FailingCompile(_Logged):
    """The compile of the first cookie of range ``broken`` fails."""

    def __init__(self, ranges: _Ranges, broken: int) -> None:
        super().__init__(ranges)
        self._broken = broken

    def __getitem__(self, cookie: int) -> list[Flow]:
        if (cookie & 0xFFFF) // ofsweep.RANGE_SLOTS == self._broken:
            raise ValueError(f"range {self._broken} does not compile")
        return super().__getitem__(cookie)


@pytest.mark.parametrize("earlier", ["verified", "refused"])
def test_a_range_that_fails_to_compile_lets_the_one_in_the_switch_finish_first(
    monkeypatch: pytest.MonkeyPatch, earlier: str
) -> None:
    """The range in flight is neither cut short (its bundle may be in the
    switch already) nor its own failure lost: a refusal of it is what the
    caller sees, else the compile's error; nothing is left unretrieved."""
    monkeypatch.setattr(ofsweep, "RANGE_SLOTS", 8)
    ranges = _Ranges(refuse=0 if earlier == "refused" else None)
    switch = _switch()
    monkeypatch.setattr(switch, "sync_many", ranges.sync_many)
    unretrieved: list[object] = []

    async def sweep() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context))
        await ofsweep.sync_in_ranges(switch, _FailingCompile(ranges, broken=1), [])

    expected = OpenFlowError if earlier == "refused" else ValueError
    with pytest.raises(expected):
        asyncio.run(sweep())
    assert ranges.log[-1] == (("synced", 0) if earlier == "verified" else ("sync", 0))
    assert ("sync", 1) not in ranges.log
    gc.collect()
    assert unretrieved == []


class _CancelledCompile(_Logged):
    """The caller is cancelled while it makes range 1 (range 0 refused by then)."""

    def __getitem__(self, cookie: int) -> list[Flow]:
        if (cookie & 0xFFFF) // ofsweep.RANGE_SLOTS == 1 and (cookie & 0xFFFF) % 8 == 4:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
        return super().__getitem__(cookie)


def test_a_caller_cancelled_after_a_refusal_leaves_nothing_unretrieved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ofsweep, "RANGE_SLOTS", 8)
    ranges = _Ranges(refuse=0)
    switch = _switch()

    async def refused_at_once(
        intent, within, mask, *, installed, wanted, beside_readback=None, lane=0, turn=None
    ):  # type: ignore[no-untyped-def]
        await installed
        ranges.log.append(("sync", 0))
        raise OpenFlowError("range 0 refused")

    monkeypatch.setattr(switch, "sync_many", refused_at_once)
    unretrieved: list[object] = []

    async def sweep() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context))
        with pytest.raises(asyncio.CancelledError):
            await ofsweep.sync_in_ranges(switch, _CancelledCompile(ranges), [])

    asyncio.run(sweep())
    gc.collect()
    assert ranges.log.count(("sync", 0)) == 1 and unretrieved == []
