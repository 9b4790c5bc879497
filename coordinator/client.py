"""A typed client for the Coordinator API (host extensions, admins, the demo).

Every RPC has a method. Calls that are safe to repeat are retried with
jittered exponential backoff (tenacity) when the coordinator is briefly
unreachable:

- ``health``, ``get``, ``list``, ``explain``, advisory ``reconcile``: read
  only; retried on UNAVAILABLE and DEADLINE_EXCEEDED;
- ``attach``: idempotent by ``request_id`` (the same caller and request id
  get the same attachment), retried on UNAVAILABLE only - DEADLINE_EXCEEDED
  is the server's own answer when the initial policy did not arrive in time;
- ``detach``: idempotent by lease generation (a second detach answers
  ``False``); retried on UNAVAILABLE and DEADLINE_EXCEEDED;
- ``watch``: resumes from the last ``seq`` it yielded when the stream breaks
  with UNAVAILABLE.

Authoritative ``reconcile`` is not retried: a lost answer would be replaced
by one that no longer lists what the first attempt released.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import tenacity

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all (1 = no retries); between them a random wait
    of up to ``initial_backoff_s``, doubling per retry, capped at
    ``max_backoff_s`` (full jitter, so many hosts retrying after a
    coordinator restart do not arrive in lockstep)."""

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s")

    def wait(self) -> tenacity.wait.wait_base:
        return tenacity.wait_random_exponential(multiplier=self.initial_backoff_s, max=self.max_backoff_s)


NO_RETRY = RetryPolicy(attempts=1)


