"""Prometheus metrics: the handles, the /metrics endpoint and the gRPC interceptor.

Everything hangs off one ``Metrics`` object with an injectable
``CollectorRegistry`` (tests use a fresh one; nothing touches the global
default registry). Values that live in the store (attachments, pools,
stale policies) are not pushed by every code path that changes them:
refreshers registered with ``Metrics.add_refresher`` read them right
before each scrape, as coroutines on the event loop (store reads are
awaited from the store's thread), so the numbers are exact and the store
is only reached through the daemon's one store thread.

The endpoint is a deliberately tiny asyncio HTTP/1.1 server (GET or HEAD
``/metrics``, one request per connection) rather than prometheus-client's
threaded one, for exactly that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import platform
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import choose_encoder

from coordinator import __version__
from coordinator.api.handlers import on_call_end
from coordinator.eswitch.base import DeviceKind
from coordinator.health import HealthReport
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState, PoolStats

log = logging.getLogger(__name__)

PREFIX = "bluefield_coordinator"
DEFAULT_LISTEN = "127.0.0.1:9464"
# Prometheus' default scrape timeout is 10 s; leave room for the rest.
REFRESH_TIMEOUT_S = 2.0

# Called before each scrape; may return an awaitable.
Refresher = Callable[[], "Awaitable[None] | None"]

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
                    await asyncio.wait_for(result, timeout=REFRESH_TIMEOUT_S)
            except Exception:
                # A broken or slow source leaves its metrics at the last
                # value; the rest of the scrape still works.
                log.exception("metrics refresher failed")


# -- the /metrics endpoint ------------------------------------------------------


class MetricsServerError(ValueError):
    pass


_REQUEST_TIMEOUT_S = 10.0
_MAX_REQUEST_HEAD = 16 * 1024


@dataclass
class MetricsServer:
    """A running endpoint; ``close()`` stops it and drops open connections."""

    server: asyncio.AbstractServer
    host: str
    port: int
    tls: bool
    _connections: set[asyncio.Task[Any]]
    _tls: ReloadableTls | None = None

    def reload_tls(self) -> None:
        """Serve new connections with the certificate, key and client CA
        files as they are now (connections already open keep theirs).
        Raises MetricsServerError and keeps the previous ones if they do
        not load."""
        if self._tls is not None:
            self._tls.reload()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    async def close(self) -> None:
        self.server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self.server.wait_closed()


def parse_listen(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) → (host, port)."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsServerError(f"metrics.listen: expected HOST:PORT, got {address!r}")
    return host, int(port)


def server_ssl_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """TLS for the endpoint; with ``client_ca`` scrapers must present a
    certificate from that CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if client_ca:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise MetricsServerError(f"metrics TLS: cannot load {cert} / {key} / {client_ca}: {exc}") from exc
    return context


