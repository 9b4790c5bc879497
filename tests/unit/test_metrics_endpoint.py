"""The /metrics endpoint keeps serving beside a TLS client that never speaks
(the reason it is not prometheus-client's own server, whose handshake runs in
accept() on its one thread)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from coordinator.certs import DevPki, init_dev_pki
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
