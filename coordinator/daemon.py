"""Composition root: builds the adapters, runs the service and the gRPC
server, and stops them in order on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from coordinator import faults
from coordinator.api.auth import RoleMap
from coordinator.api.rpc_metrics import RpcMetricsInterceptor
from coordinator.api.server import ApiServer, ServerSetupError, load_server_trust, start_server
from coordinator.api.servicer import CoordinatorServicer
from coordinator.client import TlsFiles
from coordinator.config import Config
from coordinator.dataplane import Dataplane
from coordinator.eswitch.base import EswitchBackend, EswitchError, HealthFact
from coordinator.eswitch.devlink import DevlinkCli
from coordinator.eswitch.emulated import EmulatedEswitch
from coordinator.eswitch.switchdev import SwitchdevEswitch, SwitchdevSettings
from coordinator.events import EventHub
from coordinator.flows.classes import load_network_classes
from coordinator.flows.pipeline import load_pipeline
from coordinator.gateway.client import PolicyStreamClient
from coordinator.gateway.policy_stream import PolicyStreamHandler
from coordinator.health import ovs_checks
from coordinator.metrics import (
    Metrics,
    MetricsServer,
    MetricsServerError,
    start_metrics_server,
)
from coordinator.notify import Notifier, watchdog_task
from coordinator.offload_status import offload_monitor
from coordinator.ovs.control import bridge_mgmt
from coordinator.ovs.ofchannel import OpenFlowChannel
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.ovsdb import Ovsdb, OvsdbError
from coordinator.security_events import SecurityEvents, start_security_events
from coordinator.service import AttachmentService
from coordinator.store.db import Store
from coordinator.store.records import AttachmentState
from coordinator.store.worker import AsyncStore
from coordinator.trust.config_files import metrics_files
from coordinator.trust.material import MaterialError, TrustSet
from coordinator.trust.peer import PeerCheck
from coordinator.trust.reloader import TrustReloader
from coordinator.trust_watch import TrustReport, start_trust_reloads
from coordinator.watches.health import start_health_watch
from coordinator.watches.host_grace import expire_unreconciled_after
from coordinator.watches.inventory import start_inventory_watch
from coordinator.watches.switch import watch_switch

log = logging.getLogger(__name__)

# How long a request may wait for the OpenFlow channel to (re)connect: when
# ovs-vswitchd is away, an apply fails soon as unavailable (and the switch
# watch re-programs once it is back) rather than hold its caller for the
# whole request timeout.
OPENFLOW_CONNECT_S = 1.0
# Connections to the bridge a bulk sync (a re-program of the whole switch)
# stages its bundles on side by side (``ovs/oflanes``); all but the first
# connect on the first bulk sync, and ask for no flow monitor.
BULK_LANES = 4


def make_backend(config: Config) -> EswitchBackend:
    if config.eswitch.backend == "emulated":
        return EmulatedEswitch(config.eswitch.emulated)
    cfg = config.eswitch.switchdev
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SwitchdevSettings)}
    try:
        settings = SwitchdevSettings(**fields)
    except ValueError as exc:
        raise EswitchError(f"eswitch.switchdev.{exc}") from exc
    return SwitchdevEswitch(settings, DevlinkCli(cfg.devlink_command, timeout=cfg.devlink_timeout_s))


def mac_salt(config: Config) -> str:
    if config.eswitch.mac_salt:
        return config.eswitch.mac_salt
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        log.warning("no /etc/machine-id and no eswitch.mac_salt: MACs are unique on this DPU only")
        return ""


@dataclass
class Adapters:
    """What the service runs on; ``close`` releases it in order."""

    store: AsyncStore
    backend: EswitchBackend
    ovsdb: Ovsdb
    switch: ChannelSwitch  # flows and meters, over the persistent OpenFlow channel
    events: EventHub
    service: AttachmentService
    dataplane: Dataplane

    async def close(self) -> None:
        await self.dataplane.close()
        await self.switch.close()
        await self.ovsdb.close()
        self.backend.close()
        await self.store.close()


async def build(config: Config, backend: EswitchBackend | None = None) -> Adapters:
    """Wire store, backend, OVS adapters and the service; start the service
    (which converges the switch to the store). ``backend`` overrides the
    configured one (tests keep a handle on theirs)."""
    store = AsyncStore(Store(Path(config.store.path), event_log_size=config.store.event_log_size))
    ovsdb = Ovsdb(config.ovs.db, timeout=config.ovs.timeout_s)
    cfg = config.ovs
    pipeline = load_pipeline()

    # Connected by the first request (the service's start programs the
    # bridge), reconnected whenever ovs-vswitchd restarts; each connection
    # watches the bridge's flow changes (``ovs/ofwatch``). Beside it, the
    # connections bulk syncs also stage their bundles on: no flow monitor,
    # xids from the one count.
    def mgmt() -> str:
        return bridge_mgmt(cfg.rundir, cfg.bridge)

    channel = OpenFlowChannel(
        mgmt, timeout=cfg.timeout_s, connect_timeout=OPENFLOW_CONNECT_S, watch_flows=True
    )
    lanes = [
        OpenFlowChannel(mgmt, timeout=cfg.timeout_s, connect_timeout=OPENFLOW_CONNECT_S, xids=channel.xids)
        for _ in range(BULK_LANES - 1)
    ]
    switch = ChannelSwitch(channel, pipeline, explain_timeout=cfg.timeout_s, lanes=lanes)
    try:
        # Backends use blocking netlink libraries that refuse to run on a
        # thread with a running event loop: construct (and call) them off-loop.
        chosen = backend if backend is not None else await asyncio.to_thread(make_backend, config)
        dataplane = Dataplane(config=config, backend=chosen, ovsdb=ovsdb, switch=switch, pipeline=pipeline)
        # The switch dumps our flows while OVSDB's replica is filled.
        dataplane.read_flows_early()
        try:
            await ovsdb.connect()
            events = EventHub()
            service = AttachmentService(
                config=config,
                store=store,
                dataplane=dataplane,
                network_classes=load_network_classes(),
                events=events,
                mac_salt=mac_salt(config),
            )
            await service.start()
        except BaseException:
            await dataplane.close()
            raise
    except BaseException:
        await switch.close()
        await ovsdb.close()
        await store.close()
        raise
    return Adapters(store, chosen, ovsdb, switch, events, service, dataplane)


async def start_policy_stream(
    config: Config, service: AttachmentService
) -> tuple[PolicyStreamClient, list[asyncio.Task[None]]]:
    """Connect the service to the gateway: every sandbox with an attachment
    is registered; events flow to the service; staleness is watched."""
    handler = PolicyStreamHandler(service, config.policy)
    gateway = config.gateway
    try:
        client = PolicyStreamClient(
            gateway.endpoint,
            TlsFiles(Path(gateway.ca), Path(gateway.cert), Path(gateway.key)),
            handler.on_event,
            on_denied=handler.on_denied,
            on_resync=handler.on_resync,
            server_name=gateway.server_name,
            crl=gateway.crl,
            backoff_base_s=gateway.backoff_base_ms / 1000,
            backoff_cap_s=gateway.backoff_cap_ms / 1000,
        )
    except MaterialError as exc:
        raise ServerSetupError(str(exc)) from exc
    service.policy_source = client
    client.register({r.sandbox_id for r in await service.list_all()})
    tasks = [
        asyncio.ensure_future(client.run()),
        asyncio.ensure_future(handler.watch_staleness(lambda: client.status)),
    ]
    return client, tasks


async def health_report(config: Config) -> list[HealthFact]:
    """The health checks for ``config`` on this machine, without serving
    (``check --health``). A part that cannot even start is a failed check."""
    checks: list[HealthFact] = []
    try:
        backend = await asyncio.to_thread(make_backend, config)
        checks += await asyncio.to_thread(backend.health)
        backend.close()
    except EswitchError as exc:
        checks.append(HealthFact("eswitch", False, str(exc), required=True))
    ovsdb = Ovsdb(config.ovs.db, timeout=config.ovs.timeout_s)
    facts, error = None, ""
    try:
        await ovsdb.connect()
        facts = await ovsdb.bridge_facts(config.ovs.bridge)
    except OvsdbError as exc:
        error = str(exc)
    finally:
        await ovsdb.close()
    checks += ovs_checks(
        facts, error, config.ovs.bridge, hw_offload_required=config.eswitch.backend == "switchdev"
    )
    return checks


async def run_daemon(config: Config) -> int:
    # Read once and removed from the environment: ovs-ofctl and friends must
    # not inherit systemd's socket.
    notifier = Notifier.from_environment(unset=True)
    faults.enable_from_environment()
    # Before anything else: unusable certificates, keys or CRLs refuse the start.
    server_trust = load_server_trust(config.server)
    metrics_trust = _metrics_trust(config)
    notifier.status("starting: opening the store, converging the switch")
    adapters = await build(config)
    store, backend, events, service = adapters.store, adapters.backend, adapters.events, adapters.service
    stream: PolicyStreamClient | None = None
    tasks: list[asyncio.Task[None]] = []
    metrics = Metrics()
    metrics_server: MetricsServer | None = None
    security = SecurityEvents()  # inert until started; lets `finally` close it
    try:
        if config.gateway.endpoint:
            stream, tasks = await start_policy_stream(config, service)
        security = start_security_events(config, store, events)
        tasks += security.tasks
        report = TrustReport(store, events, security, metrics)
        tasks += _start_trust_reloads(config, report, server_trust, metrics_trust, stream)
        offload = offload_monitor(config)
        tasks += _start_watches(config, adapters)
        metrics.add_refresher(lambda: offload.update_metrics(metrics))
        service.observer = metrics
        _add_metric_refreshers(metrics, service, store, stream)
        metrics_server = await _start_metrics(config, metrics, metrics_trust, report)
        peer_check = PeerCheck(lambda: server_trust.state, stale_policy=config.server.crl_after_next_update)
        servicer = CoordinatorServicer(
            service, store, events, RoleMap(config.auth, peer_check), backend.name, offload=offload
        )
        server, port = await start_server(
            config.server,
            servicer,
            interceptors=[RpcMetricsInterceptor(metrics), *security.interceptors],
            trust=server_trust,
            on_shed=metrics.api_connection_shed,
        )
        log.info("serving", extra={"listen": config.server.listen, "port": port, "backend": backend.name})
        # Only now: the store is open, the switch converged, gRPC listens.
        notifier.ready(f"serving on {config.server.listen}")
        interval = notifier.watchdog_interval()
        if interval is not None:
            alive = _liveness(config, adapters, notifier, stream)
            tasks.append(asyncio.ensure_future(watchdog_task(notifier, alive, interval)))
        await _wait_for_signal()
        await _stop_serving(config, adapters, server, notifier)
    finally:
        if stream is not None:
            stream.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        security.close()
        if metrics_server is not None:
            await metrics_server.close()
        await adapters.close()
        notifier.close()
    log.info("stopped")
    return 0


async def _start_metrics(
    config: Config, metrics: Metrics, trust: TrustReloader | None, report: TrustReport
) -> MetricsServer | None:
    m = config.metrics
    if not m.listen:
        return None
    # Python's ssl could check CRLs in the handshake, but only fail-closed,
    # and a failed handshake tells the scraper nothing; the API listener's
    # check follows the reloaded set and server.crl_after_next_update, and
    # answers why: scrapers get the same.
    refusal = None
    if trust is not None and m.crl:
        refusal = PeerCheck(lambda: trust.state, stale_policy=config.server.crl_after_next_update).refusal
    server = await start_metrics_server(
        m.listen,
        metrics.registry,
        cert=m.cert,
        key=m.key,
        client_ca=m.client_ca,
        before_scrape=metrics.refresh,
        refusal=refusal,
    )
    if trust is not None:
        _follow_metrics_trust(trust, server, report)
    return server


def _start_trust_reloads(
    config: Config,
    report: TrustReport,
    server: TrustReloader,
    metrics: TrustReloader | None,
    stream: PolicyStreamClient | None,
) -> list[asyncio.Task[None]]:
    """Poll the listeners' files (SIGHUP: at once); the gateway client
    re-reads its own on every connection and reports failures the same way."""
    if stream is not None:
        stream.channels.on_failure = report.failed
        stream.channels.on_reloaded = report.reloaded
        stream.channels.on_refused = report.gateway_refused
    reloaders = [server, *([metrics] if metrics is not None else [])]
    for reloader in reloaders:
        report.watch(reloader)
    return start_trust_reloads(reloaders, config.server.reload_interval_s)


def _metrics_trust(config: Config) -> TrustReloader | None:
    """The metrics listener's certificate and key (None without TLS); its
    certificate is not chained to client_ca, which is the scrapers' CA."""
    files = metrics_files(config.metrics)
    if files is None:
        return None
    try:
        return TrustReloader("metrics", files, chain_to_bundle=False)
    except MaterialError as exc:
        raise ServerSetupError(str(exc)) from exc


