"""X.509 chain checks on already-parsed certificates: which CA issued a
certificate, whether a chain reaches a CA of a bundle, validity periods,
whether a private key belongs to a certificate.

Written on cryptography's primitives rather than its ``x509.verification``
verifier: that verifier applies the Web PKI profile (a server name to match,
extended key usages per role), while here the same bundle checks the
coordinator's own listener certificate and clients of a private mTLS PKI,
and what matters is signature, issuer and validity.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# A chain longer than this is refused rather than walked (no CA hierarchy
# that signs mTLS clients is this deep).
MAX_DEPTH = 8


class ChainError(ValueError):
    """A certificate does not chain to the bundle, or is outside its validity."""


def load_pem_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM blob; raises ChainError if there is none
    or one does not parse."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ChainError(f"{what}: not PEM X.509 certificates ({exc})") from None
    if not certificates:
        raise ChainError(f"{what}: no certificate in it")
    return certificates


def describe(certificate: x509.Certificate) -> str:
    """How a certificate is named in errors and logs: serial (hex) and subject."""
    return f"serial {certificate.serial_number:x} ({certificate.subject.rfc4514_string()})"


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_validity(certificate: x509.Certificate, now: datetime.datetime, what: str) -> None:
    if now < certificate.not_valid_before_utc:
        raise ChainError(
            f"{what}: {describe(certificate)} is not valid before {certificate.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    if now > certificate.not_valid_after_utc:
        raise ChainError(
            f"{what}: {describe(certificate)} expired at {certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if ``issuer``'s name and key signed ``certificate``."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def find_issuer(
    certificate: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    return next((c for c in candidates if is_ca(c) and issued_by(certificate, c)), None)


def build_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    bundle: Sequence[x509.Certificate],
    now: datetime.datetime,
    what: str,
) -> list[x509.Certificate]:
    """``[leaf, ..., anchor]`` where the anchor is a CA of ``bundle``; every
    link's signature and every certificate's validity are checked. Raises
    ChainError naming the certificate that breaks the chain."""
    chain = [leaf]
    current = leaf
    check_validity(leaf, now, what)
    for _ in range(MAX_DEPTH):
        anchor = find_issuer(current, bundle)
        if anchor is not None:
            check_validity(anchor, now, what)
            chain.append(anchor)
            return chain
        step = find_issuer(current, intermediates)
        if step is None or step in chain:
            raise ChainError(
                f"{what}: {describe(current)} is not signed by a CA of the bundle "
                f"(issuer {current.issuer.rfc4514_string()})"
            )
        check_validity(step, now, what)
        chain.append(step)
        current = step
    raise ChainError(f"{what}: chain of {describe(leaf)} is longer than {MAX_DEPTH}")


def key_matches(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    """Whether the private key is the one of the certificate's public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(*spki) == certificate.public_key().public_bytes(*spki))
