"""Certificates for the mTLS API: a development PKI, issuing more
identities from it, private-key file hygiene, and peer identity extraction.

Identities are SPIFFE-style URIs in a certificate's subjectAltName, e.g.
``spiffe://bluefield.local/host/host-a``; the config maps them to roles.
Only ``cryptography`` is used, so this works on a DPU without openssl(1).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_TRUST_DOMAIN = "bluefield.local"
DEFAULT_DAYS = 365

KEY_MODE = 0o600
CERT_MODE = 0o644

# Certificates start a little in the past so a peer whose clock lags ours
# (common on freshly booted DPUs before NTP syncs) does not see them as
# not-yet-valid.
_BACKDATE = datetime.timedelta(minutes=5)

# SPIFFE trust domains: lowercase letters, digits, dots, dashes, underscores.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
# File stems we write as <name>.pem / <name>.key: no path separators, not hidden.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_ORGANIZATION = "bluefield-coordinator"

# Keys a CA may be loaded with for issue_client_cert (dev CAs are EC; an
# operator's may be RSA). Both sign with SHA-256.
_IssuerKey: TypeAlias = "ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey"


class CertError(Exception):
    """Base class for errors from this module."""


class KeyFileError(CertError):
    """A private key file is missing or readable/writable by group or others."""

    def __init__(self, path: Path, mode: int | None, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.mode = mode


class IdentityError(CertError):
    """A peer certificate carries no identity the coordinator accepts."""


class PkiError(CertError):
    """The PKI directory or the issuing inputs are inconsistent."""


@dataclass(frozen=True)
class DevPki:
    """Paths and identities of a development PKI made by :func:`init_dev_pki`."""

    directory: Path
    trust_domain: str
    ca_cert: Path
    ca_key: Path
    # The coordinator's listener certificate.
    server_cert: Path
    server_key: Path
    # The coordinator's own client credential (for the gateway stream).
    coordinator_cert: Path
    coordinator_key: Path
    host_cert: Path
    host_key: Path
    admin_cert: Path
    admin_key: Path
    # The reference gateway's listener certificate.
    gateway_cert: Path
    gateway_key: Path
    # The coordinator's identity; server.pem and coordinator.pem both carry it.
    coordinator_identity: str
    host_identity: str
    admin_identity: str
    gateway_identity: str


@dataclass(frozen=True)
class _LeafSpec:
    name: str
    uri: str | None
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    usages: tuple[x509.ObjectIdentifier, ...]


def spiffe_id(trust_domain: str, path: str) -> str:
    """``spiffe://<trust_domain>/<path>``, with the trust domain validated."""
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise ValueError(
            f"invalid trust domain {trust_domain!r}: use lowercase letters, digits, '.', '-' and '_'"
        )
    return f"spiffe://{trust_domain}/{path.lstrip('/')}"


# --- public API ---------------------------------------------------------------


