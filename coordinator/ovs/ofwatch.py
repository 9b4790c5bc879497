"""The switch's own report of every flow change on the bridge, so a small
change can be verified from what the switch says it did, without reading
the cookie's flows back.

On each connection the channel asks for an ONF flow monitor (OpenFlow 1.3's
extension, OVS's ``ovs-ofctl monitor``) over every table and cookie, with
full updates (match and instructions) of adds, deletes and modifications,
this connection's own included. ovs-vswitchd then sends one update per
flow change on the bridge, from any connection, in the order they happen,
and those a bundle causes before the bundle's commit reply: once a
barrier's reply is in, every update of the changes before it is too.

What this module keeps, per connection (``FlowWatch``):

- ``seq``: a count that every update (and pause) the reader sees moves
  on. A reply is stamped with it (``Outcome.seen``): what it shows is the
  switch as of that count, and a change after it has a higher one. The
  count is the process's, not the connection's: a new connection's watch
  starts above every stamp of the connections before it, so a stamp
  never vouches for a connection that did not give it.
- The count of the last change of each cookie (``changed_since``): a
  cookie's flows read at one count and not changed since are still what
  was read, without reading them again.
- While a sync of a cookie is under way, its updates are collected
  (``collect``, up to one more than the sync sent) for the sync to
  compare with what it sent. When the sync ends they count as a change
  of the cookie all the same: the sync that accepts them holds the cookie
  as of that very count, and any older view of it (another sync's read)
  is out of date.
- Where the flows of the cookies held for such syncs sit (table, priority
  and match as the switch spells it; ``hold``): an add replaces a flow at
  the same place whatever its cookie, and ovs-vswitchd reports that as an
  add of the new flow alone. Such an add counts as a change of the cookie
  whose flow it replaced (held again only by a read); a delete lets its
  place go.

Whenever the report may be incomplete - the switch paused the monitor
(its backlog to us grew past its limit), an abbreviated or unreadable
update, a bound reached - every cookie counts as changed from then on,
and syncs read back as they do without a monitor.

Built by hand: os-ken's encoder of this request leaves out the ``ofp_match``
header that OVS requires (OVS answers it with an error), and its parser
would build an object per update where only a few fields are needed.
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp

from coordinator.ovs.ofwire import HEADER, InstalledFlow, WireError

log = logging.getLogger(__name__)

ONF = ofproto_common.ONF_EXPERIMENTER_ID
_MULTIPART_EXPERIMENTER = struct.Struct("!HH4xII")  # type, flags; experimenter, exp_type
_EXPERIMENTER = struct.Struct("!II")
# onf_flow_monitor_request: id, flags, match length, out port, table; then
# the ofp_match header of an empty OXM match (type, length, padding).
_MONITOR_REQUEST = struct.Struct("!IHHIB3xHH4x")
# onf_flow_update_full: length, event, reason, priority, idle and hard
# timeouts, match length (unpadded), table, pad, cookie; then the padded
# ofp_match and the instructions, spelled as in a flow-stats entry.
_UPDATE = struct.Struct("!HHHHHHHBxQ")
_FLOW_STATS = struct.Struct(ofp.OFP_FLOW_STATS_0_PACK_STR)
_WATCHED = ofp.ONFFMF_ADD | ofp.ONFFMF_DELETE | ofp.ONFFMF_MODIFY | ofp.ONFFMF_ACTIONS | ofp.ONFFMF_OWN

ADDED = ofp.ONFFME_ADDED
DELETED = ofp.ONFFME_DELETED
MODIFIED = ofp.ONFFME_MODIFIED

COOKIES_KEPT = 65_536  # cookies with a change counted, places held: past it all count as changed
PLACES_KEPT = 65_536
ADDS_KEPT = 4096  # the recent adds a ``hold`` checks its places against
_COUNT = itertools.count(1)  # every watch's counts, one process-wide sequence


def monitor_request(xid: int, monitor_id: int) -> bytes:
    """The ONF flow-monitor request of every table and cookie."""
    body = _MULTIPART_EXPERIMENTER.pack(ofp.OFPMP_EXPERIMENTER, 0, ONF, ofp.ONFMP_FLOW_MONITOR)
    body += _MONITOR_REQUEST.pack(monitor_id, _WATCHED, 4, ofp.OFPP_ANY, ofp.OFPTT_ALL, ofp.OFPMT_OXM, 4)
    return HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REQUEST, HEADER.size + len(body), xid) + body


def monitor_cancel(xid: int, monitor_id: int) -> bytes:
    """ONFT_FLOW_MONITOR_CANCEL of the monitor ``monitor_id``."""
    body = _EXPERIMENTER.pack(ONF, ofp.ONFT_FLOW_MONITOR_CANCEL) + struct.pack("!I", monitor_id)
    return HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_EXPERIMENTER, HEADER.size + len(body), xid) + body


def is_monitor_reply(message: bytes) -> bool:
    """Whether a multipart reply is the flow monitor's (its updates)."""
    if len(message) < HEADER.size + _MULTIPART_EXPERIMENTER.size or message[8:10] != b"\xff\xff":
        return False
    _, _, experimenter, kind = _MULTIPART_EXPERIMENTER.unpack_from(message, HEADER.size)
    return bool(experimenter == ONF and kind == ofp.ONFMP_FLOW_MONITOR)