def _follow_metrics_trust(reloader: TrustReloader, server: MetricsServer, report: TrustReport) -> None:
    """A validated new set goes to the metrics listener's TLS."""

    def reloaded(listener: str, material: TrustSet, recovered: bool) -> None:
        try:
            server.reload_tls()
        except MetricsServerError as exc:
            report.failed(listener, MaterialError("metrics.cert", reloader.files.cert, str(exc)))
            return
        report.reloaded(listener, material, recovered)

    reloader.on_reloaded = reloaded


async def _stop_serving(config: Config, adapters: Adapters, server: ApiServer, notifier: Notifier) -> None:
    log.info("stopping")
    notifier.stopping("stopping: draining RPCs")
    await adapters.events.close()
    # New RPCs are refused; operations in flight get shutdown_grace_s to
    # finish (one cut short is rolled back, or finished by the next start).
    # Enforcement outlives the daemon: flows stay in OVS.
    grace = config.server.shutdown_grace_s
    drained, _ = await asyncio.gather(adapters.service.drain(grace), server.stop(grace))
    if not drained:
        log.warning("stopping with %d operations unfinished", adapters.service.in_flight)


def _start_watches(config: Config, adapters: Adapters) -> list[asyncio.Task[None]]:
    """The background tasks that keep the world converged: the switch
    (OVS restarts), the eswitch inventory, health transitions, and hosts
    that never reconcile after a start."""
    service = adapters.service
    return [
        asyncio.ensure_future(watch_switch(service, config.ovs.watch_interval_ms / 1000)),
        start_inventory_watch(
            config,
            adapters.store,
            adapters.backend,
            adapters.events,
            on_device_returned=service.device_returned,
        ),
        start_health_watch(config, adapters.store, adapters.events, lambda: service.health(fresh=True)),
        asyncio.ensure_future(expire_unreconciled_after(service, config.reconcile.host_grace_s)),
    ]


