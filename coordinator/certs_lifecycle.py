"""The development PKI's lifecycle: issuing more leaves, revoking them into
the CA's CRL, and rotating the CA with a window in which both are trusted.

Files in the PKI directory (``certs init --out DIR``):

- ``ca.pem`` — the CA bundle the daemon's ``server.client_ca`` points at;
  its first certificate is the issuing CA, whose key is ``ca.key``;
- ``ca.crl`` — one CRL per CA of the bundle (PEM blocks), for ``server.crl``;
- during a rotation, ``ca-next.pem`` / ``ca-next.key``: the new CA, which
  ``ca.pem`` and ``ca.crl`` then also hold.

The rotation is three runnable steps: ``rotate-ca`` (the new CA beside the
old, both in the bundle), ``issue --ca ca-next`` for the new leaves, and
``rotate-ca --finish`` (the bundle, CRL and ``ca.key`` hold only the new CA).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from coordinator.certs import (
    _NAME_RE,
    CERT_MODE,
    DEFAULT_DAYS,
    PkiError,
    _as_tuple,
    _check_days,
    _issue_leaf,
    _IssuerKey,
    _LeafSpec,
    _load_ca,
    _new_ca,
    _now,
    _write_file,
    _write_pair,
)
from coordinator.trust.crl import parse_crls

Role = Literal["host", "admin", "server", "coordinator", "gateway"]

BUNDLE = "ca.pem"
CA_KEY = "ca.key"
CRL = "ca.crl"
NEXT = "ca-next"
# A dev CRL is current for this long; revoke and rotate-ca re-sign it.
CRL_DAYS = 30

_USAGES: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    "host": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "admin": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "coordinator": (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
    "gateway": (ExtendedKeyUsageOID.SERVER_AUTH,),
}


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    serial: int


def issue(
    pki_dir: Path,
    name: str,
    role: Role,
    *,
    uri: str | None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    ca: str = "ca",
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
) -> Issued:
    """A new leaf ``<name>.pem`` / ``<name>.key`` for ``role`` signed by CA
    ``<ca>.pem`` / ``<ca>.key`` of ``pki_dir`` (``ca-next`` during a
    rotation). ``overwrite`` renews an existing leaf in place (atomically)."""
    _check_days(days)
    if not _NAME_RE.fullmatch(name):
        raise PkiError(f"invalid certificate name {name!r}: use letters, digits, '.', '-' and '_'")
    if uri is None and not dns:
        raise PkiError(f"certificate {name!r} needs a URI or a DNS name: it is the peer's identity")
    cert_path, key_path = pki_dir / f"{name}.pem", pki_dir / f"{name}.key"
    if not overwrite and (cert_path.exists() or key_path.exists()):
        raise PkiError(f"{cert_path} or {key_path} already exists; pass overwrite to renew it")
    ca_cert, ca_key = _load_ca(pki_dir / f"{ca}.pem", pki_dir / f"{ca}.key")
    spec = _LeafSpec(name, uri, _as_tuple(dns), _as_tuple(ips), _USAGES[role])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_leaf(ca_cert, ca_key, key, spec, days)
    _write_pair(cert_path, key_path, cert, key)
    return Issued(cert_path, key_path, cert.serial_number)


def revoke(pki_dir: Path, cert_path: Path) -> tuple[int, str]:
    """Add ``cert_path``'s certificate to its issuer's CRL in ``ca.crl``;
    returns (serial, issuer). Revoking twice is harmless."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read certificate {cert_path}: {exc}") from exc
    issuer = next((ca for ca in _cas(pki_dir) if ca[0].subject == cert.issuer), None)
    if issuer is None:
        raise PkiError(f"{cert_path} was not issued by a CA of {pki_dir}")
    _resign_crl(pki_dir, *issuer, add=cert.serial_number)
    return cert.serial_number, cert.issuer.rfc4514_string()


def write_empty_crl(pki_dir: Path) -> Path:
    """``ca.crl`` with an empty CRL of every CA of the bundle that has none."""
    for ca_cert, ca_key in _cas(pki_dir):
        _resign_crl(pki_dir, ca_cert, ca_key, add=None, only_if_missing=True)
    return pki_dir / CRL


