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

from coordinator.eswitch.base import DeviceKind, EswitchDevice, EswitchError, HealthFact, PreparedDevice
from coordinator.eswitch.devlink import ZERO_MAC, DevlinkError, DevlinkPort, DevlinkTransport, pci_handle
from coordinator.eswitch.net_events import NetEvent, NetEventSource, PyudevNetEventSource, RepresentorWatcher
from coordinator.eswitch.netns_link import NetnsLinks
from coordinator.eswitch.switchdev_settings import SwitchdevSettings, compare_versions, host_vf_pci_address
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

_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


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
        # Representors are the daemon's own namespace's netdevs.
        self._links = NetnsLinks("")

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

    def set_representor_up(self, representor: str, up: bool) -> bool:
        return self._links.set_up_or_raise(representor, up)

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
        self._links.close()


def _representor_fact(name: str, device: NetDevice | None, what: str) -> HealthFact:
    if device is None:
        return HealthFact(name, False, f"no {what} found", True)
    if not device.is_up:
        return HealthFact(name, False, f"{device.name} is not up (operstate {device.operstate})", True)
    return HealthFact(name, True, f"{device.name} ({device.phys_port_name}) is up", True)
