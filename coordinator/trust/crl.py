"""Certificate revocation lists: loading (PEM, several per file, or DER),
checking each against the CA bundle, and the revocation verdict on a chain.

A CRL is accepted only if a CA of the bundle signed it and its
``next_update`` has not passed; with CRLs configured, every CA of the bundle
must have one, so a CA added without its CRL is a reload failure rather than
a CA whose clients are never checked.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from coordinator.trust.chain import ChainError, describe

_PEM_CRL = b"-----BEGIN X509 CRL-----"


class CrlError(ValueError):
    """A CRL file is unusable: unparsable, not signed by a trusted CA, expired."""


@dataclass(frozen=True)
class Revoked:
    """The verdict that a certificate of a chain is revoked."""

    certificate: x509.Certificate
    issuer: x509.Certificate
    revoked_at: datetime.datetime

    def __str__(self) -> str:
        return (
            f"certificate {describe(self.certificate)} issued by {self.issuer.subject.rfc4514_string()} "
            f"was revoked at {self.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
        )


def parse_crls(data: bytes, what: str) -> list[x509.CertificateRevocationList]:
    """The CRLs of one file: every PEM block, or one DER CRL."""
    try:
        if _PEM_CRL in data:
            blocks = data.split(_PEM_CRL)[1:]
            return [x509.load_pem_x509_crl(_PEM_CRL + block) for block in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise CrlError(f"{what}: not a PEM or DER CRL ({exc})") from None


@dataclass(frozen=True)
class CrlSet:
    """The CRLs in force, one per CA of the bundle (by CA subject)."""

    by_issuer: tuple[tuple[x509.Certificate, x509.CertificateRevocationList], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.by_issuer

    def crl_of(self, issuer: x509.Certificate) -> x509.CertificateRevocationList | None:
        return next((crl for ca, crl in self.by_issuer if ca == issuer), None)

    def next_update(self) -> datetime.datetime | None:
        """The earliest ``next_update`` of the set: when it needs a newer CRL."""
        updates = [crl.next_update_utc for _, crl in self.by_issuer if crl.next_update_utc is not None]
        return min(updates, default=None)

    def expired(self, now: datetime.datetime) -> list[x509.Certificate]:
        """The CAs whose CRL's ``next_update`` has passed."""
        return [
            ca for ca, crl in self.by_issuer if crl.next_update_utc is not None and crl.next_update_utc < now
        ]


def build_crl_set(
    crls: Sequence[tuple[str, x509.CertificateRevocationList]],
    bundle: Sequence[x509.Certificate],
    now: datetime.datetime,
) -> CrlSet:
    """Match each CRL (with the file it came from) to the bundle CA that
    signed it. Raises CrlError naming the file or the CA without a CRL."""
    chosen: dict[int, tuple[x509.Certificate, x509.CertificateRevocationList]] = {}
    for source, crl in crls:
        index = next(
            (
                i
                for i, ca in enumerate(bundle)
                if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
            ),
            None,
        )
        if index is None:
            raise CrlError(
                f"{source}: CRL of {crl.issuer.rfc4514_string()} is not signed by a CA of the bundle"
            )
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise CrlError(
                f"{source}: CRL of {crl.issuer.rfc4514_string()} expired at "
                f"{crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ} (next_update)"
            )
        previous = chosen.get(index)
        # Two CRLs of one CA (an old and a new copy): the newer one counts.
        if previous is None or crl.last_update_utc > previous[1].last_update_utc:
            chosen[index] = (bundle[index], crl)
    missing = [ca for i, ca in enumerate(bundle) if i not in chosen]
    if missing:
        raise CrlError(f"no CRL for CA {describe(missing[0])} of the bundle")
    return CrlSet(tuple(chosen[i] for i in sorted(chosen)))


def revoked_in_chain(chain: Sequence[x509.Certificate], crls: CrlSet) -> Revoked | None:
    """The first certificate of ``[leaf, ..., anchor]`` that its issuer's CRL
    revokes, or None. The anchor itself is checked against a CRL of another
    bundle CA only if it is not self-signed."""
    links = list(itertools.pairwise(chain))
    anchor = chain[-1]
    if anchor.issuer != anchor.subject:
        issuer = next((ca for ca, _ in crls.by_issuer if ca.subject == anchor.issuer), None)
        if issuer is not None:
            links.append((anchor, issuer))
    for certificate, issuer in links:
        crl = crls.crl_of(issuer)
        if crl is None:
            continue
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is not None:
            return Revoked(certificate, issuer, entry.revocation_date_utc)
    return None


__all__ = ["ChainError", "CrlError", "CrlSet", "Revoked", "build_crl_set", "parse_crls", "revoked_in_chain"]
