"""The real gRPC server, wired as the daemon wires it (metrics and security
event interceptors, the authorizer), in front of an in-process coordinator
(real store, emulated eswitch, private OVS); and raw callers that send any
bytes to any method as a host, an admin or an identity without a role."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.api.auth import RoleMap
from coordinator.api.rpc_metrics import RpcMetricsInterceptor
from coordinator.api.server import SERVICE_NAME, start_server
from coordinator.api.servicer import CoordinatorServicer
from coordinator.callers import Caller, Role
from coordinator.certs import DevPki, issue_client_cert
from coordinator.config import AuthConfig, Config, LogsConfig, ServerConfig
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.metrics import Metrics
from coordinator.security_events import start_security_events
from tests.integration.stack import Stack, build_stack

ADMIN = Caller("spiffe://bluefield.local/admin/admin", Role.ADMIN)
STRANGER = "spiffe://bluefield.local/host/stranger"
OTHER_HOST = "spiffe://bluefield.local/host/other"  # a second identity in the host role
SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"]
METHODS = {m.name: m for m in SERVICE.methods}
STREAM_WAIT_S = 0.5


@dataclass
class RawCaller:
    """Sends bytes to /bluefield.coordinator.v1.Coordinator/<method>."""

    channel: grpc.aio.Channel

    async def call(self, method: str, body: bytes, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
        """(status code, details) of one call. A stream (a watch, which never
        ends by itself) is OK once its first answer comes, or when it is
        still open after ``STREAM_WAIT_S``."""
        path = f"/{SERVICE_NAME}/{method}"
        try:
            if METHODS[method].server_streaming:
                stream = self.channel.unary_stream(path)(body, timeout=timeout)
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stream.read(), STREAM_WAIT_S)
                stream.cancel()
                return grpc.StatusCode.OK, ""
            await self.channel.unary_unary(path)(body, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""

    async def message(self, method: str, request: Any, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
        return await self.call(method, request.SerializeToString(), timeout)


@dataclass
class Served:
    stack: Stack
    pki: DevPki
    target: str
    security_log: Path
    callers: dict[str, RawCaller]  # "host", "other_host", "admin", "stranger" (no role)

    def security_lines(self) -> list[dict[str, Any]]:
        if not self.security_log.exists():
            return []
        return [json.loads(line) for line in self.security_log.read_text().splitlines()]


def _channel(target: str, pki: DevPki, cert: Path, key: Path) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    return grpc.aio.secure_channel(target, credentials)


def served_config(config: Config, pki: DevPki, log: Path, **server: Any) -> Config:
    """``config`` serving mTLS on a free port of 127.0.0.1 with the dev
    PKI's server certificate, its admin and host identities in their roles,
    and security events written to ``log``; ``server``: other [server]
    settings."""
    return dataclasses.replace(
        config,
        server=ServerConfig(
            listen="127.0.0.1:0",
            cert=str(pki.server_cert),
            key=str(pki.server_key),
            client_ca=str(pki.ca_cert),
            **{"max_connections": 32, **server},  # the fuzz and hostile-caller tests open several clients
        ),
        auth=AuthConfig(admins=(pki.admin_identity,), hosts=(pki.host_identity, OTHER_HOST)),
        logs=LogsConfig(security_events_path=str(log)),
    )


@asynccontextmanager
async def serve(
    tmp: Path, ovs: OvsInstance, pki: DevPki, bridge: str, uplink: str, **server: Any
) -> AsyncIterator[Served]:
    stack = await build_stack(tmp, ovs, bridge, uplink)
    log = tmp / "security-events.jsonl"
    config = served_config(stack.config, pki, log, **server)
    security = start_security_events(config, stack.async_store, stack.events)
    servicer = CoordinatorServicer(
        stack.service, stack.async_store, stack.events, RoleMap(config.auth), "emulated"
    )
    metrics = RpcMetricsInterceptor(Metrics(CollectorRegistry()))
    server, port = await start_server(config.server, servicer, interceptors=[metrics, *security.interceptors])
    target = f"127.0.0.1:{port}"
    stranger_cert, stranger_key = issue_client_cert(pki.ca_cert, pki.ca_key, tmp, "stranger", uri=STRANGER)
    other_cert, other_key = issue_client_cert(pki.ca_cert, pki.ca_key, tmp, "other-host", uri=OTHER_HOST)
    channels = {
        "host": _channel(target, pki, pki.host_cert, pki.host_key),
        "admin": _channel(target, pki, pki.admin_cert, pki.admin_key),
        "stranger": _channel(target, pki, stranger_cert, stranger_key),
        "other_host": _channel(target, pki, other_cert, other_key),
    }
    try:
        yield Served(stack, pki, target, log, {k: RawCaller(c) for k, c in channels.items()})
    finally:
        for channel in channels.values():
            await channel.close()
        await server.stop(0)
        await stack.events.close()
        await asyncio.gather(*security.tasks, return_exceptions=True)
        security.close()
        for record in stack.store.list_attachments():
            await stack.service.detach(ADMIN, record.attachment_id, record.lease_generation)
        await stack.close()
