"""Which datapath flows are offloaded: ``ovs-appctl dpctl/dump-flows -m``.

One line per datapath flow, printed by ``format_dpif_flow()`` in OVS's
lib/dpctl.c (3.1)::

    [ufid:UUID, ]KEY, packets:N, bytes:N, used:T[, flags:F][, offloaded:yes|partial][, dp:LAYER],
        actions:ACTIONS[, dp-extra-info:...]

- ``offloaded:yes`` is printed when the flow is in hardware, ``offloaded:partial``
  when only its classification is (userspace datapath with DPDK rte_flow marks);
  only with ``-m``.
- ``dp:`` is the layer holding the flow (``-m`` only): ``tc`` for flows the
  kernel datapath put into TC flower (``parse_tc_flower_to_attrs()`` in
  lib/netdev-offload-tc.c marks them ``offloaded`` only when TC reports them
  ``in_hw``: a ``dp:tc`` flow without ``offloaded:yes`` runs in TC software),
  ``ovs`` for flows of the kernel module (lib/dpif-netlink.c) and of the
  userspace datapath (lib/dpif-netdev.c), ``dpdk`` for fully offloaded DPDK flows.
- The userspace datapath prefixes its flows with ``flow-dump from the main
  thread:`` / ``flow-dump from pmd on cpu core: N`` and adds ``dp-extra-info``.
- ``type=offloaded|non-offloaded|partially-offloaded|ovs|tc|dpdk`` is a
  *filter argument* of dump-flows, not something it prints; :func:`dump_flows`
  passes it through.

Counting: a flow is offloaded (``offloaded:yes``), partially offloaded
(``offloaded:partial``) or not offloaded (anything else). The state is
``unavailable`` when the dump carries no offload information at all: the
userspace datapath without offloaded flows (it cannot offload; the
datapath_type tells, else the ``flow-dump from`` headers do), or a dump
without ``-m`` (no ``dp:`` fields). That is a state, not an error.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike

from coordinator.ovs.trace import DEFAULT_TIMEOUT, run_appctl
from coordinator.toplevel import split_top_level

__all__ = [
    "DatapathFlow",
    "FlowCounts",
    "OffloadReport",
    "OffloadState",
    "dump_flows",
    "dump_flows_argv",
    "parse_dump_flows",
    "parse_flow_line",
]

_IN_PORT_RE = re.compile(r"(?:^|[,\s])in_port\(([^()]*)\)")
_USERSPACE_HEADER = "flow-dump from "
_NOT_PORTS = frozenset({"drop", "userspace"})


class OffloadState(enum.Enum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class DatapathFlow:
    in_port: str  # as printed: a port name with --names, else the datapath port number
    offloaded: bool
    partial: bool
    dp_layer: str | None  # "tc", "ovs", "dpdk"; None without -m
    output_ports: tuple[str, ...]  # plain port outputs among the actions
    line: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class FlowCounts:
    offloaded: int = 0
    partial: int = 0
    not_offloaded: int = 0

    @property
    def total(self) -> int:
        return self.offloaded + self.partial + self.not_offloaded

    @property
    def offloaded_ratio(self) -> float | None:
        """Fully offloaded share of the flows; None without flows."""
        return self.offloaded / self.total if self.total else None

    def add(self, flow: DatapathFlow) -> FlowCounts:
        return FlowCounts(
            self.offloaded + (flow.offloaded and not flow.partial),
            self.partial + flow.partial,
            self.not_offloaded + (not flow.offloaded),
        )


def _count(flows: Iterable[DatapathFlow]) -> FlowCounts:
    counts = FlowCounts()
    for flow in flows:
        counts = counts.add(flow)
    return counts


@dataclass(frozen=True)
class OffloadReport:
    state: OffloadState
    flows: tuple[DatapathFlow, ...]
    unparsed: tuple[str, ...] = ()

    @property
    def total(self) -> FlowCounts:
        return _count(self.flows)

    @property
    def by_in_port(self) -> Mapping[str, FlowCounts]:
        result: dict[str, FlowCounts] = {}
        for flow in self.flows:
            result[flow.in_port] = result.get(flow.in_port, FlowCounts()).add(flow)
        return result

    def for_ports(self, ports: Iterable[str]) -> FlowCounts:
        """Flows that enter from or output to any of ``ports`` (an attachment's
        representor: its egress flows have it as in_port, its ingress flows
        output to it), each flow counted once."""
        wanted = set(ports)
        return _count(f for f in self.flows if f.in_port in wanted or wanted.intersection(f.output_ports))


def _action_outputs(actions: str) -> tuple[str, ...]:
    """Plain port outputs of an action list (``ct(commit,zone=5),p0`` -> ``("p0",)``)."""
    outputs = []
    for token in split_top_level(actions, strict=False):
        name = token.strip()
        if name and "(" not in name and "=" not in name and name not in _NOT_PORTS:
            outputs.append(name)
    return tuple(outputs)


def parse_flow_line(line: str) -> DatapathFlow | None:
    """One datapath flow of ``dpctl/dump-flows [-m]``; None for a line that is not one."""
    text = line.strip()
    head, sep, tail = text.partition(", actions:")
    if not sep or "packets:" not in head:
        return None
    actions = tail.split(", dp-extra-info:", 1)[0]
    offloaded = partial = False
    dp_layer = None
    key = ""
    # Top-level fields are separated by ", " (a key's own commas have no space).
    for part in split_top_level(head, ", ", strict=False):
        name, _, value = part.partition(":")
        if name == "offloaded":
            offloaded = value in ("yes", "partial")
            partial = value == "partial"
        elif name == "dp":
            dp_layer = value
        elif name not in ("ufid", "packets", "bytes", "used", "flags"):
            key = part
    match = _IN_PORT_RE.search(key)
    return DatapathFlow(
        in_port=match[1] if match else "",
        offloaded=offloaded,
        partial=partial,
        dp_layer=dp_layer,
        output_ports=_action_outputs(actions),
        line=text,
    )


def parse_dump_flows(text: str, *, datapath_type: str | None = None) -> OffloadReport:
    """Parse a whole dump. ``datapath_type`` (the bridge's: ``system`` or
    ``netdev``), when known, decides whether an empty or all-software dump
    means "nothing offloaded" (``system``) or "no offload" (``netdev``)."""
    flows: list[DatapathFlow] = []
    unparsed: list[str] = []
    userspace = datapath_type == "netdev"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(_USERSPACE_HEADER):
            userspace = userspace or datapath_type is None
            continue
        flow = parse_flow_line(stripped)
        if flow is None:
            unparsed.append(stripped)
        else:
            flows.append(flow)
    if any(f.offloaded for f in flows) or any(f.dp_layer not in (None, "ovs") for f in flows):
        state = OffloadState.AVAILABLE
    elif userspace:
        state = OffloadState.UNAVAILABLE
    elif datapath_type == "system":
        state = (
            OffloadState.AVAILABLE
            if not flows or all(f.dp_layer for f in flows)
            else OffloadState.UNAVAILABLE
        )
    else:
        # Unknown datapath: kernel flows of a -m dump name their layer.
        state = (
            OffloadState.AVAILABLE if flows and all(f.dp_layer for f in flows) else OffloadState.UNAVAILABLE
        )
    return OffloadReport(state, tuple(flows), tuple(unparsed))


def dump_flows_argv(ctl: str | PathLike[str], type_filter: str = "", *, names: bool = True) -> list[str]:
    """The ovs-appctl arguments (after ``ovs-appctl``) of one verbose dump."""
    args = ["-t", str(ctl), "dpctl/dump-flows", "-m"]
    if names:
        args.append("--names")  # in_port(pf0vf0), not in_port(2): representors map to attachments
    if type_filter:
        args.append(f"type={type_filter}")
    return args


async def dump_flows(
    ctl: str | PathLike[str],
    *,
    datapath_type: str | None = None,
    type_filter: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    executable: Sequence[str] = ("ovs-appctl",),
) -> OffloadReport:
    """Run ``ovs-appctl -t CTL dpctl/dump-flows -m --names [type=...]`` and parse it.

    Raises :class:`coordinator.ovs.trace.TraceError` when ovs-appctl fails (OVS
    down); an answer without offload information is a report in state
    ``unavailable``.
    """
    args = dump_flows_argv(ctl, type_filter)[2:]
    text = await run_appctl(ctl, *args, timeout=timeout, executable=executable)
    return parse_dump_flows(text, datapath_type=datapath_type)
