"""Reading and validating one complete set of trust material from files.

A set is a listener's certificate chain and key, the CA bundle its clients
must chain to, and the CRLs. Everything is checked before the set may be
used: the key file's mode (0600 or stricter), the key matches the leaf
certificate, the chain verifies against the bundle, nothing is expired,
every CRL is signed by a bundle CA and current. A failure names the config
key and the file, so the operator knows which one to fix.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from coordinator.certs import KeyFileError, check_private_key_file
from coordinator.trust.chain import (
    ChainError,
    build_chain,
    check_validity,
    describe,
    is_ca,
    key_matches,
    load_pem_certificates,
)
from coordinator.trust.crl import CrlError, CrlSet, build_crl_set, parse_crls

# A trust file larger than this is refused (a bundle or CRL of a DPU's
# mTLS PKI is a few kilobytes; this bounds what one read may allocate).
MAX_FILE_BYTES = 4 * 1024 * 1024

T = TypeVar("T")


class MaterialError(ValueError):
    """One file of the set is unusable; ``key`` is its config key."""

    def __init__(self, key: str, path: str, reason: str) -> None:
        super().__init__(f"{key} ({path}): {reason}")
        self.key = key
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TrustFiles:
    """Where one listener's material lives, with the config key of each."""

    cert: str
    key: str
    bundle: str
    crls: tuple[str, ...] = ()
    # Config keys for error messages, e.g. "server.cert".
    cert_key: str = "cert"
    key_key: str = "key"
    bundle_key: str = "client_ca"
    crl_key: str = "crl"

    def paths(self) -> list[tuple[str, str]]:
        """(config key, path) of every file, in the order they are checked."""
        files = [(self.cert_key, self.cert), (self.key_key, self.key), (self.bundle_key, self.bundle)]
        return files + [(self.crl_key, path) for path in self.crls]


@dataclass(frozen=True)
class TrustSet:
    """A validated set: raw PEM for the TLS layer, parsed for the checks."""

    cert_chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    leaf: x509.Certificate
    bundle: tuple[x509.Certificate, ...]
    crls: CrlSet = field(default_factory=CrlSet)

    def summary(self) -> str:
        return (
            f"certificate {describe(self.leaf)} until {self.leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, "
            f"{len(self.bundle)} CA(s), {len(self.crls.by_issuer)} CRL(s)"
        )


@dataclass(frozen=True)
class TrustState:
    """The set in force and its version (bumped by every successful reload)."""

    version: int
    material: TrustSet


@dataclass(frozen=True)
class FileStamp:
    """What identifies a file's current version: its inode identity and a
    digest of its content (an in-place rewrite keeps the inode, an atomic
    rename keeps size and may keep the mtime)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    mode: int
    digest: str


def stamp(path: str) -> FileStamp | None:
    """The file's stamp, or None if it cannot be read now."""
    try:
        st = os.stat(path)
        data = _read(path)
    except OSError:
        return None
    return FileStamp(
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, hashlib.sha256(data).hexdigest()
    )


def stamps(files: TrustFiles) -> tuple[FileStamp | None, ...]:
    return tuple(stamp(path) for _, path in files.paths())


def load_trust_set(
    files: TrustFiles, now: datetime.datetime | None = None, *, chain_to_bundle: bool = True
) -> TrustSet:
    """Read and validate every file of ``files``; raises MaterialError.

    ``chain_to_bundle=False`` for a credential whose bundle trusts the other
    side only (the gateway client's: its CA is the gateway's, not the one
    that issued the coordinator's certificate), or that has no bundle (a
    metrics listener without client_ca): the leaf is then checked for its
    validity and key only."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not files.bundle:
        return _load_without_bundle(files, now)
    bundle_pem = _read_file(files.bundle_key, files.bundle)
    bundle = _parse(files.bundle_key, files.bundle, load_pem_certificates, bundle_pem, "CA bundle")
    for ca in bundle:
        if not is_ca(ca):
            raise MaterialError(files.bundle_key, files.bundle, f"{describe(ca)} is not a CA certificate")
        _parse(files.bundle_key, files.bundle, check_validity, ca, now, "CA")
    chain_pem = _read_file(files.cert_key, files.cert)
    chain = _parse(files.cert_key, files.cert, load_pem_certificates, chain_pem, "certificate")
    leaf = chain[0]
    if chain_to_bundle:
        _parse(files.cert_key, files.cert, build_chain, leaf, chain[1:], bundle, now, "certificate")
    else:
        _parse(files.cert_key, files.cert, check_validity, leaf, now, "certificate")
    key_pem = _load_key(files, leaf)
    crls = _load_crls(files, bundle, now)
    return TrustSet(chain_pem, key_pem, bundle_pem, leaf, tuple(bundle), crls)


def _load_without_bundle(files: TrustFiles, now: datetime.datetime) -> TrustSet:
    chain_pem = _read_file(files.cert_key, files.cert)
    chain = _parse(files.cert_key, files.cert, load_pem_certificates, chain_pem, "certificate")
    _parse(files.cert_key, files.cert, check_validity, chain[0], now, "certificate")
    return TrustSet(chain_pem, _load_key(files, chain[0]), b"", chain[0], ())


def load_crl_set(
    crl_key: str, paths: Sequence[str], bundle: Sequence[x509.Certificate], now: datetime.datetime
) -> CrlSet:
    """The CRLs of ``paths`` checked against ``bundle``; raises MaterialError."""
    found: list[tuple[str, x509.CertificateRevocationList]] = []
    for path in paths:
        data = _read_file(crl_key, path)
        found += [(path, crl) for crl in _parse(crl_key, path, parse_crls, data, "CRL")]
    if not found:
        return CrlSet()
    try:
        return build_crl_set(found, bundle, now)
    except CrlError as exc:
        raise MaterialError(crl_key, ", ".join(paths), str(exc)) from None


def _load_crls(files: TrustFiles, bundle: Sequence[x509.Certificate], now: datetime.datetime) -> CrlSet:
    return load_crl_set(files.crl_key, files.crls, bundle, now)


def _load_key(files: TrustFiles, leaf: x509.Certificate) -> bytes:
    try:
        check_private_key_file(Path(files.key))
    except KeyFileError as exc:
        raise MaterialError(files.key_key, files.key, str(exc)) from None
    key_pem = _read_file(files.key_key, files.key)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: an encrypted key; the daemon has no passphrase to give.
        raise MaterialError(files.key_key, files.key, f"not an unencrypted PEM private key ({exc})") from None
    if not key_matches(key, leaf):
        raise MaterialError(
            files.key_key,
            files.key,
            f"the key does not belong to certificate {describe(leaf)} ({files.cert})",
        )
    return key_pem


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(f"larger than {MAX_FILE_BYTES} bytes")
    return data


def _read_file(key: str, path: str) -> bytes:
    if not path:
        raise MaterialError(key, path, "no file configured")
    try:
        return _read(path)
    except OSError as exc:
        raise MaterialError(key, path, f"cannot read: {exc.strerror or exc}") from None


def _parse(key: str, path: str, parse: Callable[..., T], *args: Any) -> T:
    """``parse(*args)``, its ChainError/CrlError as a MaterialError of the file."""
    try:
        return parse(*args)
    except (ChainError, CrlError) as exc:
        raise MaterialError(key, path, str(exc)) from None
