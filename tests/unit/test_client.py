"""The typed client against a tiny in-process mTLS server that fails on
purpose: which calls are retried, on which codes, how often, and how the
event stream resumes."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.certs import init_dev_pki
from coordinator.client import CoordinatorClient, RetryPolicy, TlsFiles

Failures = dict[str, list[grpc.StatusCode]]


class FlakyCoordinator(pb_grpc.CoordinatorServicer):
    """Answers each RPC after first failing with the codes queued for it."""

    def __init__(self) -> None:
        self.failures: Failures = defaultdict(list)
        self.calls: dict[str, list[Any]] = defaultdict(list)
        self.lock = threading.Lock()

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method].append(request)
            code = self.failures[method].pop(0) if self.failures[method] else None
        if code is not None:
            context.abort(code, f"{method} failing on purpose")

    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.HealthResponse:
        self._enter("Health", request, context)
        return pb.HealthResponse(healthy=True, backend="flaky")

    def Attach(self, request: pb.AttachRequest, context: grpc.ServicerContext) -> pb.Attachment:
        self._enter("Attach", request, context)
        # Idempotent by request id, as the real service is.
        return pb.Attachment(attachment_id=f"att-{request.request_id}", sandbox_id=request.sandbox_id)

    def Detach(self, request: pb.DetachRequest, context: grpc.ServicerContext) -> pb.DetachResponse:
        self._enter("Detach", request, context)
        return pb.DetachResponse(detached=True)

    def GetAttachment(self, request: pb.GetAttachmentRequest, context: grpc.ServicerContext) -> pb.Attachment:
        self._enter("GetAttachment", request, context)
        return pb.Attachment(attachment_id=request.attachment_id)

    def ListAttachments(
        self, request: pb.ListAttachmentsRequest, context: grpc.ServicerContext
    ) -> pb.ListAttachmentsResponse:
        self._enter("ListAttachments", request, context)
        return pb.ListAttachmentsResponse(attachments=[pb.Attachment(attachment_id="a"), pb.Attachment()])

    def Reconcile(self, request: pb.ReconcileRequest, context: grpc.ServicerContext) -> pb.ReconcileResponse:
        self._enter("Reconcile", request, context)
        return pb.ReconcileResponse(host_only=list(request.known))

    def ExplainPacket(
        self, request: pb.ExplainPacketRequest, context: grpc.ServicerContext
    ) -> pb.ExplainPacketResponse:
        self._enter("ExplainPacket", request, context)
        return pb.ExplainPacketResponse(allowed=True, rule="web")

    def WatchAttachmentEvents(
        self, request: pb.WatchAttachmentEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AttachmentEvent]:
        with self.lock:
            self.calls["Watch"].append(request)
            first = len(self.calls["Watch"]) == 1
        for seq in range(request.since_seq + 1, request.since_seq + 3):
            yield pb.AttachmentEvent(seq=seq, attachment_id="a")
        if first:
            # The stream breaks after two events, as when the daemon restarts.
            context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return init_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki: Any) -> Iterator[tuple[FlakyCoordinator, str]]:
    servicer = FlakyCoordinator()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CoordinatorServicer_to_server(servicer, srv)  # type: ignore[no-untyped-call]
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = srv.add_secure_port("127.0.0.1:0", credentials)
    srv.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        srv.stop(0)


@pytest.fixture
def sleeps() -> list[float]:
    return []


def _client(pki: Any, target: str, sleeps: list[float], attempts: int = 4) -> CoordinatorClient:
    tls = TlsFiles(Path(pki.ca_cert), Path(pki.host_cert), Path(pki.host_key))
    retry = RetryPolicy(attempts=attempts, initial_backoff_s=0.05, max_backoff_s=0.4)
    return CoordinatorClient(target, tls, timeout=5, retry=retry, sleep=sleeps.append)


UNAVAILABLE, DEADLINE = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED


def test_unavailable_then_success_is_retried_with_jittered_backoff(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    servicer, target = server
    servicer.failures["Health"] = [UNAVAILABLE, DEADLINE, UNAVAILABLE]
    with _client(pki, target, sleeps) as client:
        assert client.health().backend == "flaky"
    assert len(servicer.calls["Health"]) == 4
    assert len(sleeps) == 3 and all(0 <= s <= 0.4 for s in sleeps)
    # The window doubles: 0.05, 0.1, 0.2 (each wait is random within it).
    assert sleeps[0] <= 0.05 and sleeps[1] <= 0.1 and sleeps[2] <= 0.2


def test_attempts_are_bounded_and_the_last_error_is_raised(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    servicer, target = server
    servicer.failures["ListAttachments"] = [UNAVAILABLE] * 5
    with _client(pki, target, sleeps, attempts=3) as client, pytest.raises(grpc.RpcError) as err:
        client.list()
    assert err.value.code() == UNAVAILABLE  # type: ignore[attr-defined]
    assert len(servicer.calls["ListAttachments"]) == 3 and len(sleeps) == 2


def test_other_codes_are_not_retried(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    servicer, target = server
    servicer.failures["GetAttachment"] = [grpc.StatusCode.PERMISSION_DENIED]
    with _client(pki, target, sleeps) as client, pytest.raises(grpc.RpcError) as err:
        client.get("att-1")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert len(servicer.calls["GetAttachment"]) == 1 and sleeps == []


def test_attach_is_retried_with_the_same_request_id_but_not_on_deadline(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    servicer, target = server
    servicer.failures["Attach"] = [UNAVAILABLE, UNAVAILABLE]
    with _client(pki, target, sleeps) as client:
        attachment = client.attach("sb-1", "hi-1", "req-1", device_kind=pb.DEVICE_KIND_VF)
        assert attachment.attachment_id == "att-req-1"
        assert [r.request_id for r in servicer.calls["Attach"]] == ["req-1"] * 3
        assert all(r.device_kind == pb.DEVICE_KIND_VF for r in servicer.calls["Attach"])
        # DEADLINE_EXCEEDED is the server's answer to a policy that did not
        # arrive in time: asking again would only wait again.
        servicer.failures["Attach"] = [DEADLINE]
        with pytest.raises(grpc.RpcError):
            client.attach("sb-1", "hi-1", "req-2")
        assert len(servicer.calls["Attach"]) == 4


def test_detach_is_retried_with_the_same_generation(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    servicer, target = server
    servicer.failures["Detach"] = [DEADLINE]
    with _client(pki, target, sleeps) as client:
        assert client.detach("att-1", 3, "hi-1") is True
    assert [(r.attachment_id, r.lease_generation) for r in servicer.calls["Detach"]] == [("att-1", 3)] * 2


def test_reconcile_is_typed_and_only_advisory_is_retried(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    servicer, target = server
    known = [pb.KnownAttachment(attachment_id="att-1", lease_generation=2, sandbox_id="sb-1")]
    servicer.failures["Reconcile"] = [UNAVAILABLE]
    with _client(pki, target, sleeps) as client:
        answer = client.reconcile("hi-2", pb.RECONCILE_MODE_ADVISORY, known)
        assert [k.attachment_id for k in answer.host_only] == ["att-1"]
        assert len(servicer.calls["Reconcile"]) == 2
        servicer.failures["Reconcile"] = [UNAVAILABLE]
        with pytest.raises(grpc.RpcError):
            client.reconcile("hi-2", pb.RECONCILE_MODE_AUTHORITATIVE, known)
        assert len(servicer.calls["Reconcile"]) == 3
        assert servicer.calls["Reconcile"][-1].mode == pb.RECONCILE_MODE_AUTHORITATIVE


def test_every_rpc_has_a_typed_method(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    _, target = server
    with _client(pki, target, sleeps) as client:
        assert client.health().healthy
        assert client.get("x").attachment_id == "x"
        assert len(client.list(state=pb.ATTACHMENT_STATE_BOUND)) == 2
        assert client.explain(pb.ExplainPacketRequest(attachment_id="x")).rule == "web"


def test_watch_resumes_from_the_last_seq_after_unavailable(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    servicer, target = server
    with _client(pki, target, sleeps) as client:
        seqs = [e.seq for e in client.watch(10, timeout=5)]
    # 11, 12, then the stream broke; reopened after 12: 13, 14, then it ended.
    assert seqs == [11, 12, 13, 14]
    assert [r.since_seq for r in servicer.calls["Watch"]] == [10, 12]
    assert len(sleeps) == 1


def test_watch_without_resume_raises(
    pki: Any, server: tuple[FlakyCoordinator, str], sleeps: list[float]
) -> None:
    _, target = server
    seen = []
    with _client(pki, target, sleeps) as client, pytest.raises(grpc.RpcError) as err:
        for event in client.watch(0, timeout=5, resume=False):
            seen.append(event.seq)
    assert seen == [1, 2] and err.value.code() == UNAVAILABLE  # type: ignore[attr-defined]


def test_retry_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(initial_backoff_s=2, max_backoff_s=1)
