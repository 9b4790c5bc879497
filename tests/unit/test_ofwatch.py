"""The flow monitor's report as the channel's reader keeps it: what counts
as a change of a cookie, what a sync collects as its own, and when nothing
reported before can be trusted. Built on the bytes ovs-vswitchd 3.1 sent
for a bundle's add of one flow and for the flow-stats entry of that flow."""

from __future__ import annotations

import struct

import pytest

from coordinator.ovs import ofwatch
from coordinator.ovs.ofchannel import _Connection
from coordinator.ovs.ofknown import Held, held_from, reported
from coordinator.ovs.ofwatch import ADDED, DELETED, FlowUpdate, FlowWatch
from coordinator.ovs.ofwire import FlowKey, InstalledFlow, flow_stats, spelling_mark

REQUEST_XID = 7
# cookie 0x1234, table 3, priority 100: ip,in_port=5,nw_dst=198.51.100.7 actions=output:2
MATCH_AND_INSTRUCTIONS = (
    "0001001a800000040000000580000a02080080001804c6336407000000000000"
    "00040018000000000000001000000002ffe5000000000000"
)
UPDATE = "005000000000006400000000001a03000000000000001234" + MATCH_AND_INSTRUCTIONS
STATS_ENTRY = (
    "006803000000000000895440006400000000000000000000000000000000123400000000000000000000000000000000"
    + MATCH_AND_INSTRUCTIONS
)
ONF_FLOW_MONITOR = struct.pack("!HH4xII", 0xFFFF, 0, 0x4F4E4600, 1870)


def _reply(*updates: bytes, xid: int = 0) -> bytes:
    body = ONF_FLOW_MONITOR + b"".join(updates)
    return struct.pack("!BBHI", 4, 19, 8 + len(body), xid) + body


def _update(cookie: int = 0x1234, event: int = ADDED, table: int = 3) -> bytes:
    raw = bytearray(bytes.fromhex(UPDATE))
    struct.pack_into("!H", raw, 2, event)
    raw[14] = table
    struct.pack_into("!Q", raw, 16, cookie)
    return bytes(raw)


def _watch() -> FlowWatch:
    watch = FlowWatch(REQUEST_XID)
    assert watch.stamp is None  # not before the switch took the request
    watch.feed(_reply(xid=REQUEST_XID))
    assert watch.stamp is not None
    return watch


def _held_flow(cookie: int) -> InstalledFlow:
    """The captured flow as read under ``cookie``."""
    entry = bytearray(bytes.fromhex(STATS_ENTRY))
    struct.pack_into("!Q", entry, 24, cookie)
    [flow] = flow_stats(bytes(entry))
    return flow


def test_an_update_spells_its_flow_as_the_flow_stats_entry_does() -> None:
    watch = _watch()
    collected = watch.collect(0x1234, 8)
    assert collected is not None
    watch.feed(_reply(bytes.fromhex(UPDATE)))
    [update] = collected
    assert (update.event, update.cookie) == (ADDED, 0x1234)
    [reported_flow] = flow_stats(update.entry)
    [read_flow] = flow_stats(bytes.fromhex(STATS_ENTRY))
    assert reported_flow.key == read_flow.key
    assert reported_flow.match_block == read_flow.match_block
    assert reported_flow.mark == read_flow.mark  # the digest of a reported change is a read-back's


def test_a_change_counts_for_its_cookie_only_from_the_stamp_before_it() -> None:
    watch = _watch()
    before = watch.stamp
    watch.feed(_reply(_update(0x1234, DELETED)))
    after = watch.stamp
    assert watch.changed_since(0x1234, before)
    assert not watch.changed_since(0x1234, after)
    assert not watch.changed_since(0x99, before)
    assert watch.changed_since(0x99, None)  # a reply not stamped vouches for nothing


def test_what_a_sync_collects_counts_as_a_change_once_it_ends() -> None:
    watch = _watch()
    seen = watch.stamp
    collected = watch.collect(0x1234, 8)
    assert collected is not None and watch.collect(0x1234, 8) is None  # one sync of a cookie at a time
    watch.feed(_reply(_update(0x1234), _update(0x1234, DELETED)))
    assert len(collected) == 2 and not watch.changed_since(0x1234, seen)
    watch.release(0x1234, collected)
    # A view of the cookie from before them is out of date (another sync's
    # read of it); one as of the count the sync ended at, its own, is not.
    assert watch.changed_since(0x1234, seen)
    assert not watch.changed_since(0x1234, watch.stamp)
    assert watch.collect(0x1234, 8) is not None


