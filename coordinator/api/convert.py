"""Proto <-> domain. Requests are validated here, at the edge; every error
names the offending field."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.bounded import quoted
from coordinator.errors import InvalidArgument
from coordinator.eswitch.base import DeviceKind, EswitchDevice
from coordinator.health import HealthReport
from coordinator.host_reconcile import Known, ReconcileMode
from coordinator.identifiers import RULE, is_identifier
from coordinator.offload_status import OffloadSummary, OffloadView
from coordinator.policy.packet import (
    ETHERTYPE_ARP,
    ETHERTYPE_BY_VERSION,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_VLAN_ID,
    CtState,
    Direction,
    Packet,
)
from coordinator.policy.scope import IPAddress
from coordinator.service import AttachParams, Explanation, HostReconcileResult
from coordinator.store.records import AttachmentRecord, AttachmentState, EventRecord, PolicyState, PoolStats

T = TypeVar("T")

# The store keeps integers as SQLite's signed 64-bit INTEGER; uint64 fields
# above this are refused at the edge rather than overflowing there.
MAX_STORED_INT = 2**63 - 1
# initial_policy_timeout_ms: how long an Attach may wait for the gateway, at
# most what the config key policy.initial_policy_timeout_ms allows.
MAX_INITIAL_POLICY_TIMEOUT_MS = 3_600_000

_KIND_TO_PB = {DeviceKind.VF: pb.DEVICE_KIND_VF, DeviceKind.SF: pb.DEVICE_KIND_SF}
_KIND_FROM_PB = {
    pb.DEVICE_KIND_UNSPECIFIED: None,
    pb.DEVICE_KIND_VF: DeviceKind.VF,
    pb.DEVICE_KIND_SF: DeviceKind.SF,
}
_STATE_TO_PB = {
    AttachmentState.ATTACHING: pb.ATTACHMENT_STATE_ATTACHING,
    AttachmentState.BOUND: pb.ATTACHMENT_STATE_BOUND,
    AttachmentState.DETACHING: pb.ATTACHMENT_STATE_DETACHING,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}
_POLICY_TO_PB = {
    PolicyState.APPLIED: pb.POLICY_STATE_APPLIED,
    PolicyState.PENDING: pb.POLICY_STATE_PENDING,
    PolicyState.STALE: pb.POLICY_STATE_STALE,
    PolicyState.DEGRADED: pb.POLICY_STATE_DEGRADED,
    PolicyState.BASELINE: pb.POLICY_STATE_BASELINE,
}
_INITIAL_FROM_PB = {
    pb.INITIAL_POLICY_UNSPECIFIED: "",
    pb.INITIAL_POLICY_WAIT_INITIAL: "WAIT_INITIAL",
    pb.INITIAL_POLICY_BASELINE: "BASELINE",
}


def require_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "required")
    if not is_identifier(value):
        raise InvalidArgument(field, f"must be {RULE}")
    return value


def optional_id(field: str, value: str) -> str:
    return require_id(field, value) if value else ""


def _enum(field: str, table: Mapping[Any, T], value: object) -> T:
    if value not in table:
        shown = quoted(value) if isinstance(value, str) else str(value)
        raise InvalidArgument(field, f"unknown value {shown}")
    return table[value]


def _generation(field: str, value: int) -> int:
    if value < 1 or value > MAX_STORED_INT:
        raise InvalidArgument(field, f"required, 1-{MAX_STORED_INT}: the generation Attach returned")
    return value


def since_seq(request: pb.WatchAttachmentEventsRequest) -> int:
    if request.since_seq > MAX_STORED_INT:
        raise InvalidArgument("since_seq", f"0-{MAX_STORED_INT}")
    return request.since_seq


def attach_params(request: pb.AttachRequest) -> AttachParams:
    kind = _enum("device_kind", _KIND_FROM_PB, request.device_kind)
    initial = _enum("initial_policy", _INITIAL_FROM_PB, request.initial_policy)
    if request.initial_policy_timeout_ms > MAX_INITIAL_POLICY_TIMEOUT_MS:
        raise InvalidArgument(
            "initial_policy_timeout_ms", f"0-{MAX_INITIAL_POLICY_TIMEOUT_MS} (0: the configured default)"
        )
    return AttachParams(
        sandbox_id=require_id("sandbox_id", request.sandbox_id),
        host_instance_id=require_id("host_instance_id", request.host_instance_id),
        request_id=require_id("request_id", request.request_id),
        kind=kind,
        network_class=optional_id("network_class", request.network_class),
        initial_policy=initial,
        initial_policy_timeout_ms=request.initial_policy_timeout_ms,
    )


def detach_args(request: pb.DetachRequest) -> tuple[str, int]:
    attachment_id = require_id("attachment_id", request.attachment_id)
    generation = _generation("lease_generation", request.lease_generation)
    optional_id("host_instance_id", request.host_instance_id)
    return attachment_id, generation


_MODE_FROM_PB = {
    pb.RECONCILE_MODE_UNSPECIFIED: ReconcileMode.ADVISORY,
    pb.RECONCILE_MODE_ADVISORY: ReconcileMode.ADVISORY,
    pb.RECONCILE_MODE_AUTHORITATIVE: ReconcileMode.AUTHORITATIVE,
}


def reconcile_args(request: pb.ReconcileRequest) -> tuple[str, ReconcileMode, list[Known]]:
    host_instance_id = require_id("host_instance_id", request.host_instance_id)
    mode = _enum("mode", _MODE_FROM_PB, request.mode)
    known = []
    for i, entry in enumerate(request.known):
        attachment_id = require_id(f"known[{i}].attachment_id", entry.attachment_id)
        generation = _generation(f"known[{i}].lease_generation", entry.lease_generation)
        sandbox_id = optional_id(f"known[{i}].sandbox_id", entry.sandbox_id)
        known.append(Known(attachment_id, generation, sandbox_id))
    return host_instance_id, mode, known


def _known_to_pb(entry: Known) -> pb.KnownAttachment:
    return pb.KnownAttachment(
        attachment_id=entry.attachment_id,
        lease_generation=entry.lease_generation,
        sandbox_id=entry.sandbox_id,
    )


def reconcile_to_pb(result: HostReconcileResult) -> pb.ReconcileResponse:
    return pb.ReconcileResponse(
        matched=[attachment_to_pb(r) for r in result.matched],
        coordinator_only=[attachment_to_pb(r) for r in result.coordinator_only],
        host_only=[_known_to_pb(k) for k in result.host_only],
        stale_generation=[_known_to_pb(k) for k in result.stale_generation],
        released=list(result.released),
    )


def list_filter_state(value: int) -> AttachmentState | None:
    if value == pb.ATTACHMENT_STATE_UNSPECIFIED:
        return None
    return _enum("state", _STATE_FROM_PB, value)


_DIRECTIONS = {pb.DIRECTION_EGRESS: Direction.EGRESS, pb.DIRECTION_INGRESS: Direction.INGRESS}
_PROTOCOLS = {
    policy_pb2.PROTOCOL_TCP: IPPROTO_TCP,
    policy_pb2.PROTOCOL_UDP: IPPROTO_UDP,
    policy_pb2.PROTOCOL_ICMP: IPPROTO_ICMP,
    policy_pb2.PROTOCOL_ICMPV6: IPPROTO_ICMPV6,
}
_CT_STATES = {"": CtState.NEW, **{s.value: s for s in CtState}, "established": CtState.ESTABLISHED,
              "related": CtState.RELATED, "invalid": CtState.INVALID}  # fmt: skip


def _address(field: str, value: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise InvalidArgument(field, f"not an IP address: {quoted(value)}") from exc


def explain_args(request: pb.ExplainPacketRequest) -> tuple[str, Packet]:
    attachment_id = require_id("attachment_id", request.attachment_id)
    direction = _enum("direction", _DIRECTIONS, request.direction)
    protocol = _enum("protocol", _PROTOCOLS, request.protocol)
    ct_state = _enum("ct_state", _CT_STATES, request.ct_state.strip().lower())
    src, dst = _address("src_ip", request.src_ip), _address("dst_ip", request.dst_ip)
    if src.version != dst.version:
        raise InvalidArgument("dst_ip", "must be of the same address family as src_ip")
    ported = protocol in (IPPROTO_TCP, IPPROTO_UDP)
    for field in ("src_port", "dst_port"):
        value = getattr(request, field)
        if value > 65535 or (value and not ported):
            raise InvalidArgument(field, "0-65535, and only for tcp or udp")
    for field in ("icmp_type", "icmp_code"):
        value = getattr(request, field)
        if value > 255 or (value and ported):
            raise InvalidArgument(field, "0-255, and only for icmp or icmpv6")
    vlan_id, ethertype = _framing(request, src.version)
    try:
        packet = Packet(
            direction=direction,
            protocol=protocol,
            src_ip=src,
            dst_ip=dst,
            src_port=request.src_port,
            dst_port=request.dst_port,
            icmp_type=request.icmp_type,
            icmp_code=request.icmp_code,
            ct_state=ct_state,
            vlan_id=vlan_id,
            ethertype=ethertype,
        )
    except ValueError as exc:
        raise InvalidArgument("protocol", str(exc)) from exc
    return attachment_id, packet


def _framing(request: pb.ExplainPacketRequest, version: int) -> tuple[int | None, int | None]:
    """The optional VLAN id and ethertype; an IP ethertype must be the
    addresses' family's (and then is the default, None)."""
    vlan_id = ethertype = None
    if request.HasField("vlan_id"):
        if request.vlan_id > MAX_VLAN_ID:
            raise InvalidArgument("vlan_id", f"0-{MAX_VLAN_ID} (0 is a priority tag)")
        vlan_id = request.vlan_id
    if request.HasField("ethertype"):
        value = request.ethertype
        if value > 0xFFFF or value == ETHERTYPE_ARP:
            raise InvalidArgument("ethertype", "0-0xffff, and not ARP (the NetworkScope does not decide ARP)")
        if value in ETHERTYPE_BY_VERSION.values() and value != ETHERTYPE_BY_VERSION[version]:
            raise InvalidArgument("ethertype", f"{value:#06x} does not carry IPv{version} addresses")
        if value != ETHERTYPE_BY_VERSION[version]:
            ethertype = value
    return vlan_id, ethertype


def explanation_to_pb(explanation: Explanation) -> pb.ExplainPacketResponse:
    verdict = explanation.verdict
    response = pb.ExplainPacketResponse(
        allowed=verdict.allowed,
        rule=verdict.rule,
        trace=explanation.trace,
        switch_agrees=explanation.switch_agrees,
    )
    if verdict.direction_rule_index is not None:
        response.rule_index = verdict.direction_rule_index
    return response


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def device_to_pb(device: EswitchDevice, mac: str) -> pb.Device:
    return pb.Device(
        kind=_KIND_TO_PB[device.kind],
        controller=device.controller,
        pf=device.pf,
        vf_index=device.number if device.kind is DeviceKind.VF else 0,
        sf_number=device.number if device.kind is DeviceKind.SF else 0,
        host_pci_address=device.host_pci_address,
        mac=mac,
        representor=device.representor,
    )


_OFFLOAD_TO_PB = {
    OffloadView.AVAILABLE: pb.OFFLOAD_STATE_AVAILABLE,
    OffloadView.UNAVAILABLE: pb.OFFLOAD_STATE_UNAVAILABLE,
    OffloadView.UNKNOWN: pb.OFFLOAD_STATE_UNKNOWN,
}


def offload_to_pb(summary: OffloadSummary | None) -> pb.OffloadStatus | None:
    if summary is None:
        return None
    counts = summary.counts
    return pb.OffloadStatus(
        state=_OFFLOAD_TO_PB[summary.state],
        offloaded=counts.offloaded,
        partially_offloaded=counts.partial,
        not_offloaded=counts.not_offloaded,
        detail=summary.detail,
    )


def attachment_to_pb(record: AttachmentRecord, *, offload: OffloadSummary | None = None) -> pb.Attachment:
    return pb.Attachment(
        attachment_id=record.attachment_id,
        sandbox_id=record.sandbox_id,
        host_instance_id=record.host_instance_id,
        lease_generation=record.lease_generation,
        device=device_to_pb(record.device, record.mac),
        network_class=record.network_class,
        policy=pb.PolicyStatus(
            version=record.policy_version,
            state=_POLICY_TO_PB[record.policy_state],
            applied_at=timestamp(record.policy_applied_at),
        ),
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
        state=_STATE_TO_PB[record.state],
        request_id=record.request_id,
        offload=offload_to_pb(offload),
    )


def event_to_pb(event: EventRecord) -> pb.AttachmentEvent:
    return pb.AttachmentEvent(
        seq=event.seq,
        attachment_id=event.attachment_id,
        sandbox_id=event.sandbox_id,
        condition=pb.Condition(
            type=event.type.value,
            status=event.status,
            reason=event.reason,
            message=event.message,
            last_transition=timestamp(event.time),
        ),
        time=timestamp(event.time),
    )


def health_to_pb(
    report: HealthReport,
    pools: list[PoolStats],
    backend: str,
    version: str,
    *,
    offload: OffloadSummary | None = None,
) -> pb.HealthResponse:
    return pb.HealthResponse(
        healthy=report.healthy,
        checks=[
            pb.HealthCheck(name=c.name, required=c.required, ok=c.ok, detail=c.detail) for c in report.checks
        ],
        pools=[pb.PoolCapacity(kind=_KIND_TO_PB[p.kind], total=p.total, free=p.free) for p in pools],
        backend=backend,
        version=version,
        offload=offload_to_pb(offload),
    )
