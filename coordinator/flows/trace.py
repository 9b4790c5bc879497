"""Packets -> ``ovs-appctl ofproto/trace`` input, trace output -> verdict (pure).

Used by the differential tests of the compiler (the flows must decide like
:func:`coordinator.policy.evaluator.evaluate`) and by ExplainPacket. Running
the command is :mod:`coordinator.ovs.trace`'s job; nothing here starts a
process.

Building the flow (:func:`trace_request`)
-----------------------------------------
- EGRESS packets come from the guest: ``in_port=<attachment ofport>``,
  ``dl_src=<attachment MAC>``, ``dl_dst=<a remote MAC>`` (never the
  attachment's own MAC, never broadcast/multicast, so the forward table sends
  them to the uplink and no second attachment's zone is involved).
- INGRESS packets come from the uplink: ``in_port=<uplink ofport>``,
  ``dl_src=<the remote MAC>``, ``dl_dst=<attachment MAC>``.
- L3/L4: ``ip``/``ipv6`` with ``nw_proto`` always spelled out;
  ``nw_src``/``nw_dst`` or ``ipv6_src``/``ipv6_dst``; ``tcp_src``/``tcp_dst``
  or ``udp_src``/``udp_dst``; ``icmp_type``/``icmp_code`` for ICMP over IPv4
  and ``icmpv6_type``/``icmpv6_code`` for ICMPv6 over IPv6. ofproto/trace
  parses its flow field by field with OXM prerequisites, unlike ovs-ofctl's
  flow syntax: ``tp_src`` is TCP's field there (refused with
  ``nw_proto=17``) and ``icmp_type`` ICMPv4's (refused with ``ipv6``) -
  "prerequisites not met". OVS parses no ICMP
  header for protocol 1 over IPv6 or 58 over IPv4, so a packet's ICMP type
  and code are left out there (no NetworkScope rule can match them either).
  ND options (``nd_target``, ``nd_sll``, ``nd_tll``) are not part of a
  :class:`Packet` and stay zero (unspecified). A neighbour discovery
  message (ICMPv6 types 133-137) is traced with hop limit 255, as every
  real one is sent; any other packet with the hop limit 0 of an
  unspecified field (nothing but neighbour discovery is matched on it).
- Framing: a VLAN tag is ``vlan_tci=<0x1000 | id>`` (the tag-present bit
  set; id 0 is a priority tag); a frame of another ethertype is
  ``dl_type=<ethertype>`` with no L3/L4 fields. Fragments carry
  ``ip_frag=first`` or ``ip_frag=later`` (a later one without L4 fields).
- Conntrack: ofproto/trace does not run conntrack; each ``ct(table=...)``
  recirculation consumes the next ``--ct-next`` value (``trk,new``,
  ``trk,est``, ``trk,rel``, ``trk,inv``) and silently falls back to
  ``trk,new`` when none is left; surplus values are ignored. A guest-to-uplink
  or uplink-to-guest packet passes one ct() (the attachment's zone) and, when
  new and allowed, the recirculating ct(commit); a packet between two local
  guests passes those of the sender's zone, then of the receiver's.
  The request therefore carries the state :data:`CT_PASSES` times, and
  :func:`parse_trace` refuses a trace that used the fallback.

Reading the verdict (:func:`parse_trace`)
-----------------------------------------
Assumptions about the text of OVS 3.1's ofproto/trace:

- Each pass through the pipeline (the first one and every ``recirc(0x..)``
  resumption) ends with one ``Datapath actions: ...`` line listing what the
  datapath does in that pass; ``drop`` (or nothing) when it does nothing.
  Outputs of all passes are real outputs, so all lines are taken together
  (in this pipeline only the last pass ever outputs).
- Datapath actions are comma-separated at the top level; nested ones appear
  inside parentheses (``ct(commit,zone=7)``, ``clone(...)``). An output is a
  bare decimal number: a *datapath* (odp) port number - with the userspace
  datapath all netdev bridges share one datapath, whose port numbers differ
  from OpenFlow port numbers. ``ovs-appctl dpif/show`` prints both
  (``NAME OFPORT/ODPPORT: (TYPE)``); :func:`parse_dpif_show` turns that into
  the map ``odp port -> OpenFlow port`` for one bridge.
- The packet is ALLOWED exactly when some datapath output maps to the
  expected OpenFlow port (the attachment's for INGRESS, the uplink's for
  EGRESS); DROPPED otherwise (including outputs to any other port).
- A trace without a ``Datapath actions:`` line, or one containing
  ``resume conntrack with default ct_state`` (not enough ``--ct-next``
  values), is an error (:class:`TraceParseError`), never a verdict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.policy.packet import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    PORT_PROTOCOLS,
    CtState,
    Direction,
    Fragment,
    Packet,
)
from coordinator.toplevel import split_top_level

# How many --ct-next values a request carries: enough for the longest path
# through the pipeline (guest -> forward -> another local guest: two zones,
# each a ct() and a recirculating ct(commit)).
CT_PASSES = 4

# The far end of every trace: the MAC of "something behind the uplink".
DEFAULT_REMOTE_MAC = "02:00:5e:10:fe:01"
NEIGHBOUR_DISCOVERY_TYPES = range(133, 138)  # router/neighbour solicitation and advertisement, redirect
ND_HOP_LIMIT = 255

CT_NEXT: Mapping[CtState, str] = {
    CtState.NEW: "trk,new",
    CtState.ESTABLISHED: "trk,est",
    CtState.RELATED: "trk,rel",
    CtState.INVALID: "trk,inv",
}

_DATAPATH_ACTIONS = "Datapath actions:"
_CT_FALLBACK = "resume conntrack with default ct_state"
_BRIDGE_LINE = re.compile(r"^\s+(?P<name>\S+):\s*$")
_PORT_LINE = re.compile(r"^\s+(?P<name>\S+) (?P<ofport>\d+)/(?P<odp>\d+):")


class TraceParseError(ValueError):
    """The trace text is not what this module understands."""


@dataclass(frozen=True)
class TracePorts:
    """Where the attachment and the uplink sit on the bridge."""

    attachment_ofport: int
    attachment_mac: str
    uplink_ofport: int
    remote_mac: str = DEFAULT_REMOTE_MAC


@dataclass(frozen=True)
class TraceRequest:
    """Arguments of one ofproto/trace: the flow, the conntrack states the
    ct() recirculations see, in order, and the OpenFlow port the packet
    must leave by to count as allowed."""

    flow: str
    ct_next: tuple[str, ...]
    expected_ofport: int


@dataclass(frozen=True)
class TraceVerdict:
    allowed: bool
    output_ofports: tuple[int, ...]  # every OpenFlow port the datapath outputs to
    text: str


def trace_request(packet: Packet, ports: TracePorts) -> TraceRequest:
    """The ofproto/trace arguments for ``packet`` at the attachment."""
    if ports.remote_mac.lower() == ports.attachment_mac.lower():
        raise ValueError(f"the remote MAC must differ from the attachment's ({ports.attachment_mac})")
    if packet.direction is Direction.EGRESS:
        l2 = [
            f"in_port={ports.attachment_ofport}",
            f"dl_src={ports.attachment_mac}",
            f"dl_dst={ports.remote_mac}",
        ]
        expected = ports.uplink_ofport
    else:
        l2 = [
            f"in_port={ports.uplink_ofport}",
            f"dl_src={ports.remote_mac}",
            f"dl_dst={ports.attachment_mac}",
        ]
        expected = ports.attachment_ofport
    return TraceRequest(
        flow=",".join([*l2, *packet_fields(packet)]),
        ct_next=(CT_NEXT[packet.ct_state],) * CT_PASSES,
        expected_ofport=expected,
    )


def packet_fields(packet: Packet) -> list[str]:
    """The L2 framing and L3/L4 part of a trace flow (see the module docstring)."""
    tag = [] if packet.vlan_id is None else [f"vlan_tci={0x1000 | packet.vlan_id:#06x}"]
    if packet.ethertype is not None:
        return [*tag, f"dl_type={packet.ethertype:#06x}"]
    return tag + _ip_fields(packet)


def _ip_fields(packet: Packet) -> list[str]:
    v6 = packet.version == 6
    fields = [
        "ipv6" if v6 else "ip",
        f"{'ipv6_src' if v6 else 'nw_src'}={packet.src_ip}",
        f"{'ipv6_dst' if v6 else 'nw_dst'}={packet.dst_ip}",
        f"nw_proto={packet.protocol}",
    ]
    if packet.fragment is not Fragment.NONE:
        fields.append(f"ip_frag={packet.fragment.value}")
    if packet.fragment is Fragment.LATER:
        return fields
    if packet.protocol in PORT_PROTOCOLS:
        l4 = "tcp" if packet.protocol == IPPROTO_TCP else "udp"
        fields += [f"{l4}_src={packet.src_port}", f"{l4}_dst={packet.dst_port}"]
    elif packet.protocol == IPPROTO_ICMP and not v6:
        fields += [f"icmp_type={packet.icmp_type}", f"icmp_code={packet.icmp_code}"]
    elif packet.protocol == IPPROTO_ICMPV6 and v6:
        fields += [f"icmpv6_type={packet.icmp_type}", f"icmpv6_code={packet.icmp_code}"]
        if packet.icmp_type in NEIGHBOUR_DISCOVERY_TYPES:
            fields.append(f"nw_ttl={ND_HOP_LIMIT}")
    return fields


def parse_dpif_show(text: str, bridge: str) -> dict[int, int]:
    """``odp port -> OpenFlow port`` of ``bridge`` from ``ovs-appctl dpif/show``.

    The format (OVS 3.1)::

        netdev@ovs-netdev: hit:0 missed:0
          br0:
            att 5/2: (tap)
            br0 65534/1: (tap)
    """
    mapping: dict[int, int] = {}
    current: str | None = None
    for line in text.splitlines():
        port = _PORT_LINE.match(line)
        if port is not None:
            if current == bridge:
                mapping[int(port["odp"])] = int(port["ofport"])
            continue
        header = _BRIDGE_LINE.match(line)
        if header is not None:
            current = header["name"]
    if not mapping:
        raise TraceParseError(f"dpif/show lists no ports of bridge {bridge!r}:\n{text}")
    return mapping


def split_actions(text: str) -> list[str]:
    """Top-level comma-separated actions (commas inside parentheses kept)."""
    try:
        parts = split_top_level(text)
    except ValueError as exc:
        raise TraceParseError(f"unbalanced parentheses in datapath actions {text!r}") from exc
    return [p.strip() for p in parts if p.strip()]


def datapath_outputs(actions: str) -> list[int]:
    """Datapath port numbers ``actions`` outputs to: bare numbers at the top
    level and inside ``clone(...)`` (the only nesting an output can hide in
    with this pipeline's vocabulary; the arguments of other actions such as
    ``ct(...)`` or ``recirc(...)`` are not outputs)."""
    outputs: list[int] = []
    for action in split_actions(actions):
        if action.isdigit():
            outputs.append(int(action))
        elif action.startswith("clone(") and action.endswith(")"):
            outputs += datapath_outputs(action[len("clone(") : -1])
    return outputs


def datapath_action_lines(text: str) -> list[str]:
    return [
        line.split(_DATAPATH_ACTIONS, 1)[1].strip() for line in text.splitlines() if _DATAPATH_ACTIONS in line
    ]


def parse_trace(text: str, expected_ofport: int, odp_to_ofport: Mapping[int, int]) -> TraceVerdict:
    """The verdict of one trace (see the module docstring for the assumptions)."""
    lines = datapath_action_lines(text)
    if not lines:
        raise TraceParseError(f"no {_DATAPATH_ACTIONS!r} line in the trace:\n{text}")
    if _CT_FALLBACK in text:
        raise TraceParseError(f"a ct() recirculation ran out of --ct-next states:\n{text}")
    ofports: list[int] = []
    for line in lines:
        for odp in datapath_outputs(line):
            if odp not in odp_to_ofport:
                raise TraceParseError(f"datapath port {odp} is not in the port map {dict(odp_to_ofport)}")
            ofports.append(odp_to_ofport[odp])
    return TraceVerdict(allowed=expected_ofport in ofports, output_ofports=tuple(ofports), text=text)


__all__ = [
    "CT_NEXT",
    "CT_PASSES",
    "DEFAULT_REMOTE_MAC",
    "TraceParseError",
    "TracePorts",
    "TraceRequest",
    "TraceVerdict",
    "datapath_action_lines",
    "datapath_outputs",
    "packet_fields",
    "parse_dpif_show",
    "parse_trace",
    "split_actions",
    "trace_request",
]
