"""Human-readable text and JSON for `ctl` answers: pure functions from the
API's messages to lines, no I/O (``now`` is passed in for ages)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb

TRACE_INDENT = "    "


def to_json(message: Message) -> dict[str, Any]:
    """Proto field names (as in the requests), every field present, enums by name."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def json_line(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """``ATTACHMENT_STATE_BOUND`` → ``BOUND``; an unknown number stays a number."""
    try:
        name = str(enum.Name(value))
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def state_name(value: int) -> str:
    return enum_name(pb.AttachmentState, value, "ATTACHMENT_STATE_")


def policy_name(value: int) -> str:
    return enum_name(pb.PolicyState, value, "POLICY_STATE_")


def kind_name(value: int) -> str:
    return enum_name(pb.DeviceKind, value, "DEVICE_KIND_")


def table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "") -> list[str]:
    """Columns padded to their widest cell; the last column is not padded."""
    all_rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def age(ts: Timestamp, now: datetime.datetime) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    seconds = max(0, int((now - ts.ToDatetime(tzinfo=datetime.timezone.utc)).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def device_text(device: pb.Device) -> str:
    return f"{kind_name(device.kind)} {device.representor or '-'}"


def policy_text(policy: pb.PolicyStatus) -> str:
    return f"v{policy.version} {policy_name(policy.state)}"


def offload_text(offload: pb.OffloadStatus) -> str:
    state = enum_name(pb.OffloadState, offload.state, "OFFLOAD_STATE_").lower()
    text = (
        f"{state}: {offload.offloaded} offloaded, {offload.partially_offloaded} partially, "
        f"{offload.not_offloaded} in software"
    )
    return f"{text} ({offload.detail})" if offload.detail else text


# -- status -----------------------------------------------------------------------


def check_mark(check: pb.HealthCheck) -> str:
    if check.ok:
        return "ok"
    return "FAIL" if check.required else "warn"


def status_lines(
    target: str, health: pb.HealthResponse, attachments: Sequence[pb.Attachment], now: datetime.datetime
) -> list[str]:
    verdict = "healthy" if health.healthy else "UNHEALTHY"
    lines = [
        f"coordinator {target}: {verdict} (version {health.version}, backend {health.backend})",
        "checks:",
    ]
    lines += table(
        ("", "", ""),
        ((check_mark(c), c.name + ("" if c.required else " (optional)"), c.detail) for c in health.checks),
        indent="  ",
    )[1:]
    lines.append("pools:")
    lines += [f"  {kind_name(p.kind)}  {p.free} free of {p.total}" for p in health.pools]
    stream = next((c for c in health.checks if c.name == "policy_stream"), None)
    lines.append(f"stream: {stream.detail if stream is not None else 'no gateway configured'}")
    lines.append(f"offload: {offload_text(health.offload)}")
    lines.append(f"attachments: {attachment_summary(attachments)}")
    lines += (
        table(
            ("ID", "SANDBOX", "DEVICE", "STATE", "POLICY", "AGE"),
            (
                (
                    a.attachment_id,
                    a.sandbox_id,
                    device_text(a.device),
                    state_name(a.state),
                    policy_text(a.policy),
                    age(a.created_at, now),
                )
                for a in attachments
            ),
            indent="  ",
        )
        if attachments
        else []
    )
    return lines


def attachment_summary(attachments: Sequence[pb.Attachment]) -> str:
    if not attachments:
        return "none"
    states = _counts(state_name(a.state) for a in attachments)
    policies = _counts(policy_name(a.policy.state) for a in attachments)
    return f"{len(attachments)} ({states}; policy {policies})"


def _counts(names: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))


# -- attachments --------------------------------------------------------------------


def list_lines(attachments: Sequence[pb.Attachment], now: datetime.datetime) -> list[str]:
    return table(
        ("ID", "SANDBOX", "HOST INSTANCE", "GEN", "DEVICE", "STATE", "POLICY", "AGE"),
        (
            (
                a.attachment_id,
                a.sandbox_id,
                a.host_instance_id or "-",
                str(a.lease_generation),
                device_text(a.device),
                state_name(a.state),
                policy_text(a.policy),
                age(a.created_at, now),
            )
            for a in attachments
        ),
    )


def attachment_lines(a: pb.Attachment, now: datetime.datetime) -> list[str]:
    d = a.device
    number = f"vf {d.vf_index}" if d.kind == pb.DEVICE_KIND_VF else f"sf {d.sf_number}"
    device = f"{device_text(d)} (controller {d.controller}, pf {d.pf}, {number}, mac {d.mac or '-'}"
    device += f", host pci {d.host_pci_address})" if d.host_pci_address else ")"
    applied = f", applied {when(a.policy.applied_at)}" if a.policy.HasField("applied_at") else ""
    rows = [
        ("attachment", a.attachment_id),
        ("sandbox", a.sandbox_id),
        ("host instance", a.host_instance_id or "-"),
        ("generation", str(a.lease_generation)),
        ("state", state_name(a.state)),
        ("device", device),
        ("network class", a.network_class or "-"),
        ("policy", policy_text(a.policy) + applied),
        ("request id", a.request_id or "-"),
        ("created", f"{when(a.created_at)} ({age(a.created_at, now)} ago)"),
        ("updated", when(a.updated_at)),
    ]
    if a.HasField("offload"):
        rows.append(("offload", offload_text(a.offload)))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k + ':':<{width + 1}} {v}" for k, v in rows]
    if a.conditions:
        lines.append("conditions:")
        lines += table(
            ("", "", "", ""),
            ((c.type, str(c.status).lower(), c.reason, c.message) for c in a.conditions),
            indent="  ",
        )[1:]
    return lines


# -- events, explain, reconcile ------------------------------------------------------


def event_line(event: pb.AttachmentEvent) -> str:
    c = event.condition
    subject = event.attachment_id or "(coordinator)"
    text = f"{event.seq:>6}  {when(event.time)}  {subject}  {event.sandbox_id or '-'}  "
    text += f"{c.type}={str(c.status).lower()} {c.reason}"
    return f"{text}: {c.message}" if c.message else text


def explain_lines(answer: pb.ExplainPacketResponse) -> list[str]:
    verdict = "allowed" if answer.allowed else "denied"
    if answer.HasField("rule_index"):
        decided = f"rule {answer.rule!r} (#{answer.rule_index})"
    else:
        decided = answer.rule or "-"
    lines = [
        f"verdict: {verdict} by {decided}",
        f"switch agrees: {'yes' if answer.switch_agrees else 'NO (the installed flows differ from the policy)'}",
        "trace:",
    ]
    lines += [(TRACE_INDENT + line).rstrip() for line in answer.trace.splitlines()]
    return lines


def reconcile_lines(answer: pb.ReconcileResponse) -> list[str]:
    lines = [f"matched: {len(answer.matched)}"]
    lines += [f"  {a.attachment_id}  {a.sandbox_id}  generation {a.lease_generation}" for a in answer.matched]
    for name, known in (("stale_generation", answer.stale_generation), ("host_only", answer.host_only)):
        lines.append(f"{name}: {len(known)}")
        lines += [f"  {k.attachment_id}  {k.sandbox_id}  generation {k.lease_generation}" for k in known]
    lines.append(f"coordinator_only: {len(answer.coordinator_only)}")
    lines += [
        f"  {a.attachment_id}  {a.sandbox_id}  generation {a.lease_generation}"
        for a in answer.coordinator_only
    ]
    lines.append(f"released: {len(answer.released)}")
    lines += [f"  {attachment_id}" for attachment_id in answer.released]
    return lines
