"""The check of a client's certificate chain after the TLS handshake.

The TLS layer takes no CRL (grpcio's server credentials have no option for
one), and it verified the chain against the bundle of the moment the
connection was opened. So before a call is served, the peer's chain is
checked again against the set in force now: it must chain to a CA of the
current bundle, be within its validity, and no certificate of it may be on
its issuer's CRL. A revocation, or a CA removed from the bundle, therefore
refuses the very next call, also over connections opened before.

Verdicts are cached by the presented chain and the version of the set in
force (so a connection's calls cost one dictionary lookup until the set
changes), in a bounded LRU: nothing grows with the number of peers.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from coordinator.trust.chain import ChainError, build_chain, describe
from coordinator.trust.crl import revoked_in_chain
from coordinator.trust.material import TrustState

CACHE_SIZE = 4096
RECHECK_REFUSED = datetime.timedelta(seconds=60)

# What counts when a CRL in force passes its next_update with no newer one.
StalePolicy = Literal["fail-closed", "keep-last"]


@dataclass(frozen=True)
class _Verdict:
    version: int
    # The refusal, or "" when the chain is accepted.
    refusal: str
    # The verdict must be recomputed from this instant (a certificate or
    # CRL of the chain expires); None = only when the set changes.
    until: datetime.datetime | None


class PeerCheck:
    def __init__(
        self,
        current: Callable[[], TrustState],
        *,
        stale_policy: StalePolicy = "fail-closed",
        clock: Callable[[], datetime.datetime] | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._current = current
        self._stale_policy = stale_policy
        self._clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self._cache: OrderedDict[bytes, _Verdict] = OrderedDict()
        self._cache_size = cache_size
        # Interceptors and servicers may run on grpc's threads too.
        self._lock = threading.Lock()

    def refusal(self, leaf: bytes | str, chain: Sequence[bytes | str] = ()) -> str:
        """Why the presented certificate is refused now, or "". ``chain`` is
        what the peer sent besides (PEM blobs; the intermediates are taken
        from it)."""
        blobs = [p.encode() if isinstance(p, str) else p for p in (leaf, *chain)]
        key = hashlib.sha256(b"\0".join(blobs)).digest()
        state = self._current()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if (
                cached is not None
                and cached.version == state.version
                and (cached.until is None or now < cached.until)
            ):
                self._cache.move_to_end(key)
                return cached.refusal
        verdict = self._decide(blobs, state, now)
        with self._lock:
            self._cache[key] = verdict
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verdict.refusal

    def _decide(self, blobs: list[bytes], state: TrustState, now: datetime.datetime) -> _Verdict:
        try:
            leaf = x509.load_pem_x509_certificate(blobs[0])
            presented = [c for blob in blobs[1:] for c in x509.load_pem_x509_certificates(blob)]
        except ValueError as exc:
            return _Verdict(state.version, f"peer certificate does not parse: {exc}", None)
        intermediates = [c for c in presented if c != leaf]
        material = state.material
        try:
            chain = build_chain(leaf, intermediates, material.bundle, now, "client certificate")
        except ChainError as exc:
            # Looked at again a little later: a certificate not valid yet
            # (clocks apart) may become valid without the set changing.
            return _Verdict(state.version, str(exc), now + RECHECK_REFUSED)
        until = min(c.not_valid_after_utc for c in chain)
        crls = material.crls
        if not crls.empty:
            expired = [ca for ca in crls.expired(now) if ca in chain]
            if expired and self._stale_policy == "fail-closed":
                return _Verdict(
                    state.version,
                    f"the CRL of CA {describe(expired[0])} is past its next_update and no newer one is in force",
                    None,
                )
            revoked = revoked_in_chain(chain, crls)
            if revoked is not None:
                return _Verdict(state.version, str(revoked), None)
            next_update = crls.next_update()
            if next_update is not None and next_update > now:
                until = min(until, next_update)
        return _Verdict(state.version, "", until)
