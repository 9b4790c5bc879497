"""Traces, dpif/show and datapath dumps go over ovs-vswitchd's control socket
when given its path (no ovs-appctl process), and through ovs-appctl otherwise."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from coordinator.ovs.offload import dump_flows
from coordinator.ovs.trace import TraceError, dpif_show, trace
from coordinator.ovs.unixctl import UnixctlClient
from tests.fake_unixctl import FakeControlSocket


def _answer(method: str, params: list[str]) -> tuple[str, str | None]:
    if method == "ofproto/trace" and params[0] == "br-missing":
        return "", "br-missing: unknown bridge"
    return f"{method} {' '.join(params)}\nDatapath actions: 2\n", None


@pytest.fixture
def no_appctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ovs-appctl on PATH that records being run (it must not be)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "ovs-appctl"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "spawned"}"\necho spawned\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "spawned"


async def test_commands_go_over_the_socket(tmp_path: Path, no_appctl: Path) -> None:
    async with FakeControlSocket(tmp_path / "v.ctl", _answer) as fake:
        text = await trace(fake.path, "br0", "in_port=1,ip", ["trk,new", "trk,est"])
        assert (
            text
            == "ofproto/trace br0 in_port=1,ip --ct-next trk,new --ct-next trk,est\nDatapath actions: 2\n"
        )
        assert (await dpif_show(fake.path)).startswith("dpif/show")
        report = await dump_flows(fake.path)
        with pytest.raises(TraceError, match="unknown bridge") as info:
            await trace(fake.path, "br-missing", "in_port=1")
    assert info.value.stderr == "br-missing: unknown bridge" and info.value.argv[0] == "ovs-appctl"
    assert fake.requests[2] == ["dpctl/dump-flows", "-m", "--names"] and report.unparsed
    assert not no_appctl.exists()


async def test_a_name_or_another_executable_runs_ovs_appctl(tmp_path: Path, no_appctl: Path) -> None:
    assert await trace("ovs-vswitchd", "br0", "in_port=1") == "spawned\n"
    async with FakeControlSocket(tmp_path / "v.ctl", _answer) as fake:
        await dpif_show(fake.path, executable=["ovs-appctl", "--timeout=1"])
    assert fake.requests == []
    assert no_appctl.read_text().splitlines() == [
        "-t ovs-vswitchd ofproto/trace br0 in_port=1",
        f"--timeout=1 -t {fake.path} dpif/show",
    ]


async def test_a_kept_client_carries_traces_over_its_one_connection(tmp_path: Path, no_appctl: Path) -> None:
    async with FakeControlSocket(tmp_path / "v.ctl", _answer) as fake:
        client = UnixctlClient(fake.path, timeout=2)
        try:
            assert (await trace(client, "br0", "in_port=1")).startswith("ofproto/trace br0 in_port=1")
            assert (await dpif_show(client)).startswith("dpif/show")
            with pytest.raises(TraceError, match="unknown bridge") as info:
                await trace(client, "br-missing", "in_port=1")
        finally:
            await client.close()
    assert info.value.argv[:3] == ["ovs-appctl", "-t", str(fake.path)]
    assert fake.connections == 1 and len(fake.requests) == 3
    assert not no_appctl.exists()
