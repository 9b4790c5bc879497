"""An in-process coordinator stack on a private OVS: the real store,
emulated eswitch, OVSDB and OpenFlow adapters and the attachment service,
plus an uplink namespace with test servers. For tests that drive the
service directly (policy updates, restarts) rather than over gRPC."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.callers import Caller, Role
from coordinator.config import Config, config_from_mapping
from coordinator.daemon import build
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.base import DeviceKind
from coordinator.eswitch.emulated import EmulatedEswitch
from coordinator.events import EventHub
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.openflow import OpenFlowSwitch
from coordinator.ovs.ovsdb import Ovsdb
from coordinator.service import AttachmentService, AttachParams
from coordinator.store.db import Store
from coordinator.store.records import AttachmentRecord
from coordinator.store.worker import AsyncStore

NETPROBE = str(Path(__file__).with_name("netprobe.py"))
UPLINK_V4 = "198.51.100.1"
UPLINK_V6 = "2001:db8::1"
SERVER_V4 = "203.0.113.5"
SERVER_V6 = "2001:db8:ff::5"
HOST = Caller("spiffe://bluefield.local/host/host-a", Role.HOST)


@dataclass
class Uplink:
    """The fabric side: a namespace on the bridge's uplink port that routes
    and hosts the test servers (TCP/UDP echo on fixed ports)."""

    ns: str
    server: subprocess.Popen[str] | None = None

    @classmethod
    def create(cls, ovs: OvsInstance, port: str, tcp: str = "22,80,443,8080", udp: str = "53,5000") -> Uplink:
        ns = netns.unique_name("up-", maxlen=32)
        netns.create_netns(ns)
        uplink = cls(ns)
        try:
            netns.create_veth_pair(port, ovs.netns, "eth0", ns)
            netns.set_link(ovs.netns, port)
            netns.set_link(ns, "eth0")
            netns.add_address(ns, "eth0", f"{UPLINK_V4}/24")
            netns.add_address(ns, "eth0", f"{UPLINK_V6}/64", nodad=True)
            netns.add_address(ns, "lo", f"{SERVER_V4}/32")
            netns.add_address(ns, "lo", f"{SERVER_V6}/128", nodad=True)
            uplink.server = netns.popen_in_netns(
                ns,
                [
                    sys.executable,
                    NETPROBE,
                    "serve",
                    "--tcp",
                    tcp,
                    "--udp",
                    udp,
                    "--udp-addresses",
                    f"{SERVER_V4},{SERVER_V6}",
                ],
                stdin=subprocess.PIPE,
            )
            assert uplink.server.stdout is not None
            if uplink.server.stdout.readline().strip() != "ready":
                raise RuntimeError("test server did not start")
        except BaseException:
            uplink.close()
            raise
        return uplink

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        netns.delete_netns(self.ns)


@dataclass
class Stack:
    config: Config
    ovs: OvsInstance
    store: Store
    backend: EmulatedEswitch
    ovsdb: Ovsdb
    openflow: OpenFlowSwitch  # ovs-ofctl, for the tests' own reading of the bridge
    service: AttachmentService
    events: EventHub
    # The daemon's store thread; ``store`` is the same database, for
    # inspection from the test between operations.
    async_store: AsyncStore
    switch: ChannelSwitch  # what the daemon programs the bridge through
    guests: list[str] = field(default_factory=list)

    async def attach(self, sandbox: str, kind: DeviceKind | None = None) -> AttachmentRecord:
        params = AttachParams(sandbox, "hi-1", f"req-{sandbox}", kind, "", "BASELINE")
        return await self.service.attach(HOST, params)

    def guest_ns(self, record: AttachmentRecord) -> str:
        return self.backend.guest_netns(record.device)

    def configure_guest(self, record: AttachmentRecord, v4: str, v6: str | None = None) -> str:
        ns = self.guest_ns(record)
        netns.run_in_netns(ns, ["ip", "link", "set", "lo", "up"])
        netns.add_address(ns, "eth0", v4)
        netns.add_route(ns, "default", UPLINK_V4)
        if v6:
            netns.add_address(ns, "eth0", v6, nodad=True)
            netns.add_route(ns, "default", UPLINK_V6)
        return ns

    async def detach_all_and_close(self) -> None:
        """Detach what ``attach`` made, then close."""
        for record in await self.service.list_all():
            await self.service.detach(HOST, record.attachment_id, record.lease_generation)
        await self.close()

    async def close(self) -> None:
        await self.switch.close()
        await self.ovsdb.close()
        self.backend.destroy()
        await self.async_store.close()


async def build_stack(
    tmp: Path,
    ovs: OvsInstance,
    bridge: str,
    uplink_port: str,
    *,
    vfs: int = 2,
    sfs: int = 1,
    extra: dict[str, dict[str, object]] | None = None,
) -> Stack:
    """``extra``: more config sections (e.g. ``{"limits": {...}}``)."""
    config = config_from_mapping(
        {
            **(extra or {}),
            "store": {"path": str(tmp / "state.db")},
            "ovs": {
                "db": ovs.db_remote,
                "rundir": str(ovs.rundir),
                "bridge": bridge,
                "datapath_type": "netdev",
                "uplink": uplink_port,
            },
            "eswitch": {
                "mac_salt": "test",
                "emulated": {
                    "vfs": vfs,
                    "sfs": sfs,
                    "switch_netns": ovs.netns,
                    "guest_netns_prefix": netns.unique_name("g", maxlen=10) + "-",
                },
            },
        }
    )
    backend = await asyncio.to_thread(EmulatedEswitch, config.eswitch.emulated)
    try:
        a = await build(config, backend)
    except BaseException:
        backend.destroy()  # its guest namespaces must not outlive a failed start
        raise
    openflow = OpenFlowSwitch(f"unix:{config.ovs.rundir}/{bridge}.mgmt", timeout=config.ovs.timeout_s)
    return Stack(
        config, ovs, a.store.sync, backend, a.ovsdb, openflow, a.service, a.events, a.store, a.switch
    )


async def restart_daemon(stack: Stack) -> Stack:
    """The daemon stopped (its connections and store closed) and built
    again on the same store, OVS and eswitch: a restart of the daemon."""
    await stack.switch.close()
    await stack.ovsdb.close()
    await stack.async_store.close()
    again = await build(stack.config, stack.backend)
    return Stack(stack.config, stack.ovs, again.store.sync, stack.backend, again.ovsdb, stack.openflow,
                 again.service, again.events, again.store, again.switch)  # fmt: skip


def probe_tcp(ns: str, host: str, port: int, *, source: str | None = None, timeout: float = 1.0) -> bool:
    argv = [sys.executable, NETPROBE, "connect", host, str(port), "--timeout", str(timeout)]
    if source:
        argv += ["--source", source]
    return netns.run_in_netns(ns, argv, check=False).returncode == 0


def probe_udp(ns: str, host: str, port: int, *, timeout: float = 1.0) -> bool:
    argv = [sys.executable, NETPROBE, "udp", host, str(port), "--timeout", str(timeout)]
    return netns.run_in_netns(ns, argv, check=False).returncode == 0


def probe_ping(ns: str, host: str) -> bool:
    return netns.run_in_netns(ns, ["ping", "-c", "1", "-W", "1", host], check=False).returncode == 0
