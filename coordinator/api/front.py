"""The API listener's front: it accepts the TCP connections and relays their
bytes to gRPC, which listens on a unix socket only the daemon's user can
reach.

Why by hand: grpcio counts its connection limit
(``grpc.max_allowed_incoming_connections``) at accept, before TLS, in one
quota for everyone, and gives a handshake two minutes. A few TCP sockets
that never send a byte, with no certificate at all, then lock every caller
out; and a connection that only ever calls the standard health service
(which checks no role and no revocation) holds its slot for good. grpcio
has no option that limits per peer or counts only authenticated
connections, and cannot adopt a socket accepted elsewhere.

A connection is *unproven* until a call on it has passed the authorizer (a
certificate that chains and is not revoked, an identity with a role for
the method): ``prove`` is told so, by the peer name gRPC gives the call.

- At most ``max_connections`` are open at once. A newcomer beyond that
  takes the place of an unproven one - the oldest of the peer (an IPv4
  address, an IPv6 /64) that holds the most unproven ones - and is refused
  only when every open connection is proven. So a flood from one peer
  gives way first, and nothing can push a proven connection out.
- An unproven connection is closed ``unproven_timeout_s`` after it opened.

TLS stays gRPC's: the relay carries bytes and never sees a key. gRPC sees
each relayed connection from its own abstract unix name; ``outer_peer``
turns that back into the TCP peer (for the security events).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from coordinator.sparse_log import SparseLog

log = logging.getLogger(__name__)

IPV6_PEER_PREFIX = 64  # one site's addresses count as one peer
_ABSTRACT = "unix-abstract:"
# Each end reads into a buffer of its own of this size, reused, so a flood
# passing through allocates nothing per read: asyncio's own reads (a fresh
# object of up to 256 KiB each) and even a 64 KiB copy of each read left the
# daemon's heap tens of MB larger after 40 MB went through.
READ_BYTES = 64 * 1024
# Up to Python 3.11 a socket transport copies what it cannot send at once
# into a buffer of its own, so it may be handed a view of the read buffer;
# later versions keep the object handed to them, which must then be a copy.
WRITE_KEEPS_DATA = sys.version_info >= (3, 12)
INNER_SNDBUF = 32 * 1024
LOG_EVERY_S = 10.0  # a flood of connections logs one line per kind this often
# Relayed connections of this process, by the abstract name gRPC sees.
_relayed: dict[str, _Connection] = {}


_expired = SparseLog(
    log, logging.INFO, "api connection from %s closed: no authorized call in time", LOG_EVERY_S
)
_refused = SparseLog(
    log, logging.WARNING, "api connection from %s refused: every slot holds a proven connection", LOG_EVERY_S
)


def prove(grpc_peer: str) -> None:
    """A call on this connection passed the authorizer: it is proven."""
    connection = _relayed.get(grpc_peer.removeprefix(_ABSTRACT))
    if connection is not None:
        connection.prove()


def outer_peer(grpc_peer: str) -> str:
    """The gRPC peer string of the TCP peer behind a relayed connection
    (``ipv4:198.51.100.7:50123``); any other peer string as it is."""
    connection = _relayed.get(grpc_peer.removeprefix(_ABSTRACT))
    return grpc_peer if connection is None else connection.peer_uri


def peer_key(host: str) -> str:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PEER_PREFIX), strict=False))
    return str(address)


class _Side(asyncio.BufferedProtocol):
    """One end of a relayed connection: what it reads goes to the other end;
    when the other end's buffer fills, this end stops reading."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self._pending: list[bytes] = []
        self._read = memoryview(bytearray(READ_BYTES))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read

    def buffer_updated(self, nbytes: int) -> None:
        read = self._read[:nbytes]
        other = self.peer.transport if self.peer is not None else None
        if other is None or WRITE_KEEPS_DATA:
            self.data_received(bytes(read))  # kept until sent
        else:
            other.write(read)

    def data_received(self, data: bytes) -> None:
        other = self.peer.transport if self.peer is not None else None
        if other is None:
            self._pending.append(data)  # the inner end is still connecting
        else:
            other.write(data)

    def flush_to(self, other: asyncio.Transport) -> None:
        for data in self._pending:
            other.write(data)
        self._pending.clear()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close; connection_lost closes the other end

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.close()


