"""The compiler's Flow values -> OpenFlow 1.3 flow-mods, with os-ken's codec.

Flows are written in ovs-ofctl's field names and value syntax (that is
what the golden files and the pipeline declaration speak); this module
turns them into the messages ovs-ofctl itself would send, so the switch
holds byte-identical flows whichever path installed them. Where the text
form and the wire form differ:

- a conjunction clause is 1-based in text, 0-based on the wire;
- ``output`` carries ``max_len=0`` (os-ken defaults to 0xffe5, which the
  switch keeps and echoes, so the read-back would differ);
- ``tp_src``/``tp_dst`` are ``tcp_*``/``udp_*`` by ``nw_proto``;
  ``nw_src``/``nw_dst`` are ``arp_spa``/``arp_tpa`` in ARP;
- ``ct_state`` flags (``+trk-inv``) are a (value, mask) pair;
- in 1.3 a meter is an instruction, not an action;
- a mask of all ones is sent as an exact field and a value is ANDed with
  its mask, as the switch stores them (the read-back must match bytes).

Encoding a whole flow-mod with os-ken costs ~75 µs a flow, and a switch
re-programmed after a restart needs tens of thousands at once. But the
pieces repeat: the same match field with the same value, the same
instructions, across rules and attachments. So ``FlowEncoder`` has os-ken
encode each match field and each actions tuple once, and lays a flow-mod
out from those pieces (the fixed part with os-ken's own pack string); and
it keeps each Flow value's encoding, so a policy change encodes only new
flows. ``encode_flow_add`` (os-ken end to end) is the reference the
pieces are tested against.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from coordinator.flows.model import (
    Conjunction,
    Ct,
    CtClear,
    CtCommit,
    Drop,
    Flood,
    Flow,
    FlowAction,
    Goto,
    Meter,
    Output,
)
from coordinator.flows.pipeline import Pipeline
from coordinator.ovs.ofwire import HEADER, FlowKey


@dataclass(frozen=True)
class _Protocol:
    """What os-ken's messages read of their "datapath": the modules of its
    protocol version. (os-ken's ProtocolDesc holds the same, but its module
    imports the parsers of every OpenFlow version.)"""

    ofproto: ModuleType
    ofproto_parser: ModuleType


DATAPATH = _Protocol(ofp, parser)

ETH_ARP = 0x0806
MatchValue = Any  # what os-ken's OFPMatch takes for a field: int, str or a (value, mask) pair
_TP_PREFIX = {6: "tcp", 17: "udp", 132: "sctp"}
# The ct_state bits (Open vSwitch's NXM_NX_CT_STATE; os-ken has no names for them).
_CT_FLAGS = {
    "new": 0x01,
    "est": 0x02,
    "rel": 0x04,
    "rpl": 0x08,
    "inv": 0x10,
    "trk": 0x20,
    "snat": 0x40,
    "dnat": 0x80,
}
# ip_frag as Open vSwitch reads it (any fragment 0x1, later fragment 0x2):
# value/mask, a mask of both bits being the whole field, so exact. (os-ken's
# NXM_IP_FRAG_* constants spell "later" as 0x2/0x2, which is not what
# ovs-ofctl sends.)
_IP_FRAG: dict[str, MatchValue] = {"no": 0, "yes": (1, 1), "first": 1, "later": 3, "not_later": (0, 2)}
_VLAN_VID_CFI = 0x1FFF  # VID and the tag-present bit (CFI in vlan_tci, OFPVID_PRESENT in 1.3)
_VLAN_PCP = 0xE000


class EncodeError(ValueError):
    """A flow this encoder cannot express (names the flow and the field)."""


def _int(text: str, bits: int) -> MatchValue:
    value, _, mask_text = text.partition("/")
    full = (1 << bits) - 1
    mask = int(mask_text, 0) if mask_text else full
    number = int(value, 0)
    if not 0 <= number <= full or not 0 <= mask <= full:
        raise ValueError(f"{text!r} does not fit {bits} bits")
    return number & mask if mask == full else (number & mask, mask)


def _mac(text: str) -> MatchValue:
    value, _, mask = text.partition("/")
    if not mask or mask.lower() == "ff:ff:ff:ff:ff:ff":
        return value.lower()
    v, m = int(value.replace(":", ""), 16), int(mask.replace(":", ""), 16)
    return (_mac_text(v & m), mask.lower())


def _mac_text(number: int) -> str:
    raw = number.to_bytes(6, "big")
    return ":".join(f"{b:02x}" for b in raw)


def _ip(text: str) -> MatchValue:
    network = ipaddress.ip_network(text, strict=False)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return (str(network.network_address), str(network.netmask))


def _ct_state(text: str) -> MatchValue:
    value = mask = 0
    at = 0
    while at < len(text):
        sign = text[at]
        end = at + 1
        while end < len(text) and text[end] not in "+-":
            end += 1
        name = text[at + 1 : end]
        if sign not in "+-" or name not in _CT_FLAGS:
            raise ValueError(f"unknown ct_state flag {text[at:end]!r}")
        mask |= _CT_FLAGS[name]
        if sign == "+":
            value |= _CT_FLAGS[name]
        at = end
    return (value, mask)


def _vlan_tci(text: str) -> MatchValue:
    value, mask = _int(text, 16) if "/" in text else (int(text, 0), 0xFFFF)
    if mask & _VLAN_PCP:
        raise ValueError("vlan_tci with priority bits is not supported")
    mask &= _VLAN_VID_CFI
    return value & mask if mask == _VLAN_VID_CFI else (value & mask, mask)


def _field(name: str, text: str, dl_type: int | None, nw_proto: int | None) -> tuple[str, MatchValue]:
    arp = dl_type == ETH_ARP
    match name:
        case "in_port":
            return "in_port", _int(text, 32)
        case "dl_src" | "dl_dst":
            return ("eth_src" if name == "dl_src" else "eth_dst"), _mac(text)
        case "dl_type":
            return "eth_type", _int(text, 16)
        case "vlan_tci":
            return "vlan_vid", _vlan_tci(text)
        case "nw_src" | "nw_dst":
            side = name[3:]
            return (f"arp_{'spa' if side == 'src' else 'tpa'}" if arp else f"ipv4_{side}"), _ip(text)
        case "ipv6_src" | "ipv6_dst":
            return name, _ip(text)
        case "nw_proto":
            return ("arp_op" if arp else "ip_proto"), _int(text, 16 if arp else 8)
        case "nw_ttl":  # the IP TTL or IPv6 hop limit: an Open vSwitch extension field
            return name, _int(text, 8)
        case "tp_src" | "tp_dst":
            prefix = _TP_PREFIX.get(nw_proto or -1)
            if prefix is None:
                raise ValueError(f"needs nw_proto tcp, udp or sctp before it, not {nw_proto}")
            return f"{prefix}_{name[3:]}", _int(text, 16)
        case "icmp_type" | "icmp_code":
            return f"icmpv4_{name[5:]}", _int(text, 8)
        case "icmpv6_type" | "icmpv6_code":
            return name, _int(text, 8)
        case "arp_op":
            return name, _int(text, 16)
        case "arp_spa" | "arp_tpa":
            return name, _ip(text)
        case "arp_sha" | "arp_tha":
            return name, _mac(text)
        case "nd_target":
            return "ipv6_nd_target", _ip(text)
        case "nd_sll" | "nd_tll":
            return f"ipv6_{name}", _mac(text)
        case "ct_state":
            return name, _ct_state(text)
        case "ct_mark" | "conj_id":
            return name, _int(text, 32)
        case "ct_zone":
            return name, _int(text, 16)
        case "ip_frag":
            if text not in _IP_FRAG:
                raise ValueError(f"unknown ip_frag {text!r}")
            return name, _IP_FRAG[text]
    raise ValueError("no wire encoding for this field")


def _context(
    key: str, value: MatchValue, dl_type: int | None, nw_proto: int | None
) -> tuple[int | None, int | None]:
    """The (dl_type, nw_proto) later fields are read in, after ``key``."""
    if key == "eth_type" and isinstance(value, int):
        return value, nw_proto
    if key == "ip_proto" and isinstance(value, int):
        return dl_type, value
    return dl_type, nw_proto


def encode_match(flow: Flow) -> Any:
    fields: dict[str, MatchValue] = {}
    dl_type: int | None = None
    nw_proto: int | None = None
    for name, text in flow.match:
        try:
            key, value = _field(name, text, dl_type, nw_proto)
        except ValueError as exc:
            raise EncodeError(f"flow in {flow.table} priority {flow.priority}: {name}={text}: {exc}") from exc
        if key in fields:
            raise EncodeError(f"flow in {flow.table} priority {flow.priority}: {name} given twice")
        fields[key] = value
        dl_type, nw_proto = _context(key, value, dl_type, nw_proto)
    # In the flow's own order: the switch checks each field's prerequisites
    # (eth_type before ip_frag, ip_proto before tcp_dst) as it reads them,
    # and os-ken's default order puts Nicira fields first.
    return parser.OFPMatch(_ordered_fields=list(fields.items()))


def _action(action: FlowAction, table: Callable[[str], int]) -> Any:
    match action:
        case Output(port=port):
            return parser.OFPActionOutput(port, max_len=0)
        case Flood():
            return parser.OFPActionOutput(ofp.OFPP_ALL, max_len=0)
        case Ct(zone=zone, table=name):
            return parser.NXActionCT(0, "", zone, table(name), 0, [])
        case CtCommit(zone=zone, table=name, mark=mark):
            set_mark = parser.OFPActionSetField(ct_mark=mark)
            return parser.NXActionCT(nicira_ext.NX_CT_F_COMMIT, "", zone, table(name), 0, [set_mark])
        case CtClear():
            return parser.NXActionCTClear()
        case Conjunction(conj_id=conj_id, clause=clause, n_clauses=n_clauses):
            return parser.NXActionConjunction(clause - 1, n_clauses, conj_id)
    raise EncodeError(f"action {action!r} is no apply-action")


def encode_instructions(flow: Flow, pipeline: Pipeline) -> list[Any]:
    """In the order the switch reports them: meter, apply-actions, goto."""
    meters = [a for a in flow.actions if isinstance(a, Meter)]
    gotos = [a for a in flow.actions if isinstance(a, Goto)]
    applied = [a for a in flow.actions if not isinstance(a, Meter | Goto | Drop)]
    if len(meters) > 1 or len(gotos) > 1:
        raise EncodeError(f"flow in {flow.table} priority {flow.priority}: more than one meter or goto")
    instructions: list[Any] = [parser.OFPInstructionMeter(m.meter_id) for m in meters]
    if applied:
        actions = [_action(a, pipeline.number) for a in applied]
        instructions.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    instructions += [parser.OFPInstructionGotoTable(pipeline.number(g.table)) for g in gotos]
    return instructions


def encode_flow_add(flow: Flow, pipeline: Pipeline) -> bytes:
    """OFPFC_ADD of ``flow``, serialised with xid 0."""
    message = parser.OFPFlowMod(
        DATAPATH,
        cookie=flow.cookie,
        table_id=pipeline.number(flow.table),
        command=ofp.OFPFC_ADD,
        priority=flow.priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=encode_match(flow),
        instructions=encode_instructions(flow, pipeline),
    )
    message.set_xid(0)
    message.serialize()
    return bytes(message.buf)


@dataclass(frozen=True, slots=True)
class EncodedFlow:
    add: bytes  # OFPFC_ADD, xid 0
    key: FlowKey  # the canonical form the switch will report


_FLOW_MOD_FIXED = struct.Struct(ofp.OFP_FLOW_MOD_PACK_STR0)  # after the header, before the match
_MATCH_HEAD = struct.Struct("!HH")
_FieldKey = tuple[str, str, "int | None", "int | None"]  # name, text, dl_type and nw_proto before it


@dataclass(frozen=True, slots=True)
class _Field:
    key: str  # os-ken's name of it
    value: MatchValue
    tlv: bytes  # its OXM TLV


# Whole encodings kept: a few policies' worth of the flows changed last (a
# 1,000-rule policy compiles to about 1,050 flows). The pieces repeat across
# attachments and stay far fewer (a thousand attachments of 32 rules: ~4,200
# match fields, ~5,100 action lists), so their bound is never reached.
ENCODINGS_KEPT = 4096
PIECES_KEPT = 16_384


class FlowEncoder:
    """Encodings by Flow value, laid out from memoised pieces (see the
    module's doc). Bounded: past its limit a cache starts over. An encoding
    kept costs about 470 bytes beside its Flow (16,384 of them: 8 MB), one
    laid out from remembered pieces about 20 us; so the default holds what
    the last policy changes compile to, and a switch-wide re-program lays
    most flows out again (from pieces it keeps) rather than keeping every
    flow's encoding for ever."""

    def __init__(
        self, pipeline: Pipeline, *, limit: int = ENCODINGS_KEPT, pieces_limit: int = PIECES_KEPT
    ) -> None:
        self._pipeline = pipeline
        self._limit = limit
        self._pieces_limit = pieces_limit
        self._cache: dict[Flow, EncodedFlow] = {}
        self._fields: dict[_FieldKey, _Field] = {}
        self._instructions: dict[tuple[FlowAction, ...], bytes] = {}
        self._keys: dict[FlowKey, FlowKey] = {}

    def encode(self, flow: Flow) -> EncodedFlow:
        found = self._cache.get(flow)
        if found is not None:
            return found
        encoded = self._flow_add(flow)
        if len(self._cache) >= self._limit:
            self._cache.clear()
        self._cache[flow] = encoded
        return encoded

    def _flow_add(self, flow: Flow) -> EncodedFlow:
        """What ``encode_flow_add`` returns, from the pieces, and its key
        (the same pieces, sorted: what ``flow_mod_key`` would read)."""
        tlvs = self._match_tlvs(flow)
        oxm = b"".join(tlvs)
        match_len = _MATCH_HEAD.size + len(oxm)
        padding = bytes(-match_len % 8)
        instructions = self._instructions_of(flow)
        table = self._pipeline.number(flow.table)
        fixed = _FLOW_MOD_FIXED.pack(
            flow.cookie, 0, table, ofp.OFPFC_ADD, 0, 0, flow.priority,
            ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, 0,
        )  # fmt: skip
        length = HEADER.size + len(fixed) + match_len + len(padding) + len(instructions)
        head = HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, length, 0)
        add = b"".join((head, fixed, _MATCH_HEAD.pack(ofp.OFPMT_OXM, match_len), oxm, padding, instructions))
        key = FlowKey(flow.cookie, table, flow.priority, tuple(sorted(tlvs)), instructions)
        return EncodedFlow(add, self.canonical(key))

    def _match_tlvs(self, flow: Flow) -> list[bytes]:
        """The OXM TLVs of the flow's match, in its order."""
        tlvs = []
        seen: set[str] = set()
        dl_type: int | None = None
        nw_proto: int | None = None
        for name, text in flow.match:
            field = self._field(flow, name, text, dl_type, nw_proto)
            if field.key in seen:
                raise EncodeError(f"flow in {flow.table} priority {flow.priority}: {name} given twice")
            seen.add(field.key)
            tlvs.append(field.tlv)
            dl_type, nw_proto = _context(field.key, field.value, dl_type, nw_proto)
        return tlvs

    def canonical(self, key: FlowKey) -> FlowKey:
        """The one key object kept for flows equal to ``key`` (bounded like
        the encodings), so that the keys of an encoding and of a read-back
        of the same flow are the same object."""
        found = self._keys.get(key)
        if found is not None:
            return found
        if len(self._keys) >= self._limit:
            self._keys.clear()
        self._keys[key] = key
        return key

    def key(self, flow: Flow) -> FlowKey:
        """The key ``encode(flow)`` would have, without laying out the
        flow-mod (nor keeping it): comparing a whole switch with the intent
        needs every flow's key, but a flow-mod only for what differs."""
        found = self._cache.get(flow)
        if found is not None:
            return found.key
        tlvs = self._match_tlvs(flow)
        tlvs.sort()
        table = self._pipeline.number(flow.table)
        return FlowKey(flow.cookie, table, flow.priority, tuple(tlvs), self._instructions_of(flow))

    def _field(self, flow: Flow, name: str, text: str, dl_type: int | None, nw_proto: int | None) -> _Field:
        memo = (name, text, dl_type, nw_proto)
        found = self._fields.get(memo)
        if found is not None:
            return found
        try:
            key, value = _field(name, text, dl_type, nw_proto)
        except ValueError as exc:
            raise EncodeError(f"flow in {flow.table} priority {flow.priority}: {name}={text}: {exc}") from exc
        buf = bytearray()
        parser.OFPMatch(_ordered_fields=[(key, value)]).serialize(buf, 0)
        (match_len,) = struct.unpack_from("!H", buf, 2)
        field = _Field(key, value, bytes(buf[_MATCH_HEAD.size : match_len]))
        if len(self._fields) >= self._pieces_limit:
            self._fields.clear()
        self._fields[memo] = field
        return field

    def _instructions_of(self, flow: Flow) -> bytes:
        found = self._instructions.get(flow.actions)
        if found is not None:
            return found
        buf = bytearray()
        offset = 0
        for instruction in encode_instructions(flow, self._pipeline):
            instruction.serialize(buf, offset)
            offset += instruction.len
        encoded = bytes(buf[:offset])
        if len(self._instructions) >= self._pieces_limit:
            self._instructions.clear()
        self._instructions[flow.actions] = encoded
        return encoded

    def forget_flows(self) -> None:
        """Start the memos of whole flows (encodings, keys) over; the pieces stay."""
        self._cache.clear()
        self._keys.clear()

    def __len__(self) -> int:
        return len(self._cache)
