"""What the daemon does around trust reloads: reports and the SIGHUP.

Each listener's ``TrustReloader`` polls its files; this module reports its
outcomes where an operator looks:

- a failed reload: the OCSF "certificate reload failed" finding (naming the
  config key and file), the ``_trust_reloads_total{result="failed"}`` and
  ``_trust_reload_failing`` metrics, and a coordinator-wide
  ``DpuTrustReloaded`` condition with status False (reason
  ``ReloadFailed``), one per transition;
- a good reload after a failure: the condition back to True
  (``Reloaded``), the gauge to 0;
- every good reload: the expiry of the certificate now presented;
- a gateway certificate the gateway client refused (``[gateway] crl``): an
  OCSF 3002 authentication failure naming its serial and issuer.

SIGHUP asks every reloader to re-read its files at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from coordinator import ocsf
from coordinator.certs import IdentityError, identity_from_certificate
from coordinator.event_kinds import Event, EventKind
from coordinator.events import EventHub
from coordinator.metrics import Metrics
from coordinator.security_events import SecurityEvents
from coordinator.store.worker import AsyncStore
from coordinator.trust.material import MaterialError, TrustSet
from coordinator.trust.reloader import TrustReloader

log = logging.getLogger(__name__)

CONDITION = EventKind.TRUST_RELOADED
# The same refused gateway certificate is reported at most this often.
REFUSAL_REPEAT_S = 60.0


class TrustReport:
    def __init__(
        self, store: AsyncStore, events: EventHub, security: SecurityEvents, metrics: Metrics
    ) -> None:
        self._store = store
        self._events = events
        self._security = security
        self._metrics = metrics
        self._notify: set[asyncio.Task[None]] = set()
        self._last_refusal: tuple[tuple[int, str], float] | None = None

    def watch(self, reloader: TrustReloader) -> None:
        """Report ``reloader``'s outcomes from now on (and its current set)."""
        reloader.on_failure = self.failed
        reloader.on_reloaded = self.reloaded
        self._metrics.trust_reload_failing.labels(listener=reloader.name).set(0)
        for result in ("ok", "failed"):
            self._metrics.trust_reloads.labels(listener=reloader.name, result=result)
        self._expiry(reloader.name, reloader.state.material)

    def failed(self, listener: str, error: MaterialError) -> None:
        self._security.certificate_problem(error.key, error.path, error.reason)
        self._metrics.trust_reloads.labels(listener=listener, result="failed").inc()
        self._metrics.trust_reload_failing.labels(listener=listener).set(1)
        self._condition(False, "ReloadFailed", str(error))

    def reloaded(self, listener: str, material: TrustSet, recovered: bool) -> None:
        self._metrics.trust_reloads.labels(listener=listener, result="ok").inc()
        self._metrics.trust_reload_failing.labels(listener=listener).set(0)
        self._expiry(listener, material)
        if recovered:
            self._condition(True, "Reloaded", f"{listener}: {material.summary()}")

    def gateway_refused(self, target: str, certificate: x509.Certificate, refusal: str) -> None:
        """The gateway presented a certificate the coordinator does not
        accept (revoked, not from its CA, expired): an authentication
        failure, with the gateway as the peer."""
        key = (certificate.serial_number, refusal)
        now = time.monotonic()
        last = self._last_refusal
        if last is not None and last[0] == key and now - last[1] < REFUSAL_REPEAT_S:
            return  # every reconnect is refused alike: one event a minute is enough
        self._last_refusal = (key, now)
        host, _, port = target.rpartition(":")
        identity = ""
        with contextlib.suppress(IdentityError):
            identity = identity_from_certificate(certificate.public_bytes(serialization.Encoding.PEM))
        peer = ocsf.Peer(identity, "gateway", host.strip("[]"), int(port) if port.isdigit() else 0)
        self._security.emit(
            ocsf.authentication_failure(
                time_ms=int(time.time() * 1000),
                peer=peer,
                subject=certificate.subject.rfc4514_string(),
                issuer=certificate.issuer.rfc4514_string(),
                serial=format(certificate.serial_number, "x"),
                reason=f"gateway certificate refused: {refusal}",
            )
        )

    def _expiry(self, listener: str, material: TrustSet) -> None:
        self._metrics.certificate_expiry.labels(listener=listener).set(
            material.leaf.not_valid_after_utc.timestamp()
        )

    def _condition(self, status: bool, reason: str, message: str) -> None:
        # The reloaders call back from plain functions: the store work runs
        # as a task, its check and write as one call on the store's thread,
        # so conditions land in the order they were reported.
        task = asyncio.ensure_future(self._record_condition(status, reason, message))
        self._notify.add(task)
        task.add_done_callback(self._notify.discard)

    async def _record_condition(self, status: bool, reason: str, message: str) -> None:
        def record() -> bool:
            last = self._store.sync.last_coordinator_event(CONDITION)
            if (last.status if last is not None else True) == status:
                return False
            self._store.sync.append_coordinator_event(Event(CONDITION, status, reason, message))
            return True

        if await self._store.run(record):
            await self._events.notify()

    async def settled(self) -> None:
        """Wait until every condition reported so far is in the store."""
        await asyncio.gather(*self._notify)


def start_trust_reloads(reloaders: Sequence[TrustReloader], interval_s: float) -> list[asyncio.Task[None]]:
    """Poll every reloader; SIGHUP reloads them all at once."""
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        log.info("SIGHUP: reloading certificates, keys, CA bundles and CRLs")
        for reloader in reloaders:
            reloader.request()

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    return [asyncio.ensure_future(r.run(interval_s)) for r in reloaders]
