"""The Flow -> OpenFlow 1.3 encoder's translations of ovs-ofctl's text form,
the canonical keys, the whole-switch comparison by keys and the decoding
of errors, on bytes (no switch)."""

from __future__ import annotations

import struct

import pytest
import yaml
from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp

from coordinator.flows.compiler import BridgeFacts, PortFacts, attachment_flows, bridge_flows, cut_flows
from coordinator.flows.dry_run import EXAMPLE_PORT
from coordinator.flows.model import Conjunction, Drop, Flow, Goto, Meter, Output
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs.ofchannel import _hello_offers_13
from coordinator.ovs.ofencode import EncodeError, FlowEncoder, encode_flow_add
from coordinator.ovs.ofwire import (
    ErrorReply,
    FlowStatsReader,
    WireError,
    error_reply,
    flow_mod_key,
    flow_stats,
    split_oxm,
)
from coordinator.policy.validate import scope_from_mapping
from tests.golden.regen import policies

PIPELINE = load_pipeline()
NXM1 = 0x0001
OXM = 0x8000


def _flow(match: tuple[tuple[str, str], ...], *actions: object, table: str = "egress_policy") -> Flow:
    return Flow(table, 1000, match, tuple(actions), 0xBFC0_0000_0000_0001)  # type: ignore[arg-type]


def _tlvs(flow: Flow) -> dict[tuple[int, int], bytes]:
    """OXM class and field -> payload (mask included) of the encoded match."""
    key = flow_mod_key(encode_flow_add(flow, PIPELINE))
    return {(struct.unpack("!H", t[:2])[0], t[2] >> 1): t[4:] for t in key.match}


def test_tp_ports_follow_nw_proto_and_values_are_anded_with_their_masks() -> None:
    tcp = _tlvs(_flow((("dl_type", "0x0800"), ("nw_proto", "6"), ("tp_dst", "0x1f91/0xfff0"))))
    assert tcp[(OXM, ofp.OFPXMT_OFB_TCP_DST)] == struct.pack("!HH", 0x1F90, 0xFFF0)
    udp = _tlvs(_flow((("dl_type", "0x0800"), ("nw_proto", "17"), ("tp_dst", "53"))))
    assert udp[(OXM, ofp.OFPXMT_OFB_UDP_DST)] == struct.pack("!H", 53)  # exact: no mask at all
    with pytest.raises(EncodeError, match="tp_dst"):
        encode_flow_add(_flow((("dl_type", "0x0800"), ("tp_dst", "53"))), PIPELINE)


def test_an_all_ones_mask_is_an_exact_field() -> None:
    fields = _tlvs(
        _flow((("dl_type", "0x0800"), ("nw_dst", "203.0.113.7/32"), ("ct_mark", "0x1/0xffffffff")))
    )
    assert fields[(OXM, ofp.OFPXMT_OFB_IPV4_DST)] == bytes([203, 0, 113, 7])
    assert fields[(NXM1, 107)] == struct.pack("!I", 1)
    prefix = _tlvs(_flow((("dl_type", "0x0800"), ("nw_dst", "203.0.113.7/24"))))
    assert prefix[(OXM, ofp.OFPXMT_OFB_IPV4_DST)] == bytes([203, 0, 113, 0, 255, 255, 255, 0])


def test_ct_state_is_a_value_mask_pair_and_ip_frag_later_is_exact() -> None:
    fields = _tlvs(_flow((("dl_type", "0x0800"), ("ct_state", "+trk+new-est-inv"), ("ip_frag", "later"))))
    assert fields[(NXM1, 105)] == struct.pack("!II", 0x21, 0x33)
    assert fields[(NXM1, 26)] == b"\x03"
    with pytest.raises(EncodeError, match="ct_state"):
        encode_flow_add(_flow((("dl_type", "0x0800"), ("ct_state", "+trk+bogus"))), PIPELINE)


def test_conjunction_clause_is_zero_based_and_output_has_no_max_len() -> None:
    conj = encode_flow_add(_flow((("dl_type", "0x0800"),), Conjunction(0x10001, 2, 2)), PIPELINE)
    # NXAST_CONJUNCTION: ..., clause, n_clauses, id at the action's end.
    assert conj.endswith(struct.pack("!BBI", 1, 2, 0x10001))  # clause 2 of 2 goes out as 1
    out = flow_mod_key(encode_flow_add(_flow((), Output(3), table="ingress_deliver"), PIPELINE)).instructions
    action = out[8:]  # after the apply-actions instruction header
    assert struct.unpack("!HHIH", action[:10]) == (ofp.OFPAT_OUTPUT, 16, 3, 0)


def test_meter_is_an_instruction_before_goto_and_drop_has_none() -> None:
    key = flow_mod_key(
        encode_flow_add(
            _flow((("in_port", "2"),), Meter(7), Goto("egress_spoof"), table="classify"), PIPELINE
        )
    )
    kinds = []
    at = 0
    while at < len(key.instructions):
        kind, length = struct.unpack_from("!HH", key.instructions, at)
        kinds.append(kind)
        at += length
    assert kinds == [ofp.OFPIT_METER, ofp.OFPIT_GOTO_TABLE]
    assert flow_mod_key(encode_flow_add(_flow((), Drop()), PIPELINE)).instructions == b""


