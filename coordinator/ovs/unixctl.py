"""ovs-vswitchd's control socket, spoken directly: JSON-RPC over a unix socket.

``ovs-appctl`` is one process spawn and one connection per command. A batch
(a zone flush for each of a thousand attachments, the revoked tuples of a
zone) instead goes over one connection here: every request is written at
once and the replies are read back by id, so a batch costs about one round
trip plus ovs-vswitchd's own work. The ``ovs`` package's unixctl client
would do, but without its C extension its JSON parsing is slower than
spawning ``ovs-appctl``; the protocol is small enough to speak with the
standard library.

The protocol (JSON-RPC 1.0, as ``lib/unixctl.c`` serves it): a request is
``{"method": M, "params": [strings], "id": N}``; the reply carries the same
id and either ``"result"`` (the command's text output) or ``"error"`` (its
error text). Messages are JSON objects back to back, without framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.waiting import wait_within

# A reply larger than this is not something we asked for.
MAX_REPLY_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 256 * 1024


class UnixctlError(RuntimeError):
    """The control socket could not be reached or broke the protocol."""


@dataclass(frozen=True)
class Reply:
    """One command's answer: its output text, or the error text OVS gave."""

    result: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def call_many(
    path: str | os.PathLike[str], commands: Sequence[Sequence[str]], *, timeout: float
) -> list[Reply]:
    """Run ``commands`` (each ``[method, *params]``) over one connection to
    the control socket at ``path``; their replies, in order. Raises
    UnixctlError when the socket cannot be used (a command OVS refused is
    a Reply with ``error`` set, not an exception)."""
    if not commands:
        return []
    try:
        return await wait_within(_call_many(os.fspath(path), commands), timeout)
    except asyncio.TimeoutError as exc:
        raise UnixctlError(f"{path}: no answer to {len(commands)} command(s) within {timeout}s") from exc


async def _call_many(path: str, commands: Sequence[Sequence[str]]) -> list[Reply]:
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=_READ_CHUNK)
    except OSError as exc:
        raise UnixctlError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    try:
        payload = "".join(
            json.dumps({"method": command[0], "params": list(command[1:]), "id": i})
            for i, command in enumerate(commands)
        )
        writer.write(payload.encode())
        await writer.drain()
        replies: dict[int, Reply] = {}
        decoder = json.JSONDecoder()
        buffer = ""
        while len(replies) < len(commands):
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                raise UnixctlError(
                    f"{path} closed the connection after {len(replies)} of {len(commands)} replies"
                )
            buffer += chunk.decode(errors="replace")
            if len(buffer) > MAX_REPLY_BYTES:
                raise UnixctlError(f"{path}: reply larger than {MAX_REPLY_BYTES} bytes")
            buffer = _take_messages(decoder, buffer, replies, len(commands))
        return [replies[i] for i in range(len(commands))]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _take_messages(decoder: json.JSONDecoder, buffer: str, replies: dict[int, Reply], expected: int) -> str:
    """Parse every complete message at the front of ``buffer`` into
    ``replies``; returns what is left (an incomplete message)."""
    while True:
        text = buffer.lstrip()
        if not text:
            return ""
        try:
            message, end = decoder.raw_decode(text)
        except json.JSONDecodeError:
            return text  # incomplete: wait for more bytes
        buffer = text[end:]
        _record(message, replies, expected)


def _record(message: Any, replies: dict[int, Reply], expected: int) -> None:
    if not isinstance(message, dict):
        raise UnixctlError(f"unexpected message: {str(message)[:120]}")
    if message.get("method") is not None:
        return  # a request from ovs-vswitchd (e.g. echo): none is expected; ignore
    ident = message.get("id")
    if not isinstance(ident, int) or not 0 <= ident < expected or ident in replies:
        raise UnixctlError(f"reply with unexpected id {str(ident)[:40]}")
    error = message.get("error")
    if error is not None:
        replies[ident] = Reply(error=str(error).strip())
        return
    result = message.get("result")
    replies[ident] = Reply(result=result if isinstance(result, str) else "")
