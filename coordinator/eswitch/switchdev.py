"""The real BlueField eswitch backend (``switchdev``).

Runs on the DPU's Arm cores, where the eswitch is managed through devlink
(``pci/0000:03:00.0``) and every function of the x86 host has a representor
netdev here:

- the uplink ``p0`` (flavour physical) and the host PF ``pf0hpf`` (pcipf,
  controller 1) — the bridge is built on them;
- one ``pf0vfN`` per VF the *host* created (pcivf, controller 1, vfnum N): the
  DPU cannot create host VFs, so the VF pool is whatever exists now,
  re-enumerated from sysfs on every :meth:`SwitchdevEswitch.inventory` call
  (hot add/remove is picked up by polling; :class:`RepresentorWatcher` can
  trigger an early re-enumeration where udevd runs);
- SFs the DPU creates on the host PF on demand: ``devlink port add ...
  flavour pcisf controller 1 pfnum 0 sfnum N``, ``port function set ...
  hw_addr MAC``, ``... state active``; their representor appears as a netdev
  whose ``phys_port_name`` is ``c1pf0sfN`` (``pf0sfN`` on older kernels).

Representors are identified by ``phys_port_name`` + ``phys_switch_id`` (the
uplink's), never by netdev name: udev renames them, differently per image.
SFs are ours when their sfnum lies in the configured range; one that is live
with another hardware address is never reused.

The methods are called from a worker thread (``asyncio.to_thread``). They
only fork+exec ``devlink`` and read sysfs: nothing here forks the daemon.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from coordinator.eswitch.base import DeviceKind, EswitchDevice, EswitchError, HealthFact, PreparedDevice
from coordinator.eswitch.devlink import ZERO_MAC, DevlinkError, DevlinkPort, DevlinkTransport, pci_handle
from coordinator.eswitch.sysfs import NetDevice, PortFlavour, Sysfs

__all__ = [
    "ExistingSf",
    "NetEvent",
    "NetEventSource",
    "PyudevNetEventSource",
    "RepresentorWatcher",
    "SwitchdevEswitch",
    "SwitchdevSettings",
    "compare_versions",
    "host_vf_pci_address",
]

log = logging.getLogger(__name__)

_PCI_RE = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
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


@dataclass(frozen=True)
class ExistingSf:
    """An SF of ours (sfnum in range) that exists in devlink now (for restart reconcile)."""

    slot: EswitchDevice
    handle: str
    hw_addr: str | None
    state: str | None
    representor: str | None  # the representor netdev now, if it exists


class SwitchdevEswitch:
    name = "switchdev"

    def __init__(
        self,
        settings: SwitchdevSettings,
        transport: DevlinkTransport,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._devlink = transport
        self._sysfs = Sysfs(settings.sysfs_root)
        self._dev = pci_handle(settings.pci_address)
        self._sleep = sleep
        self._monotonic = monotonic
        # prepare/release of one slot must not interleave (two worker threads,
        # one device); different slots proceed in parallel.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @property
    def settings(self) -> SwitchdevSettings:
        return self._settings

    @property
    def devlink_device(self) -> str:
        return self._dev

    # ------------------------------------------------------------------ discovery

    def _ours(self, controller: int | None, pf: int | None) -> bool:
        # Kernels that predate the controller attribute (BlueField-2 images)
        # report none; the configured host controller is then assumed.
        return pf == self._settings.pf and controller in (None, self._settings.host_controller)

    def uplink(self, devices: list[NetDevice] | None = None) -> NetDevice | None:
        """The uplink representor (flavour physical) of our PF, e.g. ``p0``."""
        if devices is None:
            devices = self._sysfs.net_devices()
        physical = [d for d in devices if d.port is not None and d.port.flavour is PortFlavour.PHYSICAL]
        by_pci = [d for d in physical if d.pci_address == self._settings.pci_address]
        candidates = by_pci or [d for d in physical if d.port is not None and d.port.pf == self._settings.pf]
        return candidates[0] if candidates else None

    def _representors(self, flavour: PortFlavour) -> list[NetDevice]:
        devices = self._sysfs.net_devices()  # one listing serves the uplink lookup too
        uplink = self.uplink(devices)
        switch_id = uplink.phys_switch_id if uplink is not None else None
        found = []
        for device in devices:
            port = device.port
            if port is None or port.flavour is not flavour or not self._ours(port.controller, port.pf):
                continue
            # Without an uplink the switch id is unknown; the port name alone decides.
            if switch_id is not None and device.phys_switch_id != switch_id:
                continue
            found.append(device)
        return found

    def host_pf_representor(self) -> NetDevice | None:
        """The host PF's representor (``pf0hpf``; phys_port_name ``pf0`` or ``c1pf0``)."""
        found = self._representors(PortFlavour.PCI_PF)
        return found[0] if found else None

    def _function_representor(self, kind: DeviceKind, number: int) -> NetDevice | None:
        flavour = PortFlavour.PCI_VF if kind is DeviceKind.VF else PortFlavour.PCI_SF
        for device in self._representors(flavour):
            if device.port is not None and device.port.number == number:
                return device
        return None

    def _slot(self, kind: DeviceKind, number: int, representor: str) -> EswitchDevice:
        s = self._settings
        host_pci = ""
        if kind is DeviceKind.VF and s.host_pf_pci_address:
            host_pci = host_vf_pci_address(s.host_pf_pci_address, number, s.host_vf_offset, s.host_vf_stride)
        return EswitchDevice(
            kind=kind,
            controller=s.host_controller,
            pf=s.pf,
            number=number,
            representor=representor,
            host_pci_address=host_pci,
        )

    def _sf_slot(self, number: int) -> EswitchDevice:
        # The name BlueField's udev rule gives an SF representor of the host
        # (phys_port_name c1pf0sfN minus the controller). Only a prediction:
        # prepare() returns the real name once the netdev exists.
        return self._slot(DeviceKind.SF, number, f"pf{self._settings.pf}sf{number}")

    def inventory(self) -> list[EswitchDevice]:
        """VFs whose representor exists now, plus every SF number of the configured range."""
        vfs: dict[int, EswitchDevice] = {}
        for device in self._representors(PortFlavour.PCI_VF):
            number = device.port.number if device.port is not None else None
            if number is not None and number not in vfs:
                vfs[number] = self._slot(DeviceKind.VF, number, device.name)
        sfs = [
            self._sf_slot(n) for n in range(self._settings.sf_number_start, self._settings.sf_number_end + 1)
        ]
        return [vfs[n] for n in sorted(vfs)] + sfs

    def _find_port(self, kind: DeviceKind, number: int) -> DevlinkPort | None:
        flavour = "pcivf" if kind is DeviceKind.VF else "pcisf"
        for port in self._devlink.ports(self._dev):
            if port.flavour != flavour or not self._ours(port.controller, port.pfnum):
                continue
            if (port.vfnum if kind is DeviceKind.VF else port.sfnum) == number:
                return port
        return None

    def existing_sfs(self) -> list[ExistingSf]:
        """Our SFs (sfnum in the configured range) that exist in devlink now, by sfnum."""
        s = self._settings
        reps = {d.port.number: d.name for d in self._representors(PortFlavour.PCI_SF) if d.port is not None}
        found = []
        for port in self._devlink.ports(self._dev):
            if port.flavour != "pcisf" or not self._ours(port.controller, port.pfnum) or port.sfnum is None:
                continue
            if not s.sf_number_start <= port.sfnum <= s.sf_number_end:
                continue
            fn = port.function
            found.append(
                ExistingSf(
                    slot=self._sf_slot(port.sfnum),
                    handle=port.handle,
                    hw_addr=fn.hw_addr if fn else None,
                    state=fn.state if fn else None,
                    representor=reps.get(port.sfnum),
                )
            )
        return sorted(found, key=lambda e: e.slot.number)

    def prepared(self) -> list[PreparedDevice]:
        """Our SFs that exist, and our VFs whose function has an address set."""
        found = [PreparedDevice(sf.slot, (sf.hw_addr or "").lower()) for sf in self.existing_sfs()]
        for port in self._devlink.ports(self._dev):
            if port.flavour != "pcivf" or not self._ours(port.controller, port.pfnum) or port.vfnum is None:
                continue
            if port.function is not None and (port.function.hw_addr or ZERO_MAC).lower() != ZERO_MAC:
                rep = self._function_representor(DeviceKind.VF, port.vfnum)
                slot = self._slot(DeviceKind.VF, port.vfnum, rep.name if rep else "")
                found.append(
                    PreparedDevice(slot, port.function.hw_addr.lower() if port.function.hw_addr else "")
                )
        return found

    def current_representor(self, slot: EswitchDevice) -> str | None:
        """The representor netdev of ``slot`` now (None if absent): SF names are known only once created."""
        self._check_slot(slot)
        device = self._function_representor(slot.kind, slot.number)
        return device.name if device is not None else None

    # ------------------------------------------------------------------ prepare / release

    def _lock(self, slot: EswitchDevice) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(slot.device_id, threading.Lock())

    def _check_slot(self, slot: EswitchDevice) -> None:
        s = self._settings
        if slot.pf != s.pf or slot.controller != s.host_controller:
            raise EswitchError(
                f"{slot.device_id}: not a function of this eswitch (pf {s.pf}, controller {s.host_controller})"
            )
        if slot.kind is DeviceKind.SF and not s.sf_number_start <= slot.number <= s.sf_number_end:
            raise EswitchError(
                f"{slot.device_id}: sf {slot.number} outside the configured range "
                f"{s.sf_number_start}..{s.sf_number_end}"
            )

    def prepare(self, slot: EswitchDevice, mac: str) -> str:
        self._check_slot(slot)
        mac = mac.lower()
        if not _MAC_RE.fullmatch(mac) or mac == ZERO_MAC:
            raise EswitchError(f"{slot.device_id}: invalid MAC {mac!r}")
        with self._lock(slot):
            if slot.kind is DeviceKind.VF:
                return self._prepare_vf(slot.number, mac)
            return self._prepare_sf(slot.number, mac)

    def _prepare_vf(self, number: int, mac: str) -> str:
        what = f"vf {number} of {self._dev}"
        port = self._find_port(DeviceKind.VF, number)
        if port is None:
            raise EswitchError(
                f"{what}: no devlink port (pcivf pfnum {self._settings.pf} vfnum {number}); VF gone?"
            )
        if port.function is None or (port.function.hw_addr or "").lower() != mac:
            try:
                self._devlink.port_function_set(port.handle, hw_addr=mac)
            except DevlinkError as exc:
                raise EswitchError(f"{what}: step 'set hw_addr' failed: {exc}") from exc
        device = self._function_representor(DeviceKind.VF, number)
        if device is None:
            raise EswitchError(f"{what}: no representor netdev in {self._sysfs.net_dir}")
        return device.name

    def _prepare_sf(self, number: int, mac: str) -> str:
        what = f"sf {number} of {self._dev}"
        port = self._find_port(DeviceKind.SF, number)
        created = False
        already_ours = False
        if port is not None:
            current = ((port.function.hw_addr if port.function else None) or ZERO_MAC).lower()
            if current not in (ZERO_MAC, mac):
                # Live with someone else's address: never take it over.
                raise EswitchError(f"{what}: {port.handle} is live with hw_addr {current}; not reusing it")
            already_ours = current == mac
        else:
            try:
                port = self._devlink.port_add_sf(
                    self._dev,
                    pfnum=self._settings.pf,
                    sfnum=number,
                    controller=self._settings.host_controller,
                )
            except DevlinkError as exc:
                raise EswitchError(f"{what}: step 'port add' failed: {exc}") from exc
            created = True
        fn = port.function
        need_mac = created or fn is None or (fn.hw_addr or "").lower() != mac
        active = not created and fn is not None and fn.state == "active"
        step = "set hw_addr"
        try:
            if need_mac:
                if active:
                    # An adopted half-made SF: change its address while inactive.
                    step = "deactivate"
                    self._devlink.port_function_set(port.handle, state="inactive")
                    active = False
                step = "set hw_addr"
                self._devlink.port_function_set(port.handle, hw_addr=mac)
            if not active:
                step = "activate"
                self._devlink.port_function_set(port.handle, state="active")
            step = "wait for representor"
            return self._wait_sf_representor(number)
        except EswitchError as exc:
            if already_ours:
                # A prepared SF (our address) stays for release() to remove.
                raise EswitchError(f"{what}: step '{step}' failed: {exc}") from exc
            outcome = self._rollback_sf(port.handle)
            raise EswitchError(f"{what}: step '{step}' failed: {exc}; {outcome}") from exc

    def _rollback_sf(self, handle: str) -> str:
        try:
            self._devlink.port_function_set(handle, state="inactive")
        except DevlinkError as exc:
            # An SF that never became active refuses nothing here on mlx5, but
            # a failed deactivation must not stop the delete.
            log.debug("rollback: deactivating %s: %s", handle, exc)
        try:
            self._devlink.port_del(handle)
        except DevlinkError as exc:
            log.error("rollback of %s failed: %s", handle, exc)
            return f"rollback failed, {handle} may be left behind: {exc}"
        return f"rolled back ({handle} deleted)"

    def _wait_sf_representor(self, number: int) -> str:
        s = self._settings
        deadline = self._monotonic() + s.representor_timeout_s
        seen: tuple[str, float] | None = None  # a kernel-named netdev, and since when
        while True:
            device = self._function_representor(DeviceKind.SF, number)
            now = self._monotonic()
            if device is not None:
                if not device.name_may_change:
                    return device.name
                if seen is None or seen[0] != device.name:
                    seen = (device.name, now)
                # Still eth%d: udev may be about to rename it; after the grace
                # (or at the deadline) use the name it has, as without udevd.
                if now - seen[1] >= s.rename_grace_s or now >= deadline:
                    return device.name
            elif now >= deadline:
                raise EswitchError(
                    f"no representor with phys_port_name [c{s.host_controller}]pf{s.pf}sf{number} "
                    f"appeared in {self._sysfs.net_dir} within {s.representor_timeout_s:g}s"
                )
            self._sleep(s.representor_poll_s)

    def release(self, slot: EswitchDevice) -> None:
        """SF: deactivate and delete (nothing to do when absent). VF: reset the
        function's hw_addr to 00:00:00:00:00:00, so the next tenant's MAC is
        set afresh and the VF does not keep the previous one (mlx5 then lets
        the VF driver choose a random address when it next loads)."""
        self._check_slot(slot)
        with self._lock(slot):
            if slot.kind is DeviceKind.VF:
                self._release_vf(slot.number)
            else:
                self._release_sf(slot.number)

    def _release_vf(self, number: int) -> None:
        port = self._find_port(DeviceKind.VF, number)
        if port is None:
            return  # the host removed the VF: nothing left to clear
        if port.function is not None and (port.function.hw_addr or ZERO_MAC).lower() == ZERO_MAC:
            return
        try:
            self._devlink.port_function_set(port.handle, hw_addr=ZERO_MAC)
        except DevlinkError as exc:
            raise EswitchError(f"vf {number} of {self._dev}: step 'clear hw_addr' failed: {exc}") from exc

    def _release_sf(self, number: int) -> None:
        what = f"sf {number} of {self._dev}"
        port = self._find_port(DeviceKind.SF, number)
        if port is None:
            return
        if port.function is None or port.function.state != "inactive":
            try:
                self._devlink.port_function_set(port.handle, state="inactive")
            except DevlinkError as exc:
                log.warning("%s: deactivating %s before delete: %s", what, port.handle, exc)
        try:
            self._devlink.port_del(port.handle)
        except DevlinkError as exc:
            if self._find_port(DeviceKind.SF, number) is None:
                return  # deleted meanwhile: released all the same
            raise EswitchError(f"{what}: step 'port del' failed: {exc}") from exc

    # ------------------------------------------------------------------ health

    def health(self) -> list[HealthFact]:
        return [self._mode_fact(), self._firmware_fact(), *self._representor_facts()]

    def _mode_fact(self) -> HealthFact:
        try:
            mode = self._devlink.eswitch_mode(self._dev)
        except EswitchError as exc:
            return HealthFact(
                "eswitch_mode", False, f"{self._dev}: cannot read the eswitch mode: {exc}", True
            )
        if mode != "switchdev":
            return HealthFact(
                "eswitch_mode", False, f"{self._dev} is in {mode} mode; switchdev is required", True
            )
        return HealthFact("eswitch_mode", True, f"{self._dev} is in switchdev mode", True)

    def _firmware_fact(self) -> HealthFact:
        minimum = self._settings.min_firmware_version
        required = self._settings.firmware_required

        def fact(ok: bool, detail: str) -> HealthFact:
            return HealthFact("firmware_version", ok, detail, required)

        try:
            version = self._devlink.dev_info(self._dev).firmware_version
        except EswitchError as exc:
            return fact(False, f"{self._dev}: cannot read firmware: {exc}")
        if version is None:
            return fact(False, f"{self._dev} reports no running firmware version")
        if not minimum:
            return fact(True, f"running {version} (no minimum configured)")
        try:
            below = compare_versions(version, minimum) < 0
        except ValueError as exc:
            return fact(False, f"running {version}: {exc}")
        if below:
            return fact(False, f"running {version}, below the minimum {minimum}")
        return fact(True, f"running {version} (minimum {minimum})")

    def _representor_facts(self) -> list[HealthFact]:
        s = self._settings
        uplink = self.uplink()
        host_pf = self.host_pf_representor()
        return [
            _representor_fact(
                "uplink_representor", uplink, f"uplink (phys_port_name p{s.pf}) of {s.pci_address}"
            ),
            _representor_fact(
                "host_pf_representor",
                host_pf,
                f"host PF representor (phys_port_name [c{s.host_controller}]pf{s.pf}, pf{s.pf}hpf)",
            ),
        ]

    def close(self) -> None:
        pass


