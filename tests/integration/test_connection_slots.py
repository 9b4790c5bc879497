"""The listener's connection slots against callers without a certificate,
or without a role: the real server, raw TCP sockets that never start TLS
(from other loopback addresses, so that they are other peers), and the
standard health service, which no certificate check guards.

Before a call on it is authorized a connection is unproven: when the slots
are full it gives way to a newcomer (first those of the peer that holds
the most), it never pushes a proven one out, and none stays open past
``[server] unproven_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from tests.integration.api_served import RawCaller, Served, _channel

pytestmark = pytest.mark.ovs

BRIDGE = "br-slots"
MAX_CONNECTIONS = 4
UNPROVEN_TIMEOUT_S = 2.0
SERVER_SETTINGS = {"max_connections": MAX_CONNECTIONS, "unproven_timeout_s": UNPROVEN_TIMEOUT_S}
SILENT_PEERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SOCKETS_PER_PEER = 4  # together three times the slots
CALL_TIMEOUT_S = 5.0


@contextmanager
def silent_sockets(target: str) -> Iterator[list[socket.socket]]:
    """TCP connections to ``target`` from each of SILENT_PEERS that send
    nothing: no TLS ClientHello, no certificate."""
    host, _, port = target.rpartition(":")
    opened: list[socket.socket] = []
    try:
        for peer in SILENT_PEERS:
            for _ in range(SOCKETS_PER_PEER):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((peer, 0))
                s.connect((host, int(port)))
                opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


def _closed_by_server(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def _health(caller: RawCaller) -> grpc.StatusCode:
    code, _ = await caller.message("Health", pb.HealthRequest(), timeout=CALL_TIMEOUT_S)
    return code


async def test_silent_sockets_do_not_lock_a_host_out(served: Served) -> None:
    with silent_sockets(served.target):
        await asyncio.sleep(0.2)  # all of them accepted before the host comes
        fresh = _channel(served.target, served.pki, served.pki.host_cert, served.pki.host_key)
        try:
            assert await _health(RawCaller(fresh)) is grpc.StatusCode.OK
        finally:
            await fresh.close()


async def test_a_proven_connection_keeps_its_slot_through_a_flood(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.api.front")
    host = served.callers["host"]
    assert await _health(host) is grpc.StatusCode.OK
    with silent_sockets(served.target) as sockets:
        await asyncio.sleep(0.2)
        assert await _health(host) is grpc.StatusCode.OK
        # None of the silent ones outlives the timeout.
        started = time.monotonic()
        closed = await asyncio.to_thread(
            lambda: all(_closed_by_server(s, UNPROVEN_TIMEOUT_S + 3.0) for s in sockets)
        )
        assert closed, "a silent connection outlived the unproven timeout"
        assert time.monotonic() - started < UNPROVEN_TIMEOUT_S + 3.0
    assert await _health(host) is grpc.StatusCode.OK
    # A flood of connections logs a line now and then, not one each.
    assert len([r for r in caplog.records if r.name == "coordinator.api.front"]) <= 2


async def test_a_connection_without_a_role_cannot_hold_a_health_watch(served: Served) -> None:
    """The standard health service checks no role or revocation: a watch on
    it proves nothing, and the connection closes like a silent one."""
    stranger = served.callers["stranger"]
    code, _ = await stranger.message("Health", pb.HealthRequest())
    assert code is grpc.StatusCode.PERMISSION_DENIED
    watch = health_pb2_grpc.HealthStub(stranger.channel).Watch(health_pb2.HealthCheckRequest())
    first = await asyncio.wait_for(watch.read(), CALL_TIMEOUT_S)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(watch.read(), UNPROVEN_TIMEOUT_S + 5.0)
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < UNPROVEN_TIMEOUT_S + 5.0
