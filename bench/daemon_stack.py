"""The daemon in-process on a private OVS: `coordinator.daemon.build` with
the real store, emulated eswitch, OVSDB and OpenFlow adapters, so a policy
apply goes through exactly the code a gateway event goes through."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.callers import Caller, Role
from coordinator.certs import DevPki
from coordinator.config import Config, config_from_mapping
from coordinator.daemon import Adapters, build
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.base import DeviceKind
from coordinator.eswitch.emulated import EmulatedEswitch
from coordinator.flows.compiler import PortFacts, attachment_flows
from coordinator.flows.model import Flow
from coordinator.flows.pipeline import load_pipeline
from coordinator.flows.render import render_flows
from coordinator.policy.scope import Scope
from coordinator.service import AttachParams
from coordinator.store.records import AttachmentRecord

HOST = Caller("spiffe://bluefield.local/host/bench", Role.HOST)
ADMIN = "spiffe://bluefield.local/admin/admin"
UPLINK_PORT = "uplink"


@dataclass
class DaemonStack:
    config: Config
    ovs: OvsInstance
    backend: EmulatedEswitch
    adapters: Adapters

    @property
    def mgmt(self) -> str:
        return self.ovs.mgmt(self.config.ovs.bridge)

    async def attach(self, sandbox: str) -> AttachmentRecord:
        params = AttachParams(sandbox, "bench-host", f"req-{sandbox}", DeviceKind.VF, "", "BASELINE")
        return await self.adapters.service.attach(HOST, params)

    def flows(self, record: AttachmentRecord, scope: Scope) -> list[Flow]:
        """The flows the daemon compiles for ``record`` under ``scope``."""
        port = PortFacts(ofport=record.ofport, mac=record.mac, slot=record.slot)
        return attachment_flows(load_pipeline(), port, scope)

    def rendered(self, record: AttachmentRecord, scope: Scope) -> list[str]:
        """The same flows as ovs-ofctl text."""
        return render_flows(self.flows(record, scope), load_pipeline())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_mapping(
    workdir: Path, ovs: OvsInstance, bridge: str, *, vfs: int, pki: DevPki | None = None
) -> dict[str, Any]:
    """The daemon's configuration (as its TOML would hold it) on ``ovs``."""
    mapping: dict[str, Any] = {
        "store": {"path": str(workdir / "state.db")},
        "ovs": {
            "db": ovs.db_remote,
            "rundir": str(ovs.rundir),
            "bridge": bridge,
            "datapath_type": "netdev",
            "uplink": UPLINK_PORT,
            "timeout_s": 60.0,
        },
        "eswitch": {
            "backend": "emulated",
            "mac_salt": "bench",
            "emulated": {
                "vfs": vfs,
                "sfs": 0,
                "switch_netns": ovs.netns,
                "guest_netns_prefix": netns.unique_name("bg", maxlen=9) + "-",
            },
        },
        "policy": {"initial_policy": "BASELINE"},
        "metrics": {"listen": ""},
        "limits": {"max_attachments": max(vfs, 1), "max_attach_qps": 100000},
    }
    if pki is not None:
        mapping["server"] = {
            "listen": f"127.0.0.1:{_free_port()}",
            "cert": str(pki.server_cert),
            "key": str(pki.server_key),
            "client_ca": str(pki.ca_cert),
        }
        mapping["auth"] = {"admins": [ADMIN], "hosts": [HOST.identity]}
    return mapping


def toml_text(mapping: dict[str, Any], prefix: str = "") -> str:
    """The small TOML subset the mapping above needs (tables, strings, numbers, string lists)."""
    plain, tables = [], []
    for key, value in mapping.items():
        if isinstance(value, dict):
            tables.append(toml_text(value, f"{prefix}{key}."))
        elif isinstance(value, bool):
            plain.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            plain.append(f"{key} = {value}")
        elif isinstance(value, list):
            plain.append(f"{key} = [{', '.join(_quote(v) for v in value)}]")
        else:
            plain.append(f"{key} = {_quote(value)}")
    head = [f"[{prefix.rstrip('.')}]"] if prefix and plain else []
    return "\n".join([*head, *plain, "", *tables])


def _quote(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def uplink(ovs: OvsInstance) -> Iterator[str]:
    """The bridge's uplink: a veth into a namespace of its own (no addresses;
    only the scale case sends raw frames from it). Removed afterwards."""
    ns = netns.unique_name("bu-", maxlen=24)
    netns.create_netns(ns)
    try:
        netns.create_veth_pair(UPLINK_PORT, ovs.netns, "eth0", ns)
        netns.set_link(ovs.netns, UPLINK_PORT)
        yield ns
    finally:
        netns.run_in_netns(ovs.netns, ["ip", "link", "del", UPLINK_PORT], check=False)
        netns.delete_netns(ns)


@contextlib.asynccontextmanager
async def daemon_stack(
    workdir: Path, ovs: OvsInstance, bridge: str, *, vfs: int = 1
) -> AsyncIterator[DaemonStack]:
    """The daemon built on ``ovs`` with ``vfs`` emulated VFs; everything removed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    with uplink(ovs):
        config = config_from_mapping(bench_mapping(workdir, ovs, bridge, vfs=vfs))
        backend = await asyncio.to_thread(EmulatedEswitch, config.eswitch.emulated)
        try:
            adapters = await build(config, backend)
            try:
                yield DaemonStack(config, ovs, backend, adapters)
            finally:
                await adapters.close()
        finally:
            await asyncio.to_thread(backend.destroy)
            with contextlib.suppress(Exception):
                ovs.vsctl("--if-exists", "del-br", bridge)
