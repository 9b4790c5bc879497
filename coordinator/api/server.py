"""The gRPC server: mutual TLS, the Coordinator service, server reflection
and the standard grpc.health.v1 service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.api.front import FrontDoor
from coordinator.api.servicer import CoordinatorServicer
from coordinator.config import ServerConfig
from coordinator.trust.config_files import server_files
from coordinator.trust.material import MaterialError, TrustSet
from coordinator.trust.reloader import TrustReloader

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name

# HTTP/2 and gRPC limits, set explicitly rather than left to the library's
# defaults: any CA-signed client reaches the listener, roles or not, so what
# one connection may make the daemon hold is bounded here (README, "Limits
# of the API listener").
MAX_RECEIVE_MESSAGE_BYTES = 1024 * 1024  # the largest request (a Reconcile of ~4,000 known) is far less
MAX_SEND_MESSAGE_BYTES = 16 * 1024 * 1024  # a ListAttachments of every attachment
MAX_METADATA_BYTES = 16 * 1024  # the whole header list of a call, soft limit
ABSOLUTE_MAX_METADATA_BYTES = 32 * 1024  # hard limit: beyond it the stream is reset
MAX_CONCURRENT_STREAMS = 64  # per connection; more are refused (REFUSED_STREAM)
# Until a client acknowledges the listener's SETTINGS, grpcio applies the
# HTTP/2 default header list limit (16 MiB) instead of the one above, and
# keeps every header of a block that never ends: up to 170 MB per such
# connection. A client that has not acknowledged within this long is cut;
# every HTTP/2 client acknowledges at once. [server] max_connections bounds
# what open connections hold; what closed ones leave behind only the unit's
# MemoryMax= bounds (README, "Limits of the API listener").
SETTINGS_ACK_TIMEOUT_MS = 10_000
MIN_CLIENT_PING_INTERVAL_MS = 30_000  # clients pinging more often get GOAWAY after two strikes
MAX_PING_STRIKES = 2
KEEPALIVE_MS = 60_000  # the server pings an idle connection this often ...
KEEPALIVE_TIMEOUT_MS = 20_000  # ... and closes it if no answer comes
MAX_CONNECTION_IDLE_MS = 10 * 60_000  # no call in flight this long: GOAWAY (clients reconnect)

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", ABSOLUTE_MAX_METADATA_BYTES),
    ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
    ("grpc.http2.settings_timeout", SETTINGS_ACK_TIMEOUT_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
)


class ServerSetupError(RuntimeError):
    pass


class ApiServer:
    """gRPC behind the listener's front (``api/front``): stopped together."""

    def __init__(self, grpc_server: grpc.aio.Server, front: FrontDoor) -> None:
        self.grpc_server = grpc_server
        self.front = front

    async def stop(self, grace: float | None) -> None:
        """No new connection; calls in flight get ``grace`` seconds over the
        relayed connections, which close after."""
        self.front.stop_accepting()
        try:
            await self.grpc_server.stop(grace)
        finally:
            await self.front.close()


def server_credentials(trust: TrustReloader) -> grpc.ServerCredentials:
    """Credentials that follow ``trust``: grpc asks the fetcher before every
    new connection's handshake, and it hands over the set in force whenever
    its version changed. Connections already open keep the set they
    started with; nothing is restarted."""
    served = [trust.state.version]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Runs on a grpc core thread: only reads the state (one attribute).
        state = trust.state
        if state.version == served[0]:
            return None
        served[0] = state.version
        return _certificate_configuration(state.material)

    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(trust.state.material),
        fetch,  # type: ignore[arg-type]  # the stubs miss that None means "no change"
        require_client_authentication=True,
    )


def _certificate_configuration(material: TrustSet) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key_pem, material.cert_chain_pem)], root_certificates=material.bundle_pem
    )


def load_server_trust(config: ServerConfig, **kwargs: Any) -> TrustReloader:
    """The listener's trust set, validated; ServerSetupError names the file."""
    try:
        return TrustReloader("server", server_files(config), **kwargs)
    except MaterialError as exc:
        raise ServerSetupError(str(exc)) from exc


async def start_server(
    config: ServerConfig,
    servicer: CoordinatorServicer,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    trust: TrustReloader | None = None,
    on_shed: Callable[[str], None] = lambda _: None,
) -> tuple[ApiServer, int]:
    """``trust``: the reloaded set the listener follows (the daemon's); by
    default the files of ``config`` as they are now. ``on_shed``: see
    ``FrontDoor``."""
    front = FrontDoor(config.max_connections, config.unproven_timeout_s, on_shed)
    try:
        return await _start(config, servicer, interceptors, trust, front)
    except BaseException:
        await front.close()
        raise


async def _start(
    config: ServerConfig,
    servicer: CoordinatorServicer,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]],
    trust: TrustReloader | None,
    front: FrontDoor,
) -> tuple[ApiServer, int]:
    # Only the front connects to gRPC: its limits are the front's (a few
    # more, for connections the front has let go that gRPC still winds
    # down). A handshake gets no longer than a connection gets to prove itself.
    handshake_ms = int(config.unproven_timeout_s * 1000)
    options = (
        *SERVER_OPTIONS,
        ("grpc.max_allowed_incoming_connections", 2 * config.max_connections),
        ("grpc.server_handshake_timeout_ms", handshake_ms),
    )
    # The authorizer is innermost: the others see every call, refused ones too.
    server = grpc.aio.server(interceptors=[*interceptors, servicer.authorizer], options=options)
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # set at import time
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    credentials = server_credentials(trust or load_server_trust(config))
    if server.add_secure_port(f"unix:{front.inner_path}", credentials) == 0:
        raise ServerSetupError(f"server.listen: gRPC cannot listen on {front.inner_path}")
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    host, _, port_text = config.listen.rpartition(":")
    try:
        port = await front.start(host.removeprefix("[").removesuffix("]"), int(port_text))
    except (OSError, ValueError) as exc:
        await server.stop(0)
        raise ServerSetupError(f"server.listen: cannot listen on {config.listen}: {exc}") from exc
    return ApiServer(server, front), port