def secure_channel(target: str, tls: TlsFiles, *, server_name: str = "") -> grpc.Channel:
    """An mTLS channel: ``tls.ca`` verifies the server, ``tls.cert``/``tls.key``
    are the client's identity. ``server_name`` overrides the name expected in
    the server certificate (e.g. when dialing the DPU by an address its
    certificate does not list)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes(),
        certificate_chain=tls.cert.read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    if isinstance(exc, grpc.Call):
        return exc.code()
    return None


class CoordinatorClient:
    def __init__(
        self,
        target: str,
        tls: TlsFiles,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        server_name: str = "",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._channel = secure_channel(target, tls, server_name=server_name)
        # The generated stub is untyped; each method below types its result.
        self._stub: Any = pb_grpc.CoordinatorStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._retry = retry
        self._sleep = sleep

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, codes: frozenset[grpc.StatusCode], call: Callable[[], T]) -> T:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._retry.attempts),
            wait=self._retry.wait(),
            retry=tenacity.retry_if_exception(lambda exc: status_code(exc) in codes),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        return retrying(call)

    # -- RPCs ------------------------------------------------------------------

    def health(self) -> pb.HealthResponse:
        return self._call(
            TRANSIENT,
            lambda: cast(pb.HealthResponse, self._stub.Health(pb.HealthRequest(), timeout=self._timeout)),
        )

    def attach(
        self,
        sandbox_id: str,
        host_instance_id: str,
        request_id: str,
        *,
        device_kind: int = pb.DEVICE_KIND_UNSPECIFIED,
        network_class: str = "",
        initial_policy: int = pb.INITIAL_POLICY_UNSPECIFIED,
        initial_policy_timeout_ms: int = 0,
    ) -> pb.Attachment:
        """Attach a device for ``sandbox_id``. Retrying with the same
        ``request_id`` returns the same attachment, never a second device."""
        request = pb.AttachRequest(
            sandbox_id=sandbox_id,
            host_instance_id=host_instance_id,
            request_id=request_id,
            device_kind=cast(pb.DeviceKind, device_kind),
            network_class=network_class,
            initial_policy=cast(pb.InitialPolicy, initial_policy),
            initial_policy_timeout_ms=initial_policy_timeout_ms,
        )
        # The server waits up to the initial-policy timeout; give the call that long too.
        timeout = max(self._timeout, initial_policy_timeout_ms / 1000 + 5)
        return self._call(
            UNREACHABLE, lambda: cast(pb.Attachment, self._stub.Attach(request, timeout=timeout))
        )

    def detach(self, attachment_id: str, lease_generation: int, host_instance_id: str = "") -> bool:
        """True if this call detached it, False if it already was."""
        request = pb.DetachRequest(
            attachment_id=attachment_id, lease_generation=lease_generation, host_instance_id=host_instance_id
        )
        return self._call(TRANSIENT, lambda: bool(self._stub.Detach(request, timeout=self._timeout).detached))

    def get(self, attachment_id: str) -> pb.Attachment:
        request = pb.GetAttachmentRequest(attachment_id=attachment_id)
        return self._call(
            TRANSIENT, lambda: cast(pb.Attachment, self._stub.GetAttachment(request, timeout=self._timeout))
        )

    def list(
        self,
        sandbox_id: str = "",
        host_instance_id: str = "",
        state: int = pb.ATTACHMENT_STATE_UNSPECIFIED,
    ) -> list[pb.Attachment]:
        request = pb.ListAttachmentsRequest(
            sandbox_id=sandbox_id, host_instance_id=host_instance_id, state=cast(pb.AttachmentState, state)
        )
        return self._call(
            TRANSIENT, lambda: list(self._stub.ListAttachments(request, timeout=self._timeout).attachments)
        )

    def reconcile(
        self,
        host_instance_id: str,
        mode: int = pb.RECONCILE_MODE_ADVISORY,
        known: Iterable[pb.KnownAttachment] = (),
    ) -> pb.ReconcileResponse:
        """Compare what the host restored (``known``) with the coordinator's
        table; AUTHORITATIVE also releases the host's orphans."""
        request = pb.ReconcileRequest(
            host_instance_id=host_instance_id, mode=cast(pb.ReconcileMode, mode), known=list(known)
        )
        codes = frozenset() if mode == pb.RECONCILE_MODE_AUTHORITATIVE else TRANSIENT
        return self._call(
            codes, lambda: cast(pb.ReconcileResponse, self._stub.Reconcile(request, timeout=self._timeout))
        )

    def explain(self, request: pb.ExplainPacketRequest) -> pb.ExplainPacketResponse:
        return self._call(
            TRANSIENT,
            lambda: cast(pb.ExplainPacketResponse, self._stub.ExplainPacket(request, timeout=self._timeout)),
        )

    def watch(
        self, since_seq: int = 0, *, timeout: float | None = None, resume: bool = True
    ) -> Iterator[pb.AttachmentEvent]:
        """Events after ``since_seq``, as they happen. ``timeout`` bounds each
        stream (DEADLINE_EXCEEDED when it runs out). A stream that breaks with
        UNAVAILABLE is reopened from the last seq yielded, up to
        ``retry.attempts`` times in a row without an event in between."""
        seq = since_seq
        failures = 0
        while True:
            stream = self._stub.WatchAttachmentEvents(
                pb.WatchAttachmentEventsRequest(since_seq=seq), timeout=timeout
            )
            try:
                for event in stream:
                    failures = 0
                    seq = event.seq
                    yield cast(pb.AttachmentEvent, event)
                return
            except grpc.RpcError as exc:
                failures += 1
                if not resume or status_code(exc) not in UNREACHABLE or failures >= self._retry.attempts:
                    raise
                delay = _backoff(self._retry, failures)
                log.info(
                    "event stream broke (%s); resuming after seq %d in %.2fs", status_code(exc), seq, delay
                )
                self._sleep(delay)
            finally:
                stream.cancel()


def _backoff(policy: RetryPolicy, failures: int) -> float:
    """The same jittered wait tenacity uses between calls, for the watch loop
    (a generator cannot be retried as one call)."""
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = failures
    return float(policy.wait()(state))


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.info(
        "coordinator call failed (%s); retrying in %.2fs (attempt %d)",
        status_code(exc) if exc else "?",
        wait,
        state.attempt_number + 1,
    )
