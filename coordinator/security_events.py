"""Security-relevant events as OCSF JSON lines (``[logs] security_events_path``).

Three sources feed one file:

- the store's event log, followed like a WatchAttachmentEvents stream:
  attachments bound and removed, policy applied / stale / degraded /
  withdrawn (``event_from_store``);
- the gRPC interceptor in ``api/security_interceptor``: refused RPCs and
  Detach calls refused by the lease fence;
- ``SecurityEvents.certificate_problem``, for whoever reloads certificates
  and CRLs to report a reload that failed.

The follower resumes after the last store event already in the file, so a
restart neither repeats nor skips lines; a new (rotated) file starts over
from the oldest event the store still keeps, and duplicates across files
carry the same ``metadata.uid``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from coordinator import ocsf
from coordinator.api.security_interceptor import SecurityEventInterceptor
from coordinator.config import Config
from coordinator.event_kinds import EventKind
from coordinator.events import EventHub
from coordinator.security_log import SecurityEventLog
from coordinator.store.records import EventRecord
from coordinator.store.worker import AsyncStore

log = logging.getLogger(__name__)

# The daemon itself, as the actor of changes no RPC asked for.
SELF = ocsf.Peer(ocsf.PRODUCT)
# Watch streams poll this often even without a wake-up (as the servicer does).
_POLL_S = 5.0

# Conditions that report on what is enforced or trusted → (compliance
# result, severity, finding title). Each event is one check's outcome.
_FINDINGS = {
    (EventKind.POLICY_APPLIED, True): (ocsf.Compliance.PASS, ocsf.Severity.INFORMATIONAL, "policy applied"),
    (EventKind.POLICY_APPLIED, False): (ocsf.Compliance.WARNING, ocsf.Severity.LOW, "policy withdrawn"),
    (EventKind.POLICY_STALE, True): (ocsf.Compliance.WARNING, ocsf.Severity.MEDIUM, "policy stale"),
    (EventKind.POLICY_STALE, False): (ocsf.Compliance.PASS, ocsf.Severity.INFORMATIONAL, "policy fresh"),
    (EventKind.POLICY_DEGRADED, True): (ocsf.Compliance.FAIL, ocsf.Severity.MEDIUM, "policy degraded"),
    (EventKind.POLICY_DEGRADED, False): (
        ocsf.Compliance.PASS,
        ocsf.Severity.INFORMATIONAL,
        "policy recovered",
    ),
    # Drift: status False = the switch or eswitch no longer holds what the
    # store says (and could not be repaired), True = back in place.
    (EventKind.ATTACHMENT_DRIFT, False): (ocsf.Compliance.FAIL, ocsf.Severity.MEDIUM, "attachment drift"),
    (EventKind.ATTACHMENT_DRIFT, True): (
        ocsf.Compliance.PASS,
        ocsf.Severity.INFORMATIONAL,
        "attachment drift resolved",
    ),
    # A required health check failing includes the bridge losing fail_mode=secure.
    (EventKind.COORDINATOR_HEALTHY, False): (
        ocsf.Compliance.FAIL,
        ocsf.Severity.MEDIUM,
        "coordinator unhealthy",
    ),
    (EventKind.COORDINATOR_HEALTHY, True): (
        ocsf.Compliance.PASS,
        ocsf.Severity.INFORMATIONAL,
        "coordinator healthy",
    ),
    (EventKind.FIRMWARE_DEGRADED, True): (ocsf.Compliance.WARNING, ocsf.Severity.LOW, "firmware degraded"),
    (EventKind.FIRMWARE_DEGRADED, False): (ocsf.Compliance.PASS, ocsf.Severity.INFORMATIONAL, "firmware ok"),
}


def event_from_store(record: EventRecord) -> ocsf.Event | None:
    """The OCSF event for one store event, or None for conditions that are
    not security relevant (``DpuAttachInProgress``, health conditions)."""
    time_ms = int(record.time * 1000)
    if record.type == EventKind.ATTACHMENT_BOUND:
        event = _attachment_event(record, time_ms)
    elif record.type == EventKind.LEASE_TAKEN_OVER:
        event = ocsf.api_activity(
            time_ms=time_ms,
            operation="Reconcile",
            activity=ocsf.ApiActivity.UPDATE,
            status=ocsf.Status.SUCCESS,
            actor=ocsf.Peer(record.owner),
            # Older generations are fenced off from now on; worth a look if unexpected.
            severity=ocsf.Severity.LOW,
            message=f"lease of attachment {record.attachment_id} taken over: {record.message}",
            response_message=record.message,
            attachment_id=record.attachment_id,
            sandbox_id=record.sandbox_id,
            owner=record.owner,
        )
    elif (record.type, record.status) in _FINDINGS:
        result, severity, title = _FINDINGS[(record.type, record.status)]
        subject = record.attachment_id or "coordinator"
        resource = (
            ocsf.attachment_resource(record.attachment_id, record.sandbox_id, record.owner)
            if record.attachment_id
            else {"uid": "coordinator", "type": "coordinator"}
        )
        event = ocsf.compliance_finding(
            time_ms=time_ms,
            finding_uid=f"{subject}/{record.type}",
            title=title,
            control=str(record.type),
            result=result,
            severity=severity,
            reason=record.reason,
            message=record.message,
            resources=[resource],
        )
    else:
        return None
    event["metadata"]["uid"] = f"event-{record.seq}"
    event["metadata"]["sequence"] = record.seq
    return event


def _attachment_event(record: EventRecord, time_ms: int) -> ocsf.Event:
    owner = ocsf.Peer(record.owner)
    common: dict[str, Any] = {
        "time_ms": time_ms,
        "response_message": record.message,
        "attachment_id": record.attachment_id,
        "sandbox_id": record.sandbox_id,
        "owner": record.owner,
    }
    if record.status:
        return ocsf.api_activity(
            operation="Attach",
            activity=ocsf.ApiActivity.CREATE,
            status=ocsf.Status.SUCCESS,
            actor=owner,
            severity=ocsf.Severity.INFORMATIONAL,
            message=f"attachment {record.attachment_id} of sandbox {record.sandbox_id} bound",
            **common,
        )
    if record.reason == "AttachFailed":
        return ocsf.api_activity(
            operation="Attach",
            activity=ocsf.ApiActivity.CREATE,
            status=ocsf.Status.FAILURE,
            actor=owner,
            severity=ocsf.Severity.LOW,
            message=f"attach of sandbox {record.sandbox_id} failed and was rolled back",
            response_error=record.reason,
            **common,
        )
    if record.reason == "Detached":
        # The service records who detached (a host, or an admin for it).
        return ocsf.api_activity(
            operation="Detach",
            activity=ocsf.ApiActivity.DELETE,
            status=ocsf.Status.SUCCESS,
            actor=ocsf.Peer(record.actor or record.owner),
            severity=ocsf.Severity.INFORMATIONAL,
            message=f"attachment {record.attachment_id} of sandbox {record.sandbox_id} detached",
            **common,
        )
    # Removed by the daemon itself: an interrupted attach rolled back at
    # start-up, an orphan released by reconciliation.
    return ocsf.api_activity(
        operation=record.reason or "Remove",
        activity=ocsf.ApiActivity.DELETE,
        status=ocsf.Status.SUCCESS,
        actor=SELF,
        severity=ocsf.Severity.LOW,
        message=f"attachment {record.attachment_id} of sandbox {record.sandbox_id} removed ({record.reason})",
        response_error=record.reason,
        **common,
    )


async def follow_store(
    store: AsyncStore, events: EventHub, emit: Callable[[ocsf.Event], None], since_seq: int
) -> None:
    """Emit every store event after ``since_seq``, then each new one as the
    service records it, until the hub closes."""
    seq = since_seq
    if seq > await store.last_event_seq():
        # A store younger than the file (recreated): its seqs start again.
        seq = 0
    while not events.closed:
        batch = await store.events_since(seq)
        for record in batch:
            event = event_from_store(record)
            if event is not None:
                emit(event)
            seq = record.seq
        if not batch:
            await events.wait(timeout=_POLL_S)


@dataclass
class SecurityEvents:
    """What the daemon runs for security events; inert when they are off."""

    sink: SecurityEventLog | None = None
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    clock: Callable[[], float] = time.time

    def emit(self, event: ocsf.Event) -> None:
        if self.sink is not None:
            self.sink.write(event)

    def certificate_problem(self, what: str, path: str, error: str) -> None:
        """A certificate, key, CA bundle or CRL reload failed; the listener
        keeps its previous credentials (so, e.g., newly revoked client
        certificates may still be accepted). ``what``: the config key."""
        log.error("%s reload failed: %s", what, error, extra={"path": path})
        self.emit(
            ocsf.compliance_finding(
                time_ms=int(self.clock() * 1000),
                finding_uid=f"certificate/{what}",
                title="certificate reload failed",
                control="CertificateReload",
                result=ocsf.Compliance.FAIL,
                severity=ocsf.Severity.HIGH,
                reason="ReloadFailed",
                message=f"{what} ({path}): {error}",
                resources=[{"uid": path, "type": "certificate", "name": what}],
            )
        )

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for interceptor in self.interceptors:
            if isinstance(interceptor, SecurityEventInterceptor):
                interceptor.flush()
        if self.sink is not None:
            self.sink.close()


def start_security_events(config: Config, store: AsyncStore, events: EventHub) -> SecurityEvents:
    """Open the security event file, start following the store and return
    the interceptor to install on the gRPC server. With
    ``logs.security_events_path = ""`` nothing runs and nothing is written.
    Raises ``SecurityLogError`` naming the key if the file cannot be opened."""
    path = config.logs.security_events_path
    if not path:
        return SecurityEvents()
    sink = SecurityEventLog(Path(path))
    security = SecurityEvents(sink)
    resume = sink.last_sequence()
    security.interceptors.append(SecurityEventInterceptor(security.emit, config.auth))
    security.tasks.append(asyncio.ensure_future(follow_store(store, events, security.emit, resume)))
    log.info("security events", extra={"path": path, "since_seq": resume})
    return security
