"""The bridge's switch configuration over the OpenFlow channel: fragment
handling ``nx-match`` (what ``ovs-ofctl set-frags`` sets)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from coordinator.ovs.ofchannel import Outcome, Outgoing, Reply
from coordinator.ovs.ofencode import DATAPATH
from coordinator.ovs.ofmessages import FRAG_NX_MATCH, parse, serialize
from coordinator.ovs.openflow import OpenFlowError

Exchange = Callable[[Sequence[Outgoing]], Awaitable[list[Outcome]]]


async def match_fragments_as_parsed(exchange: Exchange, xid: Callable[[], int]) -> None:
    """A first fragment is looked up with its L4 ports, later fragments
    without. Switch state, not a flow: set again whenever the bridge is
    (re)programmed. Read back, as a switch may ignore the flags."""
    flags, miss_send_len = await _switch_config(exchange, xid)
    setting = parser.OFPSetConfig(DATAPATH, (flags & ~ofp.OFPC_FRAG_MASK) | FRAG_NX_MATCH, miss_send_len)
    sent = xid()
    [outcome] = await exchange([Outgoing(serialize(setting, sent), sent)])
    if outcome.error is not None:
        raise OpenFlowError(f"setting fragment handling: {outcome.error.describe()}")
    flags, _ = await _switch_config(exchange, xid)
    if flags & ofp.OFPC_FRAG_MASK != FRAG_NX_MATCH:
        raise OpenFlowError(f"the switch kept fragment handling {flags & ofp.OFPC_FRAG_MASK}, not nx-match")


async def _switch_config(exchange: Exchange, xid: Callable[[], int]) -> tuple[int, int]:
    sent = xid()
    request = serialize(parser.OFPGetConfigRequest(DATAPATH), sent)
    [outcome] = await exchange([Outgoing(request, sent, Reply.ONE)])
    if outcome.error is not None:
        raise OpenFlowError(f"reading the switch config: {outcome.error.describe()}")
    try:
        reply = parse(outcome.replies[0])
        return int(reply.flags), int(reply.miss_send_len)
    except Exception as exc:  # os-ken's parser raises whatever a bad reply trips
        raise OpenFlowError(f"reading the switch config: unreadable reply ({type(exc).__name__})") from exc
