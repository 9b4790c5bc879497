"""The OpenFlow 1.3 messages ``ChannelSwitch`` sends besides flow adds
(built with os-ken's codec: flow-stats requests, meter mods, deletes by
cookie) and the check of a bundle's outcome."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from os_ken.ofproto import ofproto_parser as any_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from coordinator.ovs.ofchannel import Outcome, Outgoing
from coordinator.ovs.ofencode import DATAPATH
from coordinator.ovs.ofwire import FlowKey, WireError, bundle_ctrl_type, bundle_id_of, multipart_body
from coordinator.ovs.openflow import OpenFlowError

ALL_COOKIES = -1
U64 = 0xFFFF_FFFF_FFFF_FFFF
BUNDLE_FLAGS = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
# Open vSwitch's fragment handling "nx-match" (ovs-ofctl set-frags): the
# value OpenFlow leaves unused in OFPC_FRAG_MASK (os-ken has no name for it).
FRAG_NX_MATCH = 3


class BundleError(OpenFlowError):
    """The switch refused the bundle: nothing of it was applied."""


@dataclass(frozen=True)
class MeterBand:
    """A drop-band meter: ``kbps`` rate, ``burst_kb`` burst."""

    kbps: int
    burst_kb: int


def serialize(message: Any, xid: int) -> bytes:
    message.set_xid(xid)
    message.serialize()
    return bytes(message.buf)


def discard_of(bundle_open: bytes, xid: int) -> bytes:
    """The request discarding the bundle that ``bundle_open`` opened."""
    ctrl = parser.ONFBundleCtrlMsg(
        DATAPATH, bundle_id_of(bundle_open), ofp.ONF_BCT_DISCARD_REQUEST, BUNDLE_FLAGS, []
    )
    return serialize(ctrl, xid)


def cookie_mask(mask: int) -> int:
    return U64 if mask == ALL_COOKIES else mask & U64


def stats_request(cookie: int, mask: int) -> bytes:
    request = parser.OFPFlowStatsRequest(DATAPATH, cookie=cookie & U64, cookie_mask=cookie_mask(mask))
    return serialize(request, 0)


def parse(message: bytes) -> Any:
    version, kind, length, xid = message[0], message[1], len(message), int.from_bytes(message[4:8], "big")
    return any_parser.msg(DATAPATH, version, kind, length, xid, message)


def meter_mod(command: int, meter_id: int, band: MeterBand | None, xid: int) -> bytes:
    bands = [parser.OFPMeterBandDrop(rate=band.kbps, burst_size=band.burst_kb)] if band else []
    flags = ofp.OFPMF_KBPS | ofp.OFPMF_BURST if band else 0
    return serialize(parser.OFPMeterMod(DATAPATH, command, flags, meter_id, bands), xid)


def delete_cookie(cookie: int) -> bytes:
    message = parser.OFPFlowMod(
        DATAPATH, cookie=cookie & U64, cookie_mask=U64, table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch(),
    )  # fmt: skip
    return serialize(message, 0)


def describe_key(key: FlowKey) -> str:
    return f"table {key.table} priority {key.priority} cookie {key.cookie:#x}"


def by_position(i: int) -> str:
    return f"change {i + 1}"


def named_changes(named: Sequence[int | FlowKey], *, deleted: int = 0) -> Callable[[int], str]:
    """``check_bundle``'s label of a bundle of changes named by what they
    touch: a cookie deleted whole, or a flow by its key (deleted for the
    first ``deleted``, added after); a change past them by its position."""

    def label(i: int) -> str:
        if i >= len(named):
            return by_position(i)
        what = named[i]
        if isinstance(what, int):
            return f"delete of cookie {what:#x}"
        return f"{'delete' if i < deleted else 'add'} of {describe_key(what)}"

    return label


def bodies_of(outcome: Outcome, what: str) -> list[bytes]:
    """The bodies of a multipart reply; OpenFlowError naming ``what`` if refused."""
    if outcome.error is not None:
        raise OpenFlowError(f"{what}: {outcome.error.describe()}")
    return [multipart_body(reply)[1] for reply in outcome.replies]


def check_bundle(sent: Sequence[Outgoing], outcomes: Sequence[Outcome], label: Callable[[int], str]) -> None:
    """Raise BundleError naming what the switch refused (open, the adds,
    commit): ``label(i)`` names change ``i`` (from 0), asked only of a
    refused one, so a bundle of thousands that goes through formats none."""
    problems = []
    for i, outcome in enumerate(outcomes):
        if outcome.error is None:
            continue
        if i == 0 or i == len(sent) - 1:
            what = "bundle open" if i == 0 else "bundle commit"
        else:
            what = label(i - 1)
        problems.append(f"{what}: {outcome.error.describe()}")
    if not problems:
        commit = outcomes[-1].replies
        try:
            if not commit or bundle_ctrl_type(commit[0]) != ofp.ONF_BCT_COMMIT_REPLY:
                problems.append("bundle commit: no commit reply")
        except WireError as exc:
            problems.append(f"bundle commit: {exc}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BundleError(f"bundle refused, old flows kept: {shown}")
