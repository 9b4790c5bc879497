"""Hostile callers against the real server: who may call is decided before
the request is read, undecodable or out-of-range requests are
INVALID_ARGUMENT naming the field, identifiers are whole-string matches, and
nothing a caller sends is echoed or written unbounded."""

from __future__ import annotations

import uuid

import grpc
import pytest

from coordinator import faults
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.bounded import DETAIL_LIMIT
from coordinator.callers import Caller, Role
from coordinator.errors import AlreadyExists, NotFound
from coordinator.security_rate import BURST
from coordinator.service import AttachParams
from tests.integration.api_served import METHODS, OTHER_HOST, Served

pytestmark = pytest.mark.ovs

BRIDGE = "br-hostile"
MEGABYTE = "x" * 1_000_000
U64_MAX = 2**64 - 1
# A field 1 (string) whose bytes are not UTF-8; random bytes that are no message.
BAD_UTF8 = b"\x0a\x02\xc3\x28"
NOT_A_MESSAGE = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
# Distinct refused or replayed calls that must leave no per-sandbox state.
CALLS = 50_000


async def test_authorization_comes_before_the_request_is_read(served: Served) -> None:
    stranger, host = served.callers["stranger"], served.callers["host"]
    for method in METHODS:
        for body in (b"", BAD_UTF8, NOT_A_MESSAGE):
            code, details = await stranger.call(method, body)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, body, details)
    # An incomplete request to an admin-only RPC tells a host nothing about its input rules.
    code, details = await host.message("ExplainPacket", pb.ExplainPacketRequest())
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert "attachment_id" not in details


async def test_undecodable_requests_are_invalid_argument(served: Served) -> None:
    for role, methods in (("host", set(METHODS) - {"ExplainPacket"}), ("admin", set(METHODS) - {"Attach"})):
        for method in sorted(methods):
            for body in (BAD_UTF8, NOT_A_MESSAGE) if _first_field_is_a_string(method) else (NOT_A_MESSAGE,):
                code, details = await served.callers[role].call(method, body)
                assert (code, details) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "request could not be decoded",
                ), (
                    role,
                    method,
                    body,
                )
    assert not served.stack.store.list_attachments()


def _first_field_is_a_string(method: str) -> bool:
    field = METHODS[method].input_type.fields_by_number.get(1)
    return field is not None and field.type == field.TYPE_STRING


async def test_identifiers_are_whole_string_matches(served: Served) -> None:
    host = served.callers["host"]
    for bad in ("sb\n", "sb\x00x", "sb\x1b[31m", "sb é", "s" * 129, " sb", "sb/../\t"):
        request = pb.AttachRequest(sandbox_id=bad, host_instance_id="hi-1", request_id=f"r-{uuid.uuid4()}")
        code, details = await host.message("Attach", request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("sandbox_id:"), (bad, details)
        for field in ("sandbox_id", "host_instance_id"):
            code, details = await host.message("ListAttachments", pb.ListAttachmentsRequest(**{field: bad}))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:"), (
                bad,
                details,
            )
    for field in ("host_instance_id", "request_id", "network_class"):
        fields = {"sandbox_id": "sb-1", "host_instance_id": "hi-1", "request_id": "r-1", field: "bad\n"}
        code, details = await host.message("Attach", pb.AttachRequest(**fields))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:"), details
    assert not served.stack.store.list_attachments()


