"""The control-socket client against a fake socket: many commands over one
connection, replies matched by id however the bytes arrive, errors kept per
command, a socket that is not there or goes silent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.ovs.unixctl import Reply, UnixctlError, call_many
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
