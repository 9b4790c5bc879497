"""Security events in the shape of OCSF 1.1.0 (https://schema.ocsf.io/1.1.0).

Pure builders: each returns one event as a plain dict, ready for one JSON
line. Three classes cover what the coordinator has to say:

- 6003 API Activity (category 6, Application Activity): attachments created
  (Attach, activity 1 Create) and removed (Detach or a rollback, 4 Delete),
  and RPCs refused for authorization (PERMISSION_DENIED) or for a lease
  generation that is stale or was never issued;
- 3002 Authentication (category 3, Identity & Access Management), activity
  1 Logon with status Failure: a client certificate the CA accepted but that
  carries no usable identity (UNAUTHENTICATED);
- 2003 Compliance Finding (category 2, Findings), activity 1 Create: the
  outcome of enforcing an attachment's NetworkScope (Pass = applied and
  verified, Warning = stale or withdrawn, Fail = degraded), and certificate
  or CRL reloads that failed (Fail).

``type_uid`` is always ``class_uid * 100 + activity_id``. Fields OCSF has no
attribute for (lease generations, the store's event seq) go in ``unmapped``.

Every field that can carry what a caller sent (identities, certificate
names, ids, messages quoting a request) is cut to ``bounded.ECHO_LIMIT``
(ids) or ``bounded.DETAIL_LIMIT`` (messages, identities) characters.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from typing import Any

from coordinator import __version__
from coordinator.bounded import DETAIL_LIMIT, bounded

OCSF_VERSION = "1.1.0"
PRODUCT = "bluefield-coordinator"
SERVICE = "bluefield.coordinator.v1.Coordinator"

Event = dict[str, Any]


class Severity(enum.IntEnum):
    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4


class Status(enum.IntEnum):
    SUCCESS = 1
    FAILURE = 2


class ApiActivity(enum.IntEnum):
    CREATE = 1
    READ = 2
    UPDATE = 3
    DELETE = 4


class Compliance(enum.IntEnum):
    PASS = 1
    WARNING = 2
    FAIL = 3


API_ACTIVITY = 6003
AUTHENTICATION = 3002
COMPLIANCE_FINDING = 2003

_CLASSES = {
    API_ACTIVITY: ("API Activity", 6, "Application Activity"),
    AUTHENTICATION: ("Authentication", 3, "Identity & Access Management"),
    COMPLIANCE_FINDING: ("Compliance Finding", 2, "Findings"),
}
_ACTIVITY_NAMES = {
    API_ACTIVITY: {1: "Create", 2: "Read", 3: "Update", 4: "Delete"},
    AUTHENTICATION: {1: "Logon"},
    COMPLIANCE_FINDING: {1: "Create"},
}

# What each RPC does to the attachment table, as API Activity's CRUD verb.
RPC_ACTIVITY = {
    "Attach": ApiActivity.CREATE,
    "Detach": ApiActivity.DELETE,
    "Reconcile": ApiActivity.UPDATE,
}


@dataclass(frozen=True)
class Peer:
    """Who called: certificate identity ("" if none could be read), the role
    it maps to ("" if none) and the network address of the connection."""

    identity: str
    role: str = ""
    ip: str = ""
    port: int = 0


def _base(class_uid: int, activity_id: int, severity: Severity, time_ms: int, message: str) -> Event:
    class_name, category_uid, category_name = _CLASSES[class_uid]
    activity_name = _ACTIVITY_NAMES[class_uid][activity_id]
    return {
        "time": time_ms,
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity_name}",
        "severity_id": int(severity),
        "severity": severity.name.capitalize(),
        "message": bounded(message, DETAIL_LIMIT),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": __version__},
            "log_name": "security",
        },
        # The DPU the coordinator runs on: a fleet's SIEM sees many of them.
        "device": {"hostname": socket.gethostname(), "type_id": 99, "type": "DPU"},
    }


def _status(event: Event, status: Status, code: str = "", detail: str = "") -> None:
    event["status_id"] = int(status)
    event["status"] = status.name.capitalize()
    if code:
        event["status_code"] = code
    if detail:
        event["status_detail"] = bounded(detail, DETAIL_LIMIT)


def _user(identity: str) -> dict[str, Any]:
    name = bounded(identity, DETAIL_LIMIT) or "unknown"
    return {"uid": name, "name": name}


def _actor(identity: str, role: str) -> dict[str, Any]:
    user = _user(identity)
    if role:
        # OCSF user types: 1 User, 2 Admin; a host extension is a user of the API.
        user["type_id"] = 2 if role == "admin" else 1
        user["type"] = "Admin" if role == "admin" else "User"
        user["groups"] = [{"name": role}]
    return {"user": user}


def _attachment_resource(attachment_id: str, sandbox_id: str = "", owner: str = "") -> dict[str, Any]:
    resource: dict[str, Any] = {"uid": bounded(attachment_id), "type": "attachment"}
    if sandbox_id:
        resource["labels"] = [f"sandbox_id={bounded(sandbox_id)}"]
    if owner:
        resource["owner"] = _user(owner)
    return resource


def _src_endpoint(peer: Peer) -> dict[str, Any]:
    endpoint: dict[str, Any] = {}
    if peer.ip:
        endpoint["ip"] = peer.ip
    if peer.port:
        endpoint["port"] = peer.port
    return endpoint


def api_activity(
    *,
    time_ms: int,
    operation: str,
    activity: ApiActivity,
    status: Status,
    actor: Peer,
    severity: Severity,
    message: str,
    response_code: int = 0,
    response_error: str = "",
    response_message: str = "",
    attachment_id: str = "",
    sandbox_id: str = "",
    owner: str = "",
    unmapped: dict[str, Any] | None = None,
) -> Event:
    """One call of the Coordinator API (6003), successful or refused."""
    event = _base(API_ACTIVITY, int(activity), severity, time_ms, message)
    _status(event, status, response_error, response_message)
    event["actor"] = _actor(actor.identity, actor.role)
    event["src_endpoint"] = _src_endpoint(actor)
    response: dict[str, Any] = {"code": response_code}
    if response_error:
        response["error"] = response_error
    if response_message:
        response["message"] = bounded(response_message, DETAIL_LIMIT)
    event["api"] = {"operation": operation, "service": {"name": SERVICE}, "response": response}
    if attachment_id:
        event["resources"] = [_attachment_resource(attachment_id, sandbox_id, owner)]
    if unmapped:
        event["unmapped"] = unmapped
    return event


def events_suppressed(*, time_ms: int, identity: str, count: int, since_ms: int, rule: str) -> Event:
    """``count`` refused-call events of one identity not written, from
    ``since_ms`` on, by the security event file's rate limit (``rule``)."""
    event = _base(
        API_ACTIVITY,
        int(ApiActivity.READ),
        Severity.MEDIUM,
        time_ms,
        f"suppressed {count} events of {bounded(identity, DETAIL_LIMIT) or 'unknown'} ({rule})",
    )
    _status(event, Status.FAILURE, "RATE_LIMITED")
    event["actor"] = _actor(identity, "")
    event["api"] = {"operation": "", "service": {"name": SERVICE}, "response": {"code": 0}}
    event["unmapped"] = {"suppressed": count, "suppressed_since": since_ms}
    return event


