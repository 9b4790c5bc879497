"""ovs-vswitchd's control socket, spoken directly: JSON-RPC over a unix socket.

``ovs-appctl`` is one process spawn and one connection per command (about
5 ms each). :class:`UnixctlClient` instead keeps one connection open across
calls: a batch (a zone flush for each of a thousand attachments, the
revoked tuples of a zone) is written at once and its replies are read back
by id, so a call costs about one round trip plus ovs-vswitchd's own work.
The ``ovs`` package's unixctl client would do, but without its C extension
its JSON parsing is slower than spawning ``ovs-appctl``; the protocol is
small enough to speak with the standard library.

The packaged ovs-vswitchd names its socket after its pid
(``ovs-vswitchd.<pid>.ctl``), so the socket moves when OVS restarts. The
client therefore takes a function that finds the current path, calls it
only when it (re)connects (no lookup per call), and when a connection it
had kept breaks (the daemon it led to is gone) it finds the path again and
sends the batch once more. That is safe because every command sent through
it (conntrack flushes, zone limits, dumps, traces) may run twice.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from coordinator.waiting import wait_within

# A reply larger than this is not something we asked for.
MAX_REPLY_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 256 * 1024

#: A fixed socket path, or a function that finds the current one.
Target: TypeAlias = str | os.PathLike[str] | Callable[[], str]


class UnixctlError(RuntimeError):
    """The control socket could not be reached or broke the protocol."""


class _Broken(UnixctlError):
    """The connection could not be opened or went away: worth one retry on a path found again."""


@dataclass(frozen=True)
class Reply:
    """One command's answer: its output text, or the error text OVS gave."""

    result: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Connection:
    """One open connection; ids keep increasing over its life, so a reply
    is never taken for another batch's."""

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._next_id = 0
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    @classmethod
    async def open(cls, path: str) -> _Connection:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=_READ_CHUNK)
        except OSError as exc:
            raise _Broken(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        return cls(path, reader, writer)

    @property
    def usable(self) -> bool:
        """False once the peer has closed (ovs-vswitchd exited) or we did, or
        when asked from another event loop than the one it was opened on."""
        if self._loop is not asyncio.get_running_loop():
            return False
        return not (self._reader.at_eof() or self._writer.is_closing())

    def send(self, commands: Sequence[Sequence[str]]) -> int:
        """Write ``commands`` now (no wait: the caller's next await finds
        them on their way); the id of the first, for ``replies``."""
        first = self._next_id
        self._next_id += len(commands)
        payload = "".join(
            json.dumps({"method": command[0], "params": list(command[1:]), "id": first + i})
            for i, command in enumerate(commands)
        )
        try:
            self._writer.write(payload.encode())
        except (ConnectionError, OSError) as exc:
            raise _Broken(f"{self.path}: connection lost: {exc.strerror or exc}") from exc
        return first

    async def replies(self, first: int, count: int) -> list[Reply]:
        """The replies to the ``count`` commands ``send`` wrote from id ``first``."""
        replies: dict[int, Reply] = {}
        try:
            await self._writer.drain()
            while len(replies) < count:
                chunk = await self._reader.read(_READ_CHUNK)
                if not chunk:
                    raise _Broken(
                        f"{self.path} closed the connection after {len(replies)} of {count} replies"
                    )
                self._buffer += chunk.decode(errors="replace")
                if len(self._buffer) > MAX_REPLY_BYTES:
                    raise UnixctlError(f"{self.path}: reply larger than {MAX_REPLY_BYTES} bytes")
                self._take_messages(replies, first, count)
        except (ConnectionError, OSError) as exc:
            raise _Broken(f"{self.path}: connection lost: {exc.strerror or exc}") from exc
        return [replies[first + i] for i in range(count)]

    def _take_messages(self, replies: dict[int, Reply], first: int, expected: int) -> None:
        """Parse every complete message at the front of the buffer into
        ``replies``; what is left is an incomplete message."""
        while True:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = ""
                return
            try:
                message, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                self._buffer = text  # incomplete: wait for more bytes
                return
            self._buffer = text[end:]
            _record(message, replies, first, expected)

    def close(self) -> None:
        # The loop it was opened on may be closed already (then so is the socket).
        with contextlib.suppress(RuntimeError):
            self._writer.close()

    async def wait_closed(self) -> None:
        if self._loop is not asyncio.get_running_loop():
            self.close()
            return
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


@dataclass
class _Asked:
    """One caller's commands, waiting to be sent with the others asked meanwhile."""

    commands: Sequence[Sequence[str]]
    replies: asyncio.Future[list[Reply]]


class UnixctlClient:
    """One ovs-vswitchd's control socket over a connection kept open across
    calls (opened on first use, opened again on the current path when it
    breaks). Exchanges take turns on the connection: ovs-vswitchd serves its
    control connections one request at a time anyway. Calls asked while an
    exchange is under way go out together in the next one (concurrent
    attaches' zone limits share a round trip instead of queueing one
    behind another); each caller gets its own replies, and a failed
    exchange fails every call in it.

    ``target`` is the socket's path or a function returning the current
    one; ``timeout`` bounds each call (a call that runs out closes the
    connection: its late replies must not meet the next call)."""

    def __init__(self, target: Target, *, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if callable(target):
            self._resolve: Callable[[], str] = target
        else:
            fixed = os.fspath(target)
            self._resolve = lambda: fixed
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._asked: list[_Asked] = []  # calls not yet sent
        self._connection: _Connection | None = None
        self.connects = 0  # connections opened so far (for tests and metrics)

    def __repr__(self) -> str:
        return f"UnixctlClient({self.path!r})"

    @property
    def path(self) -> str:
        """The socket of the open connection, else where it would connect now."""
        return self._connection.path if self._connection is not None else self._resolve()

    async def call(self, *command: str) -> Reply:
        """One command (``method, *params``); its reply."""
        (reply,) = await self.call_many([command])
        return reply

    async def call_many(self, commands: Sequence[Sequence[str]]) -> list[Reply]:
        """Run ``commands`` (each ``[method, *params]``) in one exchange;
        their replies, in order. Raises UnixctlError when the socket cannot
        be used (a command OVS refused is a Reply with ``error`` set, not an
        exception)."""
        if not commands:
            return []
        asked = _Asked(commands, asyncio.get_running_loop().create_future())
        # A caller gone meanwhile (cancelled) never reads its outcome.
        asked.replies.add_done_callback(_seen)
        self._asked.append(asked)
        async with self._lock:
            if not asked.replies.done():  # else an earlier caller's exchange took it
                batch, self._asked = self._asked, []
                await self._send(batch)
        return await asked.replies

    async def _send(self, batch: list[_Asked]) -> None:
        """One exchange of every command in ``batch``; each caller's future
        gets its replies or the exchange's error."""
        commands = [command for asked in batch for command in asked.commands]
        try:
            replies = await self._exchange(commands, asyncio.get_running_loop().time() + self._timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.TimeoutError | UnixctlError | asyncio.CancelledError):
                self._drop()  # late replies must not meet the next exchange
            failure: Exception
            if isinstance(exc, asyncio.TimeoutError):
                failure = UnixctlError(
                    f"{self.path}: no answer to {len(commands)} command(s) within {self._timeout}s"
                )
            elif isinstance(exc, Exception):
                failure = exc
            else:
                failure = UnixctlError(f"{self.path}: the exchange was interrupted ({exc!r})")
            for asked in batch:
                if not asked.replies.done():
                    asked.replies.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for asked in batch:
            end = start + len(asked.commands)
            if not asked.replies.done():
                asked.replies.set_result(replies[start:end])
            start = end

    async def _exchange(self, commands: Sequence[Sequence[str]], deadline: float) -> list[Reply]:
        """``commands``' replies, by ``deadline`` (loop time) or
        asyncio.TimeoutError. On a connection kept open the commands are
        written before this first waits: a caller that starts the call as a
        task and yields once has its request on its way (see ``_over``)."""
        kept = self._connection is not None and self._connection.usable
        if not kept:
            self._drop()
        path = self._connection.path if self._connection is not None else self._resolve()
        try:
            return await self._over(path, commands, deadline)
        except _Broken:
            self._drop()
            again = self._resolve()
            # A kept connection that broke led to a daemon that has gone (or
            # restarted); a fresh one that failed is worth another try only
            # if the socket has moved meanwhile.
            if not kept and again == path:
                raise
        return await self._over(again, commands, deadline)

    async def _over(self, path: str, commands: Sequence[Sequence[str]], deadline: float) -> list[Reply]:
        connection = self._connection
        if connection is None:
            connection = await wait_within(self._connect(path), self._left(deadline))
        first = connection.send(commands)
        return await wait_within(connection.replies(first, len(commands)), self._left(deadline))

    async def _connect(self, path: str) -> _Connection:
        # The client holds the connection as soon as it is open: a caller
        # cancelled in that same moment leaves it to ``_drop``, not unclosed.
        self._connection = await _Connection.open(path)
        self.connects += 1
        return self._connection

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.0, deadline - asyncio.get_running_loop().time())

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.wait_closed()


def _seen(replies: asyncio.Future[list[Reply]]) -> None:
    if not replies.cancelled():
        replies.exception()


async def call_many(
    path: str | os.PathLike[str], commands: Sequence[Sequence[str]], *, timeout: float
) -> list[Reply]:
    """Run ``commands`` over one connection to the control socket at
    ``path``, opened for them and closed after (see UnixctlClient)."""
    client = UnixctlClient(path, timeout=timeout)
    try:
        return await client.call_many(commands)
    finally:
        await client.close()


def _record(message: Any, replies: dict[int, Reply], first: int, expected: int) -> None:
    if not isinstance(message, dict):
        raise UnixctlError(f"unexpected message: {str(message)[:120]}")
    if message.get("method") is not None:
        return  # a request from ovs-vswitchd (e.g. echo): none is expected; ignore
    ident = message.get("id")
    if (
        not isinstance(ident, int)
        or isinstance(ident, bool)
        or not first <= ident < first + expected
        or ident in replies
    ):
        raise UnixctlError(f"reply with unexpected id {str(ident)[:40]}")
    error = message.get("error")
    if error is not None:
        replies[ident] = Reply(error=str(error).strip())
        return
    result = message.get("result")
    replies[ident] = Reply(result=result if isinstance(result, str) else "")
