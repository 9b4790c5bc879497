"""coordinator.eswitch.sysfs: phys_port_name forms and reading a (fake and the real) sysfs tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.eswitch.sysfs import NetDevice, PhysPortName, PortFlavour, Sysfs, parse_phys_port_name
from tests.fake_bluefield import FakeBlueField, Layout

PF, VF, SF, PHYS = PortFlavour.PCI_PF, PortFlavour.PCI_VF, PortFlavour.PCI_SF, PortFlavour.PHYSICAL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p0", PhysPortName(PHYS, pf=0)),
        ("p1", PhysPortName(PHYS, pf=1)),
        ("p0s2", PhysPortName(PHYS, pf=0, split=2)),
        ("pf0", PhysPortName(PF, pf=0)),
        ("c1pf0", PhysPortName(PF, pf=0, controller=1)),
        ("pf0hpf", PhysPortName(PF, pf=0)),
        ("pf1hpf", PhysPortName(PF, pf=1)),
        ("pf0vf3", PhysPortName(VF, pf=0, number=3)),
        ("c1pf0vf3", PhysPortName(VF, pf=0, number=3, controller=1)),
        ("c2pf1vf127", PhysPortName(VF, pf=1, number=127, controller=2)),
        ("pf0sf1000", PhysPortName(SF, pf=0, number=1000)),
        ("c1pf0sf1000", PhysPortName(SF, pf=0, number=1000, controller=1)),
        (" c1pf0sf88\n", PhysPortName(SF, pf=0, number=88, controller=1)),
    ],
)
def test_phys_port_name_forms(text: str, expected: PhysPortName) -> None:
    assert parse_phys_port_name(text) == expected


@pytest.mark.parametrize(
    "text", ["", "eth0", "pf", "pf0vf", "vf0", "c1p0", "c1", "pfxvf1", "p0vf1", "pf0hpf1", "en3f0pf0sf0"]
)
def test_not_phys_port_names(text: str) -> None:
    assert parse_phys_port_name(text) is None


def _by_name(devices: list[NetDevice]) -> dict[str, NetDevice]:
    return {d.name: d for d in devices}


@pytest.mark.parametrize("layout", list(Layout))
def test_fake_tree_is_read_like_sysfs(tmp_path: Path, layout: Layout) -> None:
    bf = FakeBlueField(tmp_path / "sys", layout=layout, vfs=2)
    devices = _by_name(Sysfs(bf.root).net_devices())
    controller = 1 if layout is Layout.BLUEFIELD3 else None

    p0 = devices["p0"]
    assert p0.port == PhysPortName(PHYS, pf=0)
    assert p0.pci_address == "0000:03:00.0"
    assert p0.is_up and not p0.name_may_change
    assert p0.phys_switch_id and p0.address and p0.address.count(":") == 5

    assert devices["pf0hpf"].port == PhysPortName(PF, pf=0, controller=controller)
    assert devices["pf0hpf"].phys_port_name == ("c1pf0" if controller else "pf0")
    assert devices["pf0vf1"].port == PhysPortName(VF, pf=0, number=1, controller=controller)
    assert devices["pf0vf1"].phys_switch_id == p0.phys_switch_id
    # The other PF is another eswitch: another switch id.
    assert devices["p1"].pci_address == "0000:03:00.1"
    assert devices["pf1vf0"].phys_switch_id != p0.phys_switch_id
    # Netdevs without a devlink port have no port name (EOPNOTSUPP on a real system).
    for name in ("lo", "oob_net0", "tmfifo_net0"):
        assert devices[name].port is None and devices[name].phys_port_name is None
    assert devices["lo"].is_up  # operstate "unknown" with IFF_UP


def test_link_down_and_vanished_devices(tmp_path: Path) -> None:
    bf = FakeBlueField(tmp_path / "sys")
    sysfs = Sysfs(bf.root)
    bf.set_link("p0", up=False)
    p0 = sysfs.net_device("p0")
    assert p0 is not None and not p0.is_up and p0.operstate == "down"
    bf.remove_netdev("pf0hpf")
    assert sysfs.net_device("pf0hpf") is None
    assert "pf0hpf" not in sysfs.net_device_names()
    assert sysfs.pci_device_exists("0000:03:00.0")
    assert not sysfs.pci_device_exists("0000:04:00.0")


def test_is_up_rules() -> None:
    def dev(operstate: str | None, flags: int | None) -> NetDevice:
        return NetDevice("x", None, None, None, operstate, flags, None, None, None)

    assert dev("up", 0x1002).is_up
    assert dev("unknown", 0x1003).is_up
    assert not dev("unknown", 0x1002).is_up
    assert not dev("down", 0x1003).is_up
    assert not dev("lowerlayerdown", None).is_up
    assert not dev(None, None).is_up


def test_missing_root_is_empty(tmp_path: Path) -> None:
    assert Sysfs(tmp_path / "nothing").net_devices() == []


def test_real_sysfs_is_readable() -> None:
    # The machine's own /sys: devices without a devlink port answer EOPNOTSUPP
    # to phys_port_name; that must read as "no name", not fail.
    devices = _by_name(Sysfs("/sys").net_devices())
    assert "lo" in devices
    assert devices["lo"].phys_port_name is None and devices["lo"].port is None
