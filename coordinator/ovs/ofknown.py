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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable

from coordinator.ovs.ofwire import FlowKey, FlowsDigest, InstalledFlow

KNOWN_FLOWS_KEPT = 16_384  # a thousand-rule attachment holds about 2,000


class KnownFlows:
    def __init__(self, *, limit: int = KNOWN_FLOWS_KEPT) -> None:
        self._limit = limit
        # cookie -> (connection number, the flows by key)
        self._by_cookie: OrderedDict[int, tuple[int, dict[FlowKey, InstalledFlow]]] = OrderedDict()
        self._flows = 0
        self._digests: dict[int, FlowsDigest] = {}  # one small value a cookie in use

    def get(self, cookie: int, connection: int) -> dict[FlowKey, InstalledFlow] | None:
        found = self._by_cookie.get(cookie)
        if found is None or found[0] != connection:
            return None
        self._by_cookie.move_to_end(cookie)
        return found[1]

    def remember(self, cookie: int, connection: int, flows: Iterable[InstalledFlow]) -> None:
        """``flows`` (of any cookies: the others are left out) are what
        ``cookie`` holds, verified, on ``connection``."""
        self.keep(cookie, connection, {f.key: f for f in flows if f.key.cookie == cookie})

    def keep(self, cookie: int, connection: int, held: dict[FlowKey, InstalledFlow]) -> None:
        """``remember`` of flows already by key, all of ``cookie`` (kept as
        given: not to be changed afterwards)."""
        self.forget([cookie])
        self._digests[cookie] = FlowsDigest.of(held.values())
        if len(held) > self._limit:
            return
        self._by_cookie[cookie] = (connection, held)
        self._flows += len(held)
        while self._flows > self._limit or len(self._by_cookie) > self._limit:
            _, (_, dropped) = self._by_cookie.popitem(last=False)
            self._flows -= len(dropped)

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
                self._flows -= len(found[1])
