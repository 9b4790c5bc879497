"""One persistent OpenFlow 1.3 connection to a bridge's management socket.

``ovs-ofctl`` costs a process spawn and a connection per call (~5 ms);
over one open connection a bundle and its barrier take about a
millisecond. The channel is only transport: messages go out as bytes
(encoded with os-ken's codec, ``ofencode``/``ofwire``), replies come back
routed by transaction id.

- One reader task per connection answers the switch's echo requests
  (OVS probes an idle connection after 60 s and drops it 60 s later),
  ignores asynchronous messages (port status and the like), collects
  multipart replies until their last part, and routes errors to the
  request they answer.
- Every exchange ends with a barrier: the switch handles one
  connection's messages in order, so once the barrier's reply is in,
  every message before it succeeded unless an error for it came first.
- On EOF (OVS restarted, the socket went away) every pending request
  fails with ``ChannelClosed``; nothing waits forever. A request that
  times out closes the connection too (the switch may still be working
  on it; a new connection starts clean, and an open bundle is discarded
  with the old one).
- The next request reconnects, with backoff, to a freshly resolved
  socket path (a restarted ovs-vswitchd makes a new socket).
- With ``watch_flows``, each connection asks for the switch's flow monitor
  first; the reader hands its updates to the connection's ``FlowWatch``
  and stamps every reply with the watch's count (``ofwatch``).

Hand-written because os-ken's own transport is its eventlet app manager,
which this daemon does not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from os_ken.ofproto import ofproto_v1_3 as ofp

from coordinator.ovs.ofwatch import (
    FlowWatch,
    is_monitor_reply,
    monitor_cancel,
    monitor_notice,
    monitor_request,
)
from coordinator.ovs.ofwire import HEADER, ErrorReply, WireError, error_reply
from coordinator.waiting import wait_within

log = logging.getLogger(__name__)

_MAX_XID = 0xFFFF_FFFF
_HELLO_ELEM = struct.Struct("!HH")
_VERSIONBITMAP = 1


class ChannelError(RuntimeError):
    """The switch could not be reached or answered wrongly."""


class ChannelClosed(ChannelError):
    """The connection ended while a request waited for its answer."""


class RequestTimeout(ChannelError):
    pass


class Reply(Enum):
    NONE = "none"  # success is silence (flow-mod, meter-mod, bundle add)
    ONE = "one"  # one reply message
    MULTIPART = "multipart"  # multipart reply parts, until the last


class Outgoing(NamedTuple):
    """One message to send (a tuple: a fresh policy's bundle makes thousands)."""

    message: bytes  # complete, with its xid set (``OpenFlowChannel.xid``)
    xid: int
    reply: Reply = Reply.NONE


@dataclass
class Outcome:
    """What came back for one message: its reply messages, or an error."""

    replies: list[bytes] = field(default_factory=list)
    error: ErrorReply | None = None
    seen: int | None = None  # the flow watch's count when it came (``ofwatch``)


class _Pending:
    """A message awaiting its answer. Only an exchange's barrier has a
    future to wait on (every answer before it is in once it is): a bundle of
    thousands of adds makes no future per add."""

    __slots__ = ("done", "finished", "outcome", "reply")

    def __init__(self, reply: Reply, done: asyncio.Future[None] | None = None) -> None:
        self.reply = reply
        self.outcome = Outcome()
        self.finished = False
        self.done = done

    def finish(self) -> None:
        self.finished = True
        if self.done is not None:
            self.done.set_result(None)


def _message(kind: int, xid: int, body: bytes = b"") -> bytes:
    return HEADER.pack(ofp.OFP_VERSION, kind, HEADER.size + len(body), xid) + body


def _hello_offers_13(message: bytes) -> bool:
    version = message[0]
    if version < ofp.OFP_VERSION:
        return False
    at = HEADER.size
    while at + _HELLO_ELEM.size <= len(message):
        kind, length = _HELLO_ELEM.unpack_from(message, at)
        if length < _HELLO_ELEM.size:
            break
        if kind == _VERSIONBITMAP and length >= _HELLO_ELEM.size + 4:
            (bitmap,) = struct.unpack_from("!I", message, at + _HELLO_ELEM.size)
            return bool(bitmap & (1 << ofp.OFP_VERSION))
        at += (length + 7) // 8 * 8
    return True  # no bitmap: the switch accepts up to its header's version


class _Connection:
    """One socket and its reader; requests of a dead connection fail."""

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path = path
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, _Pending] = {}
        self.closed: ChannelError | None = None
        self.echoes_answered = 0
        self.task: asyncio.Task[None] | None = None
        self.watch: FlowWatch | None = None

    async def read_message(self) -> bytes:
        head = await self.reader.readexactly(HEADER.size)
        _, _, length, _ = HEADER.unpack(head)
        if length < HEADER.size:
            raise WireError(f"message length {length} below the header's")
        return head + await self.reader.readexactly(length - HEADER.size)

    async def run(self) -> None:
        try:
            while True:
                self._dispatch(await self.read_message())
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self.close(ChannelClosed(f"connection to {self.path} closed ({type(exc).__name__})"))
        except WireError as exc:
            self.close(ChannelError(f"bad message from {self.path}: {exc}"))
        except asyncio.CancelledError:
            self.close(ChannelClosed(f"connection to {self.path} closed"))
            raise

    def _dispatch(self, message: bytes) -> None:
        _, kind, _, xid = HEADER.unpack_from(message)
        if kind == ofp.OFPT_ECHO_REQUEST:
            self.writer.write(_message(ofp.OFPT_ECHO_REPLY, xid, message[HEADER.size :]))
            self.echoes_answered += 1
            return
        watch = self.watch
        if watch is not None and self._watched(watch, kind, xid, message):
            return
        pending = self.pending.get(xid)
        if pending is None or pending.finished:
            return  # asynchronous (port status, ...) or an answer nobody waits for
        if kind == ofp.OFPT_ERROR:
            pending.outcome.error = error_reply(message)
        else:
            pending.outcome.replies.append(message)
            if kind == ofp.OFPT_MULTIPART_REPLY and pending.reply is Reply.MULTIPART:
                if len(message) < HEADER.size + 4:
                    raise WireError("multipart reply cut")
                (flags,) = struct.unpack_from("!H", message, HEADER.size + 2)
                if flags & ofp.OFPMPF_REPLY_MORE:
                    return
        pending.outcome.seen = None if watch is None else watch.stamp
        pending.finish()

    @staticmethod
    def _watched(watch: FlowWatch, kind: int, xid: int, message: bytes) -> bool:
        """Whether ``message`` was the flow monitor's (handed to ``watch``)."""
        if kind == ofp.OFPT_MULTIPART_REPLY and is_monitor_reply(message):
            watch.feed(message)
            return True
        if kind == ofp.OFPT_EXPERIMENTER and (notice := monitor_notice(message)) is not None:
            watch.notice(notice)
            return True
        if kind == ofp.OFPT_ERROR and (
            (xid == watch.request_xid and not watch.live) or xid == watch.cancel_xid
        ):  # (once live, the request's xid is another's)
            watch.refused(error_reply(message).describe())
            return True
        return False

    def close(self, why: ChannelError) -> None:
        if self.closed is None:
            self.closed = why
        for pending in self.pending.values():
            pending.finished = True
            if pending.done is not None and not pending.done.done():
                pending.done.set_exception(self.closed)
                # Retrieved by the exchange that waits; no "never retrieved" noise otherwise.
                pending.done.exception()
        self.pending.clear()
        self.writer.close()


