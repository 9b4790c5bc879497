"""Discovery of eswitch representors through sysfs (pure reads, no netlink).

Everything is read below a configurable root (default ``/sys``) so tests run
against a generated tree (``tests/fake_bluefield.py``). The files read, per
network device ``<root>/class/net/<ifname>/``:

- ``phys_port_name``: the devlink port's name, built by the kernel in
  ``__devlink_port_phys_port_name_get()`` (net/devlink/port.c): ``p<port>``
  (``p<port>s<split>``) for a physical port, ``[c<controller>]pf<pf>`` for a
  PCI PF, ``[c<controller>]pf<pf>vf<vf>`` for a VF and
  ``[c<controller>]pf<pf>sf<sf>`` for an SF; the ``c<controller>`` prefix is
  there only for ports of an *external* controller (the x86 host behind a
  BlueField), so older kernels and BlueField-2 images show ``pf0vf3`` where
  newer ones (BlueField-3) show ``c1pf0vf3``. Devices without a devlink port
  fail the read with EOPNOTSUPP: that is "no name", not an error.
- ``phys_switch_id``: hex id shared by every port of one eswitch, which is how
  the representors of one PF are told apart from another PF's.
- ``operstate``, ``flags`` (``IFF_UP`` is bit 0), ``address``,
  ``name_assign_type`` (1 = NET_NAME_ENUM: a kernel ``eth%d`` name that udev
  may still rename) and the ``device`` link to the parent PCI function.

BlueField's own udev rule (Mellanox ``vf-net-link-name.sh``) renames the
netdevs after these names, stripping ``c<N>`` and turning a bare ``pf0``
into ``pf0hpf``; so ``pf0hpf`` is accepted as a port name too.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "NET_NAME_ENUM",
    "NetDevice",
    "PhysPortName",
    "PortFlavour",
    "Sysfs",
    "parse_phys_port_name",
]

#: ``name_assign_type`` of a name the kernel enumerated (``eth%d``); udev may rename it.
NET_NAME_ENUM = 1
_IFF_UP = 0x1


class PortFlavour(enum.Enum):
    """The devlink port flavours a phys_port_name can encode (devlink's spelling)."""

    PHYSICAL = "physical"
    PCI_PF = "pcipf"
    PCI_VF = "pcivf"
    PCI_SF = "pcisf"


@dataclass(frozen=True)
class PhysPortName:
    """A parsed ``phys_port_name``.

    ``controller`` is None when the name carries no ``c<N>`` prefix (a local
    port, or an external one on a kernel that does not annotate it).
    ``pf`` is the port number for PHYSICAL ports; ``number`` the VF index or
    SF number (None for PHYSICAL and PCI_PF), ``split`` the split sub-port.
    """

    flavour: PortFlavour
    pf: int
    number: int | None = None
    controller: int | None = None
    split: int | None = None


_PHYSICAL_RE = re.compile(r"p(\d+)(?:s(\d+))?")
_FUNCTION_RE = re.compile(r"(?:c(\d+))?pf(\d+)(?:(vf|sf)(\d+)|(hpf))?")


def parse_phys_port_name(text: str) -> PhysPortName | None:
    """``p0`` / ``p0s1`` / ``[c1]pf0`` / ``pf0hpf`` / ``[c1]pf0vf3`` / ``[c1]pf0sf1000`` -> value; else None."""
    text = text.strip()
    match = _PHYSICAL_RE.fullmatch(text)
    if match:
        split = int(match[2]) if match[2] is not None else None
        return PhysPortName(PortFlavour.PHYSICAL, pf=int(match[1]), split=split)
    match = _FUNCTION_RE.fullmatch(text)
    if not match:
        return None
    controller = int(match[1]) if match[1] is not None else None
    pf = int(match[2])
    if match[3] == "vf":
        return PhysPortName(PortFlavour.PCI_VF, pf=pf, number=int(match[4]), controller=controller)
    if match[3] == "sf":
        return PhysPortName(PortFlavour.PCI_SF, pf=pf, number=int(match[4]), controller=controller)
    return PhysPortName(PortFlavour.PCI_PF, pf=pf, controller=controller)


@dataclass(frozen=True)
class NetDevice:
    """What sysfs says about one network device (None where a file is missing or unsupported)."""

    name: str
    phys_port_name: str | None
    port: PhysPortName | None
    phys_switch_id: str | None
    operstate: str | None
    flags: int | None
    address: str | None
    name_assign_type: int | None
    pci_address: str | None

    @property
    def is_up(self) -> bool:
        """Operationally up; ``unknown`` (drivers that do not report) counts when IFF_UP is set."""
        if self.operstate == "up":
            return True
        return self.operstate == "unknown" and self.flags is not None and bool(self.flags & _IFF_UP)

    @property
    def name_may_change(self) -> bool:
        """True while the name is a kernel ``eth%d`` one that udev has not renamed yet."""
        return self.name_assign_type == NET_NAME_ENUM


def _read(path: Path) -> str | None:
    # EOPNOTSUPP (no devlink port), ENOENT (device just vanished), EINVAL:
    # all mean "this attribute has no value now", not a failure.
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path, base: int = 10) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


class Sysfs:
    """Reads network and PCI devices below ``root`` (``/sys`` on a real system)."""

    def __init__(self, root: str | os.PathLike[str] = "/sys") -> None:
        self.root = Path(root)

    @property
    def net_dir(self) -> Path:
        return self.root / "class" / "net"

    def pci_device_dir(self, pci_address: str) -> Path:
        return self.root / "bus" / "pci" / "devices" / pci_address

    def pci_device_exists(self, pci_address: str) -> bool:
        return self.pci_device_dir(pci_address).exists()

    def net_device_names(self) -> list[str]:
        try:
            return sorted(entry.name for entry in self.net_dir.iterdir())
        except OSError:
            return []

    def net_device(self, name: str) -> NetDevice | None:
        """The device called ``name``, or None if it does not exist (now)."""
        base = self.net_dir / name
        if not base.exists():
            return None
        port_name = _read(base / "phys_port_name") or None
        switch_id = _read(base / "phys_switch_id") or None
        pci_address: str | None = None
        try:
            pci_address = (
                os.path.basename(os.path.realpath(base / "device")) if (base / "device").exists() else None
            )
        except OSError:
            pci_address = None
        return NetDevice(
            name=name,
            phys_port_name=port_name,
            port=parse_phys_port_name(port_name) if port_name else None,
            phys_switch_id=switch_id,
            operstate=_read(base / "operstate"),
            flags=_read_int(base / "flags", 16),
            address=_read(base / "address"),
            name_assign_type=_read_int(base / "name_assign_type"),
            pci_address=pci_address,
        )

    def net_devices(self) -> list[NetDevice]:
        """Every network device; one that vanishes while being read is skipped."""
        found = []
        for name in self.net_device_names():
            device = self.net_device(name)
            if device is not None:
                found.append(device)
        return found
