"""OpenFlow 1.3 wire layouts the channel reads without parsing whole messages.

os-ken's parser is the codec for what we send, but parsing a flow-stats
reply with it costs ~35 µs a flow; a thousand-rule policy reads back
thousands. The read-back only needs each flow's identity and its
instructions as bytes, so those are sliced out of the reply here, with
os-ken's own pack strings and sizes; nothing else of a reply is trusted
before its lengths are checked.

A flow's canonical form is (cookie, table, priority, sorted OXM TLVs,
instruction bytes): the switch reorders match fields in its replies, but
keeps each field's bytes and the instructions as it encodes them.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp

HEADER = struct.Struct(ofp.OFP_HEADER_PACK_STR)
_MATCH_HEAD = struct.Struct("!HH")
_FLOW_STATS = struct.Struct(ofp.OFP_FLOW_STATS_0_PACK_STR)
_MULTIPART_REPLY = struct.Struct(ofp.OFP_MULTIPART_REPLY_PACK_STR)
_FLOW_MOD = struct.Struct(ofp.OFP_FLOW_MOD_PACK_STR0)
_ERROR = struct.Struct(ofp.OFP_ERROR_MSG_PACK_STR)
_ERROR_EXPERIMENTER = struct.Struct(ofp.OFP_ERROR_EXPERIMENTER_MSG_PACK_STR)
_EXPERIMENTER = struct.Struct(ofp.OFP_EXPERIMENTER_HEADER_PACK_STR)
_BUNDLE_ADD = struct.Struct(ofp.ONF_BUNDLE_ADD_MSG_PACK_STR)
_BUNDLE_CTRL = struct.Struct(ofp.ONF_BUNDLE_CTRL_PACK_STR)
_OXM_EXPERIMENTER_CLASS = 0xFFFF
_XID = struct.Struct("!I")


class WireError(ValueError):
    """A message from the switch that does not hold together."""


@dataclass(frozen=True, slots=True)
class FlowKey:
    """One flow as the switch holds it, independent of match field order.

    Hashed once: a sync looks each key up several times (diff both ways,
    read-back), and a tuple of bytes rehashes its items on every lookup.
    Slotted, as are the other per-flow values here and in ofencode: a
    switch-wide compare holds several per flow at once (tens of thousands
    of flows), and slots save ~50 bytes each."""

    cookie: int
    table: int
    priority: int
    match: tuple[bytes, ...]  # OXM TLVs, sorted
    instructions: bytes
    _hash: int = field(init=False, repr=False, compare=False)
    _place: FlowPlace | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.cookie, self.table, self.priority, self.match, self.instructions)
        object.__setattr__(self, "_hash", hash(fields))
        object.__setattr__(self, "_place", None)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        # Keys are interned (``FlowEncoder.canonical``), so most comparisons
        # are of a key with itself; the rest compare the hash first.
        if self is other:
            return True
        if not isinstance(other, FlowKey):
            return NotImplemented
        return (
            self._hash == other._hash
            and self.match == other.match
            and self.instructions == other.instructions
            and self.cookie == other.cookie
            and self.table == other.table
            and self.priority == other.priority
        )

    @property
    def place(self) -> FlowPlace:
        """Where the flow sits: one flow per table, priority and match
        (made when first asked: only a sync's intent asks)."""
        place = self._place
        if place is None:
            place = FlowPlace(self.table, self.priority, self.match)
            object.__setattr__(self, "_place", place)
        return place


@dataclass(frozen=True, slots=True)
class FlowPlace:
    """A flow's table, priority and match (its identity in the switch),
    hashed once."""

    table: int
    priority: int
    match: tuple[bytes, ...]
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.table, self.priority, self.match)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class InstalledFlow:
    key: FlowKey
    match_block: bytes  # the ofp_match as read (with padding), for a strict delete
    mark: bytes = b""  # ``spelling_mark`` of the flow as read (empty: not read from the switch)


