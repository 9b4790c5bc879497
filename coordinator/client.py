"""A typed client for the Coordinator API (host extensions, admins, demo)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def secure_channel(target: str, tls: TlsFiles) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes(),
        certificate_chain=tls.cert.read_bytes(),
    )
    return grpc.secure_channel(target, credentials)


class CoordinatorClient:
    def __init__(self, target: str, tls: TlsFiles, *, timeout: float = 30.0) -> None:
        self._channel = secure_channel(target, tls)
        # The generated stub is untyped; each method below types its result.
        self._stub: Any = pb_grpc.CoordinatorStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> pb.HealthResponse:
        return cast(pb.HealthResponse, self._stub.Health(pb.HealthRequest(), timeout=self._timeout))

    def attach(
        self,
        sandbox_id: str,
        host_instance_id: str,
        request_id: str,
        *,
        device_kind: int = pb.DEVICE_KIND_UNSPECIFIED,
        network_class: str = "",
        initial_policy: int = pb.INITIAL_POLICY_UNSPECIFIED,
    ) -> pb.Attachment:
        request = pb.AttachRequest(
            sandbox_id=sandbox_id,
            host_instance_id=host_instance_id,
            request_id=request_id,
            device_kind=device_kind,  # type: ignore[arg-type]
            network_class=network_class,
            initial_policy=initial_policy,  # type: ignore[arg-type]
        )
        return cast(pb.Attachment, self._stub.Attach(request, timeout=self._timeout))

    def detach(self, attachment_id: str, lease_generation: int, host_instance_id: str = "") -> bool:
        request = pb.DetachRequest(
            attachment_id=attachment_id, lease_generation=lease_generation, host_instance_id=host_instance_id
        )
        return bool(self._stub.Detach(request, timeout=self._timeout).detached)

    def get(self, attachment_id: str) -> pb.Attachment:
        request = pb.GetAttachmentRequest(attachment_id=attachment_id)
        return cast(pb.Attachment, self._stub.GetAttachment(request, timeout=self._timeout))

    def list(self, sandbox_id: str = "", host_instance_id: str = "") -> list[pb.Attachment]:
        request = pb.ListAttachmentsRequest(sandbox_id=sandbox_id, host_instance_id=host_instance_id)
        return list(self._stub.ListAttachments(request, timeout=self._timeout).attachments)

    def explain(self, request: pb.ExplainPacketRequest) -> pb.ExplainPacketResponse:
        return cast(pb.ExplainPacketResponse, self._stub.ExplainPacket(request, timeout=self._timeout))

    def watch(self, since_seq: int = 0, *, timeout: float | None = None) -> Iterator[pb.AttachmentEvent]:
        request = pb.WatchAttachmentEventsRequest(since_seq=since_seq)
        yield from self._stub.WatchAttachmentEvents(request, timeout=timeout)
