"""Tests for coordinator.certs: the dev PKI, file modes, identities, and a real
mTLS gRPC round trip proving the certificates work together."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.certs import (
    IDENTITIES_KEPT,
    DevPki,
    IdentityError,
    KeyFileError,
    PkiError,
    check_private_key_file,
    identity_from_certificate,
    init_dev_pki,
    issue_client_cert,
)

TD = "bluefield.local"
CLIENT, SERVER = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH
LEAVES = ("server", "coordinator", "host", "admin", "gateway")


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return init_dev_pki(tmp_path / "pki")


@pytest.fixture
def other_pki(tmp_path: Path) -> DevPki:
    """An unrelated CA with the same layout and identities (an impostor)."""
    return init_dev_pki(tmp_path / "other")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --- files and idempotence ----------------------------------------------------


def test_files_and_modes(pki: DevPki) -> None:
    names = {p.name for p in pki.directory.iterdir()}
    assert names == {f"{n}.{ext}" for n in ("ca", *LEAVES) for ext in ("pem", "key")}
    for name in ("ca", *LEAVES):
        assert _mode(pki.directory / f"{name}.key") == 0o600, name
        assert _mode(pki.directory / f"{name}.pem") == 0o644, name
        check_private_key_file(pki.directory / f"{name}.key")


@pytest.mark.parametrize("umask", [0o000, 0o027, 0o077])
def test_modes_do_not_depend_on_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        pki = init_dev_pki(tmp_path / "pki")
    finally:
        os.umask(old)
    assert _mode(pki.host_key) == 0o600
    assert _mode(pki.host_cert) == 0o644


def test_paths_and_identities(pki: DevPki) -> None:
    assert pki.ca_cert == pki.directory / "ca.pem"
    assert pki.gateway_key == pki.directory / "gateway.key"
    assert pki.coordinator_identity == f"spiffe://{TD}/coordinator"
    assert pki.host_identity == f"spiffe://{TD}/host/host-a"
    assert pki.admin_identity == f"spiffe://{TD}/admin/admin"
    assert pki.gateway_identity == f"spiffe://{TD}/gateway"


def test_rerun_keeps_everything(pki: DevPki) -> None:
    before = _snapshot(pki.directory)
    again = init_dev_pki(pki.directory)
    assert again == pki
    assert _snapshot(pki.directory) == before


def test_force_regenerates(pki: DevPki) -> None:
    before = _snapshot(pki.directory)
    init_dev_pki(pki.directory, force=True)
    after = _snapshot(pki.directory)
    assert before.keys() == after.keys()
    assert all(before[name] != after[name] for name in before)
    assert _mode(pki.ca_key) == 0o600


def test_force_narrows_a_widened_key(pki: DevPki) -> None:
    pki.host_key.chmod(0o644)
    init_dev_pki(pki.directory, force=True)
    assert _mode(pki.host_key) == 0o600


def test_missing_leaf_is_reissued_from_existing_ca(pki: DevPki) -> None:
    before = _snapshot(pki.directory)
    pki.host_cert.unlink()
    pki.host_key.unlink()
    init_dev_pki(pki.directory)
    after = _snapshot(pki.directory)
    assert after["host.pem"] != before["host.pem"]
    assert {k: v for k, v in after.items() if not k.startswith("host.")} == {
        k: v for k, v in before.items() if not k.startswith("host.")
    }
    _cert(pki.host_cert).verify_directly_issued_by(_cert(pki.ca_cert))


def test_half_pair_is_refused(pki: DevPki) -> None:
    pki.host_key.unlink()
    with pytest.raises(PkiError, match=r"host\.pem exists but .*host\.key does not"):
        init_dev_pki(pki.directory)


def test_leaves_without_their_ca_are_refused(pki: DevPki) -> None:
    pki.ca_cert.unlink()
    pki.ca_key.unlink()
    with pytest.raises(PkiError, match="CA that signed them"):
        init_dev_pki(pki.directory)


def test_no_temporary_files_left(pki: DevPki) -> None:
    assert not [p for p in pki.directory.iterdir() if p.name.startswith(".")]


# --- certificate contents -----------------------------------------------------


def test_ca(pki: DevPki) -> None:
    ca = _cert(pki.ca_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    ca.verify_directly_issued_by(ca)  # self-signed


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_chains_to_ca(pki: DevPki, other_pki: DevPki, leaf: str) -> None:
    cert = _cert(pki.directory / f"{leaf}.pem")
    cert.verify_directly_issued_by(_cert(pki.ca_cert))
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    # Same subject names, different key: must not verify against the other CA.
    with pytest.raises((InvalidSignature, ValueError)):
        cert.verify_directly_issued_by(_cert(other_pki.ca_cert))


# leaf -> (URI path, DNS SANs, IP SANs, extended key usages)
EXPECTED_LEAVES: dict[str, tuple[str, list[str], list[str], set[x509.ObjectIdentifier]]] = {
    "server": ("coordinator", ["localhost"], ["127.0.0.1", "::1"], {SERVER}),
    "coordinator": ("coordinator", [], [], {CLIENT, SERVER}),
    "host": ("host/host-a", [], [], {CLIENT}),
    "admin": ("admin/admin", [], [], {CLIENT}),
    "gateway": ("gateway", ["localhost"], ["127.0.0.1"], {SERVER}),
}


@pytest.mark.parametrize("leaf", LEAVES)
def test_sans_and_ekus(pki: DevPki, leaf: str) -> None:
    uri, dns, ips, ekus = EXPECTED_LEAVES[leaf]
    cert = _cert(pki.directory / f"{leaf}.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/{uri}"]
    assert san.get_values_for_type(x509.DNSName) == dns
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip) for ip in ips]
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == ekus


def test_custom_server_names_and_trust_domain(tmp_path: Path) -> None:
    pki = init_dev_pki(
        tmp_path / "pki", server_names=("dpu0.example",), server_ips=("10.0.0.5",), trust_domain="lab.test"
    )
    san = _cert(pki.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dpu0.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert identity_from_certificate(pki.host_cert.read_bytes()) == "spiffe://lab.test/host/host-a"


def test_validity(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "pki", days=30)
    ca, host = _cert(pki.ca_cert), _cert(pki.host_cert)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert host.not_valid_before_utc <= now <= host.not_valid_after_utc
    assert host.not_valid_after_utc - now <= datetime.timedelta(days=30)
    assert host.not_valid_after_utc <= ca.not_valid_after_utc


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        init_dev_pki(tmp_path / "a", trust_domain="Bad Domain")
    with pytest.raises(ValueError, match="days"):
        init_dev_pki(tmp_path / "b", days=0)
    with pytest.raises(PkiError, match="not an IP address"):
        init_dev_pki(tmp_path / "c", server_ips=("localhost",))


# --- issue_client_cert --------------------------------------------------------


def test_issue_client_cert(pki: DevPki, tmp_path: Path) -> None:
    uri = f"spiffe://{TD}/host/host-b"
    cert_path, key_path = issue_client_cert(pki.ca_cert, pki.ca_key, tmp_path / "out", "host-b", uri=uri)
    assert (cert_path, key_path) == (tmp_path / "out/host-b.pem", tmp_path / "out/host-b.key")
    assert _mode(key_path) == 0o600
    assert _mode(cert_path) == 0o644
    cert = _cert(cert_path)
    cert.verify_directly_issued_by(_cert(pki.ca_cert))
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [CLIENT]
    assert identity_from_certificate(cert_path.read_bytes()) == uri


def test_issue_client_cert_refuses_overwrite(pki: DevPki, tmp_path: Path) -> None:
    issue_client_cert(pki.ca_cert, pki.ca_key, tmp_path, "x", uri="spiffe://a/b")
    with pytest.raises(PkiError, match="already exists"):
        issue_client_cert(pki.ca_cert, pki.ca_key, tmp_path, "x", uri="spiffe://a/c")
    cert_path, _ = issue_client_cert(
        pki.ca_cert, pki.ca_key, tmp_path, "x", uri="spiffe://a/c", overwrite=True
    )
    assert identity_from_certificate(cert_path.read_bytes()) == "spiffe://a/c"


def test_issue_client_cert_bad_inputs(pki: DevPki, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="needs a URI or a DNS name"):
        issue_client_cert(pki.ca_cert, pki.ca_key, tmp_path, "anon")
    with pytest.raises(PkiError, match="invalid certificate name"):
        issue_client_cert(pki.ca_cert, pki.ca_key, tmp_path, "../evil", uri="spiffe://a/b")
    with pytest.raises(PkiError, match="does not belong"):
        issue_client_cert(pki.ca_cert, pki.host_key, tmp_path, "x", uri="spiffe://a/b")
    with pytest.raises(PkiError, match="not a CA certificate"):
        issue_client_cert(pki.host_cert, pki.host_key, tmp_path, "x", uri="spiffe://a/b")


# --- identities ---------------------------------------------------------------


def _self_signed(san: x509.SubjectAlternativeName | None, cn: str = "admin") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_identity_prefers_uri(pki: DevPki, tmp_path: Path) -> None:
    assert identity_from_certificate(pki.host_cert.read_bytes()) == pki.host_identity
    # server.pem has DNS and IP SANs too; the URI wins.
    assert identity_from_certificate(pki.server_cert.read_bytes()) == pki.coordinator_identity
    cert_path, _ = issue_client_cert(
        pki.ca_cert, pki.ca_key, tmp_path, "both", uri="spiffe://x/y", dns=["both.example"]
    )
    assert identity_from_certificate(cert_path.read_bytes()) == "spiffe://x/y"


def test_identity_falls_back_to_dns(pki: DevPki, tmp_path: Path) -> None:
    cert_path, _ = issue_client_cert(pki.ca_cert, pki.ca_key, tmp_path, "dnsonly", dns="h1.example")
    assert identity_from_certificate(cert_path.read_bytes()) == "h1.example"


@pytest.mark.parametrize(
    "san",
    [
        None,
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        x509.SubjectAlternativeName([x509.RFC822Name("admin@example.com")]),
    ],
    ids=["no-san", "ip-only", "email-only"],
)
def test_identity_ignores_cn(san: x509.SubjectAlternativeName | None) -> None:
    with pytest.raises(IdentityError, match="CN=admin"):
        identity_from_certificate(_self_signed(san))


def test_identity_rejects_garbage() -> None:
    with pytest.raises(IdentityError, match="not a valid PEM"):
        identity_from_certificate(b"not a certificate")


def test_a_certificate_is_parsed_once_for_its_identity_and_a_refused_one_every_time(
    pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[bytes] = []
    real = x509.load_pem_x509_certificate

    def counted(data: bytes) -> x509.Certificate:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(x509, "load_pem_x509_certificate", counted)
    pem = pki.host_cert.read_bytes()
    identity_from_certificate.cache_clear()
    assert [identity_from_certificate(pem) for _ in range(3)] == [pki.host_identity] * 3
    assert parsed == [pem]
    bad = _self_signed(None)
    for _ in range(2):
        with pytest.raises(IdentityError):
            identity_from_certificate(bad)
    assert parsed == [pem, bad, bad]
    # Bounded: the least recently used certificates go.
    assert identity_from_certificate.cache_info().maxsize == IDENTITIES_KEPT


# --- private key files --------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_key_file_ok(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k.key"
    key.write_bytes(b"x")
    key.chmod(mode)
    check_private_key_file(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660])
def test_key_file_too_open(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k.key"
    key.write_bytes(b"x")
    key.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        check_private_key_file(key)
    assert str(key) in str(info.value)
    assert f"{mode:04o}" in str(info.value)
    assert info.value.path == key
    assert info.value.mode == mode


def test_key_file_missing(tmp_path: Path) -> None:
    key = tmp_path / "absent.key"
    with pytest.raises(KeyFileError, match=f"{key} is missing"):
        check_private_key_file(key)


def test_key_file_not_regular(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not a regular file"):
        check_private_key_file(tmp_path)


# --- a real mTLS gRPC server --------------------------------------------------

WHOAMI = "/test.Whoami/Get"


def _whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    # grpc-stubs types auth_context() values as bytes; at runtime each is a
    # list of bytes (one entry per certificate/property value).
    certs: list[bytes] = list(context.auth_context()["x509_pem_cert"])  # type: ignore[arg-type]
    return identity_from_certificate(certs[0]).encode()


@pytest.fixture
def mtls_port(pki: DevPki) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Whoami", {"Get": grpc.unary_unary_rpc_method_handler(_whoami)}
            ),
        )
    )
    creds = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def _call(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    # 127.0.0.1 directly: the server certificate carries that IP SAN, so no
    # ssl_target_name_override is needed.
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        reply: bytes = channel.unary_unary(WHOAMI, request_serializer=None, response_deserializer=None)(
            b"", timeout=10
        )
    return reply.decode()


def test_grpc_mtls_host_identity(pki: DevPki, mtls_port: int) -> None:
    assert _call(mtls_port, pki.ca_cert, pki.host_cert, pki.host_key) == f"spiffe://{TD}/host/host-a"


@pytest.mark.parametrize(
    ("who", "identity"),
    [("admin", f"spiffe://{TD}/admin/admin"), ("coordinator", f"spiffe://{TD}/coordinator")],
)
def test_grpc_mtls_other_identities(pki: DevPki, mtls_port: int, who: str, identity: str) -> None:
    cert, key = pki.directory / f"{who}.pem", pki.directory / f"{who}.key"
    assert _call(mtls_port, pki.ca_cert, cert, key) == identity


def test_grpc_mtls_issued_identity(pki: DevPki, mtls_port: int, tmp_path: Path) -> None:
    uri = f"spiffe://{TD}/host/host-b"
    cert, key = issue_client_cert(pki.ca_cert, pki.ca_key, tmp_path, "host-b", uri=uri)
    assert _call(mtls_port, pki.ca_cert, cert, key) == uri


def test_grpc_rejects_client_from_another_ca(pki: DevPki, other_pki: DevPki, mtls_port: int) -> None:
    # Same identity, same subject names, different CA: must be refused.
    with pytest.raises(grpc.RpcError) as info:
        _call(mtls_port, pki.ca_cert, other_pki.host_cert, other_pki.host_key)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_rejects_missing_client_cert(pki: DevPki, mtls_port: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(mtls_port, pki.ca_cert)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_client_rejects_server_from_another_ca(pki: DevPki, other_pki: DevPki, mtls_port: int) -> None:
    # The client trusting only the other CA refuses our server certificate.
    with pytest.raises(grpc.RpcError) as info:
        _call(mtls_port, other_pki.ca_cert, pki.host_cert, pki.host_key)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_rejects_client_without_client_auth_eku(pki: DevPki, mtls_port: int) -> None:
    # gateway.pem is serverAuth only: BoringSSL refuses it as a client
    # certificate ("unsupported certificate purpose"), which is why
    # coordinator.pem carries clientAuth for the gateway stream.
    with pytest.raises(grpc.RpcError) as info:
        _call(mtls_port, pki.ca_cert, pki.gateway_cert, pki.gateway_key)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