def test_past_what_a_sync_sent_its_cookies_updates_count_as_changes() -> None:
    watch = _watch()
    seen = watch.stamp
    collected = watch.collect(0x1234, 2)
    assert collected is not None
    watch.feed(_reply(_update(0x1234), _update(0x1234), _update(0x1234)))
    assert len(collected) == 2 and watch.changed_since(0x1234, seen)


def test_another_cookies_add_at_a_held_place_is_a_change_of_the_cookie_held_there() -> None:
    watch = _watch()
    seen = watch.stamp
    assert watch.hold(0x99, seen, [_held_flow(0x99)])
    watch.feed(_reply(_update(0x1234, table=4)))  # another place
    assert not watch.changed_since(0x99, seen)
    watch.feed(_reply(_update(0x1234)))  # the same table, priority and match
    assert watch.changed_since(0x99, seen)


def test_a_place_taken_between_a_read_and_its_hold_is_found_by_the_hold() -> None:
    watch = _watch()
    seen = watch.stamp
    watch.feed(_reply(_update(0x1234)))
    assert not watch.changed_since(0x99, seen)
    assert not watch.hold(0x99, seen, [_held_flow(0x99)])
    # Its own add there is its own (collected and compared by its sync).
    assert watch.hold(0x1234, seen, [_held_flow(0x1234)]) is False  # changed: it was not collected
    watch = _watch()
    seen = watch.stamp
    collected = watch.collect(0x1234, 8)
    assert collected is not None
    watch.feed(_reply(_update(0x1234)))
    assert watch.hold(0x1234, seen, [_held_flow(0x1234)])


def test_when_the_adds_since_a_read_are_no_longer_all_kept_the_hold_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ofwatch, "ADDS_KEPT", 4)
    watch = _watch()
    seen = watch.stamp
    for _ in range(6):
        watch.feed(_reply(_update(0x1234, table=9)))
    assert not watch.hold(0x99, seen, [_held_flow(0x99)])


def test_a_paused_monitor_vouches_for_nothing_from_before_the_pause() -> None:
    watch = _watch()
    seen = watch.stamp
    watch.notice(ofwatch.ofp.ONFT_FLOW_MONITOR_PAUSED)
    assert watch.stamp is None and watch.changed_since(0x99, seen)
    watch.notice(ofwatch.ofp.ONFT_FLOW_MONITOR_RESUMED)
    assert watch.changed_since(0x99, seen)
    fresh = watch.stamp
    assert fresh is not None and not watch.changed_since(0x99, fresh)


@pytest.mark.parametrize(
    "update",
    [struct.pack("!HHI", 8, 3, 42), _update(event=7)],  # abbreviated; an event this daemon does not know
    ids=["abbreviated", "unknown event"],
)
def test_an_update_that_does_not_say_which_flow_changed_counts_for_every_cookie(update: bytes) -> None:
    watch = _watch()
    seen = watch.stamp
    watch.feed(_reply(update))
    assert watch.changed_since(0x99, seen) and watch.stamp is not None


def _spoilt(offset: int, value: int) -> bytes:
    raw = bytearray(bytes.fromhex(UPDATE))
    struct.pack_into("!H", raw, offset, value)
    return bytes(raw)


@pytest.mark.parametrize(
    "body",
    [
        bytes.fromhex(UPDATE)[:40],  # its length says 80
        _spoilt(0, 76)[:76],  # not a multiple of 8
        _spoilt(0, 16)[:16],  # shorter than a full update's head
        _spoilt(12, 200),  # its match longer than the update
        b"\x00\x50",  # not even a length and an event
    ],
    ids=["cut", "odd length", "short", "match too long", "head cut"],
)
def test_an_unreadable_update_ends_the_trust_in_the_report_for_good(body: bytes) -> None:
    watch = _watch()
    watch.feed(_reply(body))
    assert watch.stamp is None
    watch.feed(_reply(_update()))
    assert watch.stamp is None and watch.changed_since(0x99, 0)


def test_a_refused_monitor_vouches_for_nothing() -> None:
    watch = FlowWatch(REQUEST_XID)
    watch.refused("OFPBRC_BAD_EXPERIMENTER")
    watch.feed(_reply(xid=REQUEST_XID))
    assert watch.stamp is None


def test_past_its_bound_of_cookies_every_cookie_counts_as_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ofwatch, "COOKIES_KEPT", 3)
    watch = _watch()
    seen = watch.stamp
    for cookie in range(1, 5):
        watch.feed(_reply(_update(cookie, DELETED)))
    assert watch.changed_since(0x99, seen)