class ReloadableTls:
    """TLS whose certificate can change under a running asyncio server:
    every handshake starts on the context the server was created with, and
    its SNI callback (called for every ClientHello, with or without a
    server name) moves the connection to the newest context."""

    def __init__(self, cert: str, key: str, client_ca: str) -> None:
        self._files = (cert, key, client_ca)
        self.base = server_ssl_context(*self._files)
        self.base.sni_callback = self._select
        self._current = self.base

    def reload(self) -> None:
        self._current = server_ssl_context(*self._files)

    def _select(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self._current
        if current is not context:
            ssl_object.context = current


async def start_metrics_server(
    address: str,
    registry: CollectorRegistry,
    *,
    cert: str = "",
    key: str = "",
    client_ca: str = "",
    before_scrape: Refresher | None = None,
) -> MetricsServer:
    """Serve ``registry`` at ``http(s)://ADDRESS/metrics`` (port 0: any free
    port, see ``MetricsServer.port``). TLS when ``cert`` and ``key`` are
    given. ``before_scrape`` (usually ``Metrics.refresh``) runs on the event
    loop before each scrape."""
    host, port = parse_listen(address)
    if bool(cert) != bool(key):
        raise MetricsServerError("metrics: cert and key must be given together")
    if client_ca and not cert:
        raise MetricsServerError("metrics: client_ca needs cert and key (TLS)")
    tls = ReloadableTls(cert, key, client_ca) if cert else None
    context = tls.base if tls is not None else None
    connections: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections.add(task)
        try:
            await _serve_one(reader, writer, registry, before_scrape)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass  # the scraper went away or sent garbage; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                connections.discard(task)

    try:
        server = await asyncio.start_server(
            handle,
            host,
            port,
            ssl=context,
            limit=_MAX_REQUEST_HEAD,
            reuse_address=True,
            ssl_handshake_timeout=_REQUEST_TIMEOUT_S if context else None,
        )
    except OSError as exc:
        raise MetricsServerError(f"metrics.listen: cannot listen on {address}: {exc.strerror}") from exc
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    log.info("metrics endpoint listening", extra={"listen": address, "port": bound, "tls": bool(context)})
    return MetricsServer(server, host, int(bound), context is not None, connections, tls)


async def _serve_one(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    registry: CollectorRegistry,
    before_scrape: Refresher | None,
) -> None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=_REQUEST_TIMEOUT_S)
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        await _respond(writer, 400, "text/plain; charset=utf-8", b"bad request\n")
        return
    method, target, _ = parts
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        await _respond(
            writer, 405, "text/plain; charset=utf-8", b"only GET and HEAD\n", {"Allow": "GET, HEAD"}
        )
        return
    if path == "/":
        body = b'<html><body><a href="/metrics">/metrics</a></body></html>\n'
        await _respond(writer, 200, "text/html; charset=utf-8", body, head_only=method == "HEAD")
        return
    if path != "/metrics":
        await _respond(writer, 404, "text/plain; charset=utf-8", b"not found\n")
        return
    if before_scrape is not None:
        result = before_scrape()
        if inspect.isawaitable(result):
            await result
    encoder, content_type = choose_encoder(headers.get("accept", ""))
    try:
        body = encoder(registry)
    except Exception:
        log.exception("rendering metrics failed")
        await _respond(writer, 500, "text/plain; charset=utf-8", b"rendering metrics failed\n")
        return
    await _respond(writer, 200, content_type, body, head_only=method == "HEAD")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    content_type: str,
    body: bytes,
    extra: dict[str, str] | None = None,
    *,
    head_only: bool = False,
) -> None:
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Connection": "close",
        **(extra or {}),
    }
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()


# -- the gRPC server interceptor ---------------------------------------------------


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every handled RPC by method and final status code and times
    it, for unary and streaming RPCs alike, including aborted and failed ones.

    Unknown methods are not counted: their names come from the client and
    would let anyone create unbounded label values."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap_handler(handler, handler_call_details.method.lstrip("/"), self._metrics)


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, metrics: Metrics
) -> grpc.RpcMethodHandler[Any, Any]:
    def ended(request: Any, context: Any, exc: BaseException | None, seconds: float) -> None:
        metrics.rpcs.labels(method=method, code=_code_of(context, exc).name).inc()
        metrics.rpc_seconds.labels(method=method).observe(seconds)

    return on_call_end(handler, ended)


def _code_of(context: Any, exc: BaseException | None) -> grpc.StatusCode:
    """The status the client will see: what abort()/set_code() set, OK on a
    clean return, CANCELLED when the client went away, UNKNOWN for an
    exception the servicer let escape (that is what grpc sends)."""
    code = _context_code(context)
    if exc is None:
        return code or grpc.StatusCode.OK
    if isinstance(exc, grpc.aio.AbortError):
        return code or grpc.StatusCode.UNKNOWN
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return code if code not in (None, grpc.StatusCode.OK) else grpc.StatusCode.UNKNOWN


def _context_code(context: Any) -> grpc.StatusCode | None:
    try:
        raw = context.code()
    except (AttributeError, NotImplementedError):
        return None
    if raw is None or isinstance(raw, grpc.StatusCode):
        return raw
    # Some grpc versions hand back the numeric code.
    for candidate in grpc.StatusCode:
        if candidate.value[0] == raw:
            return candidate
    return None
