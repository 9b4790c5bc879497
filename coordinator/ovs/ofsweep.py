"""A whole-switch sync against the flows read, a range of cookies at a time.

A reconcile compares every attachment's intended flows with what the
switch holds (read once beforehand). Compiled, keyed and encoded all at
once, that is every flow of the switch held three or four times over, and
Python's allocator keeps the memory of such a peak for the rest of the
process's life (an arena goes back only once it is empty). Here each
cookie's flows are asked for when needed (``desired`` compiles on access
and keeps nothing), keyed and let go; only their keys stay, the ones equal
to a key read being the read one, to decide which cookie wins a place
(table, priority, match) that two claim: the later cookie, in cookie order,
as one ordered bundle of them all would leave it. Only the cookies whose
flows differ are asked for again and synced, a range of slots at a time:
one bundle of the range's differences, read back by the range's cookie
and mask (``ChannelSwitch.sync_many``), the ranges side by side on the
switch's connections and committed in cookie order (``oflanes``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import Mapping, Sequence

from coordinator.attachment_identity import cookie_range
from coordinator.flows.model import Flow
from coordinator.ovs.ofencode import FlowEncoder
from coordinator.ovs.ofintent import ByKey, Wanted
from coordinator.ovs.oflanes import cancel_all
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.ofwire import FlowKey, InstalledFlow
from coordinator.ovs.openflow import SyncResult

# Cookies synced in one bundle: aligned ranges of this many slots (about
# 1,900 flows at 32 rules an attachment, about a MB encoded and read back).
# Small enough that a range per connection in flight (``oflanes``) holds
# little, large enough that the bundles' own costs stay small: on a
# thousand attachments' 59,410 flows a re-program took 3.5-3.6 s with 16
# or 32 slots a range over four connections, 4.6 s with 64, 5.3 s with 128
# (and 146 MB resident against 106 MB with 32); 9.8 s over one connection.
RANGE_SLOTS = 32

# Where a flow sits: table, priority, match (a plain tuple: made and hashed
# in C, tens of thousands of times a reconcile).
_Place = tuple[int, int, tuple[bytes, ...]]


def _place(key: FlowKey) -> _Place:
    return key.table, key.priority, key.match


async def _already(flows: list[InstalledFlow]) -> list[InstalledFlow]:
    return flows


async def _now() -> None:
    return None


async def sync_in_ranges(
    switch: ChannelSwitch,
    desired: Mapping[int, Sequence[Flow]],
    held: Sequence[InstalledFlow],
    *,
    lost: dict[int, set[int]] | None = None,
) -> tuple[dict[int, SyncResult], dict[int, int]]:
    """Make every cookie of ``desired`` hold exactly its flows, ``held``
    being what the switch held of them when read (nothing else changed them
    since); flows of other cookies are left alone. Returns the changes by
    cookie (cookies without a change absent) and how many flows each cookie
    of ``desired`` holds now; ``lost`` gets, for each cookie that left a
    place to another, the cookies that took its places (when the switch
    held none of their flows, nothing is compared and ``lost`` is left
    empty: which cookie wins is then not worked out). Raises
    OpenFlowError (the ranges before the refused one stay synced, none
    after it is committed; one whose read-back differs raises once the
    ranges sent behind it are done)."""
    order = sorted(desired)
    ours = set(order)
    by_cookie: dict[int, list[InstalledFlow]] = {}
    for flow in held:
        if flow.key.cookie in ours:
            by_cookie.setdefault(flow.key.cookie, []).append(flow)
    winners: dict[_Place, FlowKey] | None = None
    counts: dict[int, int] = {}
    if by_cookie:
        winners = _winners(switch.encoder, desired, order, by_cookie, {} if lost is None else lost)
        for key in winners.values():
            counts[key.cookie] = counts.get(key.cookie, 0) + 1
        differing = [c for c in order if not _holds_exactly(by_cookie.get(c, ()), counts.get(c, 0), winners)]
    else:
        # Nothing of theirs on the switch (ovs-vswitchd restarted): each
        # range synced whole, in cookie order, leaves a place two claim
        # with the later cookie's flow.
        differing = order
    changes = await _sync_differing(switch, desired, differing, winners, by_cookie, counts)
    # The memos of single flows now hold the last few thousand of the
    # switch's: made in the middle of the peak, kept they would hold most of
    # its memory (about 10 MB at a thousand attachments); what they save a
    # later change is small.
    switch.forget_read_flows()
    switch.encoder.forget_flows()
    return changes, {c: counts.get(c, 0) for c in order}


async def _sync_differing(
    switch: ChannelSwitch,
    desired: Mapping[int, Sequence[Flow]],
    differing: Sequence[int],
    winners: Mapping[_Place, FlowKey] | None,
    by_cookie: Mapping[int, list[InstalledFlow]],
    counts: dict[int, int],
) -> dict[int, SyncResult]:
    """Sync the ``differing`` cookies a range at a time; ``counts`` gets
    each one's flows. Returns the changes by cookie.

    A range is compiled and encoded while the ones before it are in the
    switch, and sent at once on the next of the switch's connections
    (``oflanes``): staged beside the others, committed once the one before
    it is committed and read back, its own read-back then parsed and
    compared here while the switch takes the next. After a restart of
    ovs-vswitchd, when every flow is sent again, the switch never waits
    for us, nor one connection for another. Commits stay in cookie order,
    and none follows a refused one.
    At most one range more than there are connections is held at once."""
    changes: dict[int, SyncResult] = {}
    in_flight: collections.deque[_Range] = collections.deque()  # sent, oldest first
    try:
        ranges = itertools.groupby(differing, key=lambda cookie: cookie // RANGE_SLOTS)
        for number, (_, in_range) in enumerate(ranges):
            if len(in_flight) > switch.lanes:
                changes.update(await _verified(in_flight))
            cookies = list(in_range)
            try:
                intent, wanted = await _prepared(switch, desired, cookies, winners, pause=bool(in_flight))
            except Exception:
                # Those in flight finish first (their bundles may be in the
                # switch already), and a refusal of one is what is raised.
                while in_flight:
                    await _verified(in_flight)
                raise
            installed = [f for c in cookies for f in by_cookie.get(c, ())]
            within, mask = cookie_range(cookies)
            after = in_flight[-1] if in_flight else None
            in_flight.append(
                _Range(switch, intent, within, mask, installed, wanted, number % switch.lanes, after)
            )
            counts.update((c, len(flows)) for c, flows in intent.items())
            del intent, wanted, installed
            await asyncio.sleep(0)  # its bundle written before the next range is made
        while in_flight:
            changes.update(await _verified(in_flight))
    finally:
        await cancel_all(*(p.task for p in in_flight if not p.task.done()))  # the caller was cancelled
        for pending in in_flight:
            if not pending.task.cancelled():
                pending.task.exception()  # raised above, or after an error of ours: seen either way
    return changes


async def _verified(in_flight: collections.deque[_Range]) -> dict[int, SyncResult]:
    """The oldest range's changes, once verified. If it failed, the others
    still in flight finish first (their bundles were sent; one whose turn
    never came is discarded) and its failure is raised."""
    oldest = in_flight.popleft()
    try:
        return await oldest.task
    except Exception:
        while in_flight:
            with contextlib.suppress(Exception):
                await in_flight.popleft().task
        raise


class _Range:
    """One range's sync under way on one of the switch's connections, and
    whether its bundle is committed yet; its commit waits for ``after``'s."""

    def __init__(
        self,
        switch: ChannelSwitch,
        intent: Mapping[int, Sequence[Flow]],
        within: int,
        mask: int,
        installed: list[InstalledFlow],
        wanted: Wanted,
        lane: int,
        after: _Range | None,
    ) -> None:
        self._committed = asyncio.Event()
        self._after = after

        async def committed() -> None:
            self._committed.set()
            self._after = None

        # Every range waits for its turn, the first one's at once: so each
        # one's read-back goes in its commit's exchange (``oflanes``).
        turn = _now if after is None else after.committed
        sync = switch.sync_many(
            intent, within, mask, installed=_already(installed), wanted=wanted, beside_readback=committed,
            lane=lane, turn=turn,
        )  # fmt: skip
        self.task = asyncio.ensure_future(sync)

    async def committed(self) -> None:
        """Returns once the range's bundle is committed, or its sync is over
        without one (nothing differed); raises what failed it before that."""
        if not self._committed.is_set():
            waiting = asyncio.ensure_future(self._committed.wait())
            try:
                await asyncio.wait((self.task, waiting), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
        if not self._committed.is_set():
            self.task.result()  # the sync is over: raises what failed it
            # Nothing was sent (nothing differed), so it never waited for its
            # turn: the range before it still comes first.
            if self._after is not None:
                await self._after.committed()
            self._committed.set()
            self._after = None


async def _prepared(
    switch: ChannelSwitch,
    desired: Mapping[int, Sequence[Flow]],
    cookies: Sequence[int],
    winners: Mapping[_Place, FlowKey] | None,
    *,
    pause: bool,
) -> tuple[dict[int, list[Flow]], Wanted]:
    """The range's flows by cookie (those of places another cookie wins
    left out) and their encodings by key; with ``pause``, the loop is let
    run after each cookie, so that the range in flight is written out and
    its replies read meanwhile."""
    intent: dict[int, list[Flow]] = {}
    by_key = ByKey(switch.encoder.encode)
    for cookie in cookies:
        intent[cookie] = flows = _won(switch.encoder, desired[cookie], winners)
        by_key.add(flows)
        if pause:
            await asyncio.sleep(0)
    return intent, by_key.wanted


def _winners(
    encoder: FlowEncoder,
    desired: Mapping[int, Sequence[Flow]],
    order: Sequence[int],
    by_cookie: Mapping[int, list[InstalledFlow]],
    lost: dict[int, set[int]],
) -> dict[_Place, FlowKey]:
    """The intended key of every place, the later cookie's (and within a
    cookie, the later flow's) where two claim one; ``lost`` gets the
    cookies that took another's places."""
    read = {f.key: f.key for flows in by_cookie.values() for f in flows}
    winners: dict[_Place, FlowKey] = {}
    claimed: list[tuple[_Place, int]] = []  # (place, the cookie it was taken from)
    for cookie in order:
        for flow in desired[cookie]:
            key = encoder.key(flow)
            key = read.get(key, key)  # the read one: this one goes at once
            place = key.table, key.priority, key.match
            before = winners.get(place)
            if before is not None and before.cookie != cookie:
                claimed.append((place, before.cookie))
            winners[place] = key
    for place, cookie in claimed:
        lost.setdefault(cookie, set()).add(winners[place].cookie)
    return winners


def _holds_exactly(held: Sequence[InstalledFlow], won: int, winners: Mapping[_Place, FlowKey]) -> bool:
    """Whether a cookie holding ``held`` holds exactly the ``won`` places
    its flows win (the switch holds one flow a place, so every held flow
    being a winner and as many of them as it wins is the same set). A
    winner equal to a key read is that key itself (``_winners``)."""
    if len(held) != won:
        return False
    for flow in held:
        key = flow.key
        if winners.get((key.table, key.priority, key.match)) is not key:
            return False
    return True


def _won(encoder: FlowEncoder, flows: Sequence[Flow], winners: Mapping[_Place, FlowKey] | None) -> list[Flow]:
    """``flows`` without those whose place another cookie wins."""
    if winners is None:
        return list(flows)
    kept = []
    for flow in flows:
        key = encoder.key(flow)
        if winners.get(_place(key)) == key:
            kept.append(flow)
    return kept
