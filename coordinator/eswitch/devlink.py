"""The devlink commands the switchdev backend needs, behind a small interface.

:class:`DevlinkTransport` is what the backend calls; :class:`DevlinkCli` is
the implementation over the iproute2 ``devlink -j`` JSON CLI: a clean
fork+exec, safe in a gRPC process. (pyroute2 0.9's ``DL`` only lists devices
and ports; eswitch mode, dev info, port add/del and the port function
attributes are not modelled there, so one transport does it all.) The JSON
parsers are plain functions so tests feed them recorded or generated output,
and the fake BlueField (``tests/fake_bluefield.py``) plugs in as the CLI's
``runner``.

JSON shapes, as printed by iproute2's ``devlink/devlink.c`` (checked against
its source; ``-j`` wraps each section in one object keyed by the handle):

``devlink -j dev eswitch show pci/0000:03:00.0`` (``cmd_dev_eswitch_show()``
opens section ``dev``, ``pr_out_eswitch()`` prints the handle's object)::

    {"dev": {"pci/0000:03:00.0": {"mode": "switchdev", "inline-mode": "none",
                                  "encap-mode": "basic"}}}

``devlink -j dev info pci/0000:03:00.0`` (``cmd_dev_info()`` section
``info``; ``pr_out_info()`` and ``pr_out_versions_single()``; mlx5 reports
``fw.psid`` fixed and ``fw.version``/``fw`` running and stored, see the
kernel's Documentation/networking/devlink/mlx5.rst)::

    {"info": {"pci/0000:03:00.0": {"driver": "mlx5_core", "serial_number": "...",
        "versions": {"fixed": {"fw.psid": "MT_0000000540"},
                     "running": {"fw.version": "24.35.2000", "fw": "24.35.2000"},
                     "stored": {"fw.version": "24.35.2000", "fw": "24.35.2000"}}}}}

``devlink -j port show`` (``cmd_port_show()`` section ``port``;
``pr_out_port()``, ``pr_out_port_pfvfsf_num()`` which prints ``controller``,
``pfnum``, ``vfnum``/``sfnum`` and ``external`` only when the kernel sends
them, ``pr_out_port_function()``; the SF example is the one in the kernel
commit "devlink: Introduce PCI SF port flavour and port attribute")::

    {"port": {"pci/0000:03:00.0/65535": {"type": "eth", "netdev": "p0",
                  "flavour": "physical", "port": 0, "splittable": false},
              "pci/0000:03:00.0/229409": {"type": "eth", "netdev": "en3f0pf0sf1000",
                  "flavour": "pcisf", "controller": 1, "pfnum": 0, "sfnum": 1000,
                  "external": true, "splittable": false,
                  "function": {"hw_addr": "02:00:00:00:00:01", "state": "active",
                               "opstate": "attached"}}}}

``devlink -j port add pci/0000:03:00.0 flavour pcisf pfnum 0 sfnum 1000
controller 1`` prints the new port through the same ``cmd_port_show_cb()``
but ``cmd_port_add()`` opens no ``port`` section, so both
``{"port": {HANDLE: {...}}}`` and ``{HANDLE: {...}}`` are accepted; when the
output names no port the new one is looked up with ``port show``.
``port function set`` and ``port del`` print nothing on success. Failures
exit non-zero with the reason on stderr (``devlink answers: ...`` or the
driver's extack ``Error: mlx5_core: ...``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.eswitch.base import EswitchError

__all__ = [
    "DEFAULT_TIMEOUT",
    "ZERO_MAC",
    "DevInfo",
    "DevlinkCli",
    "DevlinkError",
    "DevlinkPort",
    "DevlinkTransport",
    "PortFunction",
    "RunResult",
    "Runner",
    "parse_dev_info",
    "parse_eswitch_mode",
    "parse_port_add",
    "parse_ports",
    "pci_handle",
    "subprocess_runner",
]

DEFAULT_TIMEOUT = 10.0
ZERO_MAC = "00:00:00:00:00:00"

_HANDLE_RE = re.compile(r"(?P<device>[^/]+/[^/]+)/(?P<index>\d+)")


def pci_handle(pci_address: str) -> str:
    """``0000:03:00.0`` -> devlink's device handle ``pci/0000:03:00.0``."""
    return pci_address if pci_address.startswith("pci/") else f"pci/{pci_address}"


