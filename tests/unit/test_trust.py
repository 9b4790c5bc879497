"""Trust material validation, the post-handshake peer check and the
operator tooling, on real certificates and CRLs of a dev PKI."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from prometheus_client import CollectorRegistry

from coordinator import certs_lifecycle
from coordinator.certs import DevPki, init_dev_pki
from coordinator.cli import main
from coordinator.config import ConfigError, config_from_mapping
from coordinator.events import EventHub
from coordinator.metrics import Metrics, start_metrics_server
from coordinator.security_events import SecurityEvents
from coordinator.security_log import SecurityEventLog
from coordinator.store.db import Store
from coordinator.store.worker import AsyncStore
from coordinator.trust.material import MaterialError, TrustFiles, TrustState, load_trust_set
from coordinator.trust.peer import PeerCheck
from coordinator.trust_watch import CONDITION, TrustReport


def now() -> datetime.datetime:
    # Per test, not per module: the dev PKI's certificates start 5 minutes
    # before they are made, and a long suite may run this file much later.
    return datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    pki = init_dev_pki(tmp_path / "pki")
    certs_lifecycle.write_empty_crl(pki.directory)
    return pki


def files(pki: DevPki, crls: tuple[str, ...] | None = None) -> TrustFiles:
    crl = (str(pki.directory / "ca.crl"),) if crls is None else crls
    return TrustFiles(
        str(pki.server_cert), str(pki.server_key), str(pki.ca_cert), crl,
        "server.cert", "server.key", "server.client_ca", "server.crl",
    )  # fmt: skip


def pem(path: Path) -> bytes:
    return path.read_bytes()


def test_a_crl_signed_by_a_ca_outside_the_bundle_is_refused(pki: DevPki, tmp_path: Path) -> None:
    other = init_dev_pki(tmp_path / "other")
    certs_lifecycle.write_empty_crl(other.directory)
    with pytest.raises(MaterialError, match="not signed by a CA of the bundle") as caught:
        load_trust_set(files(pki, (str(other.directory / "ca.crl"),)))
    assert caught.value.key == "server.crl"


def test_every_ca_of_the_bundle_needs_a_crl_once_crls_are_configured(pki: DevPki) -> None:
    crl_before = (pki.directory / "ca.crl").read_bytes()
    certs_lifecycle.rotate_ca(pki.directory)
    # The bundle now has two CAs; the old file holds the first one's CRL only.
    (pki.directory / "old.crl").write_bytes(crl_before)
    with pytest.raises(MaterialError, match="no CRL for CA"):
        load_trust_set(files(pki, (str(pki.directory / "old.crl"),)))
    assert len(load_trust_set(files(pki)).crls.by_issuer) == 2


def test_a_der_crl_loads(pki: DevPki) -> None:
    crl = x509.load_pem_x509_crl((pki.directory / "ca.crl").read_bytes())
    der = pki.directory / "ca.der"
    der.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    assert not load_trust_set(files(pki, (str(der),))).crls.empty


def _expiring_crl(pki: DevPki, next_update: datetime.datetime) -> Path:
    start = now()
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(start - datetime.timedelta(hours=1))
        .next_update(next_update)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = pki.directory / "short.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_expired_crl_is_a_reload_failure(pki: DevPki) -> None:
    path = _expiring_crl(pki, now() - datetime.timedelta(minutes=1))
    with pytest.raises(MaterialError, match="expired at"):
        load_trust_set(files(pki, (str(path),)))


@pytest.mark.parametrize(("policy", "refused"), [("fail-closed", True), ("keep-last", False)])
def test_a_crl_past_next_update_refuses_its_clients_unless_relaxed(
    pki: DevPki, policy: str, refused: bool
) -> None:
    start = now()
    path = _expiring_crl(pki, start + datetime.timedelta(minutes=10))
    state = TrustState(1, load_trust_set(files(pki, (str(path),))))
    clock = [start]
    check = PeerCheck(lambda: state, stale_policy=policy, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert check.refusal(pem(pki.host_cert)) == ""
    clock[0] = start + datetime.timedelta(minutes=11)  # no newer CRL arrived
    assert bool(check.refusal(pem(pki.host_cert))) is refused


def test_peer_check_refuses_a_revoked_certificate_once_the_new_crl_is_in_force(pki: DevPki) -> None:
    state = TrustState(1, load_trust_set(files(pki)))
    check = PeerCheck(lambda: state)
    assert check.refusal(pem(pki.host_cert)) == ""
    certs_lifecycle.revoke(pki.directory, pki.host_cert)
    assert check.refusal(pem(pki.host_cert)) == ""  # cached: the set in force did not change
    state = TrustState(2, load_trust_set(files(pki)))
    assert "was revoked" in check.refusal(pem(pki.host_cert))
    assert check.refusal(pem(pki.admin_cert)) == ""


def test_peer_check_cache_is_bounded(pki: DevPki) -> None:
    state = TrustState(1, load_trust_set(files(pki)))
    check = PeerCheck(lambda: state, cache_size=2)
    for cert in (pki.host_cert, pki.admin_cert, pki.coordinator_cert):
        check.refusal(pem(cert))
    assert len(check._cache) == 2


@pytest.mark.parametrize(
    ("listen", "ok"),
    [("127.0.0.1:9464", True), ("[::1]:9464", True), ("localhost:9464", True), ("0.0.0.0:9464", False),
     ("198.51.100.2:9464", False)],
)  # fmt: skip
def test_plain_http_metrics_only_on_loopback(listen: str, ok: bool) -> None:
    raw = {"metrics": {"listen": listen}}
    if ok:
        config_from_mapping(raw)
        return
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(raw)
    assert caught.value.key == "metrics.listen"
    config_from_mapping({"metrics": {"listen": listen, "cert": "/c.pem", "key": "/c.key"}})


def _config(tmp_path: Path, pki: DevPki) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[server]
cert = "{pki.server_cert}"
key = "{pki.server_key}"
client_ca = "{pki.ca_cert}"
crl = ["{pki.directory / "ca.crl"}"]
""")
    return path


