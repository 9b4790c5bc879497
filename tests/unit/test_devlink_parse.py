"""coordinator.eswitch.devlink: the ``devlink -j`` JSON parsers and the CLI transport.

Samples follow iproute2's devlink/devlink.c output (see the module docstring);
SF_PORT_JSON is verbatim the ``devlink port show pci/0000:06:00.0/32768 -jp``
example of the kernel commit "devlink: Introduce PCI SF port flavour and port
attribute" (Parav Pandit, 2020).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from coordinator.eswitch.base import EswitchError
from coordinator.eswitch.devlink import (
    DevlinkCli,
    DevlinkError,
    PortFunction,
    RunResult,
    parse_dev_info,
    parse_eswitch_mode,
    parse_port_add,
    parse_ports,
    pci_handle,
)

DEV = "pci/0000:03:00.0"

ESWITCH_JSON = '{"dev":{"pci/0000:03:00.0":{"mode":"switchdev","inline-mode":"none","encap-mode":"basic"}}}'

INFO_JSON = json.dumps(
    {
        "info": {
            DEV: {
                "driver": "mlx5_core",
                "serial_number": "MT2109X12345",
                "versions": {
                    "fixed": {"fw.psid": "MT_0000000540"},
                    "running": {"fw.version": "24.35.2000", "fw": "24.35.2000"},
                    "stored": {"fw.version": "24.35.2302", "fw": "24.35.2302"},
                },
            }
        }
    }
)

SF_PORT_JSON = """{
    "port": {
        "pci/0000:06:00.0/32768": {
            "type": "eth",
            "netdev": "ens2f0npf0sf88",
            "flavour": "pcisf",
            "controller": 0,
            "pfnum": 0,
            "sfnum": 88,
            "splittable": false,
            "function": {
                "hw_addr": "00:00:00:00:88:88",
                "state": "active",
                "opstate": "attached"
            }
        }
    }
}"""

BLUEFIELD_PORTS_JSON = json.dumps(
    {
        "port": {
            f"{DEV}/65535": {
                "type": "eth",
                "netdev": "p0",
                "flavour": "physical",
                "port": 0,
                "splittable": False,
            },
            f"{DEV}/131072": {
                "type": "eth",
                "netdev": "pf0hpf",
                "flavour": "pcipf",
                "controller": 1,
                "pfnum": 0,
                "external": True,
                "splittable": False,
                "function": {"hw_addr": "0c:42:a1:d3:e0:00"},
            },
            f"{DEV}/2": {
                "type": "eth",
                "netdev": "pf0vf1",
                "flavour": "pcivf",
                "controller": 1,
                "pfnum": 0,
                "vfnum": 1,
                "external": True,
                "splittable": False,
                "function": {"hw_addr": "00:00:00:00:00:00"},
            },
            "pci/0000:03:00.1/65535": {"type": "eth", "netdev": "p1", "flavour": "physical", "port": 1},
        }
    }
)


def test_eswitch_mode() -> None:
    assert parse_eswitch_mode(ESWITCH_JSON, DEV) == "switchdev"
    assert parse_eswitch_mode(ESWITCH_JSON.replace("switchdev", "legacy"), DEV) == "legacy"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "expected a JSON object"),
        ("{}", "no 'dev' object"),
        ('{"dev":{"pci/0000:04:00.0":{"mode":"switchdev"}}}', "no mode reported for pci/0000:03:00.0"),
        ('{"dev":{"pci/0000:03:00.0":{}}}', "no mode"),
    ],
)
def test_eswitch_mode_errors_name_the_command(text: str, message: str) -> None:
    with pytest.raises(DevlinkError, match=message) as info:
        parse_eswitch_mode(text, DEV)
    assert "dev eswitch show pci/0000:03:00.0" in str(info.value)
    assert isinstance(info.value, EswitchError)


def test_dev_info() -> None:
    info = parse_dev_info(INFO_JSON, DEV)
    assert info.driver == "mlx5_core"
    assert info.serial_number == "MT2109X12345"
    assert info.fixed == {"fw.psid": "MT_0000000540"}
    assert info.firmware_version == "24.35.2000"  # running, not the stored (pending) one
    assert info.stored["fw.version"] == "24.35.2302"


def test_dev_info_generic_fw_and_missing_versions() -> None:
    only_generic = {"info": {DEV: {"driver": "x", "versions": {"running": {"fw": "1.2.3"}}}}}
    assert parse_dev_info(json.dumps(only_generic), DEV).firmware_version == "1.2.3"
    bare = parse_dev_info(json.dumps({"info": {DEV: {"driver": "x"}}}), DEV)
    assert bare.firmware_version is None and bare.running == {}
    with pytest.raises(DevlinkError, match=r"no entry for pci/0000:03:00\.0"):
        parse_dev_info('{"info":{}}', DEV)


def test_kernel_sf_example() -> None:
    (port,) = parse_ports(SF_PORT_JSON)
    assert port.handle == "pci/0000:06:00.0/32768"
    assert port.device == "pci/0000:06:00.0" and port.index == 32768
    assert (port.flavour, port.netdev, port.controller, port.pfnum, port.sfnum) == (
        "pcisf",
        "ens2f0npf0sf88",
        0,
        0,
        88,
    )
    assert port.vfnum is None and port.external is None
    assert port.function == PortFunction("00:00:00:00:88:88", "active", "attached")


def test_bluefield_ports() -> None:
    ports = {p.handle: p for p in parse_ports(BLUEFIELD_PORTS_JSON)}
    uplink = ports[f"{DEV}/65535"]
    assert (uplink.flavour, uplink.netdev, uplink.port_number, uplink.function) == ("physical", "p0", 0, None)
    host_pf = ports[f"{DEV}/131072"]
    assert (host_pf.flavour, host_pf.controller, host_pf.external) == ("pcipf", 1, True)
    assert host_pf.function == PortFunction(hw_addr="0c:42:a1:d3:e0:00")
    vf = ports[f"{DEV}/2"]
    assert (vf.flavour, vf.netdev, vf.vfnum, vf.controller, vf.external) == ("pcivf", "pf0vf1", 1, 1, True)
    assert ports["pci/0000:03:00.1/65535"].device == "pci/0000:03:00.1"


def test_ports_reject_bad_handles() -> None:
    with pytest.raises(DevlinkError, match="not a DEV/PORT_INDEX handle"):
        parse_ports('{"port":{"pci/0000:03:00.0":{"flavour":"physical"}}}')
    assert parse_ports('{"port":{}}') == []


def test_port_add_output_forms() -> None:
    body = {"type": "eth", "flavour": "pcisf", "controller": 1, "pfnum": 0, "sfnum": 1000, "external": True}
    bare = parse_port_add(json.dumps({f"{DEV}/163840": body}))
    wrapped = parse_port_add(json.dumps({"port": {f"{DEV}/163840": body}}))
    assert bare == wrapped
    assert bare is not None and bare.sfnum == 1000 and bare.index == 163840
    assert parse_port_add("") is None
    assert parse_port_add("{}") is None


def test_pci_handle() -> None:
    assert pci_handle("0000:03:00.0") == DEV
    assert pci_handle(DEV) == DEV


# --------------------------------------------------------------------------- the CLI transport


class Recorder:
    """A runner that answers from a table and records argv."""

    def __init__(self, answers: dict[tuple[str, ...], RunResult]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> RunResult:
        self.calls.append(list(argv))
        return self.answers.get(tuple(argv[2:]), RunResult(0, "", ""))


def test_cli_builds_commands() -> None:
    add = ("port", "add", DEV, "flavour", "pcisf", "pfnum", "0", "sfnum", "1000", "controller", "1")
    body = {"type": "eth", "flavour": "pcisf", "pfnum": 0, "sfnum": 1000}
    runner = Recorder({add: RunResult(0, json.dumps({f"{DEV}/163840": body}), "")})
    cli = DevlinkCli(runner=runner)
    port = cli.port_add_sf(DEV, pfnum=0, sfnum=1000, controller=1)
    assert port.handle == f"{DEV}/163840"
    cli.port_function_set(port.handle, hw_addr="02:00:00:00:00:01", state="active")
    cli.port_del(port.handle)
    assert runner.calls == [
        ["devlink", "-j", *add],
        [
            "devlink",
            "-j",
            "port",
            "function",
            "set",
            f"{DEV}/163840",
            "hw_addr",
            "02:00:00:00:00:01",
            "state",
            "active",
        ],
        ["devlink", "-j", "port", "del", f"{DEV}/163840"],
    ]


def test_cli_port_add_without_controller_and_without_output() -> None:
    # An iproute2 that prints nothing (or something unparsable) for `port add`:
    # the new port is looked up in the port list.
    add = ("port", "add", DEV, "flavour", "pcisf", "pfnum", "0", "sfnum", "7")
    listing = {"port": {f"{DEV}/163841": {"flavour": "pcisf", "pfnum": 0, "sfnum": 7}}}
    runner = Recorder(
        {
            add: RunResult(0, '"pci/0000:03:00.0/163841":{', ""),
            ("port", "show"): RunResult(0, json.dumps(listing), ""),
        }
    )
    port = DevlinkCli(runner=runner).port_add_sf(DEV, pfnum=0, sfnum=7, controller=None)
    assert port.handle == f"{DEV}/163841"
    assert runner.calls[0] == ["devlink", "-j", *add]


def test_cli_ports_filter_by_device() -> None:
    runner = Recorder({("port", "show"): RunResult(0, BLUEFIELD_PORTS_JSON, "")})
    cli = DevlinkCli(runner=runner)
    assert len(cli.ports()) == 4
    assert {p.device for p in cli.ports(DEV)} == {DEV}
    assert [p.netdev for p in cli.ports("pci/0000:03:00.1")] == ["p1"]


def test_cli_errors_name_command_and_stderr() -> None:
    stderr = "Error: mlx5_core: SF already exists. Choose different sfnum.\ndevlink answers: File exists\n"
    add = ("port", "add", DEV, "flavour", "pcisf", "pfnum", "0", "sfnum", "1000", "controller", "1")
    cli = DevlinkCli(runner=Recorder({add: RunResult(1, "", stderr)}))
    with pytest.raises(DevlinkError) as info:
        cli.port_add_sf(DEV, pfnum=0, sfnum=1000, controller=1)
    message = str(info.value)
    assert "devlink -j port add pci/0000:03:00.0 flavour pcisf pfnum 0 sfnum 1000 controller 1" in message
    assert "SF already exists" in message and "exit status 1" in message
    assert info.value.stderr.endswith("File exists")


def test_cli_timeout_and_missing_executable() -> None:
    def slow(argv: Sequence[str], timeout: float) -> RunResult:
        raise subprocess.TimeoutExpired(list(argv), timeout)

    with pytest.raises(
        DevlinkError, match=r"devlink -j dev eswitch show pci/0000:03:00.0: timed out after 2s"
    ):
        DevlinkCli(runner=slow, timeout=2).eswitch_mode(DEV)
    with pytest.raises(DevlinkError, match="cannot run"):
        DevlinkCli(["/nonexistent/devlink"]).eswitch_mode(DEV)


def test_cli_real_subprocess(tmp_path: Path) -> None:
    # A stand-in `devlink` executable: the default runner really execs it.
    script = tmp_path / "devlink"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\necho '{ESWITCH_JSON}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    assert DevlinkCli([str(script)]).eswitch_mode(DEV) == "switchdev"
    assert (tmp_path / "argv").read_text().split() == ["-j", "dev", "eswitch", "show", DEV]


@pytest.mark.skipif(shutil.which("devlink") is None, reason="iproute2 devlink not installed")
def test_cli_real_devlink_without_devices() -> None:
    # On this machine kind devlink exists but there is no devlink device (or
    # no devlink netlink family at all): the error must carry devlink's words.
    if os.geteuid() != 0:
        pytest.skip("needs root for netlink")
    try:
        mode = DevlinkCli().eswitch_mode(DEV)
    except DevlinkError as exc:
        assert "devlink -j dev eswitch show pci/0000:03:00.0" in str(exc)
        assert exc.stderr
    else:  # pragma: no cover - only on a machine with that device
        assert mode in ("legacy", "switchdev")
