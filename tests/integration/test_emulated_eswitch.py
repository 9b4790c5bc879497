"""The emulated eswitch's prepare and release: a prepared VF's function is
up with its MAC; a released one is down with nothing the guest configured
left on it; both work again after the pair vanished."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from coordinator.config import EmulatedConfig
from coordinator.dev import netns
from coordinator.eswitch.emulated import FUNCTION_IFNAME, EmulatedEswitch
from coordinator.eswitch.netns_link import NetnsLinks
from tests.conftest import NetnsFactory

pytestmark = pytest.mark.ovs

MAC = "02:00:00:00:00:07"
GUEST_ADDRESS = "198.51.100.7/24"
NEIGHBOUR = "198.51.100.8"


@pytest.fixture
def switch_ns(netns_factory: NetnsFactory) -> str:
    return netns_factory("es-")


@pytest.fixture
def eswitch(switch_ns: str) -> Iterator[EmulatedEswitch]:
    config = EmulatedConfig(
        vfs=1, sfs=0, switch_netns=switch_ns, guest_netns_prefix=netns.unique_name("eg", 8) + "-"
    )
    backend = EmulatedEswitch(config)
    try:
        yield backend
    finally:
        backend.destroy()


def _function(backend: EmulatedEswitch) -> dict[str, object]:
    guest = backend.guest_netns(backend.inventory()[0])
    shown = subprocess.run(["ip", "-n", guest, "-j", "addr", "show", "dev", FUNCTION_IFNAME],
                           capture_output=True, text=True, check=True)  # fmt: skip
    (link,) = json.loads(shown.stdout)
    neigh = subprocess.run(["ip", "-n", guest, "-j", "neigh", "show", "dev", FUNCTION_IFNAME],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return {
        "up": "UP" in link["flags"],
        "mac": link["address"],
        "addresses": [a["local"] for a in link["addr_info"]],
        "neighbours": [n["dst"] for n in json.loads(neigh.stdout or "[]")],
    }


def test_prepare_then_release_leaves_the_function_clean(eswitch: EmulatedEswitch) -> None:
    (vf,) = eswitch.inventory()
    guest = eswitch.guest_netns(vf)
    assert eswitch.prepare(vf, MAC) == vf.representor
    assert _function(eswitch)["up"] and _function(eswitch)["mac"] == MAC
    # What a guest would configure.
    netns.run_in_netns(guest, ["ip", "addr", "add", GUEST_ADDRESS, "dev", FUNCTION_IFNAME])
    netns.run_in_netns(guest, ["ip", "neigh", "add", NEIGHBOUR, "lladdr", "02:00:00:00:00:08",
                               "dev", FUNCTION_IFNAME])  # fmt: skip
    assert _function(eswitch)["addresses"] and _function(eswitch)["neighbours"]
    eswitch.release(vf)
    assert _function(eswitch) == {"up": False, "mac": MAC, "addresses": [], "neighbours": []}


def test_release_and_prepare_after_the_pair_vanished(eswitch: EmulatedEswitch, switch_ns: str) -> None:
    (vf,) = eswitch.inventory()
    eswitch.prepare(vf, MAC)
    netns.run_in_netns(switch_ns, ["ip", "link", "del", vf.representor])
    eswitch.release(vf)  # nothing to clear: not an error
    assert eswitch.prepare(vf, MAC) == vf.representor  # the pair is made again
    assert _function(eswitch)["up"] and _function(eswitch)["mac"] == MAC


def test_a_new_backend_remakes_missing_pairs_and_sets_every_representor_up(switch_ns: str) -> None:
    """What a start finds: one pair gone, one representor down, the rest as
    they were; afterwards every pair is there and its representor up."""
    config = EmulatedConfig(
        vfs=3, sfs=0, switch_netns=switch_ns, guest_netns_prefix=netns.unique_name("eg", 8) + "-"
    )
    first = EmulatedEswitch(config)
    try:
        gone, down, _ = (vf.representor for vf in first.inventory())
        netns.run_in_netns(switch_ns, ["ip", "link", "del", gone])
        netns.run_in_netns(switch_ns, ["ip", "link", "set", "dev", down, "down"])
        again = EmulatedEswitch(config)
        shown = subprocess.run(["ip", "-n", switch_ns, "-j", "link", "show"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        links = {link["ifname"]: link["flags"] for link in json.loads(shown.stdout)}
        assert all("UP" in links[vf.representor] for vf in again.inventory())
    finally:
        first.destroy()


def test_prepare_brings_a_representor_that_went_down_back_up(
    eswitch: EmulatedEswitch, switch_ns: str
) -> None:
    (vf,) = eswitch.inventory()
    netns.run_in_netns(switch_ns, ["ip", "link", "set", "dev", vf.representor, "down"])
    assert eswitch.prepare(vf, MAC) == vf.representor
    shown = subprocess.run(["ip", "-n", switch_ns, "-j", "link", "show", "dev", vf.representor],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert "UP" in json.loads(shown.stdout)[0]["flags"]


def test_health_names_a_missing_representor(eswitch: EmulatedEswitch, switch_ns: str) -> None:
    (vf,) = eswitch.inventory()
    assert [f.ok for f in eswitch.health()] == [True]
    netns.run_in_netns(switch_ns, ["ip", "link", "del", vf.representor])
    (fact,) = eswitch.health()
    assert not fact.ok and vf.representor in fact.detail


def test_links_are_read_in_the_namespace_and_follow_its_re_creation(netns_factory: NetnsFactory) -> None:
    name = netns_factory("nl-")
    netns.run_in_netns(name, ["ip", "link", "add", "nl-a", "type", "veth", "peer", "name", "nl-b"])
    netns.run_in_netns(name, ["ip", "link", "set", "dev", "nl-a", "up"])
    links = NetnsLinks(name)
    try:
        assert links.is_up("nl-a") and not links.is_up("nl-b") and links.flags("nl-c") is None
        assert NetnsLinks("").flags("nl-a") is None  # not a link of the daemon's own namespace
        subprocess.run(["ip", "netns", "del", name], check=True)
        netns.create_netns(name)  # the same name, another namespace: no link of the old one
        assert links.flags("nl-a") is None and links.flags("lo") is not None
    finally:
        links.close()


def test_an_address_set_by_ioctl_is_the_links_and_it_is_up(netns_factory: NetnsFactory) -> None:
    name = netns_factory("nl-")
    netns.run_in_netns(name, ["ip", "link", "add", "nl-a", "type", "veth", "peer", "name", "nl-b"])
    links = NetnsLinks(name)
    try:
        links.set_address_and_up("nl-a", MAC)
        shown = subprocess.run(["ip", "-n", name, "-j", "link", "show", "dev", "nl-a"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        (link,) = json.loads(shown.stdout)
        assert link["address"] == MAC and "UP" in link["flags"]
        with pytest.raises(OSError):
            links.set_address_and_up("nl-c", MAC)
    finally:
        links.close()
