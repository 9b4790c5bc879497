"""The gRPC server: mutual TLS, the Coordinator service, server reflection
and the standard grpc.health.v1 service."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.api.servicer import CoordinatorServicer
from coordinator.certs import check_private_key_file
from coordinator.config import ServerConfig

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name


class ServerSetupError(RuntimeError):
    pass


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    paths = {"server.cert": config.cert, "server.key": config.key, "server.client_ca": config.client_ca}
    blobs = {}
    for key, value in paths.items():
        try:
            blobs[key] = Path(value).read_bytes()
        except OSError as exc:
            raise ServerSetupError(f"{key}: cannot read {value}: {exc.strerror}") from exc
    check_private_key_file(Path(config.key))
    return grpc.ssl_server_credentials(
        [(blobs["server.key"], blobs["server.cert"])],
        root_certificates=blobs["server.client_ca"],
        require_client_auth=True,
    )


async def start_server(
    config: ServerConfig,
    servicer: CoordinatorServicer,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> tuple[grpc.aio.Server, int]:
    # The authorizer is innermost: the others see every call, refused ones too.
    server = grpc.aio.server(interceptors=[*interceptors, servicer.authorizer])
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # set at import time
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_secure_port(config.listen, server_credentials(config))
    if port == 0:
        raise ServerSetupError(f"server.listen: cannot listen on {config.listen}")
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port
