"""What each cookie held when its last sync through ``ChannelSwitch`` was
verified, so that a policy change can diff against it instead of reading
the switch first.

Only a hint: something else may change the switch (an administrator, a
restart of ovs-vswitchd), so whatever is sent from it is still read back and
compared, and a difference starts the sync over from a fresh read. An entry
belongs to one connection of the channel (a new connection means the switch
may have restarted and lost its flows) and is dropped whenever a change
through this switch touches its cookie other than by a verified sync.
Bounded in flows and in cookies (a deleted cookie is remembered empty),
the least recently used cookies going first.

Beside the flows, the digest of what each cookie held at its last verified
sync (``FlowsDigest``), of any connection and whatever its size: a proof
that a sync's intent was on the switch (``flow_proofs``) outlives the
connection and the process. Dropped with the flows.

A read-back after a small change is compared where it differs from the
last verified one (``changed``): the switch lists a cookie's flows in the
same order from one read to the next, and the flow-stats reader hands back
the very objects of flows it read before, so what a change touched is the
span where the two lists stop being the same objects, found by comparing
references in C. For a thousand-flow cookie that spares hashing every key
of the read-back and sorting every mark again, most of what the comparison
cost.

With the switch's flow monitor (``ofwatch``) a change need not be read
back at all: when the cookie has not changed since its flows were read
(or last so verified) and the switch reported exactly the deletes and adds
sent, ``reported`` works out what it holds now from those reports.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from coordinator.ovs.ofwatch import ADDED, DELETED, FlowUpdate, FlowWatch
from coordinator.ovs.ofwire import FlowKey, FlowsDigest, InstalledFlow, WireError
from coordinator.sequences import changed_span

KNOWN_FLOWS_KEPT = 16_384  # a thousand-rule attachment holds about 2,000


class StaleKnown(Exception):
    """A sync from the remembered state read back something else: the
    switch was changed behind our back."""


@dataclass(frozen=True)
class SwitchState:
    """What a cookie holds and, if asked, which meters exist."""

    flows: list[InstalledFlow]
    meters: set[int] | None  # None: not read
    seen: int | None = None  # the flow watch's stamp of the read (``ofwatch``)


@dataclass(frozen=True, slots=True)
class Held:
    """One cookie's flows as a verified read showed them."""

    connection: int
    flows: dict[FlowKey, InstalledFlow]  # not to be changed
    order: Sequence[InstalledFlow] | None  # the same flows as the switch listed them; None: unknown
    marks: list[bytes]  # their marks, sorted (the digest's input); not to be changed
    seen: int | None = None  # the flow watch's count they are as of; None: not watched

    @property
    def digest(self) -> FlowsDigest:
        return FlowsDigest.of_sorted(self.marks)


def held_from(
    connection: int,
    flows: dict[FlowKey, InstalledFlow],
    order: Sequence[InstalledFlow],
    seen: int | None = None,
) -> Held:
    """``flows`` by key, ``order`` the very same flows as read (when it holds
    anything else, e.g. a flow twice, the order is not kept)."""
    marks = sorted(f.mark for f in flows.values())
    return Held(connection, flows, order if len(order) == len(flows) else None, marks, seen)


def reported(
    prior: Held,
    updates: Sequence[FlowUpdate],
    removed: Collection[InstalledFlow],
    added: Collection[FlowKey],
    read: Callable[[bytes], InstalledFlow],
) -> tuple[Held, list[InstalledFlow]] | None:
    """What the cookie holds if ``updates``, all the switch reported of it
    since ``prior`` was what it held, are exactly the deletes of
    ``removed`` (``prior``'s own flows) and the adds of ``added`` (keys
    ``prior`` lacks), with the flows that came; None if they are anything
    else. ``read`` makes a flow of an update's entry, as a read-back would.
    The result is not watched (``seen`` None) until the caller says so."""
    if len(updates) != len(removed) + len(added):
        return None
    flows = dict(prior.flows)
    marks = list(prior.marks)
    gone = {f.key for f in removed}
    coming = set(added)
    came = []
    for update in updates:
        flow = read(update.entry)
        if update.event == DELETED and flow.key in gone:
            gone.discard(flow.key)
            held = flows.pop(flow.key, None)
            if held is None or not _drop_mark(marks, held.mark):
                return None
        elif update.event == ADDED and flow.key in coming and flow.key not in flows:
            coming.discard(flow.key)
            flows[flow.key] = flow
            bisect.insort(marks, flow.mark)
            came.append(flow)
        else:
            return None  # not what was sent: something else changed the cookie
    if gone or coming:
        return None
    return Held(prior.connection, flows, None, marks), came


