"""The /metrics endpoint keeps serving beside a TLS client that never speaks
(the reason it is not prometheus-client's own server, whose handshake runs in
accept() on its one thread)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from coordinator.certs import DevPki, init_dev_pki
from coordinator.certs_lifecycle import revoke
from coordinator.config import config_from_mapping
from coordinator.daemon import _metrics_trust, _start_metrics
from coordinator.metrics import Metrics, start_metrics_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(tmp_path_factory.mktemp("pki"))


def _scrape(url: str, context: ssl.SSLContext) -> int:
    with urllib.request.urlopen(url, timeout=3, context=context) as response:
        return int(response.status)


async def test_an_idle_tls_connection_does_not_stall_scrapes(pki: DevPki) -> None:
    metrics = Metrics(CollectorRegistry())
    srv = await start_metrics_server(
        "127.0.0.1:0",
        metrics.registry,
        cert=str(pki.server_cert),
        key=str(pki.server_key),
        client_ca=str(pki.ca_cert),
    )
    client = ssl.create_default_context(cafile=str(pki.ca_cert))
    client.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    idle = socket.create_connection(("127.0.0.1", srv.port))  # connects, never sends a ClientHello
    try:
        assert await asyncio.to_thread(_scrape, srv.url, client) == 200
    finally:
        idle.close()
        await srv.close()


async def test_a_revoked_scrapers_certificate_is_refused_before_its_request_is_read(
    tmp_path: Path,
) -> None:
    """With ``metrics.crl``, as the API listener does with ``server.crl``: a
    scraper whose certificate was revoked (a stolen one) gets 403, its
    request never looked at; another scraper of the same CA still scrapes."""
    pki = init_dev_pki(tmp_path / "pki")
    revoke(pki.directory, pki.admin_cert)
    config = config_from_mapping({"metrics": {
        "listen": "127.0.0.1:0", "cert": str(pki.server_cert), "key": str(pki.server_key),
        "client_ca": str(pki.ca_cert), "crl": [str(pki.directory / "ca.crl")],
    }})  # fmt: skip
    metrics = Metrics(CollectorRegistry())
    scraped: list[int] = []
    metrics.refresh = lambda: scraped.append(1)  # type: ignore[method-assign]
    trust = _metrics_trust(config)
    assert trust is not None
    srv = await _start_metrics(config, metrics, trust, _NoReport())  # type: ignore[arg-type]
    assert srv is not None

    def client(cert: Path, key: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(cert), str(key))
        return context

    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(_scrape, srv.url, client(pki.admin_cert, pki.admin_key))
        assert refused.value.code == 403 and scraped == []
        assert await asyncio.to_thread(_scrape, srv.url, client(pki.host_cert, pki.host_key)) == 200
        assert scraped == [1]
    finally:
        await srv.close()


class _NoReport:
    def reloaded(self, *args: object) -> None:
        pass

    def failed(self, *args: object) -> None:
        pass