class _Connection:
    def __init__(self, front: FrontDoor, name: str, key: str, peer_uri: str) -> None:
        self.front = front
        self.name = name
        self.key = key
        self.peer_uri = peer_uri
        self.proven = False
        self.outer = _Side(self)
        self.inner = _Side(self)
        self.outer.peer, self.inner.peer = self.inner, self.outer
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def prove(self) -> None:
        self.proven = True
        if self.timer is not None:
            self.timer.cancel()

    def expire(self) -> None:
        if not self.proven:
            _expired.note(self.peer_uri)
            self.front.on_shed("expired")
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()
        for side in (self.outer, self.inner):
            if side.transport is not None:
                side.transport.close()
        self.front.forget(self)


class FrontDoor:
    """Accepts on ``listen`` and relays to gRPC's unix socket ``inner_path``;
    ``on_shed`` is told why each connection it closes or refuses before it
    is proven went (``displaced``, ``expired``, ``refused``)."""

    def __init__(
        self, max_connections: int, unproven_timeout_s: float, on_shed: Callable[[str], None] = lambda _: None
    ) -> None:
        self.max_connections = max_connections
        self.unproven_timeout_s = unproven_timeout_s
        self.on_shed = on_shed
        self._dir = Path(tempfile.mkdtemp(prefix="bfc-api-"))  # 0700: the daemon's user only
        self.inner_path = str(self._dir / "grpc.sock")
        self._token = f"bluefield-coordinator/{os.getpid()}/{secrets.token_hex(4)}"
        self._count = 0
        self._open: dict[str, _Connection] = {}  # oldest first
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    def _accepted(self) -> asyncio.BufferedProtocol:
        return _Accepting(self)

    def admit(self, transport: asyncio.Transport) -> _Connection | None:
        """The new connection's place, or None: refused."""
        host, port = transport.get_extra_info("peername")[:2]
        key = peer_key(host)
        self._count += 1
        name = f"{self._token}/{self._count}"
        uri = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        if len(self._open) >= self.max_connections:
            victim = self._victim()
            if victim is None:
                _refused.note(uri)
                self.on_shed("refused")
                return None
            self.on_shed("displaced")
            victim.close()
        connection = _Connection(self, name, key, uri)
        self._open[name] = connection
        _relayed[name] = connection
        loop = asyncio.get_running_loop()
        connection.timer = loop.call_later(self.unproven_timeout_s, connection.expire)
        connection.task = loop.create_task(self._connect_inner(connection))
        return connection

    def _victim(self) -> _Connection | None:
        unproven = [c for c in self._open.values() if not c.proven]
        if not unproven:
            return None
        held: dict[str, int] = {}
        for c in unproven:
            held[c.key] = held.get(c.key, 0) + 1
        most = max(held.values())
        return next(c for c in unproven if held[c.key] == most)

    async def _connect_inner(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + connection.name)  # the name gRPC gives the connection's calls
            # No more ahead of gRPC than TCP would have in flight: a unix
            # socket's buffer lets a flood arrive in bursts that gRPC reads
            # into large slices, and the daemon's heap stays grown.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, INNER_SNDBUF)
            sock.setblocking(False)
            await loop.sock_connect(sock, self.inner_path)
            transport, _ = await loop.create_connection(lambda: connection.inner, sock=sock)
        except OSError as exc:
            sock.close()
            log.warning("api connection from %s: gRPC's socket refused it: %s", connection.peer_uri, exc)
            connection.close()
            return
        if connection.closed:
            transport.close()
            return
        assert isinstance(transport, asyncio.Transport)
        outer = connection.outer.transport
        if outer is not None:
            connection.outer.flush_to(transport)
            outer.resume_reading()

    def forget(self, connection: _Connection) -> None:
        self._open.pop(connection.name, None)
        _relayed.pop(connection.name, None)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._open.values()):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        shutil.rmtree(self._dir, ignore_errors=True)


class _Accepting(asyncio.BufferedProtocol):
    """The outer end until the front has given it a place."""

    def __init__(self, front: FrontDoor) -> None:
        self._front = front
        self._side: _Side | None = None
        self._nothing = memoryview(bytearray(1))  # a refused connection is aborted unread

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        connection = self._front.admit(transport)
        if connection is None:
            transport.abort()
            return
        transport.pause_reading()  # until the inner end is connected
        self._side = connection.outer
        self._side.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._side.get_buffer(sizehint) if self._side is not None else self._nothing

    def buffer_updated(self, nbytes: int) -> None:
        if self._side is not None:
            self._side.buffer_updated(nbytes)

    def pause_writing(self) -> None:
        if self._side is not None:
            self._side.pause_writing()

    def resume_writing(self) -> None:
        if self._side is not None:
            self._side.resume_writing()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._side is not None:
            self._side.connection_lost(exc)
