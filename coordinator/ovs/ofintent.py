"""A cookie's desired flows by key, worked out from the last ones.

``ChannelSwitch.encode`` walks every flow (its encoding, its place, the
later flow of a place winning): for a thousand-rule attachment that is
most of a one-rule change's work. The compiler hands back the very Flow
objects of unchanged rules, in the same order, so the flows that came and
went are the span where the two sequences stop being the same objects
(``sequences.changed_span``; two set differences when they are other,
equal objects), and only those are looked at. Anything
unusual (a place taken twice, two flows with one key, a large change) is
worked out the whole way instead, so the result is always what ``encode``
would give, in some order (the adds of distinct places commute in a
bundle). Bounded in flows kept, the least recently used cookies going
first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from coordinator.flows.model import Flow
from coordinator.ovs.ofencode import EncodedFlow
from coordinator.ovs.ofwire import FlowKey, FlowPlace
from coordinator.sequences import changed_span

INTENT_FLOWS_KEPT = 16_384
Wanted = dict[FlowKey, tuple[Flow, EncodedFlow]]


class ByKey:
    """Encodings by key, as the switch will hold them: one flow per table,
    priority and match, the later one winning (as a later add of the same
    place replaces an earlier one in an ordered bundle, cookie and
    instructions included; e.g. two attachments claiming the same address).
    Made a batch of flows at a time, in order (``wanted`` is then what one
    batch of them all would give)."""

    def __init__(self, encode: Callable[[Flow], EncodedFlow]) -> None:
        self._encode = encode
        self.wanted: Wanted = {}
        self._holders: dict[FlowPlace, FlowKey] = {}

    def add(self, flows: Iterable[Flow]) -> None:
        wanted, holders, encode = self.wanted, self._holders, self._encode
        for flow in flows:
            encoded = encode(flow)
            key = encoded.key
            place = key.place
            earlier = holders.get(place)
            if earlier is not None and earlier is not key and earlier != key:
                del wanted[earlier]
            holders[place] = key
            wanted[key] = (flow, encoded)


@dataclass
class _Intent:
    flows: tuple[Flow, ...]  # as desired: each its own key and place
    wanted: Wanted
    places: dict[FlowPlace, FlowKey]


class CookieIntents:
    def __init__(
        self,
        encode_all: Callable[[Iterable[Flow]], Wanted],
        encode_one: Callable[[Flow], EncodedFlow],
        *,
        limit: int = INTENT_FLOWS_KEPT,
    ) -> None:
        self._encode_all = encode_all
        self._encode_one = encode_one
        self._limit = limit
        self._by_cookie: OrderedDict[int, _Intent] = OrderedDict()
        self._flows = 0

    def wanted(self, cookie: int, desired: Sequence[Flow]) -> Wanted:
        """What ``encode(desired)`` gives, from the cookie's last intent
        where few flows changed. Not to be changed by the caller."""
        last = self._by_cookie.pop(cookie, None)
        if last is not None:
            self._flows -= len(last.flows)
        flows = tuple(desired)
        intent = self._patched(last, flows) if last is not None else None
        if intent is None:
            wanted = self._encode_all(flows)
            intent = _Intent(flows, wanted, {key.place: key for key in wanted})
            if len(intent.places) != len(wanted) or len(wanted) != len(flows):
                return wanted  # places or keys shared (or a flow twice): not patched
        if len(flows) <= self._limit:
            self._by_cookie[cookie] = intent
            self._flows += len(flows)
            while self._flows > self._limit:
                _, dropped = self._by_cookie.popitem(last=False)
                self._flows -= len(dropped.flows)
        return intent.wanted

    def _patched(self, last: _Intent, flows: tuple[Flow, ...]) -> _Intent | None:
        # Every flow of ``last`` has a key and a place of its own, so a flow
        # gone is its key gone (a flow both gone and come back is removed,
        # then added again); a flow come whose key or place is still held is
        # a flow twice, or a place taken twice: the whole way.
        start, last_end, end = changed_span(last.flows, flows)
        gone: Collection[Flow] = last.flows[start:last_end]
        came: Collection[Flow] = flows[start:end]
        most = max(16, len(flows) // 8)
        if len(gone) + len(came) > most:
            # Equal flows as other objects (from a compile whose memo started
            # over): diffed by value instead.
            before, after = set(last.flows), set(flows)
            gone, came = before - after, after - before
            if len(gone) + len(came) > most:
                return None
        if not gone and not came and len(flows) == len(last.flows):
            return _Intent(flows, last.wanted, last.places)
        # ``wanted`` went to the last sync and is copied; the places are
        # the last intent's alone (popped, never handed out), so they are
        # patched in place: a failed patch drops them with it.
        wanted = dict(last.wanted)
        places = last.places
        for flow in gone:
            key = self._encode_one(flow).key
            held = wanted.pop(key, None)
            if held is None or (held[0] is not flow and held[0] != flow):
                return None
            del places[key.place]
        for flow in came:
            encoded = self._encode_one(flow)
            key = encoded.key
            if key in wanted or key.place in places:
                return None  # a place taken twice: the whole way, in order
            wanted[key] = (flow, encoded)
            places[key.place] = key
        if len(wanted) != len(flows):
            return None  # a flow twice
        return _Intent(flows, wanted, places)
