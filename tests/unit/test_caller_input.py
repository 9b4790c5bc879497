"""Identifiers, bounded echoes and the security file's per-identity limit."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from coordinator import ocsf
from coordinator._proto.bluefield.gateway.v1 import policy_pb2 as gw
from coordinator.api.security_interceptor import SecurityEventInterceptor
from coordinator.bounded import DETAIL_LIMIT, TRUNCATED_MARK, bounded
from coordinator.certs import init_dev_pki
from coordinator.client import TlsFiles
from coordinator.config import AuthConfig, PolicyConfig
from coordinator.gateway import policy_dir
from coordinator.gateway.client import PolicyStreamClient
from coordinator.gateway.policy_book import PolicyBook
from coordinator.gateway.policy_stream import PolicyStreamHandler
from coordinator.gateway.reference import DENIED_TRAILER
from coordinator.identifiers import MAX_ID_LENGTH, is_identifier
from coordinator.security_rate import IdentityRateLimit


@pytest.mark.parametrize("good", ["a", "sb-1", "spiffe:a/b@c.d_e", "9" * MAX_ID_LENGTH])
def test_identifiers_accepted(good: str) -> None:
    assert is_identifier(good)


@pytest.mark.parametrize(
    "bad",
    ["", "sb\n", "sb\r", "\nsb", "s\x00b", "sb\x7f", "sé", "-sb", ".sb", "s b", "9" * (MAX_ID_LENGTH + 1)],
)
def test_identifiers_refused(bad: str) -> None:
    assert not is_identifier(bad)


def test_bounded_marks_what_it_cut() -> None:
    assert bounded("short") == "short"
    cut = bounded("x" * 10_000, 50)
    assert len(cut) == 50 and cut.endswith(TRUNCATED_MARK)


def test_ocsf_fields_carrying_caller_input_are_bounded() -> None:
    event = ocsf.api_activity(
        time_ms=0,
        operation="GetAttachment",
        activity=ocsf.ApiActivity.READ,
        status=ocsf.Status.FAILURE,
        actor=ocsf.Peer("i" * 100_000),
        severity=ocsf.Severity.MEDIUM,
        message="m" * 100_000,
        response_message="r" * 100_000,
        attachment_id="a" * 100_000,
    )
    assert len(str(event)) < 10_000


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_is_a_burst_then_one_suppressed_line() -> None:
    clock = _Clock()
    written: list[ocsf.Event] = []
    limit = IdentityRateLimit(burst=5, refill_s=10, clock=clock)
    interceptor = SecurityEventInterceptor(written.append, AuthConfig(), clock=clock, limit=limit)

    def refused(identity: str) -> ocsf.Event:
        return ocsf.api_activity(
            time_ms=0,
            operation="ListAttachments",
            activity=ocsf.ApiActivity.READ,
            status=ocsf.Status.FAILURE,
            actor=ocsf.Peer(identity),
            severity=ocsf.Severity.MEDIUM,
            message="refused",
        )

    for _ in range(50):
        interceptor._write(refused("spiffe://x/mallory"))
    interceptor._write(refused("spiffe://x/alice"))
    assert len(written) == 6  # mallory's burst, and alice is not held back by it
    clock.now += 10
    interceptor._write(refused("spiffe://x/mallory"))
    summary, event = written[6:]
    assert summary["unmapped"]["suppressed"] == 45 and "suppressed 45 events" in summary["message"]
    assert summary["actor"]["user"]["uid"] == "spiffe://x/mallory"
    assert event["message"] == "refused"
    for _ in range(3):
        interceptor._write(refused("spiffe://x/mallory"))
    interceptor.flush()
    assert written[-1]["unmapped"]["suppressed"] == 3


def test_rate_limit_state_is_bounded_by_identities() -> None:
    clock = _Clock()
    limit = IdentityRateLimit(burst=2, refill_s=1, max_tracked=100, clock=clock)
    for i in range(10_000):
        limit.admit(f"id-{i}")
        clock.now += 0.01
    assert len(limit) <= 100


def test_reference_gateway_file_names_follow_the_identifier_rule(tmp_path: Path) -> None:
    scope = "version: 1\n"
    for name in ("sb-1.yaml", "sb-2.yml", "sb-3.yaml\n", "sb 4.yaml", "-sb5.yaml", "s" * 129 + ".yaml"):
        (tmp_path / name).write_text(scope)
    assert sorted(policy_dir.scan(tmp_path)) == ["sb-1", "sb-2"]


class _RecordingService:
    """Stands in for the attachment service: what reached it."""

    def __init__(self) -> None:
        self.book = PolicyBook()
        self.seen: list[str] = []
        self.messages: list[str] = []

    async def apply_latest(self, sandbox_id: str) -> None:
        self.seen.append(sandbox_id)

    async def degrade(self, sandbox_id: str, reason: str, message: str) -> None:
        self.seen.append(sandbox_id)
        self.messages.append(message)


async def test_policy_events_for_malformed_sandbox_ids_reach_nothing() -> None:
    service = _RecordingService()
    handler = PolicyStreamHandler(service, PolicyConfig())  # type: ignore[arg-type]
    for bad in ("sb\n", "sb\x1b", "x" * 10_000):
        await handler.on_event(gw.PolicyEvent(seq=1, type=gw.EVENT_TYPE_INITIAL, sandbox_id=bad))
        await handler.on_event(gw.PolicyEvent(seq=2, type=gw.EVENT_TYPE_REMOVED, sandbox_id=bad))
        await handler.on_denied(bad, "not delegated")
    assert service.seen == []
    await handler.on_event(gw.PolicyEvent(seq=3, type=gw.EVENT_TYPE_REMOVED, sandbox_id="sb-1"))
    assert service.seen == ["sb-1"]


async def test_a_foreign_projection_sandbox_id_is_echoed_bounded() -> None:
    service = _RecordingService()
    handler = PolicyStreamHandler(service, PolicyConfig())  # type: ignore[arg-type]
    projection = gw.PolicyProjection(sandbox_id="x" * 100_000)
    await handler.on_event(
        gw.PolicyEvent(seq=1, type=gw.EVENT_TYPE_INITIAL, sandbox_id="sb-1", projection=projection)
    )
    [message] = service.messages
    assert "projection.sandbox_id" in message and len(message) <= DETAIL_LIMIT


async def test_a_denial_is_kept_only_for_a_sandbox_the_stream_asked_for(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path)
    denials: list[str] = []

    async def on_event(event: gw.PolicyEvent) -> None:
        return None

    async def on_denied(sandbox_id: str, message: str) -> None:
        denials.append(sandbox_id)

    client = PolicyStreamClient(
        "127.0.0.1:1",
        TlsFiles(str(pki.ca_cert), str(pki.host_cert), str(pki.host_key)),
        on_event,
        on_denied=on_denied,
    )
    client.register(["sb-1"])

    def refusal(sandbox_id: str) -> grpc.aio.AioRpcError:
        trailers = grpc.aio.Metadata((DENIED_TRAILER, sandbox_id))
        return grpc.aio.AioRpcError(grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(), trailers, "no")

    for n in range(1000):
        await client._session_failed(refusal(f"sb-never-asked-{n}"))
    assert client.status.denied == set() and denials == []
    await client._session_failed(refusal("sb-1"))
    assert client.status.denied == {"sb-1"} and denials == ["sb-1"]
