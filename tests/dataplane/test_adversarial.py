"""The hostile guest: raw frames crafted in a guest namespace (and on the
fabric), captured wherever they could arrive (tests/dataplane/cases.py and nd_cases.py).

One private OVS and one coordinator stack serve the whole module: three
attachments (the attacker ``guest`` and a ``peer``, both with a NetworkScope,
and ``classed`` on the baseline network class) and a fabric namespace on the
uplink. The fabric and the guests have no IP addresses, so no kernel answers
(or reflects a marker back in an ICMP error): what each place captures is
exactly what the switch delivered. All cases are sent in one go (in chunks
the switch's port buffer holds, each followed by a sentinel); each test then
checks one case's arrivals.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.base import DeviceKind
from coordinator.policy.validate import scope_from_mapping
from coordinator.store.records import PolicyState
from tests.conftest import require_ovs
from tests.dataplane.cases import CASES, GUEST_SCOPE, PEER_SCOPE, SENTINELS, Case, Env, Tag
from tests.dataplane.nd_cases import ND_CASES
from tests.integration.stack import Stack, build_stack

pytestmark = pytest.mark.ovs

ALL_CASES = (*CASES, *ND_CASES)

WIRE = str(Path(__file__).with_name("wire.py"))
BRIDGE = "br-hostile"
UPLINK_PORT = "hostile-up"
MARKER = b"BQ"
SETTLE_S = 1.0  # after the last frame went through, for whatever follows it late
# Conntrack's reassembly gives up on an incomplete datagram after 15 s and
# hands its fragments back at the next ct() of that family: the second
# round of frames (Case.then) is sent once that has happened.
FRAGMENT_EXPIRY_S = 16.0
# The switch reads each port through a packet socket with the kernel's
# default receive buffer (212,992 bytes): it holds about 90 frames of 1,400
# bytes. Whatever a burst sends beyond that before the switch gets to read
# (a loaded machine) the kernel drops unseen - the tail of a burst, such as
# the allowed datagram after 46 fragments. So frames go in chunks of whole
# cases, each followed by a sentinel that must come out before the next
# chunk is sent: about half the buffer is ever in flight.
CHUNK_FRAMES = 48
SENTINEL_TIMEOUT_S = 30.0


def tag_for(case_index: int) -> Tag:
    return lambda n: b"BQ%03d%02d!" % (case_index, n)


SENTINEL_PREFIX = b"BQsent"  # no case's tag looks like it


def sentinel_marker(n: int) -> bytes:
    return SENTINEL_PREFIX + b"%03d!" % n


@dataclass
class Arrivals:
    places: dict[str, list[bytes]]  # place -> frames captured there

    def seen(self, marker: bytes) -> frozenset[str]:
        return frozenset(p for p, frames in self.places.items() if any(marker in f for f in frames))


def _mac(ns: str, ifname: str = "eth0") -> str:
    out = netns.run_in_netns(ns, ["ip", "-j", "link", "show", "dev", ifname]).stdout
    return str(json.loads(out)[0]["address"])


class Capture:
    """Every frame with the marker arriving in one namespace, read as it
    comes (so a sentinel can be waited for) until :meth:`stop`."""

    def __init__(self, ns: str) -> None:
        self._proc = netns.popen_in_netns(
            ns, [sys.executable, WIRE, "capture", "eth0", MARKER.decode()], stdin=subprocess.PIPE
        )
        assert self._proc.stdout is not None and self._proc.stdout.readline().strip() == "ready"
        self._frames: list[bytes] = []
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, out: IO[str]) -> None:
        for line in out:
            with self._arrived:
                self._frames.append(bytes.fromhex(line.strip()))
                self._arrived.notify_all()

    def wait_for(self, marker: bytes, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: any(marker in f for f in self._frames), timeout)

    def stop(self) -> list[bytes]:
        assert self._proc.stdin is not None
        self._proc.stdin.close()  # the capture's cue to stop; its last lines go to the reader
        self._proc.wait(timeout=10)
        self._reader.join(timeout=10)
        with self._arrived:
            return list(self._frames)


def _send(ns: str, frames: list[bytes]) -> None:
    netns.run_in_netns(
        ns, [sys.executable, WIRE, "send", "eth0"], input="".join(f"{f.hex()}\n" for f in frames)
    )


def chunks(frames_per_case: list[list[bytes]], limit: int = CHUNK_FRAMES) -> list[list[bytes]]:
    """Consecutive whole cases, at most ``limit`` frames a chunk (a case is
    never split: what it sends back to back is what it tests)."""
    out: list[list[bytes]] = []
    for frames in frames_per_case:
        assert len(frames) <= limit, f"a case of {len(frames)} frames overflows the switch's port buffer"
        if not out or len(out[-1]) + len(frames) > limit:
            out.append([])
        out[-1].extend(frames)
    return out


class Sender:
    """Sends chunks of frames from their source's namespace, each followed
    by the source's sentinel, and waits until the switch let it through."""

    def __init__(self, places: dict[str, str], captures: dict[str, Capture], env: Env) -> None:
        self._places = places
        self._captures = captures
        self._env = env
        self._sent = 0

    def send(self, source: str, frames_per_case: list[list[bytes]]) -> None:
        sentinel = SENTINELS[source]
        for chunk in chunks(frames_per_case):
            marker = sentinel_marker(self._sent)
            self._sent += 1
            _send(self._places[source], [*chunk, bytes(sentinel.frame(self._env, marker))])
            assert self._captures[sentinel.place].wait_for(marker, SENTINEL_TIMEOUT_S), (
                f"the {source} sentinel {marker!r} never reached {sentinel.place}"
            )


def run_cases(places: dict[str, str], env: Env, cases: tuple[Case, ...]) -> Arrivals:
    first: dict[str, list[list[bytes]]] = {}
    then: dict[str, list[list[bytes]]] = {}
    for index, case in enumerate(cases):
        first.setdefault(case.source, []).append([bytes(f) for f in case.frames(env, tag_for(index))])
        if case.then:
            then.setdefault(case.source, []).append([bytes(f) for f in case.then(env, tag_for(index))])
    captures = {place: Capture(ns) for place, ns in places.items()}
    try:
        sender = Sender(places, captures, env)
        for source, frames_per_case in first.items():
            sender.send(source, frames_per_case)
        if then:
            # Every fragment of the first round has reached the switch by now.
            time.sleep(FRAGMENT_EXPIRY_S)
            for source, frames_per_case in then.items():
                sender.send(source, frames_per_case)
        time.sleep(SETTLE_S)
    finally:
        captured = {place: capture.stop() for place, capture in captures.items()}
    # The sentinels are no case's business.
    return Arrivals(
        {place: [f for f in frames if SENTINEL_PREFIX not in f] for place, frames in captured.items()}
    )


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
        return await asyncio.to_thread(run_cases, places, env, ALL_CASES)
    finally:
        await stack.close()


@pytest.mark.parametrize("index", range(len(ALL_CASES)), ids=[c.name for c in ALL_CASES])
def test_frames_arrive_only_where_the_policy_says(arrivals: Arrivals, index: int) -> None:
    case = ALL_CASES[index]
    tag = tag_for(index)
    got = tuple(arrivals.seen(tag(n)) for n in range(len(case.expect)))
    assert got == case.expect, (
        f"{case.name}: arrived at {[sorted(g) for g in got]}, expected {[sorted(e) for e in case.expect]}"
    )
