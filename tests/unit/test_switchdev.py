"""The switchdev backend against the fake BlueField (tests/fake_bluefield.py).

The backend runs its real ``devlink -j`` transport (with the fake answering
instead of a subprocess) and its real sysfs reader (over the fake's tree).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.config import SwitchdevConfig
from coordinator.eswitch.base import DeviceKind, EswitchBackend, EswitchDevice, EswitchError, HealthFact
from coordinator.eswitch.mac import mac_for_device
from coordinator.eswitch.switchdev import (
    NetEvent,
    RepresentorWatcher,
    SwitchdevEswitch,
    SwitchdevSettings,
    compare_versions,
    host_vf_pci_address,
)
from coordinator.eswitch.sysfs import Sysfs
from tests.fake_bluefield import FakeBlueField, Layout

MAC = "02:aa:bb:00:00:01"
OTHER_MAC = "02:aa:bb:00:00:02"


@pytest.fixture(params=list(Layout), ids=lambda layout: layout.value)
def bf(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeBlueField]:
    fake = FakeBlueField(tmp_path / "sys", layout=request.param, vfs=3)
    yield fake
    fake.close()


def backend(fake: FakeBlueField, **overrides: object) -> SwitchdevEswitch:
    return SwitchdevEswitch(fake.settings(**overrides), fake.transport())


def slot_of(be: SwitchdevEswitch, kind: DeviceKind, number: int) -> EswitchDevice:
    for slot in be.inventory():
        if slot.kind is kind and slot.number == number:
            return slot
    raise AssertionError(f"{kind.value} {number} not in the inventory")


def facts(be: SwitchdevEswitch) -> dict[str, HealthFact]:
    return {f.name: f for f in be.health()}


# --------------------------------------------------------------------------- discovery


def test_is_an_eswitch_backend(bf: FakeBlueField) -> None:
    be: EswitchBackend = backend(bf)
    assert be.name == "switchdev"
    be.close()


def test_discovery(bf: FakeBlueField) -> None:
    be = backend(bf)
    inventory = be.inventory()
    vfs = [s for s in inventory if s.kind is DeviceKind.VF]
    sfs = [s for s in inventory if s.kind is DeviceKind.SF]
    assert [(s.number, s.representor) for s in vfs] == [(0, "pf0vf0"), (1, "pf0vf1"), (2, "pf0vf2")]
    assert {(s.controller, s.pf) for s in inventory} == {(1, 0)}
    assert [s.number for s in sfs] == [1000, 1001, 1002, 1003]
    assert all(s.host_pci_address == "" for s in inventory)  # no host PF address configured
    # The other PF's pf1vf0 (another switch id) is not ours.
    assert "pf1vf0" in bf.netdev_names() and all(s.representor != "pf1vf0" for s in inventory)
    # Both phys_port_name forms are in play.
    port_name = Sysfs(bf.root).net_device("pf0vf2")
    assert port_name is not None
    expected = "c1pf0vf2" if bf.layout is Layout.BLUEFIELD3 else "pf0vf2"
    assert port_name.phys_port_name == expected
    uplink, host_pf = be.uplink(), be.host_pf_representor()
    assert uplink is not None and uplink.name == "p0"
    assert host_pf is not None and host_pf.name == "pf0hpf"


def test_the_other_pf(tmp_path: Path) -> None:
    bf = FakeBlueField(tmp_path / "sys", vfs=2)
    be = backend(bf, pci_address="0000:03:00.1", pf=1)
    vfs = [s for s in be.inventory() if s.kind is DeviceKind.VF]
    assert [(s.pf, s.number, s.representor) for s in vfs] == [(1, 0, "pf1vf0")]
    uplink = be.uplink()
    assert uplink is not None and uplink.name == "p1"


def test_host_pci_addresses(tmp_path: Path) -> None:
    bf = FakeBlueField(tmp_path / "sys", vfs=3)
    be = backend(bf, host_pf_pci_address="0000:3b:00.0", host_vf_offset=2, host_vf_stride=1)
    addresses = {s.number: s.host_pci_address for s in be.inventory() if s.kind is DeviceKind.VF}
    assert addresses == {0: "0000:3b:00.2", 1: "0000:3b:00.3", 2: "0000:3b:00.4"}
    assert all(s.host_pci_address == "" for s in be.inventory() if s.kind is DeviceKind.SF)


def test_host_vf_pci_address_arithmetic() -> None:
    assert host_vf_pci_address("0000:3b:00.0", 0, 1, 1) == "0000:3b:00.1"
    assert host_vf_pci_address("0000:3b:00.0", 6, 2, 1) == "0000:3b:01.0"
    assert host_vf_pci_address("0001:af:00.1", 3, 0x100, 2) == "0001:b0:00.7"
    with pytest.raises(ValueError, match="beyond bus"):
        host_vf_pci_address("0000:ff:1f.0", 10, 1, 1)
    with pytest.raises(ValueError, match="not a PCI address"):
        host_vf_pci_address("3b:00.0", 0, 1, 1)


def test_vf_hot_add_and_remove(bf: FakeBlueField) -> None:
    be = backend(bf)
    bf.add_vf(7)
    assert [s.number for s in be.inventory() if s.kind is DeviceKind.VF] == [0, 1, 2, 7]
    bf.remove_vf(1)
    vfs = [s for s in be.inventory() if s.kind is DeviceKind.VF]
    assert [(s.number, s.representor) for s in vfs] == [(0, "pf0vf0"), (2, "pf0vf2"), (7, "pf0vf7")]


def test_vf_removed_while_attached(bf: FakeBlueField) -> None:
    be = backend(bf)
    slot = slot_of(be, DeviceKind.VF, 1)
    assert be.prepare(slot, MAC) == "pf0vf1"
    bf.remove_vf(1)
    # Re-installing fails cleanly (the service reports drift), releasing is a no-op.
    with pytest.raises(EswitchError, match=r"vf 1 of pci/0000:03:00\.0: no devlink port"):
        be.prepare(slot, MAC)
    be.release(slot)
    assert be.current_representor(slot) is None


# --------------------------------------------------------------------------- VFs


def test_vf_prepare_sets_the_function_mac_and_release_clears_it(bf: FakeBlueField) -> None:
    be = backend(bf)
    slot = slot_of(be, DeviceKind.VF, 2)
    assert be.prepare(slot, MAC.upper()) == "pf0vf2"
    port = bf.vf_port(2)
    assert port is not None and port.hw_addr == MAC
    sets = [c for c in bf.commands if c[2:5] == ["port", "function", "set"]]
    assert sets == [["devlink", "-j", "port", "function", "set", "pci/0000:03:00.0/3", "hw_addr", MAC]]
    be.prepare(slot, MAC)  # idempotent: already set, nothing sent
    assert len([c for c in bf.commands if c[2:5] == ["port", "function", "set"]]) == 1
    be.release(slot)
    assert port.hw_addr == "00:00:00:00:00:00"
    be.release(slot)  # idempotent
    assert len([c for c in bf.commands if c[2:5] == ["port", "function", "set"]]) == 2


def test_vf_mac_failure_names_the_step(bf: FakeBlueField) -> None:
    be = backend(bf)
    bf.fail("hw_addr", "Failed to set vport mac")
    with pytest.raises(EswitchError, match=r"vf 0 .*step 'set hw_addr' failed: .*Failed to set vport mac"):
        be.prepare(slot_of(be, DeviceKind.VF, 0), MAC)


def test_rejects_bad_mac_and_foreign_slots(bf: FakeBlueField) -> None:
    be = backend(bf)
    slot = slot_of(be, DeviceKind.VF, 0)
    with pytest.raises(EswitchError, match="invalid MAC"):
        be.prepare(slot, "02:00:00:00:00")
    with pytest.raises(EswitchError, match="invalid MAC"):
        be.prepare(slot, "00:00:00:00:00:00")
    foreign = EswitchDevice(DeviceKind.VF, controller=0, pf=0, number=0, representor="pf0vf0")
    with pytest.raises(EswitchError, match="not a function of this eswitch"):
        be.prepare(foreign, MAC)
    outside = EswitchDevice(DeviceKind.SF, controller=1, pf=0, number=5, representor="pf0sf5")
    with pytest.raises(EswitchError, match=r"outside the configured range 1000\.\.1003"):
        be.prepare(outside, MAC)


# --------------------------------------------------------------------------- SFs


def test_sf_lifecycle(bf: FakeBlueField) -> None:
    be = backend(bf)
    slot = slot_of(be, DeviceKind.SF, 1001)
    assert slot.representor == "pf0sf1001"  # predicted
    rep = be.prepare(slot, MAC)
    assert rep == bf.sf_netdev_name(0, 1001)  # the real one, found by phys_port_name
    assert rep in bf.netdev_names() and be.current_representor(slot) == rep
    (port,) = bf.sf_ports()
    assert (port.sfnum, port.hw_addr, port.state) == (1001, MAC, "active")
    handle = f"pci/0000:03:00.0/{port.index}"
    writes = [c[2:] for c in bf.commands if c[2] == "port" and c[3] != "show"]
    assert writes == [
        [
            "port",
            "add",
            "pci/0000:03:00.0",
            "flavour",
            "pcisf",
            "pfnum",
            "0",
            "sfnum",
            "1001",
            "controller",
            "1",
        ],
        ["port", "function", "set", handle, "hw_addr", MAC],
        ["port", "function", "set", handle, "state", "active"],
    ]
    # Idempotent: a prepared SF is found, not created again.
    assert be.prepare(slot, MAC) == rep
    assert len(bf.sf_ports()) == 1
    be.release(slot)
    assert bf.sf_ports() == [] and rep not in bf.netdev_names()
    be.release(slot)  # absent: nothing to do


def test_sf_mac_comes_from_the_mac_scheme(bf: FakeBlueField) -> None:
    be = backend(bf)
    slot = slot_of(be, DeviceKind.SF, 1000)
    mac = mac_for_device("dpu-1", slot.kind, slot.controller, slot.pf, slot.number)
    be.prepare(slot, mac)
    assert bf.sf_ports()[0].hw_addr == mac


@pytest.mark.parametrize(
    ("step", "named"),
    [
        ("port add", "port add"),
        ("hw_addr", "set hw_addr"),
        ("state active", "activate"),
        ("representor", "wait for representor"),
    ],
)
def test_sf_failure_at_each_step_rolls_back(bf: FakeBlueField, step: str, named: str) -> None:
    be = backend(bf, representor_timeout_s=0.2)
    slot = slot_of(be, DeviceKind.SF, 1000)
    bf.fail(step)
    with pytest.raises(EswitchError, match=rf"sf 1000 of pci/0000:03:00.0: step '{named}' failed") as info:
        be.prepare(slot, MAC)
    if step != "port add":
        assert "rolled back" in str(info.value)
    assert bf.sf_ports() == []
    assert not any("sf1000" in name for name in bf.netdev_names())
    # Nothing left behind: the next attempt starts clean and works.
    assert be.prepare(slot, MAC) == bf.sf_netdev_name(0, 1000)


def test_sf_rollback_failure_is_reported(bf: FakeBlueField) -> None:
    be = backend(bf)
    bf.fail("state active")
    bf.fail("port del", "device busy")
    with pytest.raises(EswitchError, match=r"rollback failed.*device busy"):
        be.prepare(slot_of(be, DeviceKind.SF, 1002), MAC)
    assert [p.sfnum for p in bf.sf_ports()] == [1002]  # left behind, and said so
    # A later prepare adopts the half-made SF (ours: in range, no address yet).
    assert be.prepare(slot_of(be, DeviceKind.SF, 1002), MAC) == bf.sf_netdev_name(0, 1002)
    assert [(p.sfnum, p.hw_addr) for p in bf.sf_ports()] == [(1002, MAC)]


def test_sf_in_legacy_mode_fails_at_port_add(bf: FakeBlueField) -> None:
    bf.set_mode("legacy")
    be = backend(bf)
    with pytest.raises(EswitchError, match=r"step 'port add' failed.*switchdev mode"):
        be.prepare(slot_of(be, DeviceKind.SF, 1000), MAC)
    assert bf.sf_ports() == []


def test_sf_release_failures(bf: FakeBlueField) -> None:
    be = backend(bf)
    slot = slot_of(be, DeviceKind.SF, 1003)
    be.prepare(slot, MAC)
    # Deactivation failing does not stop the delete.
    bf.fail("state inactive")
    be.release(slot)
    assert bf.sf_ports() == []
    be.prepare(slot, MAC)
    bf.fail("port del", "resource busy")
    with pytest.raises(EswitchError, match=r"sf 1003 .*step 'port del' failed.*resource busy"):
        be.release(slot)
    assert len(bf.sf_ports()) == 1
    be.release(slot)
    assert bf.sf_ports() == []


def test_sf_representor_renamed_by_udev(tmp_path: Path) -> None:
    bf = FakeBlueField(tmp_path / "sys", sf_kernel_names=True, rename_after=0.05)
    try:
        be = backend(bf, rename_grace_s=2.0)
        assert be.prepare(slot_of(be, DeviceKind.SF, 1000), MAC) == "pf0sf1000"
    finally:
        bf.close()


def test_sf_representor_without_udev_keeps_the_kernel_name(tmp_path: Path) -> None:
    bf = FakeBlueField(tmp_path / "sys", sf_kernel_names=True, rename_after=None)
    be = backend(bf, rename_grace_s=0.05)
    rep = be.prepare(slot_of(be, DeviceKind.SF, 1000), MAC)
    assert rep.startswith("eth") and rep in bf.netdev_names()


# --------------------------------------------------------------------------- restart


def test_restart_finds_our_sfs_and_never_reuses_a_live_one(bf: FakeBlueField) -> None:
    first = backend(bf)
    rep_a = first.prepare(slot_of(first, DeviceKind.SF, 1000), MAC)
    first.prepare(slot_of(first, DeviceKind.SF, 1001), OTHER_MAC)
    # An SF outside our range (BlueField's own, sfnum 0) is not ours.
    bf.transport().port_add_sf("pci/0000:03:00.0", pfnum=0, sfnum=0, controller=1)
    first.close()

    second = backend(bf)  # the daemon restarted
    found = second.existing_sfs()
    assert [(e.slot.number, e.hw_addr, e.state) for e in found] == [
        (1000, MAC, "active"),
        (1001, OTHER_MAC, "active"),
    ]
    assert found[0].representor == rep_a and found[0].slot.device_id == "sf:1:0:1000"
    # The same identity re-prepares idempotently ...
    assert second.prepare(found[0].slot, MAC) == rep_a
    # ... but a live SF is never handed to someone else.
    with pytest.raises(
        EswitchError, match=r"sf 1001 .* is live with hw_addr 02:aa:bb:00:00:02; not reusing it"
    ):
        second.prepare(found[1].slot, MAC)
    assert [p.hw_addr for p in bf.sf_ports() if p.sfnum == 1001] == [OTHER_MAC]
    # Free numbers still work; releasing an orphan found at restart works.
    assert second.prepare(slot_of(second, DeviceKind.SF, 1002), "02:aa:bb:00:00:03")
    second.release(found[1].slot)
    assert sorted(p.sfnum for p in bf.sf_ports() if p.sfnum is not None) == [0, 1000, 1002]


def test_prepared_lists_our_live_sfs_and_vfs_with_an_address(bf: FakeBlueField) -> None:
    """What restart reconcile releases when no attachment claims it."""
    be = backend(bf)
    assert be.prepared() == []
    vf, sf = slot_of(be, DeviceKind.VF, 1), slot_of(be, DeviceKind.SF, 1001)
    be.prepare(vf, MAC)
    be.prepare(sf, OTHER_MAC)
    bf.transport().port_add_sf("pci/0000:03:00.0", pfnum=0, sfnum=0, controller=1)  # not ours
    assert sorted((p.slot.device_id, p.mac) for p in be.prepared()) == [
        ("sf:1:0:1001", OTHER_MAC),
        ("vf:1:0:1", MAC),
    ]
    be.release(vf)
    be.release(sf)
    assert be.prepared() == []


# --------------------------------------------------------------------------- health


def test_health_all_good(bf: FakeBlueField) -> None:
    result = facts(backend(bf, min_firmware_version="24.35.1012"))
    assert list(result) == ["eswitch_mode", "firmware_version", "uplink_representor", "host_pf_representor"]
    assert all(f.ok for f in result.values()), result
    assert [f.required for f in result.values()] == [True, False, True, True]
    assert "24.35.2000" in result["firmware_version"].detail


def test_health_legacy_mode(bf: FakeBlueField) -> None:
    bf.set_mode("legacy")
    fact = facts(backend(bf))["eswitch_mode"]
    assert (fact.ok, fact.required) == (False, True)
    assert "legacy" in fact.detail and "switchdev is required" in fact.detail
    bf.set_mode("switchdev")
    assert facts(backend(bf))["eswitch_mode"].ok


def test_health_old_firmware(bf: FakeBlueField) -> None:
    bf.set_firmware("22.31.1014")
    fact = facts(backend(bf, min_firmware_version="24.35.1012"))["firmware_version"]
    assert (fact.ok, fact.required) == (False, False)
    assert fact.detail == "running 22.31.1014, below the minimum 24.35.1012"
    assert facts(backend(bf))["firmware_version"].ok  # no minimum configured
    strict = facts(backend(bf, min_firmware_version="24.35.1012", firmware_required=True))["firmware_version"]
    assert (strict.ok, strict.required) == (False, True)


def test_health_missing_or_down_representors(bf: FakeBlueField) -> None:
    be = backend(bf)
    bf.set_link("p0", up=False)
    fact = facts(be)["uplink_representor"]
    assert (fact.ok, fact.required) == (False, True) and "p0 is not up" in fact.detail
    bf.remove_netdev("p0")
    fact = facts(be)["uplink_representor"]
    assert not fact.ok and "no uplink" in fact.detail
    bf.remove_netdev("pf0hpf")
    fact = facts(be)["host_pf_representor"]
    assert (fact.ok, fact.required) == (False, True) and "no host PF representor" in fact.detail


def test_health_when_devlink_fails(bf: FakeBlueField) -> None:
    bf.fail("eswitch show", "no such device")
    bf.fail("dev info")
    result = facts(backend(bf, min_firmware_version="1.0"))
    assert not result["eswitch_mode"].ok and "cannot read the eswitch mode" in result["eswitch_mode"].detail
    assert not result["firmware_version"].ok and not result["firmware_version"].required


def test_compare_versions() -> None:
    assert compare_versions("24.35.2000", "24.35.1012") == 1
    assert compare_versions("24.35.1012", "24.35.1012") == 0
    assert compare_versions("24.35", "24.35.0") == 0
    assert compare_versions("22.99.9999", "24.0.0") == -1
    with pytest.raises(ValueError, match="not a dotted numeric version"):
        compare_versions("24.35.x", "1")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pci_address": "03:00.0"}, "pci_address"),
        ({"pf": 9}, "pf"),
        ({"sf_number_start": 10, "sf_number_end": 5}, "sf_number_start"),
        ({"min_firmware_version": "latest"}, "not a dotted numeric version"),
        ({"representor_timeout_s": 0}, "representor_timeout_s"),
        ({"host_pf_pci_address": "x"}, "host_pf_pci_address"),
        ({"host_vf_stride": 0}, "host_vf_stride"),
    ],
)
def test_settings_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SwitchdevSettings(**overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the udev watcher


class QueueSource:
    """An injectable event source: tests put events, the watcher polls them."""

    def __init__(self) -> None:
        self.events: queue.Queue[NetEvent | Exception] = queue.Queue()
        self.closed = False

    def poll(self, timeout: float) -> NetEvent | None:
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def test_watcher_reports_add_and_remove(bf: FakeBlueField) -> None:
    be = backend(bf)
    source = QueueSource()
    seen: list[tuple[str, str, list[int]]] = []
    done = threading.Event()

    def on_event(event: NetEvent) -> None:
        if event.ifname == "boom":
            raise RuntimeError("callback bug")
        vfs = [s.number for s in be.inventory() if s.kind is DeviceKind.VF]
        seen.append((event.action, event.ifname, vfs))
        if len(seen) == 2:
            done.set()

    with RepresentorWatcher(on_event, source, poll_timeout_s=0.02):
        bf.add_vf(5)
        source.events.put(NetEvent("add", "boom"))  # a failing callback does not stop the watcher
        source.events.put(NetEvent("change", "pf0vf5"))  # not add/remove/move: ignored
        source.events.put(NetEvent("add", "pf0vf5"))
        assert not done.wait(0.1)
        bf.remove_vf(5)
        source.events.put(NetEvent("remove", "pf0vf5"))
        assert done.wait(5)
    assert seen == [("add", "pf0vf5", [0, 1, 2, 5]), ("remove", "pf0vf5", [0, 1, 2])]
    assert not source.closed  # the caller's source is the caller's to close


def test_watcher_stops_when_the_source_fails() -> None:
    source = QueueSource()
    watcher = RepresentorWatcher(lambda e: None, source, poll_timeout_s=0.02)
    watcher.start()
    source.events.put(OSError("netlink socket closed"))
    watcher.stop(timeout=2)


def test_config_section_and_backend_settings_agree() -> None:
    """`[eswitch.switchdev]` mirrors SwitchdevSettings (config imports nothing
    heavy); the daemon copies field by field, so they must not drift apart.
    The config has only the devlink transport's own keys besides."""
    config = {f.name: f.default for f in dataclasses.fields(SwitchdevConfig)}
    settings = {f.name: f.default for f in dataclasses.fields(SwitchdevSettings)}
    assert set(config) - set(settings) == {"devlink_command", "devlink_timeout_s"}
    assert {name: config[name] for name in settings} == settings
