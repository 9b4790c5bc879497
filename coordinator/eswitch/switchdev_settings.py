"""Where the BlueField eswitch is and how to use it (config section
``eswitch.switchdev``), and the version and PCI-address arithmetic its
checks need. Pure values: the config loader and the tests use them without
devlink or sysfs."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SwitchdevSettings", "compare_versions", "host_vf_pci_address"]

_PCI_RE = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")
_MAX_SF_NUMBER = (1 << 20) - 1  # what mac_for_device can encode


@dataclass(frozen=True)
class SwitchdevSettings:
    """Where the eswitch is and how to use it (config section ``eswitch.switchdev``)."""

    # PCI address of the eswitch manager PF on the DPU (devlink handle pci/<this>).
    pci_address: str = "0000:03:00.0"
    # PF number of the host functions handed out (pf0vfN, pf0sfN, pf0hpf).
    pf: int = 0
    # devlink controller number of the x86 host (external controller; 1 on BlueField).
    host_controller: int = 1
    sysfs_root: str = "/sys"
    # Lowest acceptable running firmware ("" = no check), dotted numbers: "24.35.2000".
    min_firmware_version: str = ""
    # Whether a firmware below the minimum blocks Attach (default: reported only).
    firmware_required: bool = False
    # SF numbers this daemon owns, inclusive; SFs outside it are never touched.
    sf_number_start: int = 1000
    sf_number_end: int = 1015
    # How long prepare waits for a new SF's representor to appear.
    representor_timeout_s: float = 10.0
    representor_poll_s: float = 0.05
    # A representor still carrying a kernel eth%d name is given this long to
    # be renamed by udev before its name is used (never longer than the timeout).
    rename_grace_s: float = 1.0
    # The host PF's PCI address as the host sees it ("" = host addresses unknown,
    # Attachment.host_pci_address stays empty); VF n is at
    # PF routing id + host_vf_offset + n * host_vf_stride (SR-IOV "First VF
    # Offset" and "VF Stride", `lspci -vvv -s PF` on the host).
    host_pf_pci_address: str = ""
    host_vf_offset: int = 1
    host_vf_stride: int = 1

    def __post_init__(self) -> None:
        if not _PCI_RE.fullmatch(self.pci_address):
            raise ValueError(f"pci_address: expected DDDD:BB:DD.F, got {self.pci_address!r}")
        if self.host_pf_pci_address and not _PCI_RE.fullmatch(self.host_pf_pci_address):
            raise ValueError(f"host_pf_pci_address: expected DDDD:BB:DD.F, got {self.host_pf_pci_address!r}")
        if not 0 <= self.pf <= 7:
            raise ValueError(f"pf: {self.pf} outside 0..7")
        if not 0 <= self.sf_number_start <= self.sf_number_end <= _MAX_SF_NUMBER:
            raise ValueError(
                f"sf_number_start..sf_number_end: {self.sf_number_start}..{self.sf_number_end} "
                f"is not a range within 0..{_MAX_SF_NUMBER}"
            )
        if self.min_firmware_version:
            compare_versions(self.min_firmware_version, self.min_firmware_version)  # validates
        if self.representor_timeout_s <= 0 or self.representor_poll_s <= 0 or self.rename_grace_s < 0:
            raise ValueError("representor_timeout_s and representor_poll_s must be > 0, rename_grace_s >= 0")
        if self.host_vf_stride < 1 or self.host_vf_offset < 0:
            raise ValueError("host_vf_offset must be >= 0 and host_vf_stride >= 1")


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as dotted numeric version ``a`` is below, equal to or above ``b``.

    ``24.35.2000`` vs ``24.35.1012`` compares 24, 35, then 2000 > 1012.
    Raises ValueError for anything but dot-separated decimal numbers.
    """

    def parts(text: str) -> tuple[int, ...]:
        items = text.strip().split(".")
        if not text.strip() or not all(item.isdigit() for item in items):
            raise ValueError(f"not a dotted numeric version: {text!r}")
        return tuple(int(item) for item in items)

    pa, pb = parts(a), parts(b)
    width = max(len(pa), len(pb))
    pa += (0,) * (width - len(pa))
    pb += (0,) * (width - len(pb))
    return (pa > pb) - (pa < pb)


def host_vf_pci_address(pf_address: str, vf_index: int, offset: int, stride: int) -> str:
    """The host PCI address of VF ``vf_index``: PF routing id + offset + index * stride (SR-IOV)."""
    match = _PCI_RE.fullmatch(pf_address)
    if not match:
        raise ValueError(f"not a PCI address: {pf_address!r}")
    domain, bus, dev, fn = (int(match[i], 16) for i in range(1, 5))
    rid = (bus << 8) | (dev << 3) | fn
    vf_rid = rid + offset + vf_index * stride
    if vf_rid > 0xFFFF:
        raise ValueError(f"VF {vf_index} of {pf_address} would be beyond bus 0xff")
    return f"{domain:04x}:{vf_rid >> 8:02x}:{(vf_rid >> 3) & 0x1F:02x}.{vf_rid & 0x7}"