async def test_integers_are_range_checked_naming_the_field(served: Served) -> None:
    host, admin = served.callers["host"], served.callers["admin"]
    cases = [
        (host, "WatchAttachmentEvents", pb.WatchAttachmentEventsRequest(since_seq=U64_MAX), "since_seq"),
        (host, "Detach", pb.DetachRequest(attachment_id="a-1", lease_generation=U64_MAX), "lease_generation"),
        (
            host,
            "Reconcile",
            pb.ReconcileRequest(
                host_instance_id="hi-1",
                known=[pb.KnownAttachment(attachment_id="a-1", lease_generation=2**63)],
            ),
            "known[0].lease_generation",
        ),
        (
            host,
            "Attach",
            pb.AttachRequest(
                sandbox_id="sb-1",
                host_instance_id="hi-1",
                request_id="r-1",
                initial_policy_timeout_ms=2**32 - 1,
            ),
            "initial_policy_timeout_ms",
        ),
        (
            admin,
            "ExplainPacket",
            pb.ExplainPacketRequest(
                attachment_id="a-1",
                direction=pb.DIRECTION_EGRESS,
                protocol=policy_pb2.PROTOCOL_TCP,
                src_ip="198.51.100.10",
                dst_ip="203.0.113.5",
                dst_port=2**32 - 1,
            ),
            "dst_port",
        ),
    ]
    for caller, method, request, field in cases:
        code, details = await caller.message(method, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:"), (method, details)
    assert not served.stack.store.list_attachments()


async def test_echoes_are_bounded(served: Served) -> None:
    admin, stranger = served.callers["admin"], served.callers["stranger"]
    request = pb.ExplainPacketRequest(
        attachment_id="a-1",
        direction=pb.DIRECTION_EGRESS,
        protocol=policy_pb2.PROTOCOL_TCP,
        src_ip=MEGABYTE,
        dst_ip="203.0.113.5",
    )
    code, details = await admin.message("ExplainPacket", request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("src_ip:")
    assert len(details) <= DETAIL_LIMIT and "[truncated]" in details
    code, details = await admin.message("ExplainPacket", pb.ExplainPacketRequest(attachment_id=MEGABYTE))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) <= DETAIL_LIMIT

    # Refused calls with a megabyte id each: a few kilobytes of security events at most.
    for _ in range(3):
        code, _ = await stranger.message("GetAttachment", pb.GetAttachmentRequest(attachment_id=MEGABYTE))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    assert served.security_log.stat().st_size < 3 * 4096
    # A flood of refused calls from one identity: a burst, then nothing more.
    for _ in range(3 * BURST):
        await stranger.message("ListAttachments", pb.ListAttachmentsRequest())
    refused = [e for e in served.security_lines() if e["actor"]["user"]["uid"].endswith("/stranger")]
    assert len(refused) == BURST


async def test_refused_and_replayed_calls_leave_no_locks_behind(served: Served) -> None:
    service = served.stack.service
    host = Caller(served.pki.host_identity, Role.HOST)

    def params(sandbox_id: str, request_id: str = "r-keep") -> AttachParams:
        return AttachParams(sandbox_id, "hi-1", request_id, None, "", "BASELINE")

    kept = await service.attach(host, params("sb-keep"))
    for i in range(CALLS):
        if i % 3 == 0:
            assert (await service.attach(host, params("sb-keep"))).attachment_id == kept.attachment_id
        elif i % 3 == 1:
            with pytest.raises(AlreadyExists):  # the request id, reused for another sandbox
                await service.attach(host, params(f"sb-{i}"))
        else:
            with pytest.raises(NotFound):
                await service.detach(host, f"no-such-{i}", 1)
    # Locks exist only while held or awaited: none now, one attachment kept.
    assert len(service._locks) == 0
    assert [r.attachment_id for r in served.stack.store.list_attachments()] == [kept.attachment_id]


async def test_an_exception_that_escapes_is_internal_without_its_text(served: Served) -> None:
    faults.enable("attach.port_added", "raise")
    try:
        request = pb.AttachRequest(sandbox_id="sb-boom", host_instance_id="hi-1", request_id="r-boom")
        code, details = await served.callers["host"].message("Attach", request)
    finally:
        faults.disable_all()
    assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error")
    assert not served.stack.store.list_attachments()  # rolled back


async def test_a_sandbox_attached_by_one_host_is_refused_to_another(served: Served) -> None:
    """Whoever attaches a sandbox's device gets that sandbox's policy: while
    one host identity has it attached, no other host identity may."""
    host, other = served.callers["host"], served.callers["other_host"]

    def attach(sandbox: str) -> pb.AttachRequest:
        return pb.AttachRequest(sandbox_id=sandbox, host_instance_id="hi-1", request_id=f"r-{uuid.uuid4()}")

    code, _ = await host.message("Attach", attach("sb-owned"))
    assert code == grpc.StatusCode.OK
    code, details = await other.message("Attach", attach("sb-owned"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and details.startswith("sandbox_id:"), details
    assert "host/" not in details  # the other identity is not told whose it is
    [record] = served.stack.store.list_attachments(sandbox_id="sb-owned")
    assert record.owner == served.pki.host_identity
    code, _ = await host.message("Detach", pb.DetachRequest(attachment_id=record.attachment_id,
                                                             lease_generation=record.lease_generation))  # fmt: skip
    assert code == grpc.StatusCode.OK
    code, _ = await other.message("Attach", attach("sb-owned"))
    assert code == grpc.StatusCode.OK  # nobody's once detached
    [record] = served.stack.store.list_attachments(sandbox_id="sb-owned")
    assert record.owner == OTHER_HOST