def _spelling(body: bytes, at: int, end: int) -> bytes:
    """A flow-stats entry without its durations and counters: length and
    table; priority, timeouts, flags and cookie; match and instructions.
    The switch spells a flow the same way every time it is read."""
    return body[at : at + 4] + body[at + 12 : at + 32] + body[at + _FLOW_STATS.size : end]


def spelling_mark(spelling: bytes) -> bytes:
    """A 128-bit mark of one flow's spelling, the same in every process
    (Python's own hash of bytes is salted per process, and a mark outlives
    the process in the store)."""
    return hashlib.blake2b(spelling, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class FlowsDigest:
    """What a cookie holds: how many flows, and a hash of their marks in
    sorted order (the same set of spellings whatever order the switch lists
    them in). Sorted and hashed, not summed: a sum of marks can be made to
    collide by choosing the flows (a policy's author chooses them), a hash
    of the sorted marks cannot short of breaking blake2b."""

    count: int
    total: int  # blake2b of the sorted marks, as a number

    @staticmethod
    def of(flows: Iterable[InstalledFlow]) -> FlowsDigest:
        return FlowsDigest.of_marks([f.mark for f in flows])

    @staticmethod
    def of_marks(marks: list[bytes]) -> FlowsDigest:
        marks.sort()
        return FlowsDigest.of_sorted(marks)

    @staticmethod
    def of_sorted(marks: Sequence[bytes]) -> FlowsDigest:
        hashed = hashlib.blake2b(b"".join(marks), digest_size=16).digest()
        return FlowsDigest(len(marks), int.from_bytes(hashed, "big"))


NOTHING_HELD = FlowsDigest.of_marks([])


def digests_by_cookie(bodies: Iterable[bytes]) -> dict[int, FlowsDigest]:
    """The ``FlowsDigest`` of every cookie in flow-stats bodies, each entry's
    lengths checked as ``FlowStatsReader`` checks them; no flow parsed."""
    marks: dict[int, list[bytes]] = {}
    size = _FLOW_STATS.size
    for body in bodies:
        at, total = 0, len(body)
        while at < total:
            if at + size > total:
                raise WireError(f"flow stats entry cut at byte {at}")
            end = at + (body[at] << 8 | body[at + 1])
            if end < at + size + 8 or end > total:
                raise WireError(f"flow stats entry of length {end - at} at byte {at} does not fit")
            cookie = int.from_bytes(body[at + 24 : at + 32], "big")
            kept = marks.get(cookie)
            if kept is None:
                kept = marks[cookie] = []
            kept.append(spelling_mark(_spelling(body, at, end)))
            at = end
    return {cookie: FlowsDigest.of_marks(kept) for cookie, kept in marks.items()}


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def split_oxm(tlvs: bytes) -> tuple[bytes, ...]:
    """The TLVs of an OXM match body, sorted (each: 4-byte header, payload)."""
    out = []
    at = 0
    size = len(tlvs)
    while at < size:
        if at + 4 > size:
            raise WireError(f"OXM header cut at byte {at}")
        length = tlvs[at + 3]
        end = at + 4 + length
        # (An experimenter field's class, 0xffff, is followed by its id.)
        if end > size or (length < 4 and tlvs[at] == tlvs[at + 1] == _OXM_EXPERIMENTER_CLASS & 0xFF):
            raise WireError(f"OXM field at byte {at} runs past the match")
        out.append(tlvs[at:end])
        at = end
    out.sort()
    return tuple(out)


def _match_at(buf: bytes, at: int, limit: int) -> tuple[bytes, tuple[bytes, ...], int]:
    """(match block, sorted TLVs, end of the padded block) of the ofp_match at ``at``."""
    if at + 4 > limit:
        raise WireError("match header cut")
    kind, length = _MATCH_HEAD.unpack_from(buf, at)
    end = at + _pad8(length)
    if kind != ofp.OFPMT_OXM or length < 4 or end > limit:
        raise WireError(f"match of type {kind} and length {length} does not fit")
    return bytes(buf[at:end]), split_oxm(bytes(buf[at + 4 : at + length])), end


def flow_mod_key(message: bytes) -> FlowKey:
    """The canonical key of an encoded OFPT_FLOW_MOD (what we send)."""
    cookie, _, table, _, _, _, priority, *_ = _FLOW_MOD.unpack_from(message, HEADER.size)
    start = HEADER.size + _FLOW_MOD.size
    _, tlvs, end = _match_at(message, start, len(message))
    return FlowKey(cookie, table, priority, tlvs, bytes(message[end:]))


def as_installed(flow_mod: bytes) -> InstalledFlow:
    """The flow an encoded OFPT_FLOW_MOD adds, as a read-back would show it
    (to delete a flow known by its Flow value rather than read from the switch)."""
    block, _, _ = _match_at(flow_mod, HEADER.size + _FLOW_MOD.size, len(flow_mod))
    return InstalledFlow(flow_mod_key(flow_mod), block)


def flow_stats(body: bytes) -> list[InstalledFlow]:
    """The flows of the bodies of OFPMP_FLOW replies (after the multipart header)."""
    return FlowStatsReader().read(body)


# About 750 bytes a spelling kept (16,384 of them: 12 MB); a read-back
# needs the spellings of the one read before it, the flows of the cookies
# a change touched.
SPELLINGS_KEPT = 4096
# Distinct match fields and instruction blocks: the same few recur in every
# attachment's flows (a thousand attachments of 32 rules: ~4,200 fields).
PIECES_KEPT = 16_384


class FlowStatsReader:
    """Reads flow-stats bodies, remembering each flow's parse by its raw
    bytes (table, priority, cookie, match and instructions; not the
    counters): the switch spells a flow the same way every time, so a
    read-back of mostly unchanged flows costs a slice and a lookup per flow
    instead of splitting and sorting its match. Bounded like the encoder's
    memo (``ofencode.ENCODINGS_KEPT``): past ``limit`` spellings it starts
    over, and a read of more flows than that parses the rest again.

    A parsed flow's match fields and instructions are shared with the
    equal ones of flows parsed before (one bytes object each, not one per
    flow): a switch-wide read holds tens of thousands of flows at once."""

    def __init__(
        self, *, limit: int = SPELLINGS_KEPT, canonical: Callable[[FlowKey], FlowKey] | None = None
    ) -> None:
        self._limit = limit
        self._seen: dict[bytes, InstalledFlow] = {}
        self._pieces: dict[bytes, bytes] = {}
        # The key objects the encoder made for the same flows: a diff or a
        # comparison then finds each by identity.
        self._canonical = canonical or (lambda key: key)

    def read(self, body: bytes, *, remember: bool = True) -> list[InstalledFlow]:
        """The flows of ``body``; without ``remember`` none is looked up or
        kept by its spelling (a read of many cookies, e.g. the whole switch,
        holds more flows than the memo and would only churn it)."""
        flows: list[InstalledFlow] = []
        append, remembered = flows.append, self._seen.get  # the loop runs once per flow
        at = 0
        size = _FLOW_STATS.size
        total = len(body)
        while at < total:
            if at + size > total:
                raise WireError(f"flow stats entry cut at byte {at}")
            length = body[at] << 8 | body[at + 1]
            end = at + length
            if length < size + 8 or end > total:
                raise WireError(f"flow stats entry of length {length} at byte {at} does not fit")
            # ``_spelling``, inlined: the loop runs once per flow read.
            spelling = body[at : at + 4] + body[at + 12 : at + 32] + body[at + size : end]
            if not remember:
                append(self._parse(body, at, end, spelling))
                at = end
                continue
            flow = remembered(spelling)
            if flow is None:
                flow = self._parse(body, at, end, spelling)
                if len(self._seen) >= self._limit:
                    self._seen.clear()
                self._seen[spelling] = flow
            append(flow)
            at = end
        return flows

    def _parse(self, body: bytes, at: int, end: int, spelling: bytes) -> InstalledFlow:
        _, table, _, _, priority, _, _, _, cookie, _, _ = _FLOW_STATS.unpack_from(body, at)
        block, tlvs, match_end = _match_at(body, at + _FLOW_STATS.size, end)
        match = tuple(self._piece(tlv) for tlv in tlvs)
        key = FlowKey(cookie, table, priority, match, self._piece(bytes(body[match_end:end])))
        return InstalledFlow(self._canonical(key), block, spelling_mark(spelling))

    def forget(self) -> None:
        """Start both memos over."""
        self._seen.clear()
        self._pieces.clear()

    def _piece(self, piece: bytes) -> bytes:
        kept = self._pieces.get(piece)
        if kept is None:
            if len(self._pieces) >= PIECES_KEPT:
                self._pieces.clear()
            kept = self._pieces[piece] = piece
        return kept


def multipart_body(message: bytes) -> tuple[int, bytes]:
    """(flags, body) of an OFPT_MULTIPART_REPLY."""
    if len(message) < HEADER.size + _MULTIPART_REPLY.size:
        raise WireError("multipart reply cut")
    _, flags = _MULTIPART_REPLY.unpack_from(message, HEADER.size)
    return flags, bytes(message[HEADER.size + _MULTIPART_REPLY.size :])


def with_xid(message: bytes, xid: int) -> bytes:
    """``message`` (a complete encoded message) with transaction id ``xid``."""
    return message[:4] + _XID.pack(xid) + message[8:]


def bundle_adds(bundle_id: int, inners: Sequence[bytes], xids: Iterable[int]) -> list[tuple[bytes, int]]:
    """ONF bundle-adds of the encoded messages ``inners``, each with the
    next of ``xids`` (for the add and its inner message alike): (message,
    xid) pairs.

    Built here rather than with os-ken's ONFBundleAddMsg because that one
    re-serialises the inner message every time; ours is encoded once per
    flow and only its xid changes (a fresh policy's bundle holds thousands).
    """
    body = _EXPERIMENTER.pack(ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_ADD_MESSAGE)
    body += _BUNDLE_ADD.pack(bundle_id, ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED)
    fixed = HEADER.size + len(body)
    head, pack_xid, version, kind = HEADER.pack, _XID.pack, ofp.OFP_VERSION, ofp.OFPT_EXPERIMENTER
    out = []
    for inner, xid in zip(inners, xids, strict=False):  # xids: as many as needed
        packed = pack_xid(xid)
        message = b"".join((head(version, kind, fixed + len(inner), xid), body, inner[:4], packed, inner[8:]))
        out.append((message, xid))
    return out


def _bundle_ctrl(message: bytes) -> tuple[int, int]:
    """The bundle id and control type of an ONF bundle-control message."""
    if len(message) < HEADER.size + _EXPERIMENTER.size + _BUNDLE_CTRL.size:
        raise WireError("bundle control message cut")
    experimenter, exp_type = _EXPERIMENTER.unpack_from(message, HEADER.size)
    if experimenter != ofproto_common.ONF_EXPERIMENTER_ID or exp_type != ofp.ONF_ET_BUNDLE_CONTROL:
        raise WireError(f"experimenter message {experimenter:#x}/{exp_type} is no bundle control")
    bundle_id, kind, _ = _BUNDLE_CTRL.unpack_from(message, HEADER.size + _EXPERIMENTER.size)
    return int(bundle_id), int(kind)


def bundle_ctrl_type(message: bytes) -> int:
    """The control type of an ONF bundle-control reply."""
    return _bundle_ctrl(message)[1]


def bundle_id_of(message: bytes) -> int:
    """The bundle an ONF bundle-control message (ours: an open) is about."""
    return _bundle_ctrl(message)[0]


def delete_strict(installed: InstalledFlow) -> bytes:
    """OFPFC_DELETE_STRICT of exactly this flow (its cookie, table,
    priority and match as read back), xid 0."""
    key = installed.key
    fixed = _FLOW_MOD.pack(
        key.cookie, 0xFFFF_FFFF_FFFF_FFFF, key.table, ofp.OFPFC_DELETE_STRICT, 0, 0, key.priority,
        ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, 0,
    )  # fmt: skip
    length = HEADER.size + len(fixed) + len(installed.match_block)
    return HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, length, 0) + fixed + installed.match_block