def test_encodings_are_kept_per_flow_value_and_the_cache_is_bounded() -> None:
    encoder = FlowEncoder(PIPELINE, limit=2)
    a, b, c = (_flow((("in_port", str(n)),), Drop()) for n in (1, 2, 3))
    first = encoder.encode(a)
    assert encoder.encode(_flow((("in_port", "1"),), Drop())) is first
    encoder.encode(b)
    encoder.encode(c)
    assert len(encoder) <= 2


def test_flow_mods_laid_out_from_pieces_are_os_kens_byte_for_byte() -> None:
    flows = [*bridge_flows(PIPELINE, BridgeFacts(uplink_ofport=1)), *cut_flows(PIPELINE, EXAMPLE_PORT)]
    for policy in policies():
        scope = scope_from_mapping(yaml.safe_load(policy.read_text()))
        flows += attachment_flows(PIPELINE, EXAMPLE_PORT, scope)
        # A second attachment: its pieces partly come from the first's.
        flows += attachment_flows(PIPELINE, PortFacts(ofport=9, mac="02:00:00:00:00:09", slot=5), scope)
    encoder, keys_only = FlowEncoder(PIPELINE), FlowEncoder(PIPELINE)
    for flow in flows:
        encoded = encoder.encode(flow)
        reference = encode_flow_add(flow, PIPELINE)
        assert (encoded.add, encoded.key) == (reference, flow_mod_key(reference)), flow
        # The key alone (a whole-switch comparison) is the same key.
        assert keys_only.key(flow) == encoded.key, flow
    assert len(flows) > 300  # the golden policies were found
    assert len(keys_only) == 0  # keys alone are not kept as encodings


def test_keys_do_not_depend_on_match_field_order() -> None:
    one = flow_mod_key(encode_flow_add(_flow((("in_port", "2"), ("dl_type", "0x0800"))), PIPELINE))
    other = flow_mod_key(encode_flow_add(_flow((("dl_type", "0x0800"), ("in_port", "2"))), PIPELINE))
    assert one == other


def test_replies_that_do_not_hold_together_are_refused() -> None:
    with pytest.raises(WireError):
        split_oxm(b"\x80\x00\x00\x04\x00")  # a field longer than the match
    with pytest.raises(WireError):
        flow_stats(b"\x00\x10" + b"\x00" * 14)  # an entry shorter than its fixed part


def test_errors_are_named_with_onf_bundle_codes_decoded() -> None:
    commit = struct.pack("!BBHI", 4, ofp.OFPT_ERROR, 16, 9) + struct.pack(
        "!HHI",
        ofp.OFPET_EXPERIMENTER,
        ofp.ONFERR_ET_FAILED,
        ofproto_common.ONF_EXPERIMENTER_ID,
    )
    assert "ONFERR_ET_FAILED" in error_reply(commit).describe()
    meter = ErrorReply(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_METER_EXISTS)
    assert meter.describe() == "OFPET_METER_MOD_FAILED OFPMMFC_METER_EXISTS"
    assert meter.is_meter(ofp.OFPMMFC_METER_EXISTS)


def test_a_read_back_is_parsed_once_per_spelling_whatever_its_counters() -> None:
    flow = _flow((("dl_type", "0x0800"), ("in_port", "2")), Drop())
    add = encode_flow_add(flow, PIPELINE)
    key = flow_mod_key(add)
    match_and_instructions = add[48:]  # after the header (8) and the flow-mod's fixed part (40)

    def entry(packets: int) -> bytes:
        fixed = struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, 48 + len(match_and_instructions), key.table,
                            7, 9, key.priority, 0, 0, 0, key.cookie, packets, packets * 60)  # fmt: skip
        return fixed + match_and_instructions

    reader = FlowStatsReader()
    [first] = reader.read(entry(1))
    [again] = reader.read(entry(500))
    assert first.key == key and again is first  # the second one was a lookup
    assert flow_stats(entry(3))[0].key == key
    # A read of many cookies (the whole switch) parses without the memo.
    [unkept] = (fresh := FlowStatsReader()).read(entry(1), remember=False)
    assert unkept.key == key and unkept.match_block == first.match_block and not fresh._seen


def test_a_hello_without_openflow13_in_its_bitmap_is_refused() -> None:
    def hello(version: int, bitmap: int | None) -> bytes:
        elements = b"" if bitmap is None else struct.pack("!HHI", 1, 8, bitmap)
        return struct.pack("!BBHI", version, ofp.OFPT_HELLO, 8 + len(elements), 1) + elements

    assert _hello_offers_13(hello(6, (1 << 4) | (1 << 6)))
    assert not _hello_offers_13(hello(6, 1 << 6))
    assert not _hello_offers_13(hello(1, None))
    assert _hello_offers_13(hello(4, None))