def _representor_fact(name: str, device: NetDevice | None, what: str) -> HealthFact:
    if device is None:
        return HealthFact(name, False, f"no {what} found", True)
    if not device.is_up:
        return HealthFact(name, False, f"{device.name} is not up (operstate {device.operstate})", True)
    return HealthFact(name, True, f"{device.name} ({device.phys_port_name}) is up", True)


# --------------------------------------------------------------------------- udev events


@dataclass(frozen=True)
class NetEvent:
    action: str  # "add", "remove", "move" (rename), "change", ...
    ifname: str


class NetEventSource(Protocol):
    def poll(self, timeout: float) -> NetEvent | None:
        """The next event, or None after ``timeout`` seconds without one."""
        ...

    def close(self) -> None: ...


class PyudevNetEventSource:
    """Net device events from pyudev.

    ``source="udev"`` (after udevd's processing, renames done) needs a running
    udevd; ``"kernel"`` gets raw uevents, but only of the daemon's own network
    namespace. Without udevd nothing arrives: polling stays the fallback.
    """

    def __init__(self, source: str = "udev") -> None:
        import pyudev  # imported here: only daemons that watch need libudev

        self._monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        self._monitor.filter_by("net")
        self._monitor.start()

    def poll(self, timeout: float) -> NetEvent | None:
        device = self._monitor.poll(timeout)
        if device is None:
            return None
        return NetEvent(str(device.action or ""), str(device.sys_name))

    def close(self) -> None:
        # pyudev has no close(); dropping the monitor releases its socket.
        self._monitor = None


class RepresentorWatcher:
    """Calls ``callback(event)`` for net add/remove/move events on a daemon thread.

    Meant to trigger an early ``inventory()`` (a VF appeared or went) instead
    of waiting for the next poll. The callback runs on the watcher's thread;
    an exception in it is logged and the watcher goes on.
    """

    ACTIONS = frozenset({"add", "remove", "move"})

    def __init__(
        self,
        callback: Callable[[NetEvent], None],
        source: NetEventSource | None = None,
        *,
        poll_timeout_s: float = 0.5,
    ) -> None:
        self._callback = callback
        self._source = source
        self._own_source = source is None
        self._poll_timeout = poll_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._source is None:
            self._source = PyudevNetEventSource()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="representor-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        source = self._source
        assert source is not None
        while not self._stop.is_set():
            try:
                event = source.poll(self._poll_timeout)
            except Exception:
                log.exception("representor watcher: event source failed; stopping (polling continues)")
                return
            if event is None or event.action not in self.ACTIONS:
                continue
            try:
                self._callback(event)
            except Exception:
                log.exception("representor watcher: callback failed for %s %s", event.action, event.ifname)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._source is not None and self._own_source:
            self._source.close()
            self._source = None

    def __enter__(self) -> RepresentorWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
