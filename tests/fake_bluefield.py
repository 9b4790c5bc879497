"""A fake NVIDIA BlueField DPU for tests: a generated sysfs tree and a ``devlink -j`` runner.

Use::

    bf = FakeBlueField(tmp_path / "sys", layout=Layout.BLUEFIELD3, vfs=2)
    backend = SwitchdevEswitch(bf.settings(), bf.transport())
    bf.add_vf(2); bf.fail("port add"); bf.set_mode("legacy"); ...

What it models and where each format comes from:

- **sysfs** (Linux ``Documentation/ABI/testing/sysfs-class-net``; layout as on a
  BlueField's Arm side): ``<root>/class/net/<ifname>`` is a symlink to
  ``<root>/devices/pci0000:00/0000:00:00.0/0000:01:00.0/0000:02:00.0/<PF>/net/<ifname>``,
  holding ``address``, ``operstate``, ``flags``, ``ifindex``,
  ``name_assign_type`` (1 = kernel ``eth%d``, 4 = renamed by udev),
  ``phys_port_name``, ``phys_switch_id`` and ``device`` (-> the PF: mlx5 hangs
  every representor of an eswitch under its manager PF);
  ``<root>/bus/pci/devices/<PF>`` links to the PF directory. Netdevs without a
  devlink port (``lo``, ``oob_net0``, ``tmfifo_net0``) have no
  ``phys_port_name`` file (the real read fails with EOPNOTSUPP).
- **phys_port_name** values follow the kernel's
  ``__devlink_port_phys_port_name_get()``: ``p0`` (uplink), ``pf0`` / ``pf0vfN``
  / ``pf0sfN`` on the BlueField-2 layout (an image whose kernel predates the
  external-controller annotation), ``c1pf0`` / ``c1pf0vfN`` / ``c1pf0sfN`` on the
  BlueField-3 layout. Both PFs of the card are modelled (``p0``/``pf0*`` on
  0000:03:00.0, ``p1``/``pf1*`` on 0000:03:00.1) with different
  ``phys_switch_id``s, so grouping by switch id matters.
- **netdev names** are what BlueField's udev rule (Mellanox
  ``vf-net-link-name.sh``) makes of those: ``c1`` stripped, ``pf0`` ->
  ``pf0hpf``. SF representors: ``pf0sfN`` (BlueField-3, same rule) or
  ``en3f0pf0sfN`` (BlueField-2 image naming); with ``sf_kernel_names`` they
  first appear as ``ethN`` (``name_assign_type`` 1) and are renamed after
  ``rename_after`` seconds, as udevd would.
- **devlink -j JSON** is what iproute2's ``devlink/devlink.c`` prints (see the
  shapes in ``coordinator/eswitch/devlink.py``): ``{"dev": {HANDLE: {"mode",
  "inline-mode", "encap-mode"}}}``; ``{"info": {HANDLE: {"driver",
  "serial_number", "versions": {"fixed", "running", "stored"}}}}`` with mlx5's
  ``fw.psid``/``fw.version``/``fw``; ``{"port": {HANDLE/INDEX: {"type",
  "netdev", "flavour", "controller", "pfnum", "vfnum"|"sfnum", "external",
  "port", "splittable", "function": {"hw_addr", "state", "opstate"}}}}`` in
  that key order, ``controller``/``external`` only on the BlueField-3 layout.
  ``port add`` prints the new port without the ``port`` wrapper (its
  ``cmd_port_add()`` opens no section). Port indexes as in the kernel's mlx5
  examples (commit messages of the SF series): uplink 65535, host PF 131072,
  VF n at n + 1, SFs from 163840. A new SF is ``state inactive``,
  ``opstate detached``, ``hw_addr 00:00:00:00:00:00``.
- **errors**: exit status 1 and iproute2's ``devlink answers: <strerror>``,
  preceded by the driver's extack line ``Error: mlx5_core: ...`` where mlx5
  sets one.

The representor of an SF appears in sysfs when its function is set
``state active`` (unless a ``"representor"`` failure is queued) and goes with
``port del``.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coordinator.eswitch.devlink import ZERO_MAC, DevlinkCli, RunResult
from coordinator.eswitch.switchdev import SwitchdevSettings

__all__ = ["STEPS", "FakeBlueField", "FakePort", "Layout"]

PCI_PATH = "devices/pci0000:00/0000:00:00.0/0000:01:00.0/0000:02:00.0"
HOST_CONTROLLER = 1
UPLINK_INDEX = 65535
HOST_PF_INDEX = 131072
SF_FIRST_INDEX = 163840
NAME_ENUM = 1
NAME_RENAMED = 4

#: Steps a failure can be injected at (``FakeBlueField.fail``).
STEPS = frozenset(
    {
        "eswitch show",
        "dev info",
        "port show",
        "port add",
        "hw_addr",
        "state active",
        "state inactive",
        "port del",
        "representor",  # the SF's representor never appears
    }
)

_ERRNO_TEXT = {
    "ENODEV": "No such device",
    "EEXIST": "File exists",
    "EOPNOTSUPP": "Operation not supported",
    "EINVAL": "Invalid argument",
    "EIO": "Input/output error",
}


class Layout(enum.Enum):
    BLUEFIELD2 = "bluefield-2"
    BLUEFIELD3 = "bluefield-3"


_PCI_DEVICE_ID = {Layout.BLUEFIELD2: "0xa2d6", Layout.BLUEFIELD3: "0xa2dc"}


@dataclass
class FakePort:
    index: int
    flavour: str
    netdev: str | None = None
    controller: int | None = None
    pfnum: int | None = None
    vfnum: int | None = None
    sfnum: int | None = None
    external: bool | None = None
    port: int | None = None
    hw_addr: str | None = None
    state: str | None = None
    opstate: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "eth"}
        if self.netdev is not None:
            out["netdev"] = self.netdev
        out["flavour"] = self.flavour
        for key in ("controller", "pfnum", "vfnum", "sfnum", "external", "port"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["splittable"] = False
        if self.hw_addr is not None:
            function: dict[str, Any] = {"hw_addr": self.hw_addr}
            if self.state is not None:
                function["state"] = self.state
            if self.opstate is not None:
                function["opstate"] = self.opstate
            out["function"] = function
        return out


class _Fail(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def _answer(errno_name: str, extack: str = "") -> _Fail:
    text = f"devlink answers: {_ERRNO_TEXT[errno_name]}"
    return _Fail(f"Error: mlx5_core: {extack}\n{text}" if extack else text)


@dataclass
class _Pf:
    pci: str
    pf: int
    switch_id: str
    ports: dict[int, FakePort]


class FakeBlueField:
    """One BlueField card: two PFs (eswitches), their representors, devlink and sysfs."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        layout: Layout = Layout.BLUEFIELD3,
        vfs: int = 2,
        pci_address: str = "0000:03:00.0",
        mode: str = "switchdev",
        firmware: str = "24.35.2000",
        sf_kernel_names: bool = False,
        rename_after: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.layout = layout
        self.mode = mode
        self.firmware = firmware
        self.sf_kernel_names = sf_kernel_names
        self.rename_after = rename_after
        self.commands: list[list[str]] = []
        self._lock = threading.RLock()
        self._failures: dict[str, list[tuple[str, int | None]]] = {}
        self._ifindex = 10
        self._eth = 5
        self._next_sf_index = SF_FIRST_INDEX
        self._timers: list[threading.Timer] = []
        bus, rest = pci_address.rsplit(":", 1)
        second = f"{bus}:{rest[:-1]}{int(rest[-1]) + 1}"
        self._pfs = {
            f"pci/{pci_address}": _Pf(pci_address, 0, "c0b8e10003e8a45a", {}),
            f"pci/{second}": _Pf(second, 1, "c0b8e10003e8a45b", {}),
        }
        self.pci_address = pci_address
        self._build(vfs)

    # ------------------------------------------------------------------ naming (per layout)

    @property
    def annotated(self) -> bool:
        """Whether host ports carry the external controller (c1..., controller 1)."""
        return self.layout is Layout.BLUEFIELD3

    def _host_port_name(self, pf: int, suffix: str = "") -> str:
        return f"{'c1' if self.annotated else ''}pf{pf}{suffix}"

    def sf_netdev_name(self, pf: int, sfnum: int) -> str:
        """The settled name of an SF representor on this layout."""
        return f"pf{pf}sf{sfnum}" if self.annotated else f"en3f{pf}pf{pf}sf{sfnum}"

    # ------------------------------------------------------------------ building

    def _pci_dir(self, pci: str) -> Path:
        return self.root / PCI_PATH / pci

    def _build(self, vfs: int) -> None:
        (self.root / "class" / "net").mkdir(parents=True, exist_ok=True)
        (self.root / "bus" / "pci" / "devices").mkdir(parents=True, exist_ok=True)
        for pf in self._pfs.values():
            pci_dir = self._pci_dir(pf.pci)
            (pci_dir / "net").mkdir(parents=True, exist_ok=True)
            (pci_dir / "vendor").write_text("0x15b3\n")
            (pci_dir / "device").write_text(_PCI_DEVICE_ID[self.layout] + "\n")
            link = self.root / "bus" / "pci" / "devices" / pf.pci
            link.symlink_to(os.path.relpath(pci_dir, link.parent))
            uplink = f"p{pf.pf}"
            pf.ports[UPLINK_INDEX] = FakePort(UPLINK_INDEX, "physical", netdev=uplink, port=pf.pf)
            self._add_netdev(uplink, pf, uplink)
            hpf = f"pf{pf.pf}hpf"
            pf.ports[HOST_PF_INDEX] = FakePort(
                HOST_PF_INDEX, "pcipf", netdev=hpf, pfnum=pf.pf, hw_addr="0c:42:a1:d3:e0:0" + str(pf.pf)
            )
            self._annotate(pf.ports[HOST_PF_INDEX])
            self._add_netdev(hpf, pf, self._host_port_name(pf.pf))
        for n in range(vfs):
            self.add_vf(n)
        self.add_vf(0, pci=self._pfs_list()[1].pci)  # a VF of the other PF: must never be ours
        for name, path in (
            ("lo", "devices/virtual/net/lo"),
            ("oob_net0", "devices/platform/MLNXBF17:00/net/oob_net0"),
            ("tmfifo_net0", "devices/platform/MLNXBF01:00/virtio1/net/tmfifo_net0"),
        ):
            self._write_plain_netdev(name, self.root / path)

    def _pfs_list(self) -> list[_Pf]:
        return list(self._pfs.values())

    def _pf(self, pci: str | None = None) -> _Pf:
        pci = pci or self.pci_address
        return self._pfs[f"pci/{pci}"]

    def _annotate(self, port: FakePort) -> None:
        if self.annotated:
            port.controller = HOST_CONTROLLER
            port.external = True

    def _write_plain_netdev(self, name: str, ndir: Path) -> None:
        ndir.mkdir(parents=True, exist_ok=True)
        self._ifindex += 1
        for file, value in (
            ("address", f"02:fe:00:00:00:{self._ifindex:02x}"),
            ("operstate", "unknown" if name == "lo" else "up"),
            ("flags", "0x9" if name == "lo" else "0x1003"),
            ("ifindex", str(self._ifindex)),
            ("name_assign_type", str(NAME_RENAMED)),
        ):
            (ndir / file).write_text(value + "\n")
        link = self.root / "class" / "net" / name
        link.symlink_to(os.path.relpath(ndir, link.parent))

    def _add_netdev(
        self, name: str, pf: _Pf, phys_port_name: str, *, assign_type: int = NAME_RENAMED, up: bool = True
    ) -> None:
        ndir = self._pci_dir(pf.pci) / "net" / name
        ndir.mkdir(parents=True)
        self._ifindex += 1
        for file, value in (
            ("address", f"02:fb:{pf.pf:02x}:00:{self._ifindex >> 8:02x}:{self._ifindex & 0xFF:02x}"),
            ("operstate", "up" if up else "down"),
            ("flags", "0x1003" if up else "0x1002"),
            ("ifindex", str(self._ifindex)),
            ("name_assign_type", str(assign_type)),
            ("phys_port_name", phys_port_name),
            ("phys_switch_id", pf.switch_id),
        ):
            (ndir / file).write_text(value + "\n")
        (ndir / "device").symlink_to(f"../../../{pf.pci}")
        link = self.root / "class" / "net" / name
        link.symlink_to(os.path.relpath(ndir, link.parent))

    def _netdev_dir(self, name: str) -> Path:
        return (self.root / "class" / "net" / name).resolve()

    def _remove_netdev(self, name: str) -> None:
        link = self.root / "class" / "net" / name
        if not link.is_symlink():
            return
        target = link.resolve()
        link.unlink()
        shutil.rmtree(target, ignore_errors=True)

    def _rename_netdev(self, old: str, new: str) -> None:
        with self._lock:
            link = self.root / "class" / "net" / old
            if not link.is_symlink():
                return
            target = link.resolve()
            new_dir = target.parent / new
            target.rename(new_dir)
            link.unlink()
            new_link = self.root / "class" / "net" / new
            new_link.symlink_to(os.path.relpath(new_dir, new_link.parent))
            (new_dir / "name_assign_type").write_text(f"{NAME_RENAMED}\n")
            for pf in self._pfs.values():
                for port in pf.ports.values():
                    if port.netdev == old:
                        port.netdev = new

    # ------------------------------------------------------------------ test controls

    def settings(self, **overrides: Any) -> SwitchdevSettings:
        """Backend settings pointing at this fake, with short waits."""
        base = SwitchdevSettings(
            pci_address=self.pci_address,
            pf=0,
            host_controller=HOST_CONTROLLER,
            sysfs_root=str(self.root),
            sf_number_start=1000,
            sf_number_end=1003,
            representor_timeout_s=1.0,
            representor_poll_s=0.01,
            rename_grace_s=0.3,
        )
        return replace(base, **overrides)

    def transport(self, *, timeout: float = 5.0) -> DevlinkCli:
        """The real ``devlink -j`` transport, with this fake in place of the subprocess."""
        return DevlinkCli(timeout=timeout, runner=self.run)

    def add_vf(self, n: int, *, pci: str | None = None) -> None:
        """The host created VF ``n``: its devlink port and representor ``pfXvfN`` appear."""
        with self._lock:
            pf = self._pf(pci)
            port = FakePort(n + 1, "pcivf", netdev=f"pf{pf.pf}vf{n}", pfnum=pf.pf, vfnum=n, hw_addr=ZERO_MAC)
            self._annotate(port)
            pf.ports[port.index] = port
            self._add_netdev(port.netdev or "", pf, self._host_port_name(pf.pf, f"vf{n}"))

    def remove_vf(self, n: int, *, pci: str | None = None) -> None:
        """The host removed VF ``n``."""
        with self._lock:
            pf = self._pf(pci)
            port = pf.ports.pop(n + 1)
            self._remove_netdev(port.netdev or "")

    def set_mode(self, mode: str) -> None:
        self.mode = mode

    def set_firmware(self, version: str) -> None:
        self.firmware = version

    def set_link(self, name: str, *, up: bool) -> None:
        ndir = self._netdev_dir(name)
        (ndir / "operstate").write_text("up\n" if up else "down\n")
        (ndir / "flags").write_text("0x1003\n" if up else "0x1002\n")

    def remove_netdev(self, name: str) -> None:
        """A netdev vanishes (e.g. ``p0`` after a driver problem); its devlink port stays."""
        with self._lock:
            self._remove_netdev(name)

    def fail(self, step: str, message: str = "", *, times: int | None = 1) -> None:
        """Make the next ``times`` commands at ``step`` fail (None: until cleared)."""
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; one of {sorted(STEPS)}")
        self._failures.setdefault(step, []).append((message, times))

    def clear_failures(self) -> None:
        self._failures.clear()

    def sf_ports(self, pci: str | None = None) -> list[FakePort]:
        with self._lock:
            return [p for p in self._pf(pci).ports.values() if p.flavour == "pcisf"]

    def vf_port(self, n: int, pci: str | None = None) -> FakePort | None:
        return self._pf(pci).ports.get(n + 1)

    def netdev_names(self) -> list[str]:
        return sorted(entry.name for entry in (self.root / "class" / "net").iterdir())

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def _take_failure(self, step: str) -> str | None:
        queue = self._failures.get(step)
        if not queue:
            return None
        message, times = queue[0]
        if times is not None:
            if times <= 1:
                queue.pop(0)
            else:
                queue[0] = (message, times - 1)
        return message or f"injected failure at {step}"

    def _check(self, step: str) -> None:
        message = self._take_failure(step)
        if message is not None:
            raise _Fail(f"Error: mlx5_core: {message}\ndevlink answers: {_ERRNO_TEXT['EIO']}")

    # ------------------------------------------------------------------ the devlink runner

    def run(self, argv: Sequence[str], timeout: float) -> RunResult:
        """Answer one ``devlink -j ...`` command like iproute2 devlink on a BlueField."""
        args = list(argv)
        self.commands.append(args)
        if args[:2] != ["devlink", "-j"]:
            return RunResult(1, "", f"fake devlink: expected 'devlink -j ...', got {args}")
        try:
            with self._lock:
                out = self._dispatch(args[2:])
        except _Fail as failure:
            return RunResult(1, "", failure.stderr + "\n")
        return RunResult(0, out, "")

    def _device(self, handle: str) -> _Pf:
        pf = self._pfs.get(handle)
        if pf is None:
            raise _answer("ENODEV")
        return pf

    def _port(self, handle: str) -> tuple[_Pf, FakePort]:
        dev, _, index = handle.rpartition("/")
        pf = self._device(dev)
        port = pf.ports.get(int(index)) if index.isdigit() else None
        if port is None:
            raise _answer("ENODEV")
        return pf, port

    def _dispatch(self, cmd: list[str]) -> str:
        if cmd[:3] == ["dev", "eswitch", "show"] and len(cmd) == 4:
            self._check("eswitch show")
            self._device(cmd[3])
            entry = {"mode": self.mode, "inline-mode": "none", "encap-mode": "basic"}
            return json.dumps({"dev": {cmd[3]: entry}})
        if cmd[:2] == ["dev", "info"] and len(cmd) == 3:
            self._check("dev info")
            self._device(cmd[2])
            fw = {"fw.version": self.firmware, "fw": self.firmware}
            info = {
                "driver": "mlx5_core",
                "serial_number": "MT2251XZ0HQ7",
                "versions": {"fixed": {"fw.psid": "MT_0000000884"}, "running": fw, "stored": dict(fw)},
            }
            return json.dumps({"info": {cmd[2]: info}})
        if cmd[:2] == ["port", "show"]:
            self._check("port show")
            ports: dict[str, Any] = {}
            for dev, pf in self._pfs.items():
                for index in sorted(pf.ports):
                    handle = f"{dev}/{index}"
                    if len(cmd) == 2 or cmd[2] == handle:
                        ports[handle] = pf.ports[index].to_json()
            if len(cmd) > 2 and not ports:
                raise _answer("ENODEV")
            return json.dumps({"port": ports})
        if cmd[:2] == ["port", "add"] and len(cmd) >= 3:
            return json.dumps(self._port_add(cmd[2], cmd[3:]))
        if cmd[:3] == ["port", "function", "set"] and len(cmd) >= 4:
            self._function_set(cmd[3], cmd[4:])
            return ""
        if cmd[:2] == ["port", "del"] and len(cmd) == 3:
            self._port_del(cmd[2])
            return ""
        raise _Fail(f"fake devlink: unsupported command {cmd}")

    @staticmethod
    def _pairs(words: list[str]) -> dict[str, str]:
        if len(words) % 2:
            raise _answer("EINVAL")
        return dict(zip(words[::2], words[1::2], strict=True))

    def _port_add(self, dev: str, words: list[str]) -> dict[str, Any]:
        pf = self._device(dev)
        opts = self._pairs(words)
        self._check("port add")
        if self.mode != "switchdev":
            raise _answer(
                "EOPNOTSUPP", "Port add is only supported in eswitch switchdev mode or SF ports are disabled."
            )
        if opts.get("flavour") != "pcisf" or int(opts.get("pfnum", "-1")) != pf.pf or "sfnum" not in opts:
            raise _answer("EOPNOTSUPP", "Unsupported port flavour or pfnum")
        sfnum = int(opts["sfnum"])
        if any(p.sfnum == sfnum for p in pf.ports.values() if p.flavour == "pcisf"):
            raise _answer("EEXIST", "SF already exists. Choose different sfnum.")
        index = self._next_sf_index
        self._next_sf_index += 1
        port = FakePort(
            index, "pcisf", pfnum=pf.pf, sfnum=sfnum, hw_addr=ZERO_MAC, state="inactive", opstate="detached"
        )
        if opts.get("controller") not in (None, str(HOST_CONTROLLER)):
            raise _answer("EINVAL", "Invalid controller number")
        self._annotate(port)
        pf.ports[index] = port
        # cmd_port_add() prints through cmd_port_show_cb() without a "port" section.
        return {f"{dev}/{index}": port.to_json()}

    def _function_set(self, handle: str, words: list[str]) -> None:
        pf, port = self._port(handle)
        opts = self._pairs(words)
        if "hw_addr" in opts:
            self._check("hw_addr")
            if port.hw_addr is None:
                raise _answer("EOPNOTSUPP", "Port doesn't support function attributes")
            port.hw_addr = opts["hw_addr"].lower()
        if "state" in opts:
            state = opts["state"]
            if port.flavour != "pcisf" or state not in ("active", "inactive"):
                raise _answer("EOPNOTSUPP", "Port function state is only supported for SF ports")
            self._check(f"state {state}")
            port.state = state
            if state == "active":
                port.opstate = "attached"
                if port.netdev is None and self._take_failure("representor") is None:
                    self._create_sf_representor(pf, port)
            else:
                port.opstate = "detached"

    def _create_sf_representor(self, pf: _Pf, port: FakePort) -> None:
        assert port.sfnum is not None
        final = self.sf_netdev_name(pf.pf, port.sfnum)
        phys = self._host_port_name(pf.pf, f"sf{port.sfnum}")
        if not self.sf_kernel_names:
            self._add_netdev(final, pf, phys)
            port.netdev = final
            return
        name = f"eth{self._eth}"
        self._eth += 1
        self._add_netdev(name, pf, phys, assign_type=NAME_ENUM)
        port.netdev = name
        if self.rename_after is not None:
            timer = threading.Timer(self.rename_after, self._rename_netdev, (name, final))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _port_del(self, handle: str) -> None:
        pf, port = self._port(handle)
        self._check("port del")
        if port.flavour != "pcisf":
            raise _answer("EOPNOTSUPP", "Port del is only supported for SF ports")
        if port.netdev is not None:
            self._remove_netdev(port.netdev)
        del pf.ports[port.index]
