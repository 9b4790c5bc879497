"""Collects the flows of one cookie, each checked against the pipeline as it
is added (shared by the compiler and the neighbour-discovery flows)."""

from __future__ import annotations

from coordinator.flows.model import Flow, FlowAction, Match
from coordinator.flows.pipeline import Pipeline

ETH_IPV6 = "0x86dd"
PROTO_ICMPV6 = "58"
ZERO_MAC = "00:00:00:00:00:00"
# "No VLAN tag at all": the tag-present bit clear (no 802.1Q, priority or
# 802.1ad tag).
UNTAGGED = "0x0000/0x1000"


class FlowBuilder:
    """Collects flows for one cookie with pipeline-checked priorities."""

    def __init__(self, pipeline: Pipeline, cookie: int) -> None:
        self.pipeline = pipeline
        self.cookie = cookie
        self.flows: list[Flow] = []

    def add(self, table: str, priority: tuple[str, int], match: Match, *actions: FlowAction) -> None:
        flow = Flow(
            table=table,
            priority=self.pipeline.priority(*priority),
            match=match,
            actions=actions,
            cookie=self.cookie,
        )
        self.pipeline.check(flow)
        self.flows.append(flow)
