"""A stand-in for ovs-vswitchd's control socket (JSON-RPC over a unix
socket) for unit tests: records every request, answers each from a
function, and can split its replies at awkward byte boundaries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

Answer = Callable[[str, list[str]], tuple[str, str | None]]  # -> (result, error)


class FakeControlSocket:
    def __init__(self, path: Path, answer: Answer, *, chunk: int = 0) -> None:
        self.path = path
        self.answer = answer
        self.chunk = chunk  # > 0: write replies in pieces of this many bytes
        self.requests: list[list[str]] = []
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FakeControlSocket:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop_connections()
        await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    def drop_connections(self) -> None:
        """Close every open connection, as an exiting ovs-vswitchd does."""
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        decoder = json.JSONDecoder()
        buffer = ""
        try:
            while chunk := await reader.read(65536):
                buffer += chunk.decode()
                while buffer.strip():
                    try:
                        request, end = decoder.raw_decode(buffer.lstrip())
                    except json.JSONDecodeError:
                        break
                    buffer = buffer.lstrip()[end:]
                    params = [request["method"], *request["params"]]
                    self.requests.append(params)
                    result, error = self.answer(params[0], params[1:])
                    reply = json.dumps(
                        {"id": request["id"], "result": None if error else result, "error": error}
                    )
                    data = reply.encode()
                    step = self.chunk or len(data)
                    for i in range(0, len(data), step):
                        writer.write(data[i : i + step])
                        await writer.drain()
        finally:
            writer.close()