class OpenFlowChannel:
    """Requests over one connection to ``resolve()`` (a unix socket path),
    reconnected when it drops. ``timeout`` bounds each exchange, connecting
    included; ``connect_timeout`` (if shorter) bounds the (re)connecting
    part, so a request made while the switch is away fails soon instead of
    waiting out the whole exchange budget."""

    def __init__(
        self,
        resolve: Callable[[], str],
        *,
        timeout: float,
        connect_timeout: float | None = None,
        backoff_initial: float = 0.02,
        backoff_max: float = 1.0,
        watch_flows: bool = False,
        xids: Iterator[int] | None = None,
    ) -> None:
        self._resolve = resolve
        self._watch_flows = watch_flows
        self._timeout = timeout
        self._connect_timeout = timeout if connect_timeout is None else min(connect_timeout, timeout)
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._xids = xids if xids is not None else itertools.cycle(range(1, _MAX_XID + 1))
        self.connects = 0  # successful connections so far (tests and metrics read it)

    @property
    def path(self) -> str:
        return self._resolve()

    @property
    def echoes_answered(self) -> int:
        return self._conn.echoes_answered if self._conn is not None else 0

    @property
    def watch(self) -> FlowWatch | None:
        """The flow monitor's report on the open connection, if asked for."""
        conn = self._conn
        return conn.watch if conn is not None and conn.closed is None else None

    def unwatch(self) -> None:
        """Cancel the open connection's flow monitor for bulk work: the
        switch would report every one of its flows (and pause the monitor
        past its backlog, then report again all that changed meanwhile),
        which only a cookie's small changes gain from. ``rewatch`` asks
        for it again."""
        conn = self._conn
        watch = self.watch
        if conn is not None and watch is not None and watch.armed and watch.usable:
            watch.cancelled(xid := self.xid())
            conn.writer.write(monitor_cancel(xid, watch.monitor_id))

    def rewatch(self) -> None:
        """Ask again for a monitor ``unwatch`` cancelled (before the
        requests that follow: their replies are stamped once it is in)."""
        conn = self._conn
        watch = self.watch
        if conn is not None and watch is not None and not watch.armed and watch.usable:
            xid = self.xid()
            conn.writer.write(monitor_request(xid, watch.rearmed(xid)))

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.closed is None

    def xid(self) -> int:
        return next(self._xids)

    @property
    def xids(self) -> Iterator[int]:
        """This channel's count of xids, to give a channel beside it
        (``xids=``): requests made for one may then go on the other."""
        return self._xids

    async def connect(self) -> None:
        await self._connection(time.monotonic() + self._connect_timeout)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.close(ChannelClosed(f"channel to {conn.path} closed"))
        if conn.task is not None:
            conn.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.task
        with contextlib.suppress(OSError):
            await conn.writer.wait_closed()

    async def _connection(self, deadline: float) -> _Connection:
        conn = self._conn
        if conn is not None and conn.closed is None:
            return conn
        async with self._connecting:
            conn = self._conn
            if conn is not None and conn.closed is None:
                return conn
            delay = self._backoff_initial
            while True:
                path = self._resolve()
                try:
                    conn = await wait_within(self._open(path), max(0.0, deadline - time.monotonic()))
                except (OSError, ChannelError, asyncio.TimeoutError) as exc:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or (
                        isinstance(exc, ChannelError) and not isinstance(exc, ChannelClosed)
                    ):
                        raise ChannelError(
                            f"cannot open OpenFlow channel to {path}: {exc or type(exc).__name__}"
                        ) from exc
                    await asyncio.sleep(min(delay, remaining))
                    delay = min(delay * 2, self._backoff_max)
                    continue
                self._conn = conn
                self.connects += 1
                return conn

    async def _open(self, path: str) -> _Connection:
        reader, writer = await asyncio.open_unix_connection(path)
        conn = _Connection(path, reader, writer)
        try:
            writer.write(_message(ofp.OFPT_HELLO, self.xid()))
            hello = await conn.read_message()
            if hello[1] != ofp.OFPT_HELLO:
                raise ChannelError(f"{path} opened with message type {hello[1]}, not a hello")
            if not _hello_offers_13(hello):
                raise ChannelError(
                    f"{path} does not speak OpenFlow 1.3 (the bridge's protocols must include OpenFlow13)"
                )
        except (asyncio.IncompleteReadError, WireError) as exc:
            writer.close()
            raise ChannelClosed(f"{path} closed during the hello") from exc
        except BaseException:
            writer.close()
            raise
        if self._watch_flows:  # before any other request: every reply after it is stamped
            conn.watch = FlowWatch(xid := self.xid())
            writer.write(monitor_request(xid, conn.watch.monitor_id))
        conn.task = asyncio.get_running_loop().create_task(conn.run(), name=f"openflow reader {path}")
        return conn

    async def exchange(self, messages: Sequence[Outgoing], *, timeout: float | None = None) -> list[Outcome]:
        """Send ``messages`` and a barrier in one write; wait for the barrier
        (at most ``timeout``, the channel's by default, connecting included).
        Returns each message's outcome (errors included, not raised)."""
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        conn = await self._connection(min(deadline, time.monotonic() + self._connect_timeout))
        if conn.closed is not None:
            raise conn.closed
        loop = asyncio.get_running_loop()
        barrier = Outgoing(_message(ofp.OFPT_BARRIER_REQUEST, xid := self.xid()), xid, Reply.ONE)
        batch = [*messages, barrier]
        pendings = [_Pending(out.reply) for out in messages]
        answered: asyncio.Future[None] = loop.create_future()
        pendings.append(_Pending(Reply.ONE, answered))
        conn.pending.update(zip((out.xid for out in batch), pendings, strict=True))
        try:
            conn.writer.write(b"".join(out.message for out in batch))
            try:
                await wait_within(asyncio.shield(answered), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError as exc:
                why = RequestTimeout(f"no answer from {conn.path} within {limit}s")
                conn.close(why)
                raise why from exc
        finally:
            for out in batch:
                conn.pending.pop(out.xid, None)
        outcomes = []
        for out, pending in zip(messages, pendings, strict=False):
            if out.reply is not Reply.NONE and not pending.finished:
                raise ChannelError(
                    f"{conn.path} sent no reply to message type {out.message[1]} before the barrier"
                )
            outcomes.append(pending.outcome)
        return outcomes

    async def request(self, message: bytes, xid: int, reply: Reply = Reply.ONE) -> Outcome:
        [outcome] = await self.exchange([Outgoing(message, xid, reply)])
        return outcome

    async def echo(self) -> None:
        xid = self.xid()
        outcome = await self.request(_message(ofp.OFPT_ECHO_REQUEST, xid), xid)
        if outcome.error is not None:
            raise ChannelError(f"echo failed: {outcome.error.describe()}")