def test_check_names_the_bad_file(tmp_path: Path, pki: DevPki, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, pki)
    assert main(["check", "--config", str(config)]) == 0
    assert "trust ok   server:" in capsys.readouterr().err
    pki.server_key.chmod(0o644)
    assert main(["check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"server.key ({pki.server_key})" in err and "mode 0644" in err
    pki.server_key.chmod(0o600)
    (pki.directory / "ca.crl").write_text("not a crl")
    assert main(["check", "--config", str(config)]) == 1
    assert f"server.crl ({pki.directory / 'ca.crl'})" in capsys.readouterr().err


def test_check_warns_about_files_not_provisioned_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\ncert = "{tmp_path}/none.pem"\n')
    assert main(["check", "--config", str(config)]) == 0
    assert "trust warn server: missing: server.cert" in capsys.readouterr().err


def test_certs_commands_run_the_lifecycle(tmp_path: Path, pki: DevPki) -> None:
    out = str(pki.directory)
    assert main(["certs", "issue", "--out", out, "--name", "host-c", "--role", "host"]) == 0
    issued = x509.load_pem_x509_certificate((pki.directory / "host-c.pem").read_bytes())
    assert issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["spiffe://bluefield.local/host/host-c"]
    assert (pki.directory / "host-c.key").stat().st_mode & 0o777 == 0o600
    assert main(["certs", "revoke", "--out", out, "--cert", str(pki.directory / "host-c.pem")]) == 0
    crl = x509.load_pem_x509_crl((pki.directory / "ca.crl").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(issued.serial_number) is not None
    assert main(["certs", "rotate-ca", "--out", out]) == 0
    assert len(x509.load_pem_x509_certificates(pki.ca_cert.read_bytes())) == 2
    assert main(["certs", "rotate-ca", "--out", out]) == 1  # one rotation at a time
    assert (
        main(["certs", "issue", "--out", out, "--name", "host-d", "--role", "host", "--ca", "ca-next"]) == 0
    )
    assert main(["certs", "rotate-ca", "--out", out, "--finish"]) == 0
    bundle = x509.load_pem_x509_certificates(pki.ca_cert.read_bytes())
    assert len(bundle) == 1 and not (pki.directory / "ca-next.pem").exists()
    host_d = x509.load_pem_x509_certificate((pki.directory / "host-d.pem").read_bytes())
    assert host_d.issuer == bundle[0].subject


def _served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_metrics_tls_serves_a_reloaded_certificate_to_new_connections(pki: DevPki) -> None:
    issued = certs_lifecycle.issue(pki.directory, "metrics", "server", uri=None, dns=["localhost"])
    server = await start_metrics_server(
        "127.0.0.1:0", CollectorRegistry(), cert=str(issued.cert), key=str(issued.key)
    )
    try:
        assert await asyncio.to_thread(_served_serial, server.port, pki.ca_cert) == issued.serial
        renewed = certs_lifecycle.issue(
            pki.directory, "metrics", "server", uri=None, dns=["localhost"], overwrite=True
        )
        assert await asyncio.to_thread(_served_serial, server.port, pki.ca_cert) == issued.serial
        server.reload_tls()
        assert await asyncio.to_thread(_served_serial, server.port, pki.ca_cert) == renewed.serial
    finally:
        await server.close()


async def test_trust_report_writes_condition_finding_metrics_and_gateway_refusals(
    tmp_path: Path, pki: DevPki
) -> None:
    store = Store(tmp_path / "state.db")
    log_path = tmp_path / "security.jsonl"
    security = SecurityEvents(SecurityEventLog(log_path))
    metrics = Metrics()
    report = TrustReport(AsyncStore(store), EventHub(), security, metrics)
    try:
        report.failed("server", MaterialError("server.key", str(pki.server_key), "mode 0644"))
        report.failed("server", MaterialError("server.key", str(pki.server_key), "mode 0644"))
        await report.settled()
        condition = store.last_coordinator_event(CONDITION)
        assert condition is not None and not condition.status and condition.reason == "ReloadFailed"
        assert (
            metrics.registry.get_sample_value(
                "bluefield_coordinator_trust_reloads_total", {"listener": "server", "result": "failed"}
            )
            == 2.0
        )
        report.reloaded("server", load_trust_set(files(pki)), True)
        await report.settled()
        condition = store.last_coordinator_event(CONDITION)
        assert condition is not None and condition.status and condition.reason == "Reloaded"
        gateway = x509.load_pem_x509_certificate(pki.gateway_cert.read_bytes())
        for _ in range(3):  # every reconnect is refused alike
            report.gateway_refused("127.0.0.1:9443", gateway, "revoked")
        await asyncio.sleep(0)
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [e["finding_info"]["title"] for e in lines if e["class_uid"] == 2003] == [
            "certificate reload failed", "certificate reload failed",
        ]  # fmt: skip
        refusals = [e for e in lines if e["class_uid"] == 3002]
        assert len(refusals) == 1
        assert refusals[0]["certificate"]["serial_number"] == format(gateway.serial_number, "x")
        assert refusals[0]["user"]["uid"] == pki.gateway_identity
    finally:
        security.close()
        store.close()


def test_serve_refuses_to_start_with_an_unusable_crl(tmp_path: Path, pki: DevPki) -> None:
    config = _config(tmp_path, pki)
    (pki.directory / "ca.crl").write_text("not a crl")
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--config", str(config)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"server.crl ({pki.directory / 'ca.crl'})" in result.stderr
