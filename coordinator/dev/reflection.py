"""List the services a coordinator exposes through server reflection, the
same question `grpcurl ... list` asks."""

from __future__ import annotations

from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from coordinator.client import TlsFiles, secure_channel


def list_services(target: str, tls: TlsFiles) -> list[str]:
    channel = secure_channel(target, tls)
    try:
        return sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
    finally:
        channel.close()