def rotate_ca(pki_dir: Path, *, days: int = DEFAULT_DAYS) -> Path:
    """Start a rotation: a new CA ``ca-next.pem`` beside the old one, both in
    the bundle ``ca.pem`` and with a CRL each in ``ca.crl``."""
    if (pki_dir / f"{NEXT}.pem").exists():
        raise PkiError(f"a rotation is already under way ({pki_dir / NEXT}.pem); finish it first")
    _load_ca(pki_dir / BUNDLE, pki_dir / CA_KEY)  # the current CA must be intact
    # The date makes the new CA's name differ from the old one's: issuers are
    # told apart by name before their signatures are checked.
    new_cert, new_key = _new_ca(f"{_now():%Y%m%dT%H%M%S}", days)
    _write_pair(pki_dir / f"{NEXT}.pem", pki_dir / f"{NEXT}.key", new_cert, new_key)
    _write_bundle(pki_dir, [*_bundle(pki_dir), new_cert])
    _resign_crl(pki_dir, new_cert, new_key, add=None, only_if_missing=True)
    return pki_dir / f"{NEXT}.pem"


def finish_rotation(pki_dir: Path) -> Path:
    """End the window: the new CA becomes ``ca.pem`` / ``ca.key`` alone, and
    ``ca.crl`` holds only its CRL. Clients of the old CA are refused from now."""
    next_pem, next_key = pki_dir / f"{NEXT}.pem", pki_dir / f"{NEXT}.key"
    if not next_pem.exists():
        raise PkiError(f"no rotation under way: {next_pem} is missing")
    new_cert, new_key = _load_ca(next_pem, next_key)
    crls = [crl for crl in _crls(pki_dir) if crl.issuer == new_cert.subject]
    _write_pair(pki_dir / BUNDLE, pki_dir / CA_KEY, new_cert, _as_ec(new_key))
    _write_crls(pki_dir, crls)
    next_pem.unlink()
    next_key.unlink()
    return pki_dir / BUNDLE


# --- files ----------------------------------------------------------------------


def _bundle(pki_dir: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates((pki_dir / BUNDLE).read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read the CA bundle {pki_dir / BUNDLE}: {exc}") from exc


def _write_bundle(pki_dir: Path, cas: Sequence[x509.Certificate]) -> None:
    pem = b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in cas)
    _write_file(pki_dir / BUNDLE, pem, CERT_MODE)


def _cas(pki_dir: Path) -> list[tuple[x509.Certificate, _IssuerKey]]:
    """The CAs of the directory whose keys it holds: ``ca`` and ``ca-next``."""
    found = [_load_ca(pki_dir / BUNDLE, pki_dir / CA_KEY)]
    if (pki_dir / f"{NEXT}.pem").exists():
        found.append(_load_ca(pki_dir / f"{NEXT}.pem", pki_dir / f"{NEXT}.key"))
    return found


def _crls(pki_dir: Path) -> list[x509.CertificateRevocationList]:
    path = pki_dir / CRL
    if not path.exists():
        return []
    try:
        return parse_crls(path.read_bytes(), str(path))
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read {path}: {exc}") from exc


def _write_crls(pki_dir: Path, crls: Sequence[x509.CertificateRevocationList]) -> None:
    pem = b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
    _write_file(pki_dir / CRL, pem, CERT_MODE)


def _resign_crl(
    pki_dir: Path,
    ca_cert: x509.Certificate,
    ca_key: _IssuerKey,
    *,
    add: int | None,
    only_if_missing: bool = False,
) -> None:
    crls = _crls(pki_dir)
    mine = next((crl for crl in crls if crl.issuer == ca_cert.subject), None)
    if mine is not None and only_if_missing:
        return
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=CRL_DAYS))
    )
    serials = {entry.serial_number: entry for entry in (mine or [])}
    for entry in serials.values():
        builder = builder.add_revoked_certificate(entry)
    if add is not None and add not in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(add).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_crls(pki_dir, [c for c in crls if c.issuer != ca_cert.subject] + [crl])


def _as_ec(key: _IssuerKey) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("only EC development CAs can be rotated")
    return key


__all__ = ["Issued", "finish_rotation", "issue", "revoke", "rotate_ca", "write_empty_crl"]