def changed(
    prior: Held,
    after: Sequence[InstalledFlow],
    removed: Collection[InstalledFlow],
    wanted: Mapping[FlowKey, object],
) -> Held | None:
    """What the cookie holds if ``after``, its read-back after a bundle that
    deleted ``removed`` from ``prior`` and added the keys of ``wanted`` that
    ``prior`` lacked, shows exactly ``wanted``; None if it does not, or if
    that cannot be told from a small span (then compare the whole way).

    ``removed`` must be every flow of ``prior`` whose key is not wanted (as
    the diff made them: ``prior.flows``' own objects). Then the flows outside
    the span, being ``prior``'s and none of the removed, are all wanted;
    checking the span's flows are wanted, and none twice, and the count,
    shows the read-back is exactly ``wanted``."""
    order = prior.order
    if order is None or len(after) != len(wanted):
        return None
    start, old_end, new_end = changed_span(order, after)
    gone, came = order[start:old_end], after[start:new_end]
    if len(gone) + len(came) > max(16, len(after) // 8):
        return None
    gone_ids = {id(f) for f in gone}
    if any(id(f) not in gone_ids for f in removed):
        return None  # outside the span, so still on the switch
    flows = dict(prior.flows)
    marks = list(prior.marks)
    for flow in gone:
        if flows.pop(flow.key, None) is not flow or not _drop_mark(marks, flow.mark):
            return None  # not the prior state's own flow: compare the whole way
    for flow in came:
        if flow.key not in wanted or flow.key in flows:
            return None  # not wanted, or twice
        flows[flow.key] = flow
        bisect.insort(marks, flow.mark)
    return Held(prior.connection, flows, after, marks)


def verified_by_report(
    watch: FlowWatch,
    cookie: int,
    prior: Held,
    collected: list[FlowUpdate],
    removed: Collection[InstalledFlow],
    added: Collection[FlowKey],
    read: Callable[[bytes], InstalledFlow],
    collected_since: int,
) -> Held | None:
    """What ``cookie`` holds after a bundle of ``removed`` and ``added``
    sent from ``prior``, if ``watch`` shows nothing else changed it since
    ``prior`` and the switch reported, into ``collected`` (from the count
    ``collected_since``), exactly those changes (``reported``): as verified
    as a read-back, being what the switch holds as it spells it. None
    otherwise. Ends the collecting in the same step, so no update falls
    between the check and its end."""
    now = None
    try:
        if not watch.changed_since(cookie, prior.seen):
            got = reported(prior, collected, removed, added, read)
            if got is not None and watch.hold(cookie, prior.seen, got[1], adds_since=collected_since):
                now = replace(got[0], seen=watch.seq)
    except WireError:
        now = None
    finally:
        watch.release(cookie, collected)
    return now


def _drop_mark(marks: list[bytes], mark: bytes) -> bool:
    at = bisect.bisect_left(marks, mark)
    if at == len(marks) or marks[at] != mark:
        return False
    del marks[at]
    return True


class KnownFlows:
    def __init__(self, *, limit: int = KNOWN_FLOWS_KEPT) -> None:
        self._limit = limit
        self._by_cookie: OrderedDict[int, Held] = OrderedDict()
        self._flows = 0
        self._digests: dict[int, FlowsDigest] = {}  # one small value a cookie in use

    def get(self, cookie: int, connection: int) -> dict[FlowKey, InstalledFlow] | None:
        found = self._held(cookie, connection)
        return None if found is None else found.flows

    def _held(self, cookie: int, connection: int) -> Held | None:
        found = self._by_cookie.get(cookie)
        if found is None or found.connection != connection:
            return None
        self._by_cookie.move_to_end(cookie)
        return found

    def take(self, cookie: int, connection: int) -> Held | None:
        """What ``cookie`` held on ``connection``, forgotten (a change of it
        is under way: see ``changed``)."""
        found = self._held(cookie, connection)
        self.forget([cookie])
        return found

    def remember(
        self, cookie: int, connection: int, flows: Iterable[InstalledFlow], seen: int | None = None
    ) -> Held:
        """``flows`` (of any cookies: the others are left out) are what
        ``cookie`` holds, verified, on ``connection`` (as of the watch's
        count ``seen``, if watched)."""
        order = [f for f in flows if f.key.cookie == cookie]
        held = held_from(connection, {f.key: f for f in order}, order, seen)
        self.put(cookie, held)
        return held

    def keep_read_back(
        self,
        cookie: int,
        connection: int,
        after: Sequence[InstalledFlow],
        wanted: Mapping[FlowKey, object],
        prior: Held | None = None,
        removed: Collection[InstalledFlow] = (),
        seen: int | None = None,
    ) -> Held | None:
        """Keep ``after``, a read-back of exactly ``cookie`` (stamped ``seen``
        by the flow watch), if it shows exactly ``wanted``; None (nothing
        kept) if it does not. ``prior`` and ``removed``: the state the
        change was diffed against and what it deleted of it (see
        ``changed``), to compare only where they differ."""
        now = None
        if prior is not None and prior.connection == connection:
            now = changed(prior, after, removed, wanted)
        if now is None:
            held = {f.key: f for f in after}
            if len(held) != len(wanted) or len(after) != len(held) or set(held).difference(wanted):
                return None
            now = held_from(connection, held, after)
        now = replace(now, seen=seen) if seen is not None else now
        self.put(cookie, now)
        return now

    def put(self, cookie: int, held: Held) -> None:
        self.forget([cookie])
        self._digests[cookie] = held.digest
        if len(held.flows) > self._limit:
            return
        self._by_cookie[cookie] = held
        self._flows += len(held.flows)
        while self._flows > self._limit or len(self._by_cookie) > self._limit:
            _, dropped = self._by_cookie.popitem(last=False)
            self._flows -= len(dropped.flows)

    def verified(self, cookies: Collection[int], after: Iterable[InstalledFlow]) -> None:
        """``after`` (a verified read-back) is what ``cookies`` hold: their
        digests, the flows of other cookies left out (the flows themselves
        are not kept: a sync of many cookies holds too many)."""
        by_cookie: dict[int, list[InstalledFlow]] = {cookie: [] for cookie in cookies}
        for flow in after:
            found = by_cookie.get(flow.key.cookie)
            if found is not None:
                found.append(flow)
        for cookie, held in by_cookie.items():
            self.forget([cookie])
            self._digests[cookie] = FlowsDigest.of(held)

    def digest(self, cookie: int) -> FlowsDigest | None:
        return self._digests.get(cookie)

    def forget(self, cookies: Iterable[int]) -> None:
        for cookie in cookies:
            self._digests.pop(cookie, None)
            found = self._by_cookie.pop(cookie, None)
            if found is not None:
                self._flows -= len(found.flows)
