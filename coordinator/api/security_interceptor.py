"""Security events for refused RPCs: authorization (PERMISSION_DENIED),
authentication (UNAUTHENTICATED) and Detach calls refused by the lease fence.

An interceptor rather than code in the servicer: every RPC, present and
future, is covered by its final status code, whatever path produced it.
Successful attaches and detaches are not reported here; they come from the
store's event log (``security_events``), which also sees those that happen
without an RPC (start-up rollbacks, reconciliation).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509

from coordinator import ocsf
from coordinator.api import front
from coordinator.api.authorize import Received
from coordinator.api.handlers import on_call_end
from coordinator.certs import IdentityError, identity_from_certificate
from coordinator.config import AuthConfig
from coordinator.security_rate import IdentityRateLimit

log = logging.getLogger(__name__)

Emit = Callable[[ocsf.Event], None]
Context = grpc.aio.ServicerContext[Any, Any]

# The servicer's messages for the two lease-fence refusals (service.detach).
_LEASE_REFUSALS = (("stale lease generation", "stale"), ("was never issued", "never-issued"))


class SecurityEventInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        emit: Emit,
        auth: AuthConfig,
        clock: Callable[[], float] = time.time,
        limit: IdentityRateLimit | None = None,
    ) -> None:
        self._emit = emit
        self._roles = {i: "admin" for i in auth.admins} | {i: "host" for i in auth.hosts}
        self._clock = clock
        # Refused calls cost the caller nothing; what they write is limited.
        self._limit = limit if limit is not None else IdentityRateLimit(clock=clock)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return on_call_end(
            handler, lambda request, context, exc, seconds: self._after(method, request, context)
        )

    def _after(self, method: str, request: Any, context: Context) -> None:
        """Called once per RPC when the handler is done (returned or raised)."""
        try:
            code = _status_code(context.code())
        except (AttributeError, NotImplementedError):
            return
        if code is None or code not in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.FAILED_PRECONDITION,
        ):
            return
        try:
            event = self._event(method, request, context, code)
        except Exception:
            # A malformed peer or certificate must not break the RPC path.
            log.exception("building the security event for %s failed", method)
            return
        if event is not None:
            self._write(event)

    def _write(self, event: ocsf.Event) -> None:
        user = event.get("actor", {}).get("user") or event.get("user") or {}
        identity = str(user.get("uid", ""))
        admitted, suppressed = self._limit.admit(identity)
        if suppressed is not None:
            self._emit(self._suppressed(suppressed.identity, suppressed.count, suppressed.since))
        if admitted:
            self._emit(event)

    def _suppressed(self, identity: str, count: int, since: float) -> ocsf.Event:
        rule = f"at most {self._limit.burst} events, then one per {self._limit.refill_s:g} s"
        return ocsf.events_suppressed(
            time_ms=int(self._clock() * 1000),
            identity=identity,
            count=count,
            since_ms=int(since * 1000),
            rule=rule,
        )

    def flush(self) -> None:
        """Write the counts not yet reported (the daemon is stopping)."""
        for pending in self._limit.pending():
            self._emit(self._suppressed(pending.identity, pending.count, pending.since))

    def _event(self, method: str, request: Any, context: Context, code: grpc.StatusCode) -> ocsf.Event | None:
        if isinstance(request, Received):
            # Decoded after the call was refused, only to name what it was about.
            request = request.decode()
        details = context.details() or ""
        if isinstance(details, bytes):
            details = details.decode(errors="replace")
        peer, certificate = self._peer(context)
        now_ms = int(self._clock() * 1000)
        if code is grpc.StatusCode.UNAUTHENTICATED:
            subject, issuer, serial = _describe(certificate)
            return ocsf.authentication_failure(
                time_ms=now_ms, peer=peer, subject=subject, issuer=issuer, serial=serial, reason=details
            )
        if code is grpc.StatusCode.PERMISSION_DENIED:
            return ocsf.api_activity(
                time_ms=now_ms,
                operation=method,
                activity=ocsf.RPC_ACTIVITY.get(method, ocsf.ApiActivity.READ),
                status=ocsf.Status.FAILURE,
                actor=peer,
                severity=ocsf.Severity.MEDIUM,
                message=f"{method} refused: permission denied",
                response_code=code.value[0],
                response_error=code.name,
                response_message=details,
                attachment_id=str(getattr(request, "attachment_id", "") or ""),
            )
        refusal = next((kind for text, kind in _LEASE_REFUSALS if text in details), None)
        if method != "Detach" or refusal is None:
            return None  # other failed preconditions (health checks) are not security events
        return ocsf.api_activity(
            time_ms=now_ms,
            operation=method,
            activity=ocsf.ApiActivity.DELETE,
            status=ocsf.Status.FAILURE,
            actor=peer,
            # A superseded host instance still acting is what fencing exists for.
            severity=ocsf.Severity.MEDIUM,
            message=f"Detach refused: lease generation {refusal}",
            response_code=code.value[0],
            response_error=code.name,
            response_message=details,
            attachment_id=str(getattr(request, "attachment_id", "") or ""),
            unmapped={
                "lease_generation": int(getattr(request, "lease_generation", 0)),
                "lease_refusal": refusal,
            },
        )

    def _peer(self, context: Context) -> tuple[ocsf.Peer, x509.Certificate | None]:
        auth = dict(context.auth_context())
        pems = list(auth.get("x509_pem_cert") or [])
        identity, certificate = "", None
        if pems:
            try:
                identity = identity_from_certificate(pems[0])
            except IdentityError:
                identity = ""
            try:
                certificate = x509.load_pem_x509_certificate(pems[0])
            except ValueError:
                certificate = None
        ip, port = parse_peer(front.outer_peer(context.peer() or ""))
        return ocsf.Peer(identity, self._roles.get(identity, ""), ip, port), certificate


def _status_code(raw: Any) -> grpc.StatusCode | None:
    if raw is None or isinstance(raw, grpc.StatusCode):
        return raw
    # Some grpc versions hand back the numeric code.
    return next((c for c in grpc.StatusCode if c.value[0] == raw), None)


def parse_peer(peer: str) -> tuple[str, int]:
    """gRPC peer strings (``ipv4:198.51.100.7:50123``, ``ipv6:[2001:db8::7]:50123``)
    → (ip, port); ("", 0) for anything else (unix sockets)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return "", 0
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "", 0
    return host, int(port) if port.isdigit() else 0


def _describe(certificate: x509.Certificate | None) -> tuple[str, str, str]:
    if certificate is None:
        return "", "", ""
    return (
        certificate.subject.rfc4514_string(),
        certificate.issuer.rfc4514_string(),
        format(certificate.serial_number, "x"),
    )
