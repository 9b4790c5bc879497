"""Verified, atomic flow changes over the persistent OpenFlow channel.

The same operations as ``openflow.OpenFlowSwitch`` (``sync``,
``sync_many``, ``replace_many``, ``delete``, meters), taking the
compiler's Flow values instead of ovs-ofctl text, with no process spawn:

1. read what the switch holds for the cookie/mask (flow stats) - and the
   meters, when the change sets one - in one round trip;
2. diff in canonical byte form (cookie, table, priority, sorted OXM TLVs,
   instruction bytes: the switch reorders match fields in its replies);
3. the meters first (a meter cannot ride in a bundle; MODIFY when it
   exists, ADD otherwise), then in one write one ONF bundle (atomic,
   ordered) of only the differences, the read-back of the same
   cookie/mask and a barrier;
4. compare the read-back with the intent. Only when they differ is
   ``ovs-ofctl diff-flows`` run, to explain the difference in text.

A small change from what the cookie's last verified sync left, nothing
having changed it since (``ofwatch``), is verified from the switch's
report of exactly the deletes and adds sent (``ofknown.verified_by_report``)
instead; any other report, or a cookie the watch cannot vouch for, reads.

A failed bundle changes nothing on the switch (the old flows stay whole)
and raises ``BundleError``, naming each rejected message and the ONF
bundle error of the commit.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from coordinator.flows.model import Flow
from coordinator.flows.pipeline import Pipeline
from coordinator.ovs.ofchannel import ChannelError, OpenFlowChannel, Outcome, Outgoing, Reply
from coordinator.ovs.ofconfig import match_fragments_as_parsed
from coordinator.ovs.ofencode import DATAPATH, EncodedFlow, FlowEncoder
from coordinator.ovs.ofexplain import verify_read_back
from coordinator.ovs.ofintent import ByKey, CookieIntents, Wanted
from coordinator.ovs.ofknown import Held, KnownFlows, StaleKnown, SwitchState, verified_by_report
from coordinator.ovs.oflanes import bundle_then_read, cancel_all
from coordinator.ovs.ofmessages import (
    ALL_COOKIES,
    BUNDLE_FLAGS,
    BundleError,
    MeterBand,
    bodies_of,
    by_position,
    check_bundle,
    delete_cookie,
    named_changes,
    serialize,
    stats_request,
)
from coordinator.ovs.ofmeters import delete_meter, meter_config, meters_of, set_meter, set_meters
from coordinator.ovs.ofwire import (
    FlowKey,
    FlowsDigest,
    FlowStatsReader,
    InstalledFlow,
    WireError,
    bundle_adds,
    delete_strict,
    digests_by_cookie,
    with_xid,
)
from coordinator.ovs.openflow import OpenFlowError, SyncResult

_MAX_KEPT_REQUESTS = 4096  # encoded flow-stats requests kept by (cookie, mask)
# More are bulk work (``OpenFlowChannel.unwatch``): ~5 us a change reported, ~2.5 a flow read.
BULK_CHANGES = 128


class ChannelSwitch:
    """Flow and meter changes on one bridge over ``channel``.

    ``pipeline`` resolves table names; ``explain_target`` is the ovs-ofctl
    target (``unix:RUNDIR/BRIDGE.mgmt``) used only to explain a read-back
    that differs from the intent (defaults to the channel's socket)."""

    def __init__(
        self,
        channel: OpenFlowChannel,
        pipeline: Pipeline,
        *,
        encoder: FlowEncoder | None = None,
        explain_target: Callable[[], str] | None = None,
        explain_timeout: float = 10.0,
        lanes: Sequence[OpenFlowChannel] = (),
    ) -> None:
        self._channel = channel
        # Connections for bulk bundles side by side (``oflanes``): this one first.
        self._lanes = [channel, *lanes]
        self._pipeline = pipeline
        self._encoder = encoder or FlowEncoder(pipeline)
        self._explain_target = explain_target or (lambda: f"unix:{channel.path}")
        self._explain_timeout = explain_timeout
        self._bundle_ids = itertools.cycle(range(1, 0xFFFF_FFFF))
        self._stats_requests: dict[tuple[int, int], bytes] = {}
        self._reader = FlowStatsReader(canonical=self._encoder.canonical)
        self._known = KnownFlows()
        self._intents = CookieIntents(self.encode, self._encoder.encode)

    @property
    def channel(self) -> OpenFlowChannel:
        return self._channel

    @property
    def encoder(self) -> FlowEncoder:
        return self._encoder

    # -- exchanges ------------------------------------------------------------

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    async def close(self) -> None:
        for channel in self._lanes:
            await channel.close()

    async def _exchange(self, messages: Sequence[Outgoing], lane: int = 0) -> list[Outcome]:
        try:
            return await self._lanes[lane].exchange(messages)
        except ChannelError as exc:
            raise OpenFlowError(str(exc)) from exc

    def _stats(self, cookie: int, mask: int) -> Outgoing:
        template = self._stats_requests.get((cookie, mask))
        if template is None:
            if len(self._stats_requests) >= _MAX_KEPT_REQUESTS:
                self._stats_requests.clear()
            template = self._stats_requests[(cookie, mask)] = stats_request(cookie, mask)
        xid = self._channel.xid()
        return Outgoing(with_xid(template, xid), xid, Reply.MULTIPART)

    def _flows_of(self, outcome: Outcome, what: str, mask: int = ALL_COOKIES) -> list[InstalledFlow]:
        try:  # many cookies: no memo
            bodies = bodies_of(outcome, what)
            return [f for body in bodies for f in self._reader.read(body, remember=mask == ALL_COOKIES)]
        except WireError as exc:
            raise OpenFlowError(f"{what}: unreadable flow stats: {exc}") from exc

    def prepare_bundle(self, changes: Sequence[bytes]) -> list[Outgoing]:
        """One ONF bundle of the encoded ``changes`` (flow-mods, xid 0):
        open, one add per change, commit. Send with ``send_bundle``."""
        bundle_id = next(self._bundle_ids)
        out = []
        for kind in (ofp.ONF_BCT_OPEN_REQUEST, None, ofp.ONF_BCT_COMMIT_REQUEST):
            if kind is None:
                xids = iter(self._channel.xid, None)  # one per change, taken in turn
                out += [Outgoing(m, xid) for m, xid in bundle_adds(bundle_id, changes, xids)]
                continue
            xid = self._channel.xid()
            ctrl = parser.ONFBundleCtrlMsg(DATAPATH, bundle_id, kind, BUNDLE_FLAGS, [])
            out.append(Outgoing(serialize(ctrl, xid), xid, Reply.ONE))
        return out

    # -- reading --------------------------------------------------------------

    async def installed(self, cookie: int, mask: int = ALL_COOKIES) -> list[InstalledFlow]:
        """The flows whose cookie matches ``cookie`` under ``mask``."""
        [outcome] = await self._exchange([self._stats(cookie, mask)])
        return self._flows_of(outcome, f"reading flows of cookie {cookie:#x}", mask)

    dump = installed

    async def dump_digests(self, cookie: int, mask: int) -> tuple[list[bytes], dict[int, FlowsDigest]]:
        """The flow-stats bodies of ``cookie``/``mask``, unparsed (``parse``
        makes flows of them), and every cookie's digest of them."""
        [outcome] = await self._exchange([self._stats(cookie, mask)])
        try:
            bodies = bodies_of(outcome, what := f"reading flows of cookie {cookie:#x}")
            return bodies, digests_by_cookie(bodies)
        except WireError as exc:
            raise OpenFlowError(f"{what}: unreadable flow stats: {exc}") from exc

    def parse(self, bodies: Sequence[bytes]) -> list[InstalledFlow]:  # of ``dump_digests``
        try:
            return [f for body in bodies for f in self._reader.read(body, remember=False)]
        except WireError as exc:
            raise OpenFlowError(f"reading flows: unreadable flow stats: {exc}") from exc

    async def read(self, cookie: int, mask: int = ALL_COOKIES, *, meters: bool = False) -> SwitchState:
        """The flows of ``cookie``/``mask`` and, with ``meters``, the meter
        ids, in one round trip: what ``sync_many`` diffs against (``read=``)."""
        self._channel.rewatch()  # a cookie's change follows
        requests = [self._stats(cookie, mask), *([meter_config(self._channel.xid())] if meters else [])]
        outcomes = await self._exchange(requests)
        flows = self._flows_of(outcomes[0], f"reading flows of cookie {cookie:#x}")
        return SwitchState(flows, meters_of(outcomes[1]) if meters else None, outcomes[0].seen)

    async def meters(self) -> set[int]:
        """The ids of the meters the bridge has."""
        [outcome] = await self._exchange([meter_config(self._channel.xid())])
        return meters_of(outcome)

    async def ping(self) -> None:
        try:
            await self._channel.echo()
        except ChannelError as exc:
            raise OpenFlowError(str(exc)) from exc

    def forget_read_flows(self) -> None:
        """Start the flow-stats reader's memos over (see ``ofsweep``)."""
        self._reader.forget()

    # -- what the last verified sync left ------------------------------------

    def verified(self, cookie: int) -> FlowsDigest | None:  # at its last verified sync (``ofknown``)
        return self._known.digest(cookie)

    def known(self, cookie: int) -> Mapping[FlowKey, InstalledFlow] | None:
        """What ``cookie`` held when its last sync was verified (or it was
        deleted; see ``ofknown``), to pass to ``sync`` instead of a read;
        None if unknown. Not to be changed."""
        return self._known.get(cookie, self._channel.connects)

    # -- changing -------------------------------------------------------------

    def encode(self, flows: Iterable[Flow]) -> Wanted:
        """The encodings by key, as the switch will hold them (``ByKey``)."""
        by_key = ByKey(self._encoder.encode)
        by_key.add(flows)
        return by_key.wanted

    async def sync(
        self,
        cookie: int,
        desired: Sequence[Flow],
        *,
        installed: Awaitable[list[InstalledFlow]] | None = None,
        beside_readback: Callable[[], Awaitable[object]] | None = None,
        meters: Mapping[int, MeterBand] | None = None,
        read: Awaitable[SwitchState] | None = None,
        known: Mapping[FlowKey, InstalledFlow] | None = None,
    ) -> SyncResult:
        """Make the flows with ``cookie`` exactly ``desired`` (see ``sync_many``).

        ``known``: what ``known(cookie)`` said, to diff against instead of a
        read. The bundle is read back and compared all the same; when the
        read-back differs (the switch was changed behind our back), the sync
        starts over from a fresh read."""
        if known is not None and read is None and installed is None and not meters:
            wanted = self._intents.wanted(cookie, desired)
            # Set operations on the dicts' own hashes: no key is hashed again.
            added = list(set(wanted).difference(known))
            if added or len(known) != len(wanted):
                try:
                    return await self._sync_from_known(cookie, desired, wanted, known, added, beside_readback)
                except StaleKnown:
                    beside_readback = None  # it ran with the first bundle
        changes = await self.sync_many(
            {cookie: desired}, cookie, ALL_COOKIES, installed=installed,
            beside_readback=beside_readback, meters=meters, read=read,
        )  # fmt: skip
        change = changes.get(cookie, SyncResult(0, 0, 0))
        return SyncResult(added=change.added, removed=change.removed, total=len(desired))

    async def _sync_from_known(
        self,
        cookie: int,
        desired: Sequence[Flow],
        wanted: Mapping[FlowKey, tuple[Flow, EncodedFlow]],
        current: Mapping[FlowKey, InstalledFlow],
        added: Sequence[FlowKey],
        beside_readback: Callable[[], Awaitable[object]] | None,
    ) -> SyncResult:
        removed = [current[key] for key in set(current).difference(wanted)]
        prior = self._known.take(cookie, self._channel.connects)
        since = prior if prior is not None and prior.flows is current else None
        got = await self._change_and_read_back(
            removed, added, wanted, cookie, ALL_COOKIES, beside_readback, since
        )
        if isinstance(got, Held):  # verified from the switch's report of the change
            self._known.put(cookie, got)
        else:  # read by the exact cookie: every flow read back is the cookie's
            after, seen = got
            held = self._known.keep_read_back(
                cookie, self._channel.connects, after, wanted, since, removed, self._held(cookie, seen, after)
            )  # fmt: skip
            if held is None:
                raise StaleKnown
        return SyncResult(added=len(added), removed=len(removed), total=len(desired))

    def _held(self, cookie: int, seen: int | None, flows: Sequence[InstalledFlow]) -> int | None:
        """``seen`` if the flow watch holds ``flows`` as ``cookie``'s as of it, else None."""
        watch = self._channel.watch
        return seen if watch is not None and watch.hold(cookie, seen, flows) else None

    async def _change_and_read_back(
        self,
        removed: Sequence[InstalledFlow],
        added: Sequence[FlowKey],
        wanted: Mapping[FlowKey, tuple[Flow, EncodedFlow]],
        cookie: int,
        mask: int,
        beside_readback: Callable[[], Awaitable[object]] | None,
        prior: Held | None = None,
        lane: int = 0,
        turn: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[list[InstalledFlow], int | None] | Held:
        """One atomic bundle deleting ``removed`` and adding ``added``, and
        what ``cookie``/``mask`` holds after it, read back (with the flow
        watch's stamp of the read) or, from ``prior``, what the switch's
        flow monitor reported of it (``ofknown.verified_by_report``).
        Raises BundleError."""
        changes = [delete_strict(f) for f in removed] + [wanted[k][1].add for k in added]
        label = named_changes([*(f.key for f in removed), *added], deleted=len(removed))
        bundle = self.prepare_bundle(changes)
        if bulk := len(changes) > BULK_CHANGES or turn is not None:  # a range of a sweep: bulk, however small
            self._channel.unwatch()
        else:  # before the bundle: a read-back after it is stamped once the monitor is in
            self._channel.rewatch()
        watch = self._channel.watch if prior is not None and prior.seen is not None and not bulk else None
        collected = watch.collect(cookie, len(changes) + 1) if watch is not None else None  # +1: no match
        if watch is not None and collected is not None and prior is not None:
            since = watch.seq
            try:
                check_bundle(bundle, await self._exchange(bundle), label)
            except BaseException:
                watch.release(cookie, collected)
                raise
            now = verified_by_report(watch, cookie, prior, collected, removed, added, self._read_entry, since)
            if now is not None:
                if beside_readback is not None:
                    await beside_readback()
                return now
            # Not exactly the change reported: what the bundle left is read back.
            [outcome], _ = await asyncio.gather(
                self._exchange([self._stats(cookie, mask)]), beside_readback() if beside_readback else asyncio.sleep(0)
            )  # fmt: skip
            return self._flows_of(outcome, f"reading flows of cookie {cookie:#x}", mask), outcome.seen
        if beside_readback is None and turn is None:
            results = await self._exchange([*bundle, self._stats(cookie, mask)], lane)
            check_bundle(bundle, results[: len(bundle)], label)
            return self._flows_of(results[-1], "reading back flows", mask), results[-1].seen
        # The read-back is written right behind the bundle (the switch takes
        # them in order), and ``beside_readback`` starts as soon as the
        # bundle's barrier answers, while the read-back is under way; with
        # ``turn``, the bundle is staged at once and committed once it returns.
        exchange, stats = functools.partial(self._exchange, lane=lane), self._stats(cookie, mask)
        sent, readback = await bundle_then_read(exchange, bundle, stats, turn, self._channel.xid)
        try:
            check_bundle(bundle, await sent, label)
        except BaseException:
            await cancel_all(sent, readback)
            raise
        [outcome], _ = await asyncio.gather(
            readback, beside_readback() if beside_readback else asyncio.sleep(0)
        )
        return self._flows_of(outcome, f"reading flows of cookie {cookie:#x}", mask), outcome.seen

    def _read_entry(self, entry: bytes) -> InstalledFlow:
        [flow] = self._reader.read(entry)
        return flow

    async def sync_many(
        self,
        desired: Mapping[int, Sequence[Flow]],
        cookie: int,
        mask: int,
        *,
        installed: Awaitable[list[InstalledFlow]] | None = None,
        beside_readback: Callable[[], Awaitable[object]] | None = None,
        meters: Mapping[int, MeterBand] | None = None,
        read: Awaitable[SwitchState] | None = None,
        wanted: Wanted | None = None,
        lane: int = 0,
        turn: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[int, SyncResult]:
        """Make every cookie of ``desired`` hold exactly its flows: meters
        set first, then one atomic bundle of only the differences, read
        back and compared. ``cookie``/``mask`` select what to read; flows of
        cookies not in ``desired`` are left alone. ``installed``: the read
        already started by the caller, or ``read``: the flows and meters
        (``read(meters=True)`` when ``meters`` are set) already asked for;
        ``beside_readback`` runs once the bundle is in, alongside the
        read-back. ``wanted``: the ``encode`` of every flow of ``desired``
        in turn, already made. ``lane`` and ``turn``: see ``oflanes``.
        Returns the changes by cookie."""
        if wanted is None:
            wanted = self.encode(f for flows in desired.values() for f in flows)
        if len(desired) > 1 or mask != ALL_COOKIES:
            self._channel.unwatch()  # bulk work: see ``OpenFlowChannel.unwatch``
        self._known.forget(desired)
        seen = None  # the flow watch's stamp of what ``after`` shows, when known
        if read is not None:
            state = await read
            current, known, seen = state.flows, state.meters, state.seen
            existing = known if known is not None else (await self.meters() if meters else set())
        else:
            reads = [] if installed is not None else [self._stats(cookie, mask)]
            if meters:
                reads.append(meter_config(self._channel.xid()))
            outcomes = await self._exchange(reads) if reads else []
            if installed is not None:
                current = await installed
            else:
                current, seen = self._flows_of(outcomes[0], "reading flows"), outcomes[0].seen
            existing = meters_of(outcomes[-1]) if meters else set()

        have = {f.key: f for f in current if f.key.cookie in desired}
        removed = [f for key, f in have.items() if key not in wanted]
        added = [key for key in wanted if key not in have]
        if meters:
            await set_meters(self._exchange, self._channel.xid, meters, existing)
        if removed or added:
            got = await self._change_and_read_back(
                removed, added, wanted, cookie, mask, beside_readback, lane=lane, turn=turn
            )
            assert not isinstance(got, Held)  # read back: no ``prior`` given
            after, seen = got
            await verify_read_back(
                desired, wanted.keys(), after, cookie, mask, self._pipeline, self._explain_target(), self._explain_timeout
            )  # fmt: skip
        else:
            after = current  # nothing to change: what was just read is verified
        if mask == ALL_COOKIES and desired.keys() == {cookie} and after:
            self._known.remember(cookie, self._channel.connects, after, self._held(cookie, seen, after))
        else:
            self._known.verified(desired, after)

        counts: dict[int, SyncResult] = {}
        for key_cookie, sign in [*((f.key.cookie, -1) for f in removed), *((k.cookie, 1) for k in added)]:
            old = counts.get(key_cookie, SyncResult(0, 0, len(desired.get(key_cookie, ()))))
            counts[key_cookie] = SyncResult(old.added + (sign > 0), old.removed + (sign < 0), old.total)
        return counts

    async def replace_many(self, desired: Mapping[int, Sequence[Flow]]) -> None:
        """Every cookie of ``desired`` holds exactly its flows, in one atomic
        bundle, without reading first: each cookie deleted and its flows
        added in the same transaction. Verify with ``sync_many`` afterwards."""
        changes: list[bytes] = []
        named: list[int | FlowKey] = []  # a deleted cookie, an added key
        self._channel.unwatch()  # bulk work: see ``OpenFlowChannel.unwatch``
        self._known.forget(desired)
        for cookie, flows in desired.items():
            changes.append(delete_cookie(cookie))
            named.append(cookie)
            for key, (_, encoded) in self.encode(flows).items():
                changes.append(encoded.add)
                named.append(key)
        if not changes:
            return
        bundle = self.prepare_bundle(changes)
        check_bundle(bundle, await self._exchange(bundle), named_changes(named))

    async def send_bundle(self, bundle: Sequence[Outgoing], labels: Sequence[str] = ()) -> None:
        """Send a prepared bundle and its barrier; raise BundleError if refused.
        ``labels`` name the changes in the error (by position otherwise)."""
        check_bundle(
            bundle, await self._exchange(bundle), lambda i: labels[i] if i < len(labels) else by_position(i)
        )

    async def add(self, flows: Sequence[Flow]) -> None:
        """Add ``flows`` in one atomic bundle, without reading the switch
        first and without deleting anything."""
        wanted = self.encode(flows)
        if not wanted:
            return
        cookies = {key.cookie for key in wanted}
        if len(cookies) > 1:
            self._channel.unwatch()  # bulk work (the cut of many attachments)
        self._known.forget(cookies)
        bundle = self.prepare_bundle([encoded.add for _, encoded in wanted.values()])
        check_bundle(bundle, await self._exchange(bundle), named_changes(list(wanted)))

    async def match_fragments_as_parsed(self) -> None:
        """Fragment handling ``nx-match`` (see ``ofconfig``), read back."""
        await match_fragments_as_parsed(self._exchange, self._channel.xid)

    async def delete(self, cookie: int) -> None:
        """Remove every flow of ``cookie``."""
        self._known.forget([cookie])
        xid = self._channel.xid()
        [outcome] = await self._exchange([Outgoing(with_xid(delete_cookie(cookie), xid), xid)])
        if outcome.error is not None:
            raise OpenFlowError(f"deleting cookie {cookie:#x}: {outcome.error.describe()}")
        # The barrier answered after the delete: the cookie holds nothing now.
        self._known.remember(cookie, self._channel.connects, ())

    async def set_meter(self, meter_id: int, kbps: int, burst_kb: int) -> None:
        """Create or change a drop-band meter (MODIFY when it exists, else ADD).
        Meters cannot ride in a bundle; set them before the flows that use them."""
        await set_meter(self._exchange, self._channel.xid, meter_id, MeterBand(kbps, burst_kb))

    async def delete_meter(self, meter_id: int) -> None:
        """Remove a meter no flow references any more (absent is fine)."""
        await delete_meter(self._exchange, self._channel.xid, meter_id)


__all__ = ["ALL_COOKIES", "BundleError", "ChannelSwitch", "MeterBand", "SwitchState"]