def monitor_notice(message: bytes) -> int | None:
    """ONFT_FLOW_MONITOR_PAUSED or _RESUMED, if ``message`` is one."""
    if message[1] != ofp.OFPT_EXPERIMENTER or len(message) < HEADER.size + _EXPERIMENTER.size:
        return None
    experimenter, kind = _EXPERIMENTER.unpack_from(message, HEADER.size)
    if experimenter != ONF or kind not in (ofp.ONFT_FLOW_MONITOR_PAUSED, ofp.ONFT_FLOW_MONITOR_RESUMED):
        return None
    return int(kind)


@dataclass(frozen=True, slots=True)
class FlowUpdate:
    """One full update: what happened (``ADDED``, ``DELETED``, ``MODIFIED``)
    to the flow ``entry`` spells, as a flow-stats entry would (durations and
    counters zero; flags zero, which the update does not carry and this
    daemon never sets)."""

    event: int
    cookie: int
    entry: bytes


def _place(table: int, priority: int, match_block: bytes) -> bytes:
    """Where a flow sits, as the switch spells it (it spells one place one way)."""
    return bytes((table, priority >> 8, priority & 0xFF)) + match_block


def place_of(flow: InstalledFlow) -> bytes:
    """``_place`` of a flow read from the switch."""
    return _place(flow.key.table, flow.key.priority, flow.match_block)


