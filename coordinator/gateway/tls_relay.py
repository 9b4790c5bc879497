"""TLS to the gateway made by Python's ``ssl``, so that the gateway's
certificate can be checked against a CRL, which grpcio cannot do.

gRPC connects in plaintext to a unix socket in a fresh directory only the
daemon's user may enter (0700); for each connection the relay opens a TLS
connection to the gateway with the coordinator's certificate and key and
the gateway's CA (hostname checked as gRPC would), checks the presented
certificate with the peer check (chain to the CA, validity, CRL), and only
then carries bytes both ways. A refused certificate closes the connection:
the stream client sees UNAVAILABLE and backs off as for any outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from coordinator.trust.chain import describe
from coordinator.trust.material import TrustFiles
from coordinator.trust.peer import PeerCheck

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024

# (gateway target, its certificate, why it was refused)
OnRefused = Callable[[str, x509.Certificate, str], None]


class TlsRelay:
    def __init__(
        self,
        target: str,
        server_name: str,
        files: TrustFiles,
        check: PeerCheck,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._target = target
        self._on_refused = on_refused
        host, _, port = target.rpartition(":")
        self._host = host.removeprefix("[").removesuffix("]")
        self._port = int(port)
        self._server_name = server_name or self._host
        self._files = files
        self._check = check
        self._directory: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen; returns the unix socket's path."""
        self._directory = Path(tempfile.mkdtemp(prefix="bfc-gateway-"))  # created 0700
        path = self._directory / "gateway.sock"
        self._server = await asyncio.start_unix_server(self._accept, path=str(path))
        return str(path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self._files.bundle)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._files.cert, self._files.key)
        context.set_alpn_protocols(["h2"])
        return context

    async def _accept(self, local_reader: asyncio.StreamReader, local_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._relay(local_reader, local_writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.warning("gateway connection failed: %s", exc, extra={"target": f"{self._host}:{self._port}"})
        finally:
            local_writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _relay(self, local_reader: asyncio.StreamReader, local_writer: asyncio.StreamWriter) -> None:
        remote_reader, remote_writer = await asyncio.open_connection(
            self._host, self._port, ssl=self._context(), server_hostname=self._server_name
        )
        try:
            der = remote_writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            certificate = x509.load_der_x509_certificate(der)
            refusal = self._check.refusal(certificate.public_bytes(serialization.Encoding.PEM))
            if refusal:
                log.error(
                    "gateway certificate refused: %s",
                    refusal,
                    extra={
                        "serial": format(certificate.serial_number, "x"),
                        "certificate": describe(certificate),
                    },
                )
                if self._on_refused is not None:
                    self._on_refused(self._target, certificate, refusal)
                return
            await asyncio.gather(_pipe(local_reader, remote_writer), _pipe(remote_reader, local_writer))
        finally:
            # Not awaited: the TLS close_notify exchange must not hold up a
            # session's teardown (the relay is closed by cancelling us).
            remote_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
