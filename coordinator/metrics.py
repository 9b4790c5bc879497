"""Prometheus metrics: the handles and their scrape-time refresh.

Everything hangs off one ``Metrics`` object with an injectable
``CollectorRegistry`` (tests use a fresh one; nothing touches the global
default registry). Values that live in the store (attachments, pools,
stale policies) are not pushed by every code path that changes them:
refreshers registered with ``Metrics.add_refresher`` read them right
before each scrape, as coroutines on the event loop (store reads are
awaited from the store's thread), so the numbers are exact and the store
is only reached through the daemon's one store thread.

The endpoint serving them is :mod:`coordinator.metrics_endpoint` (its names
are importable from here too); the gRPC interceptor counting RPCs is
:mod:`coordinator.api.rpc_metrics`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import platform
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from coordinator import __version__
from coordinator.eswitch.base import DeviceKind
from coordinator.health import HealthReport
from coordinator.metrics_endpoint import (
    MetricsServer,
    MetricsServerError,
    Refresher,
    parse_listen,
    start_metrics_server,
)
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState, PoolStats
from coordinator.waiting import wait_within

__all__ = [
    "PREFIX",
    "Metrics",
    "MetricsServer",
    "MetricsServerError",
    "Refresher",
    "parse_listen",
    "start_metrics_server",
]

log = logging.getLogger(__name__)

PREFIX = "bluefield_coordinator"
DEFAULT_LISTEN = "127.0.0.1:9464"
# Prometheus' default scrape timeout is 10 s; leave room for the rest.
REFRESH_TIMEOUT_S = 2.0


# Policy applies are one OpenFlow bundle plus a read-back: milliseconds
# normally, seconds when ovs-vswitchd is busy revalidating.
_APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Unary RPCs; streaming RPCs (WatchAttachmentEvents) last until the client
# leaves and land in the top buckets, which is what they are.
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class Metrics:
    """Typed handles on every metric the daemon exports."""

    def __init__(self, registry: CollectorRegistry | None = None, *, version: str = __version__) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.attachments = Gauge(
            f"{PREFIX}_attachments", "Attachments by lifecycle state.", ["state"], registry=r
        )
        self.pool_free = Gauge(
            f"{PREFIX}_pool_free_devices", "Eswitch devices free to attach, by kind.", ["kind"], registry=r
        )
        self.pool_devices = Gauge(
            f"{PREFIX}_pool_devices", "Eswitch devices present, by kind.", ["kind"], registry=r
        )
        self.policy_apply_seconds = Histogram(
            f"{PREFIX}_policy_apply_duration_seconds",
            "Time to compile, install (one bundle) and verify one attachment's policy.",
            ["result"],
            buckets=_APPLY_BUCKETS,
            registry=r,
        )
        self.flows_installed = Gauge(
            f"{PREFIX}_flows_installed", "OpenFlow flows the coordinator has installed.", registry=r
        )
        self.datapath_flows = Gauge(
            f"{PREFIX}_datapath_flows",
            "Datapath (megaflow) entries, by whether the hardware offloaded them.",
            ["offloaded"],
            registry=r,
        )
        self.gateway_connected = Gauge(
            f"{PREFIX}_gateway_stream_connected", "1 while the gateway policy stream is up.", registry=r
        )
        self.gateway_reconnects = Counter(
            f"{PREFIX}_gateway_stream_reconnects", "Times the gateway policy stream went down.", registry=r
        )
        self.gateway_resyncs = Counter(
            f"{PREFIX}_gateway_stream_resyncs",
            "Full resyncs of the policy stream (sequence gap or new gateway epoch).",
            registry=r,
        )
        self.gateway_last_seq = Gauge(
            f"{PREFIX}_gateway_stream_last_seq",
            "Sequence number of the last policy event applied.",
            registry=r,
        )
        self.stale_policies = Gauge(
            f"{PREFIX}_stale_policies", "Sandboxes whose policy is stale (gateway unreachable).", registry=r
        )
        self.rpcs = Counter(
            f"{PREFIX}_rpcs", "gRPC calls handled, by method and status code.", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            f"{PREFIX}_rpc_duration_seconds",
            "gRPC call duration (streams: until they end), by method.",
            ["method"],
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        self.api_connections_shed = Counter(
            f"{PREFIX}_api_connections_shed",
            "API connections the listener closed or refused before a call on them was authorized, by why:"
            " displaced (a newcomer took the place), expired (past unproven_timeout_s), refused (every"
            " place held by a proven connection).",
            ["reason"],
            registry=r,
        )
        self.reconcile_corrections = Counter(
            f"{PREFIX}_reconcile_corrections",
            "Differences between intended and actual state that reconciliation corrected, by kind.",
            ["kind"],
            registry=r,
        )
        self.policies = Gauge(
            f"{PREFIX}_policies", "Attachments by policy state (degraded: the last update failed).", ["state"],
            registry=r,
        )  # fmt: skip
        self.health_checks = Gauge(
            f"{PREFIX}_health_check_ok",
            "1 while a health check passes, 0 while it fails; required ones gate Attach.",
            ["check", "required"],
            registry=r,
        )
        # The daemon's RSS, CPU and open files, under our prefix.
        ProcessCollector(namespace=PREFIX, registry=r)
        self.trust_reloads = Counter(
            f"{PREFIX}_trust_reloads",
            "Reloads of a listener's certificate, key, CA bundle and CRLs, by result (ok, failed).",
            ["listener", "result"],
            registry=r,
        )
        self.trust_reload_failing = Gauge(
            f"{PREFIX}_trust_reload_failing",
            "1 while the last reload of a listener's trust files failed (the previous set is in force).",
            ["listener"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            f"{PREFIX}_certificate_expiry_timestamp_seconds",
            "When the certificate a listener presents expires (seconds since the epoch).",
            ["listener"],
            registry=r,
        )
        self.build_info = Info(f"{PREFIX}_build", "Version of the running daemon.", registry=r)
        self.build_info.info({"version": version, "python": platform.python_version()})

        # Every known label value exists from the start: a dashboard sees 0,
        # not "no data", and rate() has a baseline.
        for state in AttachmentState:
            self.attachments.labels(state=state.value)
        for kind in DeviceKind:
            self.pool_free.labels(kind=kind.value)
            self.pool_devices.labels(kind=kind.value)
        for flag in ("true", "false"):
            self.datapath_flows.labels(offloaded=flag)
        for policy_state in PolicyState:
            self.policies.labels(state=policy_state.value)
        self._refreshers: list[Refresher] = []
        self._reconnects_seen = 0
        self._resyncs_seen = 0

    # -- snapshots of state owned elsewhere ---------------------------------

    def update_attachments(self, records: Iterable[AttachmentRecord]) -> None:
        """Attachments by state and stale policies, from the store's rows."""
        counts = dict.fromkeys(AttachmentState, 0)
        policies = dict.fromkeys(PolicyState, 0)
        stale: set[str] = set()
        for record in records:
            counts[record.state] += 1
            policies[record.policy_state] += 1
            if record.policy_state is PolicyState.STALE:
                stale.add(record.sandbox_id)
        for state, count in counts.items():
            self.attachments.labels(state=state.value).set(count)
        self.stale_policies.set(len(stale))
        for policy_state, count in policies.items():
            self.policies.labels(state=policy_state.value).set(count)

    def update_health(self, report: HealthReport) -> None:
        for check in report.checks:
            required = "true" if check.required else "false"
            self.health_checks.labels(check=check.name, required=required).set(1 if check.ok else 0)

    def update_pools(self, pools: Iterable[PoolStats]) -> None:
        for stats in pools:
            self.pool_free.labels(kind=stats.kind.value).set(stats.free)
            self.pool_devices.labels(kind=stats.kind.value).set(stats.total)

    def update_gateway(self, *, connected: bool, reconnects: int, resyncs: int, last_seq: int) -> None:
        """From the stream client's cumulative counts (``StreamStatus``)."""
        self.gateway_connected.set(1 if connected else 0)
        self.gateway_last_seq.set(last_seq)
        # Counters only go up: add what happened since the last snapshot.
        if reconnects > self._reconnects_seen:
            self.gateway_reconnects.inc(reconnects - self._reconnects_seen)
        if resyncs > self._resyncs_seen:
            self.gateway_resyncs.inc(resyncs - self._resyncs_seen)
        self._reconnects_seen = max(self._reconnects_seen, reconnects)
        self._resyncs_seen = max(self._resyncs_seen, resyncs)

    def set_datapath_flows(self, *, offloaded: int, non_offloaded: int) -> None:
        self.datapath_flows.labels(offloaded="true").set(offloaded)
        self.datapath_flows.labels(offloaded="false").set(non_offloaded)

    def policy_applied(self, seconds: float, *, ok: bool) -> None:
        """One attachment's policy apply (compile, bundle, verify) took ``seconds``."""
        self.policy_apply_seconds.labels(result="ok" if ok else "error").observe(seconds)

    def api_connection_shed(self, reason: str) -> None:
        """The API listener shed a connection not yet proven, for ``reason``."""
        self.api_connections_shed.labels(reason=reason).inc()

    def corrected(self, kind: str) -> None:
        """Reconcile corrected one difference of ``kind`` (a drift reason)."""
        self.reconcile_corrections.labels(kind=kind).inc()

    @contextlib.contextmanager
    def time_policy_apply(self) -> Iterator[None]:
        """``with metrics.time_policy_apply(): ...`` observes the duration as
        ``result="ok"``, or ``result="error"`` if the block raised."""
        started = time.monotonic()
        result = "error"
        try:
            yield
            result = "ok"
        finally:
            self.policy_apply_seconds.labels(result=result).observe(time.monotonic() - started)

    # -- scrape-time refresh ------------------------------------------------

    def add_refresher(self, refresher: Refresher) -> None:
        """Run ``refresher`` before every scrape, on the event loop. It may be
        a coroutine function (to ask ovs-appctl for datapath flow counts);
        each gets ``REFRESH_TIMEOUT_S``."""
        self._refreshers.append(refresher)

    async def refresh(self) -> None:
        for refresher in self._refreshers:
            try:
                result = refresher()
                if inspect.isawaitable(result):
                    await wait_within(result, timeout=REFRESH_TIMEOUT_S)
            except Exception:
                # A broken or slow source leaves its metrics at the last
                # value; the rest of the scrape still works.
                log.exception("metrics refresher failed")