class FlowWatch:
    """The monitor's report on one connection (see the module's docstring)."""

    def __init__(self, request_xid: int, monitor_id: int = 1) -> None:
        self.request_xid: int | None = request_xid  # None: cancelled, nothing asked
        self.cancel_xid: int | None = None
        self.monitor_id = monitor_id
        self.armed = True  # asked for (False: cancelled for bulk work, see ``cancelled``)
        self.seq = next(_COUNT)
        self._live = False  # the switch took the request
        self._paused = False
        self._broken = False
        self._all_changed_at = self.seq  # every cookie counts as changed at this count
        self._changed_at: dict[int, int] = {}  # cookie: the count of its last change
        self._owners: dict[bytes, int] = {}  # place: the cookie held there
        self._adds: deque[tuple[int, bytes, int]] = deque(maxlen=ADDS_KEPT)  # count, place, cookie
        self._collecting: dict[int, _Collected] = {}

    @property
    def stamp(self) -> int | None:
        """What a reply handled now is stamped with: None while the report
        is not to be trusted."""
        return self.seq if self._live and not self._paused and not self._broken else None

    # -- what the reader hands over -------------------------------------------

    @property
    def live(self) -> bool:
        """Whether the switch took the monitor's request."""
        return self._live

    def started(self) -> None:
        self._live = True

    @property
    def usable(self) -> bool:
        """Whether the switch may still take the monitor (not refused, all read)."""
        return not self._broken

    def cancelled(self, cancel_xid: int) -> None:
        """The monitor is being cancelled by ``cancel_xid`` (bulk work
        ahead, whose every flow the switch would report): nothing is
        vouched for until it is asked for again (``rearmed``) and the
        switch has taken that; a late reply to the cancelled request
        vouches for nothing. The places held go with it (every cookie is
        read again before it is watched again)."""
        self.armed = False
        self._live = False
        self.request_xid = None
        self.cancel_xid = cancel_xid
        self._owners.clear()
        self._adds.clear()
        self._everything_changed()

    def rearmed(self, request_xid: int) -> int:
        """The monitor is asked for again by ``request_xid``: its new id."""
        self.request_xid = request_xid
        self.monitor_id += 1
        self.armed = True
        self._live = False
        self._everything_changed()
        return self.monitor_id

    def refused(self, why: str) -> None:
        self._broken = True
        log.warning("the switch refused the flow monitor (%s): every change is read back", why)

    def notice(self, kind: int) -> None:
        """The switch paused or resumed the monitor: what changed meanwhile
        may never be reported one by one."""
        self._paused = kind == ofp.ONFT_FLOW_MONITOR_PAUSED
        self._everything_changed()

    def feed(self, message: bytes) -> None:
        """The updates of one flow-monitor reply."""
        if self.armed and HEADER.unpack_from(message)[3] == self.request_xid:
            self.started()  # the reply to the request itself (no initial flows asked)
        try:
            self._count(message)
        except WireError as exc:
            if not self._broken:  # said once: it stays broken
                log.warning("unreadable flow-monitor update (%s): every change is read back", exc)
            self._broken = True
            self._everything_changed()

    def _count(self, message: bytes) -> None:
        # One loop, its lookups bound to locals: it runs once per flow change
        # on the bridge (a fresh thousand-rule policy makes two thousand).
        # One count for the whole message: no reply is stamped in the middle
        # of it, so its updates need not be told apart by count.
        at, end = HEADER.size + _MULTIPART_EXPERIMENTER.size, len(message)
        seq = self.seq = next(_COUNT)
        unpack, collecting, owners, adds = _UPDATE.unpack_from, self._collecting, self._owners, self._adds
        changed_at = self._changed_at
        while at < end:
            if at + 4 > end:
                raise WireError(f"flow update cut at byte {at}")
            length, event = message[at] << 8 | message[at + 1], message[at + 2] << 8 | message[at + 3]
            if length < 4 or at + length > end or length % 8:
                raise WireError(f"flow update of length {length} at byte {at} does not fit")
            if event > MODIFIED:  # abbreviated, or unknown to this daemon
                self._everything_changed()
                seq, changed_at = self.seq, self._changed_at
                at += length
                continue
            if length < _UPDATE.size + 8:
                raise WireError(f"full flow update of length {length} at byte {at}")
            _, _, _, _, _, _, match_length, _, cookie = unpack(message, at)
            match_at = at + _UPDATE.size
            match_end = match_at + (match_length + 7) // 8 * 8
            if match_length < 4 or match_end > at + length:
                raise WireError(f"flow update's match of length {match_length} does not fit")
            if message[match_at : match_at + 4] != _OXM_HEADS.get(match_length) and not _oxm_head(
                message, match_at, match_length
            ):
                raise WireError(f"flow update's match is not the OXM match of length {match_length}")
            collected = collecting.get(cookie)
            if collected is not None and len(collected.updates) < collected.limit:
                collected.updates.append(FlowUpdate(event, cookie, _as_flow_stats(message, at, length)))
            else:  # not a sync's (or more than it sent: it cannot match)
                changed_at[cookie] = seq
            if owners or event != DELETED:
                # ``_place``: table, priority, match block, sliced as they lie.
                place = message[at + 14 : at + 15] + message[at + 6 : at + 8] + message[match_at:match_end]
                owner = owners.get(place)
                if event == DELETED:
                    if owner == cookie:
                        del owners[place]  # its flow there is gone
                else:
                    if owner is not None and owner != cookie:
                        changed_at[owner] = seq  # its flow there was replaced: held again only by a read
                        del owners[place]
                    adds.append((seq, place, cookie))
            at += length
        if len(changed_at) > COOKIES_KEPT:
            self._everything_changed()

    def _changed(self, cookie: int) -> None:
        if len(self._changed_at) >= COOKIES_KEPT:
            self._everything_changed()
        self._changed_at[cookie] = self.seq

    def _everything_changed(self) -> None:
        self.seq = next(_COUNT)
        self._all_changed_at = self.seq
        self._changed_at.clear()

    # -- what a sync asks ------------------------------------------------------

    def changed_since(self, cookie: int, seen: int | None) -> bool:
        """Whether ``cookie``'s flows may have changed since the reply stamped
        ``seen`` (always, if it was not stamped or the report is not trusted)."""
        if seen is None or self.stamp is None or self._all_changed_at > seen:
            return True
        return self._changed_at.get(cookie, 0) > seen

    def hold(
        self, cookie: int, seen: int | None, flows: Iterable[InstalledFlow], *, adds_since: int | None = None
    ) -> bool:
        """Note where ``flows`` (what ``cookie`` holds, as of ``seen``) sit,
        so an add replacing one of them counts as a change of ``cookie``.
        False if one was replaced already since ``seen`` (or since
        ``adds_since``, for flows added later than ``seen``), or if that
        cannot be told: then ``cookie`` may have changed."""
        if self.changed_since(cookie, seen):
            return False
        assert seen is not None
        since = seen if adds_since is None else max(seen, adds_since)
        owners = self._owners
        if len(owners) >= PLACES_KEPT:
            owners.clear()  # places of cookies held now are lost with them
            self._everything_changed()
            return False
        places = {place_of(flow) for flow in flows}
        for place in places:
            owners[place] = cookie
        if self._adds and self._adds[0][0] > since and len(self._adds) == ADDS_KEPT:
            return False  # the adds since then are no longer all kept
        for at, place, other in reversed(self._adds):  # the newest first
            if at <= since:
                break
            if other != cookie and place in places:
                return False
        return True

    def collect(self, cookie: int, limit: int) -> list[FlowUpdate] | None:
        """Collect ``cookie``'s updates from now on, up to ``limit`` (into the
        list returned; past it they count as changes), instead of counting
        them as changes; None if already collected (two syncs of one cookie
        at once: each reads back)."""
        if cookie in self._collecting:
            return None
        collecting = self._collecting[cookie] = _Collected([], limit)
        return collecting.updates

    def release(self, cookie: int, collected: list[FlowUpdate]) -> None:
        """Stop collecting ``cookie``'s updates, and count them as a change
        of it: a sync that accepts them as its own holds the cookie as of
        this very count, and any other view of the cookie from before them
        (a read of another sync of it) is out of date."""
        found = self._collecting.get(cookie)
        if found is not None and found.updates is collected:
            del self._collecting[cookie]
        self._changed(cookie)


@dataclass(slots=True)
class _Collected:
    updates: list[FlowUpdate]
    limit: int


_OXM_HEADS = {n: struct.pack("!HH", ofp.OFPMT_OXM, n) for n in range(4, 512)}  # the usual lengths


def _oxm_head(message: bytes, at: int, length: int) -> bool:
    """Whether an ofp_match header of a length past ``_OXM_HEADS`` is OXM's of ``length``."""
    return message[at : at + 4] == struct.pack("!HH", ofp.OFPMT_OXM, length)


def _as_flow_stats(message: bytes, at: int, length: int) -> bytes:
    """The update at ``at`` as the flow-stats entry of its flow (see ``FlowUpdate``)."""
    _, _, _, priority, idle, hard, _, table, cookie = _UPDATE.unpack_from(message, at)
    rest = message[at + _UPDATE.size : at + length]
    head = _FLOW_STATS.pack(_FLOW_STATS.size + len(rest), table, 0, 0, priority, idle, hard, 0, cookie, 0, 0)
    return head + rest


__all__ = [
    "ADDED",
    "DELETED",
    "MODIFIED",
    "FlowUpdate",
    "FlowWatch",
    "is_monitor_reply",
    "monitor_notice",
    "monitor_request",
    "place_of",
]