# -- errors -------------------------------------------------------------------

# Error type -> the prefix of its codes' names in os-ken's constants.
_CODE_PREFIX = {
    ofp.OFPET_HELLO_FAILED: "OFPHFC_",
    ofp.OFPET_BAD_REQUEST: "OFPBRC_",
    ofp.OFPET_BAD_ACTION: "OFPBAC_",
    ofp.OFPET_BAD_INSTRUCTION: "OFPBIC_",
    ofp.OFPET_BAD_MATCH: "OFPBMC_",
    ofp.OFPET_FLOW_MOD_FAILED: "OFPFMFC_",
    ofp.OFPET_GROUP_MOD_FAILED: "OFPGMFC_",
    ofp.OFPET_PORT_MOD_FAILED: "OFPPMFC_",
    ofp.OFPET_TABLE_MOD_FAILED: "OFPTMFC_",
    ofp.OFPET_QUEUE_OP_FAILED: "OFPQOFC_",
    ofp.OFPET_SWITCH_CONFIG_FAILED: "OFPSCFC_",
    ofp.OFPET_ROLE_REQUEST_FAILED: "OFPRRFC_",
    ofp.OFPET_METER_MOD_FAILED: "OFPMMFC_",
    ofp.OFPET_TABLE_FEATURES_FAILED: "OFPTFFC_",
}


