"""The hostile guest: raw frames crafted in a guest namespace (and on the
fabric), captured wherever they could arrive (tests/dataplane/cases.py).

One private OVS and one coordinator stack serve the whole module: three
attachments (the attacker ``guest`` and a ``peer``, both with a NetworkScope,
and ``classed`` on the baseline network class) and a fabric namespace on the
uplink. The fabric and the guests have no IP addresses, so no kernel answers
(or reflects a marker back in an ICMP error): what each place captures is
exactly what the switch delivered. All cases are sent in one go; each test
then checks one case's arrivals.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.base import DeviceKind
from coordinator.policy.validate import scope_from_mapping
from coordinator.store.records import PolicyState
from tests.conftest import require_ovs
from tests.dataplane.cases import CASES, GUEST_SCOPE, PEER_SCOPE, Case, Env, Tag
from tests.integration.stack import Stack, build_stack

pytestmark = pytest.mark.ovs

WIRE = str(Path(__file__).with_name("wire.py"))
BRIDGE = "br-hostile"
UPLINK_PORT = "hostile-up"
MARKER = b"BQ"
SETTLE_S = 1.0  # after the last frame, before the captures stop
# Conntrack's reassembly gives up on an incomplete datagram after 15 s and
# hands its fragments back at the next ct() of that family: the second
# round of frames (Case.then) is sent once that has happened.
FRAGMENT_EXPIRY_S = 16.0


def tag_for(case_index: int) -> Tag:
    return lambda n: b"BQ%03d%02d!" % (case_index, n)


@dataclass
class Arrivals:
    places: dict[str, list[bytes]]  # place -> frames captured there

    def seen(self, marker: bytes) -> frozenset[str]:
        return frozenset(p for p, frames in self.places.items() if any(marker in f for f in frames))


def _mac(ns: str, ifname: str = "eth0") -> str:
    out = netns.run_in_netns(ns, ["ip", "-j", "link", "show", "dev", ifname]).stdout
    return str(json.loads(out)[0]["address"])


def _start_capture(ns: str) -> subprocess.Popen[str]:
    proc = netns.popen_in_netns(
        ns, [sys.executable, WIRE, "capture", "eth0", MARKER.decode()], stdin=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _send(ns: str, frames: list[bytes]) -> None:
    netns.run_in_netns(
        ns, [sys.executable, WIRE, "send", "eth0"], input="".join(f"{f.hex()}\n" for f in frames)
    )


def _stop_capture(proc: subprocess.Popen[str]) -> list[bytes]:
    out, _ = proc.communicate("", timeout=10)
    return [bytes.fromhex(line) for line in out.split()]


def run_cases(places: dict[str, str], env: Env, cases: tuple[Case, ...]) -> Arrivals:
    first: dict[str, list[bytes]] = {}
    then: dict[str, list[bytes]] = {}
    for index, case in enumerate(cases):
        for frame in case.frames(env, tag_for(index)):
            first.setdefault(case.source, []).append(bytes(frame))
        for frame in case.then(env, tag_for(index)) if case.then else ():
            then.setdefault(case.source, []).append(bytes(frame))
    captures = {place: _start_capture(ns) for place, ns in places.items()}
    try:
        started = time.monotonic()
        for source, frames in first.items():
            _send(places[source], frames)
        if then:
            time.sleep(max(0.0, started + FRAGMENT_EXPIRY_S - time.monotonic()))
            for source, frames in then.items():
                _send(places[source], frames)
        time.sleep(SETTLE_S)
    finally:
        captured = {place: _stop_capture(proc) for place, proc in captures.items()}
    return Arrivals(captured)


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    require_ovs()
    inst = OvsInstance.start(tmp_path_factory.mktemp("ovs"), netns.unique_name("ovsh-"))
    try:
        yield inst
    finally:
        inst.stop()


@pytest.fixture(scope="module")
def fabric(ovs: OvsInstance) -> Iterator[str]:
    """The uplink's far end: a namespace without addresses."""
    ns = netns.unique_name("fab-", maxlen=32)
    netns.create_netns(ns)
    try:
        netns.create_veth_pair(UPLINK_PORT, ovs.netns, "eth0", ns)
        netns.set_link(ovs.netns, UPLINK_PORT)
        netns.set_link(ns, "eth0")
        yield ns
    finally:
        netns.delete_netns(ns)


@pytest.fixture(scope="module")
def arrivals(tmp_path_factory: pytest.TempPathFactory, ovs: OvsInstance, fabric: str) -> Arrivals:
    return asyncio.run(_arrivals(tmp_path_factory.mktemp("hostile"), ovs, fabric))


async def _arrivals(tmp: Path, ovs: OvsInstance, fabric: str) -> Arrivals:
    stack: Stack = await build_stack(tmp, ovs, BRIDGE, UPLINK_PORT, vfs=3, sfs=0)
    try:
        guest = await stack.attach("sb-guest", DeviceKind.VF)
        peer = await stack.attach("sb-peer", DeviceKind.VF)
        classed = await stack.attach("sb-classed", DeviceKind.VF)
        for sandbox, raw in (("sb-guest", GUEST_SCOPE), ("sb-peer", PEER_SCOPE)):
            [applied] = await stack.service.apply_policy(sandbox, scope_from_mapping(raw))
            assert applied.policy_state is PolicyState.APPLIED
        places = {
            "uplink": fabric,
            "guest": stack.guest_ns(guest),
            "peer": stack.guest_ns(peer),
            "classed": stack.guest_ns(classed),
        }
        env = Env(guest_mac=guest.mac, peer_mac=peer.mac, classed_mac=classed.mac, uplink_mac=_mac(fabric))
        return await asyncio.to_thread(run_cases, places, env, CASES)
    finally:
        await stack.close()


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_frames_arrive_only_where_the_policy_says(arrivals: Arrivals, index: int) -> None:
    case = CASES[index]
    tag = tag_for(index)
    got = tuple(arrivals.seen(tag(n)) for n in range(len(case.expect)))
    assert got == case.expect, (
        f"{case.name}: arrived at {[sorted(g) for g in got]}, expected {[sorted(e) for e in case.expect]}"
    )