def init_dev_pki(
    out: Path,
    *,
    server_names: Sequence[str] = ("localhost",),
    server_ips: Sequence[str] = ("127.0.0.1", "::1"),
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> DevPki:
    """Create a development CA and the server, coordinator, host, admin and
    gateway certificates in ``out``.

    Existing files are kept (so re-running is harmless and a running daemon's
    credentials do not change under it); missing leaf pairs are issued from
    the existing CA. Changing SANs or the trust domain of existing files needs
    ``force=True``, which regenerates everything including the CA.
    """
    _check_days(days)
    pki = _layout(out, trust_domain)
    leaves = _dev_leaves(pki, _as_tuple(server_names), _as_tuple(server_ips))
    out.mkdir(parents=True, exist_ok=True)

    if force:
        ca_present = False
        missing = list(leaves)
    else:
        ca_present = _pair_present(pki.ca_cert, pki.ca_key)
        missing = [leaf for leaf in leaves if not _pair_present(*leaves[leaf])]
        if not ca_present and len(missing) < len(leaves):
            raise PkiError(
                f"{out}: leaf certificates exist but the CA that signed them ({pki.ca_cert.name}) "
                "is missing; pass force=True to regenerate everything"
            )

    if ca_present:
        ca_cert, ca_key = _load_ca(pki.ca_cert, pki.ca_key)
    else:
        ca_cert, ca_key = _new_ca(trust_domain, days)
        _write_pair(pki.ca_cert, pki.ca_key, ca_cert, ca_key)

    for leaf in missing:
        cert_path, key_path = leaves[leaf]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue_leaf(ca_cert, ca_key, key, leaf, days)
        _write_pair(cert_path, key_path, cert, key)
    return pki


def issue_client_cert(
    ca_cert_path: Path,
    ca_key_path: Path,
    out_dir: Path,
    name: str,
    *,
    uri: str | None = None,
    dns: Sequence[str] | None = None,
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Issue a client (clientAuth) certificate ``<out_dir>/<name>.pem`` and
    key ``<name>.key`` signed by the given CA; returns ``(cert, key)`` paths.

    ``uri`` (e.g. ``spiffe://bluefield.local/host/host-b``) is the identity;
    ``dns`` names are the fallback identity when no URI is given.
    """
    _check_days(days)
    if not _NAME_RE.fullmatch(name):
        raise PkiError(f"invalid certificate name {name!r}: use letters, digits, '.', '-' and '_'")
    dns_names = _as_tuple(dns or ())
    if uri is None and not dns_names:
        # identity_from_certificate would refuse such a certificate anyway.
        raise PkiError(f"certificate {name!r} needs a URI or a DNS name: it is the client's identity")
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    if not overwrite and (cert_path.exists() or key_path.exists()):
        raise PkiError(f"{cert_path} or {key_path} already exists; pass overwrite=True to replace it")

    ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
    spec = _LeafSpec(name, uri, dns_names, (), (ExtendedKeyUsageOID.CLIENT_AUTH,))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_leaf(ca_cert, ca_key, key, spec, days)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_pair(cert_path, key_path, cert, key)
    return cert_path, key_path


def check_private_key_file(path: Path) -> None:
    """Raise :class:`KeyFileError` unless ``path`` is a regular file that
    neither group nor others can access (mode 0600 or stricter)."""
    try:
        # stat() follows symlinks: what matters is the file the key is read from
        # (e.g. a Kubernetes-style secret mount made of symlinks).
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(path, None, f"private key file {path} is missing") from None
    except OSError as exc:
        raise KeyFileError(path, None, f"private key file {path} cannot be inspected: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(path, None, f"private key file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    # Any group/other bit is refused (like ssh): a readable key can be stolen,
    # a writable one swapped for the attacker's.
    if mode & 0o077:
        raise KeyFileError(
            path,
            mode,
            f"private key file {path} has mode {mode:04o}; it must not be readable or writable "
            f"by group or others (chmod 600 {path})",
        )


# Every call parses its caller's certificate once or twice (the security
# interceptor, then authorization); a caller presents the same one call
# after call. The identity is the certificate's alone, so it is kept per
# certificate (a refused one is not kept: it raises each time).
IDENTITIES_KEPT = 256


@functools.lru_cache(maxsize=IDENTITIES_KEPT)
def identity_from_certificate(pem: bytes) -> str:
    """The peer identity in a PEM certificate: its first URI SAN, else its
    first DNS SAN.

    The subject CN is deliberately not used: it is free text that CAs put in
    every certificate for display, RFC 6125 deprecates it for identity, and
    name constraints do not bind it, so honouring it would let any certificate
    that merely *mentions* a name (say CN=admin) claim that identity.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IdentityError(f"peer certificate is not a valid PEM X.509 certificate: {exc}") from exc
    subject = cert.subject.rfc4514_string()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(f"peer certificate {subject!r} has no subjectAltName, so no identity") from None
    except ValueError as exc:  # malformed or duplicated extensions
        raise IdentityError(f"peer certificate {subject!r} has unparseable extensions: {exc}") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if uris:
        return uris[0]
    dns_names = san.get_values_for_type(x509.DNSName)
    if dns_names:
        return dns_names[0]
    raise IdentityError(f"peer certificate {subject!r} has no URI or DNS SAN, so no identity")


# --- building -----------------------------------------------------------------


def _layout(out: Path, trust_domain: str) -> DevPki:
    coordinator = spiffe_id(trust_domain, "coordinator")
    return DevPki(
        directory=out,
        trust_domain=trust_domain,
        ca_cert=out / "ca.pem",
        ca_key=out / "ca.key",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        coordinator_cert=out / "coordinator.pem",
        coordinator_key=out / "coordinator.key",
        host_cert=out / "host.pem",
        host_key=out / "host.key",
        admin_cert=out / "admin.pem",
        admin_key=out / "admin.key",
        gateway_cert=out / "gateway.pem",
        gateway_key=out / "gateway.key",
        coordinator_identity=coordinator,
        host_identity=spiffe_id(trust_domain, "host/host-a"),
        admin_identity=spiffe_id(trust_domain, "admin/admin"),
        gateway_identity=spiffe_id(trust_domain, "gateway"),
    )


def _dev_leaves(
    pki: DevPki, server_names: tuple[str, ...], server_ips: tuple[str, ...]
) -> dict[_LeafSpec, tuple[Path, Path]]:
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    coordinator = pki.coordinator_identity
    return {
        _LeafSpec("server", coordinator, server_names, server_ips, (server,)): (
            pki.server_cert,
            pki.server_key,
        ),
        _LeafSpec("coordinator", coordinator, (), (), (client, server)): (
            pki.coordinator_cert,
            pki.coordinator_key,
        ),
        _LeafSpec("host", pki.host_identity, (), (), (client,)): (pki.host_cert, pki.host_key),
        _LeafSpec("admin", pki.admin_identity, (), (), (client,)): (pki.admin_cert, pki.admin_key),
        _LeafSpec("gateway", pki.gateway_identity, ("localhost",), ("127.0.0.1",), (server,)): (
            pki.gateway_cert,
            pki.gateway_key,
        ),
    }


def _new_ca(trust_domain: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{_ORGANIZATION} dev CA ({trust_domain})")
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        # path_length=0: the dev CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: _IssuerKey,
    key: ec.EllipticCurvePrivateKey,
    spec: _LeafSpec,
    days: int,
) -> x509.Certificate:
    now = _now()
    # A leaf outliving its CA would only fail later and more confusingly.
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name(spec.name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(spec.usages)), critical=False)
        .add_extension(_subject_alt_name(spec), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _subject_alt_name(spec: _LeafSpec) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    # The URI goes first: identity_from_certificate takes the first URI SAN.
    if spec.uri is not None:
        names.append(x509.UniformResourceIdentifier(spec.uri))
    names.extend(x509.DNSName(dns) for dns in spec.dns)
    for ip in spec.ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"certificate {spec.name!r}: {ip!r} is not an IP address") from None
    return x509.SubjectAlternativeName(names)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # Leaves: ECDSA signatures in the TLS handshake only. CA: signs
    # certificates and the CRLs the server reloads.
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    # The CN is for humans reading the certificate, never for identity.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, _IssuerKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise PkiError(f"cannot read CA: {exc}") from exc
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted; dev and test CAs are not.
        raise PkiError(f"cannot load CA from {cert_path} / {key_path}: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PkiError(f"CA key {key_path} is {type(key).__name__}; only EC and RSA CA keys are supported")
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise PkiError(f"CA key {key_path} does not belong to CA certificate {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"{cert_path} is not a CA certificate (basicConstraints CA is not set)")
    return cert, key


def _public_der(public: object) -> bytes:
    if not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        return b""
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- files --------------------------------------------------------------------


def _pair_present(cert_path: Path, key_path: Path) -> bool:
    """Whether a cert/key pair exists; a half pair is an error rather than
    something to silently overwrite (the other half may be in use)."""
    cert_exists, key_exists = cert_path.exists(), key_path.exists()
    if cert_exists != key_exists:
        present, absent = (cert_path, key_path) if cert_exists else (key_path, cert_path)
        raise PkiError(f"{present} exists but {absent} does not; remove it or pass force=True")
    return cert_exists


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_file(key_path, key_pem, KEY_MODE)
    _write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``.

    The data goes to a fresh sibling created with O_EXCL at ``mode`` and is
    then renamed over ``path``: a key is never readable by others even for an
    instant (O_TRUNC on an existing file would keep that file's wider mode),
    and a crash never leaves a half-written file under the real name.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask may have narrowed the mode (certs to 0640 under umask 027);
            # set exactly what was asked for.
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- small helpers ------------------------------------------------------------


def _now() -> datetime.datetime:
    # timezone.utc, not datetime.UTC: the latter is 3.11+.
    return datetime.datetime.now(datetime.timezone.utc)


def _check_days(days: int) -> None:
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")


def _as_tuple(values: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too; treat it as one name, not letters.
    return (values,) if isinstance(values, str) else tuple(values)