def _constant_name(prefix: str, value: int) -> str | None:
    for name, constant in vars(ofp).items():
        if name.startswith(prefix) and constant == value:
            return str(name)
    return None


@dataclass(frozen=True)
class ErrorReply:
    kind: int
    code: int
    experimenter: int | None = None

    def is_meter(self, code: int) -> bool:
        return self.kind == ofp.OFPET_METER_MOD_FAILED and self.code == code

    def describe(self) -> str:
        """The error's names as the specification gives them (ONF bundle
        errors are experimenter errors: their code is the ``exp_type``)."""
        if self.kind == ofp.OFPET_EXPERIMENTER:
            if self.experimenter == ofproto_common.ONF_EXPERIMENTER_ID:
                name = _constant_name("ONFERR_", self.code)
                return f"ONF bundle error {name or self.code}"
            return f"experimenter {self.experimenter or 0:#x} error {self.code}"
        kind = _constant_name("OFPET_", self.kind) or f"type {self.kind}"
        prefix = _CODE_PREFIX.get(self.kind)
        code = (_constant_name(prefix, self.code) if prefix else None) or f"code {self.code}"
        return f"{kind} {code}"


def error_reply(message: bytes) -> ErrorReply:
    """The type and code of an OFPT_ERROR."""
    if len(message) < HEADER.size + _ERROR.size:
        raise WireError("error message cut")
    kind, code = _ERROR.unpack_from(message, HEADER.size)
    if kind == ofp.OFPET_EXPERIMENTER:
        if len(message) < HEADER.size + _ERROR_EXPERIMENTER.size:
            raise WireError("experimenter error cut")
        _, exp_type, experimenter = _ERROR_EXPERIMENTER.unpack_from(message, HEADER.size)
        return ErrorReply(kind, exp_type, experimenter)
    return ErrorReply(kind, code)
