"""The control-socket client against a fake socket: many commands over one
connection, replies matched by id however the bytes arrive, errors kept per
command, a socket that is not there or goes silent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from coordinator.ovs import unixctl
from coordinator.ovs.unixctl import Reply, UnixctlClient, UnixctlError, call_many
from tests.fake_unixctl import FakeControlSocket


def _answer(method: str, params: list[str]) -> tuple[str, str | None]:
    if method == "fail":
        return "", "it failed (Invalid argument)\n"
    return f"{method} {' '.join(params)}\n", None


@pytest.mark.parametrize("chunk", [0, 1, 7])
async def test_a_batch_goes_over_one_connection_and_keeps_its_order(tmp_path: Path, chunk: int) -> None:
    async with FakeControlSocket(tmp_path / "ctl", _answer, chunk=chunk) as fake:
        commands = [["dpctl/flush-conntrack", f"zone={z}"] for z in range(1, 40)] + [["fail", "x"]]
        replies = await call_many(fake.path, commands, timeout=5)
    assert fake.connections == 1 and fake.requests == commands
    assert replies[0] == Reply(result="dpctl/flush-conntrack zone=1\n")
    assert replies[-1] == Reply(error="it failed (Invalid argument)") and not replies[-1].ok
    assert all(r.ok for r in replies[:-1])


async def test_nothing_to_send_opens_nothing(tmp_path: Path) -> None:
    assert await call_many(tmp_path / "absent", [], timeout=1) == []


async def test_a_missing_socket_and_a_silent_one_are_errors(tmp_path: Path) -> None:
    with pytest.raises(UnixctlError, match="cannot connect"):
        await call_many(tmp_path / "absent", [["version"]], timeout=1)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(5)

    server = await asyncio.start_unix_server(silent, path=str(tmp_path / "silent"))
    try:
        with pytest.raises(UnixctlError, match="no answer"):
            await call_many(tmp_path / "silent", [["version"]], timeout=0.3)
    finally:
        server.close()


async def test_a_kept_connection_serves_many_calls(tmp_path: Path) -> None:
    async with FakeControlSocket(tmp_path / "ctl", _answer) as fake:
        client = UnixctlClient(fake.path, timeout=5)
        try:
            for zone in range(5):
                assert (await client.call("dpctl/flush-conntrack", f"zone={zone}")).ok
            assert await client.call_many([["a"], ["b"]]) == [Reply(result="a \n"), Reply(result="b \n")]
        finally:
            await client.close()
    assert fake.connections == 1 and client.connects == 1 and len(fake.requests) == 7


async def test_a_broken_connection_is_reopened_where_the_socket_now_is(tmp_path: Path) -> None:
    """ovs-vswitchd restarted under a new pid: the kept connection breaks, the
    socket path is looked up again and the call goes to the new daemon."""
    where = {"path": str(tmp_path / "ovs-vswitchd.100.ctl")}
    lookups = 0

    def resolve() -> str:
        nonlocal lookups
        lookups += 1
        return where["path"]

    client = UnixctlClient(resolve, timeout=5)
    try:
        async with FakeControlSocket(Path(where["path"]), _answer) as old:
            assert (await client.call("version")).ok
            assert (await client.call("version")).ok
            assert lookups == 1  # looked up on connecting only
            old.drop_connections()
        async with FakeControlSocket(tmp_path / "ovs-vswitchd.200.ctl", _answer) as new:
            where["path"] = str(new.path)
            await asyncio.sleep(0)  # let the client see the closed connection, or not: both work
            assert await client.call("dpctl/ct-get-limits") == Reply(result="dpctl/ct-get-limits \n")
            assert new.requests == [["dpctl/ct-get-limits"]] and client.connects == 2
            assert client.path == str(new.path)
    finally:
        await client.close()


async def test_a_kept_connection_that_breaks_mid_call_is_retried_once(tmp_path: Path) -> None:
    answered: list[str] = []

    def answer(method: str, params: list[str]) -> tuple[str, str | None]:
        answered.append(method)
        return "ok", None

    async with FakeControlSocket(tmp_path / "ctl", answer) as fake:
        client = UnixctlClient(fake.path, timeout=5)
        try:
            await client.call("first")
            # The daemon goes away without the client having read the EOF yet.
            fake.drop_connections()
            assert await client.call("second") == Reply(result="ok")
            assert answered == ["first", "second"] and fake.connections == 2
        finally:
            await client.close()


async def test_a_socket_that_is_not_there_is_not_retried_in_vain(tmp_path: Path) -> None:
    lookups = 0

    def resolve() -> str:
        nonlocal lookups
        lookups += 1
        return str(tmp_path / "absent")

    client = UnixctlClient(resolve, timeout=1)
    with pytest.raises(UnixctlError, match="cannot connect"):
        await client.call("version")
    assert lookups == 2 and client.connects == 0  # looked up again, found the same: one attempt


async def test_a_timed_out_call_does_not_leave_its_replies_to_the_next(tmp_path: Path) -> None:
    def answer(method: str, params: list[str]) -> tuple[str, str | None]:
        return method, None

    calls = 0

    async def slow_then_fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        data = await reader.read(1000)
        if calls == 1:
            await asyncio.sleep(0.5)  # answers after the caller gave up
        ident = int(data.decode().rsplit('"id": ', 1)[1].rstrip("}"))
        writer.write(f'{{"id": {ident}, "result": "call {calls}", "error": null}}'.encode())
        await writer.drain()
        await reader.read(1000)

    server = await asyncio.start_unix_server(slow_then_fast, path=str(tmp_path / "ctl"))
    client = UnixctlClient(tmp_path / "ctl", timeout=0.2)
    try:
        with pytest.raises(UnixctlError, match="no answer"):
            await client.call("slow")
        assert await client.call("fast") == Reply(result="call 2")  # on a new connection
    finally:
        await client.close()
        server.close()


def test_a_client_needs_a_positive_timeout() -> None:
    with pytest.raises(ValueError):
        UnixctlClient("/x.ctl", timeout=0)


def test_a_client_outlives_the_event_loop_its_connection_was_opened_on(tmp_path: Path) -> None:
    """A client built once and used from successive event loops (asyncio.run
    per step) opens a connection on the loop at hand."""
    client = UnixctlClient(tmp_path / "ctl", timeout=2)

    async def step() -> Reply:
        async with FakeControlSocket(tmp_path / "ctl", _answer):
            return await client.call("version")

    assert asyncio.run(step()) == Reply(result="version \n")
    assert asyncio.run(step()) == Reply(result="version \n")
    asyncio.run(client.close())
    assert client.connects == 2


class _HeldServer:
    """Answers every request it reads, holding its first answer a while; counts
    the writes it got (one per exchange of the client)."""

    def __init__(self, hold_s: float, *, answer_after_first: bool = True) -> None:
        self.exchanges: list[list[str]] = []
        self._hold_s = hold_s
        self._answer_after_first = answer_after_first

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = json.JSONDecoder()
        while data := await reader.read(65536):
            text, methods = data.decode(), []
            while text.strip():
                message, end = decoder.raw_decode(text.lstrip())
                text = text.lstrip()[end:]
                methods.append(message["method"])
                reply = {"id": message["id"], "result": f"{message['method']}\n", "error": None}
                if len(self.exchanges) == 0:
                    await asyncio.sleep(self._hold_s)
                elif not self._answer_after_first:
                    continue
                writer.write(json.dumps(reply).encode())
            self.exchanges.append(methods)
            await writer.drain()


async def test_calls_asked_during_an_exchange_share_the_next_one(tmp_path: Path) -> None:
    held = _HeldServer(0.2)
    server = await asyncio.start_unix_server(held.serve, path=str(tmp_path / "ctl"))
    client = UnixctlClient(tmp_path / "ctl", timeout=5)
    try:
        first = asyncio.ensure_future(client.call("first"))
        await asyncio.sleep(0.05)
        rest = [client.call_many([[f"a{i}"], [f"b{i}"]]) for i in range(5)]
        answers = await asyncio.gather(first, *rest)
    finally:
        await client.close()
        server.close()
    assert answers[0] == Reply(result="first\n")
    assert answers[1:] == [[Reply(result=f"a{i}\n"), Reply(result=f"b{i}\n")] for i in range(5)]
    assert held.exchanges == [["first"], [m for i in range(5) for m in (f"a{i}", f"b{i}")]]


async def test_an_exchange_that_fails_fails_every_call_in_it(tmp_path: Path) -> None:
    held = _HeldServer(0.2, answer_after_first=False)
    server = await asyncio.start_unix_server(held.serve, path=str(tmp_path / "ctl"))
    client = UnixctlClient(tmp_path / "ctl", timeout=0.5)
    try:
        first = asyncio.ensure_future(client.call("first"))
        await asyncio.sleep(0.05)
        rest = [client.call(f"c{i}") for i in range(3)]
        outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    finally:
        await client.close()
        server.close()
    assert outcomes[0] == Reply(result="first\n")
    assert all(isinstance(o, UnixctlError) and "no answer to 3 command" in str(o) for o in outcomes[1:])


async def test_a_call_on_a_kept_connection_is_written_before_the_caller_first_waits(tmp_path: Path) -> None:
    """The dataplane starts the conntrack revoke as a task and yields once,
    so ovs-vswitchd has the dump request while the apply's other work runs:
    after that one turn of the loop the request must be on the socket."""
    path = tmp_path / "ctl"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.setblocking(False)
    client = UnixctlClient(str(path), timeout=5)
    try:
        first = asyncio.ensure_future(client.call("version"))
        peer, _ = await asyncio.get_running_loop().sock_accept(listener)
        peer.setblocking(False)
        request = json.loads(await asyncio.get_running_loop().sock_recv(peer, 4096))
        await asyncio.get_running_loop().sock_sendall(
            peer, json.dumps({"id": request["id"], "result": "1\n", "error": None}).encode()
        )
        assert (await first).ok

        second = asyncio.ensure_future(client.call("dpctl/dump-conntrack", "zone=5"))
        await asyncio.sleep(0)
        written = peer.recv(4096)  # raises BlockingIOError if nothing was written yet
        assert json.loads(written)["params"] == ["zone=5"]
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        peer.close()
    finally:
        listener.close()
        await client.close()


async def test_a_connection_opened_as_its_caller_is_cancelled_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller is cancelled in the very turn its connection finished
    opening: the connection is the client's (and closed with the call's
    failure), not an open socket nobody holds."""
    opened: list[Any] = []
    caller: asyncio.Task[Reply] | None = None

    class Opened:
        path = str(tmp_path / "ctl")
        usable = True
        closed = False

        def close(self) -> None:
            self.closed = True

    async def open_then_cancel_the_caller(path: str) -> Opened:
        assert caller is not None
        caller.cancel()
        opened.append(Opened())
        return opened[-1]

    monkeypatch.setattr(unixctl._Connection, "open", open_then_cancel_the_caller)
    client = UnixctlClient(str(tmp_path / "ctl"), timeout=5)
    caller = asyncio.ensure_future(client.call("version"))
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert len(opened) == 1 and opened[0].closed
