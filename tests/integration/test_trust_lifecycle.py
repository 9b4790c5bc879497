"""Certificate renewal, CA rotation and revocation against the running
daemon (`dev up`: the real `serve` process, real mTLS, the dev PKI with a
CRL), without restarting it."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator import certs_lifecycle
from coordinator.client import CoordinatorClient, RetryPolicy, TlsFiles
from coordinator.dev import env
from tests.conftest import require_ovs

pytestmark = pytest.mark.ovs

HOST_A = "spiffe://bluefield.local/host/host-a"
ADMIN = "spiffe://bluefield.local/admin/admin"
COORDINATOR = "spiffe://bluefield.local/coordinator"
# The daemon polls every second (dev config); SIGHUP is at once.
WAIT_S = 10.0


class Dev:
    def __init__(self, endpoint: env.Endpoint, workdir: Path) -> None:
        self.endpoint = endpoint
        self.workdir = workdir
        self.certs = workdir / "certs"

    def client(self, name: str, *, ca: str = "ca") -> CoordinatorClient:
        tls = TlsFiles(self.certs / f"{ca}.pem", self.certs / f"{name}.pem", self.certs / f"{name}.key")
        return CoordinatorClient(self.endpoint.coordinator, tls, timeout=5, retry=RetryPolicy(attempts=1))

    def sighup(self) -> None:
        os.kill(self.endpoint.daemon_pid, signal.SIGHUP)

    def server_serial(self, name: str = "admin") -> int:
        """The serial of the certificate the daemon presents to a new TLS
        connection (made here with Python's ssl, as any client would)."""
        context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        context.load_cert_chain(self.certs / f"{name}.pem", self.certs / f"{name}.key")
        host, port = self.endpoint.coordinator.rsplit(":", 1)
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def security_events(self) -> list[dict[str, Any]]:
        path = self.workdir / "security-events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def metric(self, name: str, **labels: str) -> float | None:
        with urllib.request.urlopen(f"http://{self.endpoint.metrics}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            metric, _, value = line.rpartition(" ")
            if metric == (f"{name}{{{wanted}}}" if labels else name):
                return float(value)
        return None


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    require_ovs()
    workdir = tmp_path / "dev"
    try:
        yield Dev(env.dev_up(workdir, vfs=1, sfs=0), workdir)
    finally:
        env.dev_down(workdir)


def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # the condition is not true yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: still {last!r} after {timeout}s")


def renew_server(dev: Dev, ca: str = "ca") -> int:
    issued = certs_lifecycle.issue(
        dev.certs, "server", "server", uri=COORDINATOR, dns=["localhost"], ips=["127.0.0.1", "::1"],
        ca=ca, overwrite=True,
    )  # fmt: skip
    return issued.serial


def refused(call: Callable[[], Any]) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return None


def test_renewed_server_certificate_reaches_new_connections_while_old_ones_keep_working(dev: Dev) -> None:
    before = dev.server_serial()
    with dev.client("admin") as old:
        old.health()
        renewed = renew_server(dev)
        assert renewed != before
        # No signal: the poll notices the new files.
        eventually(lambda: dev.server_serial() == renewed, "new connections see the renewed certificate")
        old.health()  # the connection opened before the swap still serves
    with dev.client("admin") as new:
        new.health()
    assert dev.metric("bluefield_coordinator_trust_reloads_total", listener="server", result="ok") == 1.0


def test_ca_rotation_dual_trust_window_then_old_ca_refused(dev: Dev) -> None:
    old_admin = dev.client("admin")
    old_admin.health()
    # Step 1: the new CA beside the old one, both in the bundle.
    certs_lifecycle.rotate_ca(dev.certs)
    dev.sighup()
    # Step 2: new leaves from the new CA (the server's too); old ones still work.
    certs_lifecycle.issue(dev.certs, "host-new", "host", uri=HOST_A, ca="ca-next")
    eventually(lambda: dev.client("host-new").health(), "a client of the added CA is accepted")
    with dev.client("admin") as still_old:
        still_old.health()
    certs_lifecycle.issue(dev.certs, "admin-new", "admin", uri=ADMIN, ca="ca-next")
    renewed = renew_server(dev, ca="ca-next")
    dev.sighup()
    eventually(lambda: dev.server_serial("admin-new") == renewed, "server certificate from the new CA")
    # Step 3: the old CA leaves the bundle.
    certs_lifecycle.finish_rotation(dev.certs)
    dev.sighup()
    with dev.client("admin") as old_on_new_connection:
        eventually(
            lambda: refused(old_on_new_connection.health) is not None, "the old CA's client is refused"
        )
    # The connection opened before the removal is refused on its next call.
    assert refused(old_admin.health) is grpc.StatusCode.UNAUTHENTICATED
    old_admin.close()
    with dev.client("admin-new") as admin_new, dev.client("host-new") as host_new:
        admin_new.health()
        host_new.health()


def test_revoked_host_is_refused_on_its_next_call_over_an_open_connection(dev: Dev) -> None:
    issued = certs_lifecycle.issue(dev.certs, "host-r", "host", uri=HOST_A)
    with dev.client("host-r") as host:
        host.health()
        serial, issuer = certs_lifecycle.revoke(dev.certs, issued.cert)
        dev.sighup()
        eventually(
            lambda: refused(host.health) is grpc.StatusCode.UNAUTHENTICATED,
            "the revoked certificate is refused over the connection opened before",
        )
    with dev.client("host") as other:
        other.health()  # same identity, another certificate: not revoked

    def authentication_failure() -> dict[str, Any] | None:
        return next(
            (e for e in dev.security_events() if e["class_uid"] == 3002 and "revoked" in e["message"]), None
        )

    event = eventually(authentication_failure, "an OCSF authentication failure")
    assert event["certificate"]["serial_number"] == format(serial, "x")
    assert event["certificate"]["issuer"] == issuer


def _events(client: CoordinatorClient) -> list[Any]:
    events = []
    try:
        events.extend(client.watch(0, timeout=1))
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    return events


def _other_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _expired_certificate(dev: Dev, path: Path) -> None:
    ca = x509.load_pem_x509_certificate((dev.certs / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((dev.certs / "ca.key").read_bytes(), None)
    key = serialization.load_pem_private_key((dev.certs / "server.key").read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)  # any name: the expiry is what must be refused
        .issuer_name(ca.subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    ("file", "spoil", "key", "reason"),
    [
        ("server.key", lambda dev, path: _other_key(path), "server.key", "does not belong"),
        ("server.pem", _expired_certificate, "server.cert", "expired"),
        ("server.key", lambda dev, path: path.chmod(0o644), "server.key", "mode 0644"),
        ("ca.crl", lambda dev, path: path.write_bytes(b"garbage\n"), "server.crl", "not a PEM or DER CRL"),
    ],
    ids=["wrong-key", "expired", "key-mode-0644", "garbage-crl"],
)
def test_bad_new_material_keeps_the_old_set_and_is_reported(
    dev: Dev, file: str, spoil: Callable[[Dev, Path], None], key: str, reason: str
) -> None:
    before = dev.server_serial()
    path = dev.certs / file
    good = path.read_bytes()
    spoil(dev, path)
    dev.sighup()

    def reported() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in dev.security_events()
                if e.get("finding_info", {}).get("title") == "certificate reload failed"
            ),
            None,
        )

    event = eventually(reported, "the reload failure is reported")
    assert event["resources"][0]["name"] == key and reason in event["message"]
    assert dev.metric("bluefield_coordinator_trust_reload_failing", listener="server") == 1.0
    # The old set is still in force: same certificate, clients served.
    assert dev.server_serial() == before
    with dev.client("admin") as admin:
        admin.health()
        conditions = [e.condition for e in _events(admin) if e.condition.type == "DpuTrustReloaded"]
    assert conditions and conditions[-1].status is False and conditions[-1].reason == "ReloadFailed"
    # Repaired: back to normal.
    path.write_bytes(good)
    path.chmod(0o600 if file.endswith(".key") else 0o644)
    dev.sighup()
    eventually(
        lambda: dev.metric("bluefield_coordinator_trust_reload_failing", listener="server") == 0.0,
        "the failure clears",
    )