# -- what a sync makes of its collected updates (``ofknown.reported``) ----------


def _flow(n: int) -> InstalledFlow:
    key = FlowKey(0x1234, 0, 1000 + n, (n.to_bytes(4, "big"),), b"drop")
    return InstalledFlow(key, b"", spelling_mark(repr(key).encode()))


def _reported(
    events: list[tuple[int, InstalledFlow]], removed: list[InstalledFlow], added: list[InstalledFlow]
) -> tuple[Held, list[InstalledFlow]] | None:
    prior = held_from(1, {f.key: f for f in BEFORE}, BEFORE, 0)
    by_entry = {repr(flow.key).encode(): flow for _, flow in events}
    updates = [FlowUpdate(event, 0x1234, repr(flow.key).encode()) for event, flow in events]
    return reported(prior, updates, removed, [f.key for f in added], by_entry.__getitem__)


BEFORE = [_flow(n) for n in range(10)]
CAME = _flow(100)


def test_exactly_the_change_sent_leaves_the_flows_before_it_with_the_change() -> None:
    got = _reported([(DELETED, BEFORE[3]), (ADDED, CAME)], [BEFORE[3]], [CAME])
    assert got is not None
    held, came = got
    assert came == [CAME]
    assert set(held.flows) == {f.key for f in [*BEFORE[:3], *BEFORE[4:], CAME]}
    assert held.marks == sorted(f.mark for f in held.flows.values())
    assert held.seen is None  # watched only once the watch holds it


@pytest.mark.parametrize(
    "events",
    [
        [(DELETED, BEFORE[3])],  # an add not reported
        [(DELETED, BEFORE[3]), (ADDED, CAME), (ADDED, CAME)],  # reported twice
        [(DELETED, BEFORE[4]), (ADDED, CAME)],  # another flow deleted
        [(DELETED, BEFORE[3]), (ofwatch.MODIFIED, CAME)],  # modified, not added
        [(ADDED, BEFORE[3]), (ADDED, CAME)],  # added where a delete was sent
        [(DELETED, BEFORE[3]), (ADDED, _flow(101))],  # another flow added
    ],
    ids=["missing", "twice", "other delete", "modified", "wrong event", "other add"],
)
def test_any_other_report_is_not_taken_for_the_change(events: list[tuple[int, InstalledFlow]]) -> None:
    assert _reported(events, [BEFORE[3]], [CAME]) is None


def test_the_places_of_deleted_flows_are_let_go() -> None:
    watch = _watch()
    assert watch.hold(0x99, watch.stamp, [_held_flow(0x99)])
    assert len(watch._owners) == 1
    watch.feed(_reply(_update(0x99, DELETED)))
    assert watch._owners == {}


def test_an_update_whose_two_match_lengths_disagree_is_unreadable() -> None:
    watch = _watch()
    watch.feed(_reply(_spoilt(12, 24)))  # the ofp_match says 26
    assert watch.stamp is None


def test_once_live_an_error_with_the_requests_xid_is_another_requests() -> None:
    # xids wrap: after 2**32 requests another one has the monitor's.
    error = struct.pack("!BBHIHH", 4, 1, 12, REQUEST_XID, 1, 6)
    refused = FlowWatch(REQUEST_XID)
    assert _Connection._watched(refused, 1, REQUEST_XID, error)
    assert refused.stamp is None
    watch = _watch()
    assert not _Connection._watched(watch, 1, REQUEST_XID, error)
    assert watch.stamp is not None


def test_a_cancelled_monitor_vouches_for_nothing_until_asked_for_again_and_taken() -> None:
    watch = _watch()
    seen = watch.stamp
    watch.cancelled(9)
    assert watch.stamp is None and not watch.armed
    watch.feed(_reply(xid=REQUEST_XID))  # the cancelled request's reply, late
    assert watch.stamp is None
    assert watch.rearmed(11) == 2  # a new id
    assert watch.stamp is None  # not before the switch took it
    watch.feed(_reply(xid=11))
    assert watch.stamp is not None and watch.changed_since(0x99, seen)


def test_a_refused_cancel_ends_the_trust_in_the_report() -> None:
    watch = _watch()
    watch.cancelled(9)
    error = struct.pack("!BBHIHH", 4, 1, 12, 9, 1, 6)
    assert _Connection._watched(watch, 1, 9, error)
    assert not watch.usable
    watch.rearmed(11)
    watch.feed(_reply(xid=11))
    assert watch.stamp is None
