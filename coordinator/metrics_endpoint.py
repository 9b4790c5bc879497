"""The /metrics endpoint: a small asyncio HTTP/1.1 server (GET or HEAD
``/metrics``, one request per connection), plain on loopback or TLS with
optional client certificates, its certificate reloadable while it runs.

Why not prometheus-client's own ``start_http_server`` (measured with 0.26,
which takes certfile/keyfile/client_cafile): it wraps the listening socket
in TLS, so the handshake runs inside ``accept()`` on its one serving thread
without a deadline. One TCP client that connects and never sends a
ClientHello stalls every scrape until it leaves (a scrape beside one idle
connection timed out after 3 s, and worked again once it closed). It also
answers HEAD with 405 and every path with the metrics, and it would run
the refreshers, which read the store through the event loop, on its own
thread. The rendering is still prometheus-client's (``choose_encoder``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from coordinator.sparse_log import SparseLog
from coordinator.waiting import wait_within

__all__ = [
    "MetricsServer",
    "MetricsServerError",
    "Refresher",
    "ReloadableTls",
    "parse_listen",
    "server_ssl_context",
    "start_metrics_server",
]

log = logging.getLogger(__name__)

# Called before each scrape; may return an awaitable.
Refresher = Callable[[], "Awaitable[None] | None"]


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
    refusal: Callable[[str], str] | None = None,
) -> MetricsServer:
    """Serve ``registry`` at ``http(s)://ADDRESS/metrics`` (port 0: any free
    port, see ``MetricsServer.port``). TLS when ``cert`` and ``key`` are
    given. ``before_scrape`` (usually ``Metrics.refresh``) runs on the event
    loop before each scrape. ``refusal`` (with ``client_ca``): why a
    scraper's certificate (PEM) is refused now, "" if it is not; a refused
    one is answered 403 before its request is read (revocation,
    ``trust.peer``)."""
    host, port = parse_listen(address)
    if bool(cert) != bool(key):
        raise MetricsServerError("metrics: cert and key must be given together")
    if client_ca and not cert:
        raise MetricsServerError("metrics: client_ca needs cert and key (TLS)")
    if refusal is not None and not client_ca:
        raise MetricsServerError("metrics: checking scrapers' certificates needs client_ca")
    tls = ReloadableTls(cert, key, client_ca) if cert else None
    context = tls.base if tls is not None else None
    connections: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections.add(task)
        try:
            refused = _refused(writer, refusal) if refusal is not None else ""
            await _serve_one(reader, writer, registry, before_scrape, refused=refused)
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


def _refused(writer: asyncio.StreamWriter, refusal: Callable[[str], str]) -> str:
    """Why the connection's client certificate is refused ("" if it is not)."""
    ssl_object = writer.get_extra_info("ssl_object")
    leaf = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not leaf:
        return "no client certificate"  # client_ca makes one required: not reached
    why = refusal(ssl.DER_cert_to_PEM_cert(leaf))
    if why:
        _refusals.note(why[:200])
    return why


# A scraper retrying a revoked certificate every second does not fill the log.
_refusals = SparseLog(log, logging.WARNING, "metrics scraper refused: %s", 60.0)


async def _serve_one(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    registry: CollectorRegistry,
    before_scrape: Refresher | None,
    *,
    refused: str = "",
) -> None:
    head = await wait_within(reader.readuntil(b"\r\n\r\n"), timeout=_REQUEST_TIMEOUT_S)
    if refused:
        # Decided before the request was read; it is read only so that the
        # answer is not lost to a reset (closing on unread bytes sends one).
        await _respond(writer, 403, "text/plain; charset=utf-8", b"client certificate refused\n")
        return
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
    403: "Forbidden",
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
