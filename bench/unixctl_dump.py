"""Conntrack dump latency: spawning ``ovs-appctl`` against the kept
control connection (``coordinator.ovs.unixctl.UnixctlClient``) and a
connection opened per call, for an empty zone and a zone of 100 entries.

``python -m bench.unixctl_dump [ROUNDS]`` starts a private OVS with a
userspace bridge, commits 100 UDP connections to one zone with packet-outs
through ``ct(commit)`` (no namespace or traffic needed), then times each
way ROUNDS times, alternating, and prints the p50 and p90 in milliseconds.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.stats import percentile
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.ovs.process import run_command
from coordinator.ovs.unixctl import UnixctlClient, call_many

FULL_ZONE, EMPTY_ZONE, ENTRIES = 9, 10, 100
SOURCE, DESTINATION = "198.51.100.10", "198.51.100.20"


def _udp_frame(source_port: int) -> bytes:
    """An Ethernet/IPv4/UDP frame (checksum 0: allowed for UDP over IPv4)."""
    udp = struct.pack("!HHHH", source_port, 53, 8, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(SOURCE), socket.inet_aton(DESTINATION),
    )  # fmt: skip
    total = sum(struct.unpack("!10H", ip))
    total = (total & 0xFFFF) + (total >> 16)
    ip = ip[:10] + struct.pack("!H", ~total & 0xFFFF) + ip[12:]
    return bytes.fromhex("02bf0000000202bf000000010800") + ip + udp


def _fill(ovs: OvsInstance, bridge: str) -> None:
    for i in range(ENTRIES):
        packet = _udp_frame(30000 + i).hex()
        ovs.ofctl(
            "packet-out", bridge, f"in_port=controller,packet={packet},actions=ct(commit,zone={FULL_ZONE})"
        )


async def _time(rounds: int, ways: dict[str, Callable[[], Awaitable[str]]]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            await way()
            samples[name].append((time.perf_counter() - start) * 1000)
    return samples


async def _measure(ctl: str, rounds: int) -> None:
    client = UnixctlClient(ctl, timeout=10)
    try:
        for zone in (EMPTY_ZONE, FULL_ZONE):
            command = ["dpctl/dump-conntrack", f"zone={zone}"]

            async def spawned(command: list[str] = command) -> str:
                return (await run_command(["ovs-appctl", "-t", ctl, *command], timeout=10)).stdout

            async def kept(command: list[str] = command) -> str:
                return (await client.call(*command)).result

            async def per_call(command: list[str] = command) -> str:
                return (await call_many(ctl, [command], timeout=10))[0].result

            lines = {(await way()).count("\n") for way in (spawned, kept, per_call)}
            assert len(lines) == 1, f"the ways disagree on zone {zone}: {lines}"
            samples = await _time(rounds, {"spawn ovs-appctl": spawned, "kept connection": kept,
                                           "connection per call": per_call})  # fmt: skip
            print(f"zone {zone}: {lines.pop()} entries, {rounds} rounds")
            for name, values in samples.items():
                print(
                    f"  {name:22} p50 {percentile(sorted(values), 50):6.2f} ms   p90 {percentile(sorted(values), 90):6.2f} ms"
                )
    finally:
        await client.close()


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 200
    with tempfile.TemporaryDirectory(prefix="bench-unixctl-") as workdir:
        ovs = OvsInstance.start(Path(workdir) / "ovs", netns.unique_name("bu-"))
        try:
            bridge = netns.unique_name("bru")
            ovs.vsctl("add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=netdev")
            _fill(ovs, bridge)
            asyncio.run(_measure(str(ovs.vswitchd_ctl), rounds))
        finally:
            ovs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