def authentication_failure(
    *, time_ms: int, peer: Peer, subject: str, issuer: str, serial: str, reason: str
) -> Event:
    """A certificate from a trusted CA refused after the handshake (3002
    Logon, Failure): it names no identity, it or its chain is revoked, its
    CA left the bundle, or (the gateway's) it fails the gateway client's
    check. Refusals inside the TLS handshake (unknown CA, expired) never
    reach the application and cannot be reported."""
    event = _base(AUTHENTICATION, 1, Severity.MEDIUM, time_ms, f"authentication failed: {reason}")
    _status(event, Status.FAILURE, "UNAUTHENTICATED", reason)
    event["auth_protocol_id"] = 99
    event["auth_protocol"] = "mTLS"
    event["user"] = _user(peer.identity)
    event["src_endpoint"] = _src_endpoint(peer)
    event["service"] = {"name": SERVICE}
    if subject or issuer or serial:
        event["certificate"] = {
            "subject": bounded(subject, DETAIL_LIMIT),
            "issuer": bounded(issuer, DETAIL_LIMIT),
            "serial_number": bounded(serial),
        }
    return event


def compliance_finding(
    *,
    time_ms: int,
    finding_uid: str,
    title: str,
    control: str,
    result: Compliance,
    severity: Severity,
    reason: str,
    message: str,
    resources: list[dict[str, Any]],
    unmapped: dict[str, Any] | None = None,
) -> Event:
    """The outcome of one check of what the coordinator enforces or trusts (2003)."""
    event = _base(COMPLIANCE_FINDING, 1, severity, time_ms, f"{title}: {message}" if message else title)
    event["finding_info"] = {"uid": finding_uid, "title": title, "types": [control]}
    event["compliance"] = {
        "standards": ["bluefield-coordinator"],
        "control": control,
        "status_id": int(result),
        "status": result.name.capitalize(),
        "status_code": reason,
        "status_detail": message,
    }
    event["resources"] = resources
    if unmapped:
        event["unmapped"] = unmapped
    return event


def attachment_resource(attachment_id: str, sandbox_id: str, owner: str) -> dict[str, Any]:
    return _attachment_resource(attachment_id, sandbox_id, owner)