class DevlinkError(EswitchError):
    """A devlink command failed; ``command`` is what ran, ``stderr`` what it said."""

    def __init__(self, message: str, *, command: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.stderr = stderr


@dataclass(frozen=True)
class PortFunction:
    """The ``function`` object of a port: the function behind the representor."""

    hw_addr: str | None = None
    state: str | None = None  # "active" | "inactive" (SFs)
    opstate: str | None = None  # "attached" | "detached" (SFs)


@dataclass(frozen=True)
class DevlinkPort:
    handle: str  # "pci/0000:03:00.0/229409"
    flavour: str  # "physical", "pcipf", "pcivf", "pcisf", "virtual", ...
    netdev: str | None = None
    type: str | None = None
    controller: int | None = None
    pfnum: int | None = None
    vfnum: int | None = None
    sfnum: int | None = None
    external: bool | None = None
    port_number: int | None = None
    function: PortFunction | None = None

    @property
    def device(self) -> str:
        """The device part of the handle: ``pci/0000:03:00.0``."""
        match = _HANDLE_RE.fullmatch(self.handle)
        return match["device"] if match else self.handle

    @property
    def index(self) -> int:
        match = _HANDLE_RE.fullmatch(self.handle)
        return int(match["index"]) if match else -1


@dataclass(frozen=True)
class DevInfo:
    driver: str | None = None
    serial_number: str | None = None
    fixed: Mapping[str, str] = field(default_factory=dict)
    running: Mapping[str, str] = field(default_factory=dict)
    stored: Mapping[str, str] = field(default_factory=dict)

    @property
    def firmware_version(self) -> str | None:
        """The running firmware: mlx5's ``fw.version``, else the generic ``fw``."""
        return self.running.get("fw.version") or self.running.get("fw")


class DevlinkTransport(Protocol):
    """The devlink operations the switchdev backend uses. ``dev`` is ``pci/DOMAIN:BUS:DEV.FN``."""

    def eswitch_mode(self, dev: str) -> str: ...

    def dev_info(self, dev: str) -> DevInfo: ...

    def ports(self, dev: str | None = None) -> list[DevlinkPort]:
        """All ports (of ``dev`` only, when given)."""
        ...

    def port_add_sf(self, dev: str, *, pfnum: int, sfnum: int, controller: int | None) -> DevlinkPort: ...

    def port_function_set(
        self, handle: str, *, hw_addr: str | None = None, state: str | None = None
    ) -> None: ...

    def port_del(self, handle: str) -> None: ...


# --------------------------------------------------------------------------- parsing


def _load(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DevlinkError(f"{what}: output is not JSON ({exc.msg} at {exc.pos})") from exc
    if not isinstance(data, dict):
        raise DevlinkError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _section(data: dict[str, Any], name: str, what: str) -> dict[str, Any]:
    section = data.get(name)
    if not isinstance(section, dict):
        raise DevlinkError(f"{what}: no {name!r} object in the output")
    return section


def _opt_int(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def parse_eswitch_mode(text: str, dev: str) -> str:
    """The ``mode`` of ``dev`` from ``devlink -j dev eswitch show DEV``."""
    what = f"dev eswitch show {dev}"
    entry = _section(_load(text, what), "dev", what).get(dev)
    if not isinstance(entry, dict) or not isinstance(entry.get("mode"), str):
        raise DevlinkError(f"{what}: no mode reported for {dev}")
    mode: str = entry["mode"]
    return mode


def parse_dev_info(text: str, dev: str) -> DevInfo:
    """``devlink -j dev info DEV`` -> :class:`DevInfo`."""
    what = f"dev info {dev}"
    entry = _section(_load(text, what), "info", what).get(dev)
    if not isinstance(entry, dict):
        raise DevlinkError(f"{what}: no entry for {dev}")
    versions = entry.get("versions") if isinstance(entry.get("versions"), dict) else {}

    def group(name: str) -> dict[str, str]:
        raw = versions.get(name) if isinstance(versions, dict) else None
        return {k: v for k, v in raw.items() if isinstance(v, str)} if isinstance(raw, dict) else {}

    return DevInfo(
        driver=_opt_str(entry, "driver"),
        serial_number=_opt_str(entry, "serial_number"),
        fixed=group("fixed"),
        running=group("running"),
        stored=group("stored"),
    )


def _port(handle: str, raw: Mapping[str, Any]) -> DevlinkPort:
    if not _HANDLE_RE.fullmatch(handle):
        raise DevlinkError(f"port show: {handle!r} is not a DEV/PORT_INDEX handle")
    function = None
    fn = raw.get("function")
    if isinstance(fn, dict):
        function = PortFunction(
            hw_addr=_opt_str(fn, "hw_addr"), state=_opt_str(fn, "state"), opstate=_opt_str(fn, "opstate")
        )
    external = raw.get("external")
    return DevlinkPort(
        handle=handle,
        flavour=_opt_str(raw, "flavour") or "",
        netdev=_opt_str(raw, "netdev"),
        type=_opt_str(raw, "type"),
        controller=_opt_int(raw, "controller"),
        pfnum=_opt_int(raw, "pfnum"),
        vfnum=_opt_int(raw, "vfnum"),
        sfnum=_opt_int(raw, "sfnum"),
        external=external if isinstance(external, bool) else None,
        port_number=_opt_int(raw, "port"),
        function=function,
    )


def parse_ports(text: str) -> list[DevlinkPort]:
    """``devlink -j port show`` -> ports, in output order."""
    section = _section(_load(text, "port show"), "port", "port show")
    return [_port(handle, raw) for handle, raw in section.items() if isinstance(raw, dict)]


def parse_port_add(text: str) -> DevlinkPort | None:
    """The port ``devlink -j port add ...`` printed, or None if it printed none."""
    if not text.strip():
        return None
    data = _load(text, "port add")
    nested = data.get("port")
    section: dict[str, Any] = nested if isinstance(nested, dict) else data
    ports = [_port(h, raw) for h, raw in section.items() if isinstance(raw, dict) and _HANDLE_RE.fullmatch(h)]
    return ports[0] if len(ports) == 1 else None


# --------------------------------------------------------------------------- the CLI transport


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str


#: Runs one argv and returns its result; the default runs a subprocess.
Runner = Callable[[Sequence[str], float], RunResult]


def subprocess_runner(argv: Sequence[str], timeout: float) -> RunResult:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    return RunResult(proc.returncode, proc.stdout, proc.stderr)


class DevlinkCli:
    """:class:`DevlinkTransport` over ``devlink -j``.

    ``executable`` may add a prefix (e.g. ``("/opt/mellanox/iproute2/sbin/devlink",)``
    on images that ship a newer iproute2 there); ``runner`` replaces the
    subprocess call (tests).
    """

    def __init__(
        self,
        executable: Sequence[str] = ("devlink",),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        runner: Runner | None = None,
    ) -> None:
        self._executable = tuple(executable)
        self._timeout = timeout
        self._runner = runner or subprocess_runner

    def run(self, *args: str) -> str:
        """``devlink -j ARGS``; stdout, or :class:`DevlinkError` naming the command and its stderr."""
        argv = [*self._executable, "-j", *args]
        command = shlex.join(argv)
        try:
            result = self._runner(argv, self._timeout)
        except subprocess.TimeoutExpired as exc:
            raise DevlinkError(f"{command}: timed out after {self._timeout:g}s", command=command) from exc
        except OSError as exc:
            raise DevlinkError(f"{command}: cannot run: {exc}", command=command) from exc
        if result.returncode != 0:
            stderr = result.stderr.strip()
            raise DevlinkError(
                f"{command}: exit status {result.returncode}: {stderr or '(no stderr)'}",
                command=command,
                stderr=stderr,
            )
        return result.stdout

    def eswitch_mode(self, dev: str) -> str:
        return parse_eswitch_mode(self.run("dev", "eswitch", "show", dev), dev)

    def dev_info(self, dev: str) -> DevInfo:
        return parse_dev_info(self.run("dev", "info", dev), dev)

    def ports(self, dev: str | None = None) -> list[DevlinkPort]:
        # `port show` takes only DEV/PORT_INDEX, so dump all and filter here.
        ports = parse_ports(self.run("port", "show"))
        return [p for p in ports if dev is None or p.device == dev]

    def port_add_sf(self, dev: str, *, pfnum: int, sfnum: int, controller: int | None) -> DevlinkPort:
        args = ["port", "add", dev, "flavour", "pcisf", "pfnum", str(pfnum), "sfnum", str(sfnum)]
        if controller is not None:
            args += ["controller", str(controller)]
        output = self.run(*args)
        try:
            added = parse_port_add(output)
        except DevlinkError:
            # iproute2 versions differ in how (and whether validly) they print
            # the new port; the port list below is authoritative anyway.
            added = None
        if added is not None:
            return added
        for port in self.ports(dev):
            if port.flavour == "pcisf" and port.sfnum == sfnum and port.pfnum == pfnum:
                return port
        raise DevlinkError(f"{shlex.join(args)}: succeeded but no pcisf port with sfnum {sfnum} is listed")

    def port_function_set(self, handle: str, *, hw_addr: str | None = None, state: str | None = None) -> None:
        args = ["port", "function", "set", handle]
        if hw_addr is not None:
            args += ["hw_addr", hw_addr]
        if state is not None:
            args += ["state", state]
        self.run(*args)

    def port_del(self, handle: str) -> None:
        self.run("port", "del", handle)