def _add_metric_refreshers(
    metrics: Metrics, service: AttachmentService, store: AsyncStore, stream: PolicyStreamClient | None
) -> None:
    """Gauges are read from their sources when Prometheus scrapes."""
    metrics.add_refresher(lambda: metrics.flows_installed.set(service.dataplane.installed_flows()))

    async def health_metrics() -> None:
        metrics.update_health(await service.health(fresh=False))

    metrics.add_refresher(health_metrics)

    async def store_metrics() -> None:
        metrics.update_attachments(await store.list_attachments())
        metrics.update_pools(await store.pool_stats())

    metrics.add_refresher(store_metrics)
    if stream is not None:
        status = stream.status
        metrics.add_refresher(
            lambda: metrics.update_gateway(
                connected=status.connected,
                reconnects=status.reconnects,
                resyncs=status.resyncs,
                last_seq=status.last_seq,
            )
        )


def _liveness(
    config: Config, adapters: Adapters, notifier: Notifier, stream: PolicyStreamClient | None
) -> Callable[[], Awaitable[bool]]:
    async def alive() -> bool:
        # Being called at all proves the event loop runs; then the store and
        # OVSDB must answer. OVS down past the watchdog means a restart,
        # which reconverges everything.
        await adapters.store.answers()
        states = Counter(r.state for r in await adapters.store.list_attachments())
        await adapters.ovsdb.bridge_facts(config.ovs.bridge)
        gateway = "off" if stream is None else "up" if stream.status.connected else "down"
        notifier.status(
            f"{states[AttachmentState.BOUND]} bound, {states[AttachmentState.ATTACHING]} attaching, "
            f"{states[AttachmentState.DETACHING]} detaching; gateway {gateway}"
        )
        return True

    return alive


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
