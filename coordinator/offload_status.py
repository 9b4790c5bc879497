"""Offload status for Health, GetAttachment and /metrics, from one cached
``ovs-appctl dpctl/dump-flows -m`` (parsed by :mod:`coordinator.ovs.offload`).

A dump lists every datapath flow; on a busy DPU that is tens of thousands of
lines, so it is read at most once per ``ttl_s`` (``[health]
offload_cache_s``) whoever asks, concurrent callers share one read, and the
text is parsed on a worker thread. A failed read is cached as well: with
ovs-vswitchd stuck, callers get "unknown" at once instead of each waiting
for the timeout.

States: ``available`` (counts are meaningful), ``unavailable`` (the
userspace datapath cannot offload: every flow is in software; not an
error), ``unknown`` (the dump failed; ``detail`` says why).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinator.config import Config
from coordinator.ovs.control import vswitchd_ctl
from coordinator.ovs.offload import FlowCounts, OffloadReport, OffloadState, dump_flows_argv, parse_dump_flows
from coordinator.ovs.trace import TraceError, run_appctl

if TYPE_CHECKING:
    from coordinator.metrics import Metrics

__all__ = ["OffloadMonitor", "OffloadSummary", "OffloadView", "offload_monitor"]

# A dump must not hold up Health or GetAttachment for long.
DUMP_TIMEOUT_S = 3.0


class OffloadView(enum.Enum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class OffloadSummary:
    state: OffloadView
    counts: FlowCounts
    detail: str


def _describe(state: OffloadView, counts: FlowCounts, datapath_type: str | None) -> str:
    if state is OffloadView.UNAVAILABLE:
        dp = f"datapath_type={datapath_type}" if datapath_type else "this datapath"
        return f"{dp} does not offload: {counts.total} datapath flows, all in software"
    partial = f", {counts.partial} partially" if counts.partial else ""
    return f"{counts.offloaded} of {counts.total} datapath flows offloaded{partial}"


class OffloadMonitor:
    """The latest dump, re-read when older than ``ttl_s``."""

    def __init__(
        self,
        ctl: Callable[[], str],
        *,
        datapath_type: str | None,
        ttl_s: float,
        timeout_s: float = DUMP_TIMEOUT_S,
        executable: Sequence[str] = ("ovs-appctl",),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctl = ctl
        self._datapath_type = datapath_type
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._executable = tuple(executable)
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._cached: tuple[float, OffloadReport | str] | None = None
        self.dumps = 0  # how many dumps were run (tests, debugging)

    async def _report(self) -> OffloadReport | str:
        """The parsed dump, or the error text of a failed one."""
        async with self._lock:
            now = self._monotonic()
            if self._cached is not None and now - self._cached[0] < self._ttl:
                return self._cached[1]
            result: OffloadReport | str
            try:
                self.dumps += 1
                ctl = self._ctl()
                args = dump_flows_argv(ctl)[2:]
                text = await run_appctl(ctl, *args, timeout=self._timeout, executable=self._executable)
                result = await asyncio.to_thread(parse_dump_flows, text, datapath_type=self._datapath_type)
            except TraceError as exc:
                result = f"cannot read datapath flows: {exc}"
            self._cached = (self._monotonic(), result)
            return result

    def _summary(
        self, report: OffloadReport | str, counts: Callable[[OffloadReport], FlowCounts]
    ) -> OffloadSummary:
        if isinstance(report, str):
            return OffloadSummary(OffloadView.UNKNOWN, FlowCounts(), report)
        state = OffloadView.AVAILABLE if report.state is OffloadState.AVAILABLE else OffloadView.UNAVAILABLE
        chosen = counts(report)
        return OffloadSummary(state, chosen, _describe(state, chosen, self._datapath_type))

    async def total(self) -> OffloadSummary:
        """Every datapath flow of the datapath."""
        return self._summary(await self._report(), lambda r: r.total)

    async def for_ports(self, ports: Iterable[str]) -> OffloadSummary:
        """Flows entering from or output to ``ports`` (an attachment's representor)."""
        wanted = [p for p in ports if p]
        return self._summary(await self._report(), lambda r: r.for_ports(wanted))

    async def update_metrics(self, metrics: Metrics) -> None:
        """Refresher for ``Metrics.add_refresher``: the datapath flow gauges.
        Partially offloaded flows count as not offloaded (their actions run
        in software). A failed dump leaves the gauges at their last value."""
        summary = await self.total()
        if summary.state is OffloadView.UNKNOWN:
            return
        counts = summary.counts
        metrics.set_datapath_flows(
            offloaded=counts.offloaded, non_offloaded=counts.partial + counts.not_offloaded
        )


def offload_monitor(config: Config) -> OffloadMonitor:
    """The monitor for the configured OVS (its control socket is looked up per
    dump: ovs-vswitchd may restart under another pid)."""
    return OffloadMonitor(
        lambda: vswitchd_ctl(config.ovs.rundir, config.ovs.vswitchd_ctl),
        datapath_type=config.ovs.datapath_type,
        ttl_s=config.health.offload_cache_s,
        timeout_s=min(DUMP_TIMEOUT_S, config.ovs.timeout_s),
    )
