"""The emulated eswitch: each VF/SF is a veth pair.

The representor end sits in the switch's namespace (where ovs-vswitchd runs)
and is plugged into OVS like a real representor; the function end sits in a
namespace of its own that stands for the guest. VFs exist from start-up on
(on a real DPU the host creates them); SFs are created on prepare and
deleted on release, as devlink does on a BlueField.

What runs on every Attach (is the representor up, the function's MAC and
up state) and the health check are ioctls on a socket made in the
namespace (``netns_link``): no process. The rest (making pairs, clearing
a released function's addresses and neighbours) drives iproute2 (``ip``)
rather than netlink sockets: entering another network namespace from a
library means forking the daemon, which a gRPC process must not do;
``ip -n NS`` is a clean fork+exec.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from coordinator.config import EmulatedConfig
from coordinator.eswitch.base import DeviceKind, EswitchDevice, EswitchError, HealthFact, PreparedDevice
from coordinator.eswitch.netns_link import NetnsLinks

FUNCTION_IFNAME = "eth0"
SF_BASE_NUMBER = 1000  # BlueField numbers user SFs from here by convention
IP_TIMEOUT_S = 10.0
NETNS_DIR = Path("/run/netns")


def _ip(
    ns: str, *args: str, check: bool = True, batch: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``batch``: commands for ``ip -batch -``, one a line (one process for several)."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False, input=batch
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EswitchError(f"{' '.join(argv)}: {exc}") from exc
    if check and result.returncode != 0:
        raise EswitchError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


def _netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


class EmulatedEswitch:
    name = "emulated"

    def __init__(self, config: EmulatedConfig) -> None:
        self._config = config
        self._switch_ns = config.switch_netns
        if self._switch_ns and not _netns_exists(self._switch_ns):
            raise EswitchError(f"eswitch.emulated.switch_netns: namespace {self._switch_ns!r} does not exist")
        # Representors and functions read and set without an ip process.
        self._switch_links_now = NetnsLinks(self._switch_ns)
        self._slots = [self._slot(DeviceKind.VF, i) for i in range(config.vfs)] + [
            self._slot(DeviceKind.SF, SF_BASE_NUMBER + i) for i in range(config.sfs)
        ]
        self._guest_links = {s.device_id: NetnsLinks(self.guest_netns(s)) for s in self._slots}
        self._ensure_pairs([slot for slot in self._slots if slot.kind is DeviceKind.VF])

    def _slot(self, kind: DeviceKind, number: int) -> EswitchDevice:
        pf = self._config.pf
        rep = f"pf{pf}vf{number}" if kind is DeviceKind.VF else f"en{pf}pf{pf}sf{number}"
        return EswitchDevice(kind=kind, controller=0, pf=pf, number=number, representor=rep)

    def guest_netns(self, slot: EswitchDevice) -> str:
        return f"{self._config.guest_netns_prefix}{slot.representor}"

    def _has_link(self, ns: str, ifname: str) -> bool:
        return _ip(ns, "link", "show", "dev", ifname, check=False).returncode == 0

    def _ensure_pairs(self, slots: list[EswitchDevice]) -> None:
        """Every pair of ``slots`` there and its representor up. Usually they
        all are: one ``ip -batch`` sets every representor up (-force: each
        line is tried), and only if one failed are the missing pairs made,
        one by one. (One process per VF made a start with a thousand VFs
        take seconds before the daemon could do anything.)"""
        if not slots:
            return
        if all(_netns_exists(self.guest_netns(slot)) for slot in slots):
            steps = "".join(f"link set dev {slot.representor} up\n" for slot in slots)
            if _ip(self._switch_ns, "-force", "-batch", "-", check=False, batch=steps).returncode == 0:
                return
        for slot in slots:
            self._ensure_pair(slot)

    def _ensure_pair(self, slot: EswitchDevice) -> None:
        guest = self.guest_netns(slot)
        if not _netns_exists(guest):
            _ip("", "netns", "add", guest)
        # Setting it up is also the check that it exists (one ip call).
        if _ip(self._switch_ns, "link", "set", "dev", slot.representor, "up", check=False).returncode == 0:
            return
        _ip(self._switch_ns, "link", "add", slot.representor, "type", "veth",
            "peer", "name", FUNCTION_IFNAME, "netns", guest)  # fmt: skip
        _ip(self._switch_ns, "link", "set", "dev", slot.representor, "up")

    def inventory(self) -> list[EswitchDevice]:
        return list(self._slots)

    def prepare(self, slot: EswitchDevice, mac: str) -> str:
        guest = self.guest_netns(slot)
        function = ["link", "set", "dev", FUNCTION_IFNAME, "address", mac, "up"]
        # Usually the pair exists with its representor up: read, and the
        # function end set, without a process; only if either is not so is
        # the pair (re)made first.
        if _netns_exists(guest) and self._representor_up(slot) and self._function_set(slot, mac):
            return slot.representor
        self._ensure_pair(slot)
        _ip(guest, *function)
        return slot.representor

    def _function_set(self, slot: EswitchDevice, mac: str) -> bool:
        try:
            self._guest_links[slot.device_id].set_address_and_up(FUNCTION_IFNAME, mac)
        except OSError:
            return False  # the ip path below makes the pair and reports what fails
        return True

    def _representor_up(self, slot: EswitchDevice) -> bool:
        """Whether the representor exists, set up if it was down (as while
        its port is parked) by an ioctl."""
        try:
            return self._switch_links_now.set_up(slot.representor, True)
        except OSError:
            return False  # unreadable: the ip path below finds out

    def set_representor_up(self, representor: str, up: bool) -> bool:
        return self._switch_links_now.set_up_or_raise(representor, up)

    def release(self, slot: EswitchDevice) -> None:
        guest = self.guest_netns(slot)
        if slot.kind is DeviceKind.SF:
            if self._has_link(self._switch_ns, slot.representor):
                _ip(self._switch_ns, "link", "del", "dev", slot.representor)
            if _netns_exists(guest):
                _ip("", "netns", "del", guest)
        elif _netns_exists(guest):
            # A VF outlives its attachment: clear what the guest configured
            # so the next tenant starts clean. One ip process for the three
            # steps (-force: each is tried); a failure matters only if the
            # function exists (a missing one has nothing to clear).
            steps = (
                f"address flush dev {FUNCTION_IFNAME}\n"
                f"neigh flush dev {FUNCTION_IFNAME}\n"
                f"link set dev {FUNCTION_IFNAME} down\n"
            )
            cleared = _ip(guest, "-force", "-batch", "-", check=False, batch=steps)
            if cleared.returncode != 0 and self._has_link(guest, FUNCTION_IFNAME):
                raise EswitchError(
                    f"ip -n {guest} -batch (clearing {FUNCTION_IFNAME}): {cleared.stderr.strip()}"
                )

    def prepared(self) -> list[PreparedDevice]:
        """From one listing of the switch side: an SF is prepared when its
        pair exists, a VF when its representor has a carrier (a veth has one
        only while the guest end is up: prepare sets it up, release down).
        The guest end's address is not visible from here."""
        flags = self._switch_links()
        found = []
        for slot in self._slots:
            link = flags.get(slot.representor)
            if link is not None and (slot.kind is DeviceKind.SF or "LOWER_UP" in link):
                found.append(PreparedDevice(slot))
        return found

    def _switch_links(self) -> dict[str, list[str]]:
        """Links of the switch side by name, with their flags (one ``ip`` call)."""
        shown = _ip(self._switch_ns, "-o", "link", "show")
        links = {}
        for line in shown.stdout.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                name = parts[1].strip().split("@", 1)[0]
                links[name] = parts[2].partition("<")[2].partition(">")[0].split(",")
        return links

    def health(self) -> list[HealthFact]:
        representors = [s.representor for s in self._slots if s.kind is DeviceKind.VF]
        try:
            missing = [name for name in representors if self._switch_links_now.flags(name) is None]
        except OSError:
            links = self._switch_links()
            missing = [name for name in representors if name not in links]
        detail = "all VF representors present" if not missing else f"missing: {', '.join(missing)}"
        return [HealthFact("eswitch_representors", not missing, detail, required=False)]

    def destroy(self) -> None:
        """Remove every pair and guest namespace (dev down, tests)."""
        self.close()
        for slot in self._slots:
            if self._has_link(self._switch_ns, slot.representor):
                _ip(self._switch_ns, "link", "del", "dev", slot.representor)
            guest = self.guest_netns(slot)
            if _netns_exists(guest):
                _ip("", "netns", "del", guest)

    def close(self) -> None:
        # A socket keeps its namespace alive: none is held past the backend.
        for links in (self._switch_links_now, *self._guest_links.values()):
            links.close()
