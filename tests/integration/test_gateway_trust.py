"""The gateway client's credentials over real mTLS: a renewed coordinator
certificate is presented on the next connection, a bad renewal keeps the
last good one, and a gateway certificate on the configured CRL is refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator import certs_lifecycle
from coordinator._proto.bluefield.gateway.v1 import policy_pb2 as gw
from coordinator._proto.bluefield.gateway.v1 import policy_pb2_grpc as gw_grpc
from coordinator.certs import DevPki, init_dev_pki
from coordinator.client import TlsFiles
from coordinator.gateway.client import PolicyStreamClient

COORDINATOR = "spiffe://bluefield.local/coordinator"


class RecordingGateway(gw_grpc.PolicyGatewayServicer):
    """Notes the serial of each session's client certificate and ends the
    session soon, so the client keeps reconnecting."""

    def __init__(self) -> None:
        self.serials: list[int] = []

    async def WatchSandboxPolicies(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[gw.PolicyEvent]:
        pem = dict(context.auth_context())["x509_pem_cert"][0]
        self.serials.append(x509.load_pem_x509_certificate(pem).serial_number)
        await asyncio.sleep(0.2)
        return
        yield  # an async generator that sends nothing


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    pki = init_dev_pki(tmp_path / "pki")
    certs_lifecycle.write_empty_crl(pki.directory)
    return pki


@contextlib.asynccontextmanager
async def gateway(pki: DevPki) -> AsyncIterator[tuple[RecordingGateway, str]]:
    servicer = RecordingGateway()
    server = grpc.aio.server()
    gw_grpc.add_PolicyGatewayServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    credentials = grpc.ssl_server_credentials(
        [(pki.gateway_key.read_bytes(), pki.gateway_cert.read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def running(pki: DevPki, target: str, crl: tuple[str, ...] = ()) -> AsyncIterator[PolicyStreamClient]:
    async def ignore(event: gw.PolicyEvent) -> None:
        return None

    client = PolicyStreamClient(
        target,
        TlsFiles(pki.ca_cert, pki.coordinator_cert, pki.coordinator_key),
        ignore,
        server_name="localhost",
        crl=crl,
        backoff_base_s=0.02,
        backoff_cap_s=0.1,
    )
    task = asyncio.ensure_future(client.run())
    try:
        yield client
    finally:
        client.stop()
        await asyncio.wait_for(task, 10)


async def until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def renew_coordinator(pki: DevPki) -> int:
    return certs_lifecycle.issue(
        pki.directory, "coordinator", "coordinator", uri=COORDINATOR, overwrite=True
    ).serial


@pytest.mark.parametrize("with_crl", [False, True], ids=["grpc-tls", "crl-relay"])
async def test_renewed_coordinator_certificate_is_presented_after_a_reconnect(
    pki: DevPki, with_crl: bool
) -> None:
    crl = (str(pki.directory / "ca.crl"),) if with_crl else ()
    old = serial(pki.coordinator_cert)
    async with gateway(pki) as (servicer, target), running(pki, target, crl):
        await until(lambda: old in servicer.serials, "a session with the first certificate")
        renewed = renew_coordinator(pki)
        await until(lambda: renewed in servicer.serials, "a session with the renewed certificate")


async def test_a_bad_renewal_keeps_presenting_the_last_good_certificate(pki: DevPki) -> None:
    old = serial(pki.coordinator_cert)
    async with gateway(pki) as (servicer, target), running(pki, target) as client:
        failures: list[str] = []
        client.channels.on_failure = lambda listener, error: failures.append(error.key)
        await until(lambda: old in servicer.serials, "a session with the first certificate")
        # A renewal whose key was not replaced: the new certificate does not match it.
        key = ec.generate_private_key(ec.SECP256R1())
        pki.coordinator_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        seen = len(servicer.serials)
        await until(lambda: len(servicer.serials) > seen + 2, "more sessions after the bad renewal")
        assert set(servicer.serials[seen:]) == {old}
        assert "gateway.key" in failures


async def test_gateway_certificate_on_the_crl_is_refused(pki: DevPki) -> None:
    crl = (str(pki.directory / "ca.crl"),)
    certs_lifecycle.revoke(pki.directory, pki.gateway_cert)
    refused: list[tuple[int, str]] = []
    async with gateway(pki) as (servicer, target), running(pki, target, crl) as client:
        client.channels.on_refused = lambda target, cert, why: refused.append((cert.serial_number, why))
        await until(lambda: len(refused) >= 2, "the refusal is reported on each attempt")
        assert servicer.serials == [] and not client.status.connected
    assert refused[0][0] == serial(pki.gateway_cert) and "was revoked" in refused[0][1]
