"""A private OVN (the incumbent) on a private Open vSwitch.

Northbound and southbound ovsdb-servers, ovn-northd and ovn-controller
run from one temp directory on unix sockets only; ovn-controller programs
``br-int`` of the given private OVS (userspace datapath). One logical
switch with one port, bound to a veth whose far end sits in a namespace
the bench made. With a single chassis OVN creates no tunnel.

Daemons are stopped by the pids in their own pidfiles, also on failure.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError, count_flows, run, stop_pidfile, timed_run
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance

OVN_SCHEMAS = Path("/usr/share/ovn")
INTEGRATION_BRIDGE = "br-int"
SWITCH = "ls-bench"
PORT = "lsp-vm"
CHASSIS = "bench-chassis"
# Never carries a packet (one chassis, no tunnel) but ovn-controller wants one.
ENCAP_IP = "198.51.100.254"
WAIT_TIMEOUT_S = 120


class Ovn:
    """Start with :meth:`start` (which cleans up after itself on failure); :meth:`stop` always."""

    def __init__(self, workdir: Path, ovs: OvsInstance) -> None:
        self.dir = workdir.resolve()
        self.ovs = ovs
        self.guest_ns = ""
        self.veth = ""

    # -- paths -------------------------------------------------------------

    def _sock(self, name: str) -> str:
        return f"unix:{self.dir / (name + '.sock')}"

    def _pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    @property
    def env(self) -> dict[str, str]:
        # ovn-controller finds br-int.mgmt through OVS_RUNDIR and puts its
        # own control socket (ovn-controller.<pid>.ctl) in OVN_RUNDIR.
        env = self.ovs.env
        d = str(self.dir)
        env.update(OVN_RUNDIR=d, OVN_DBDIR=d, OVN_LOGDIR=d, OVN_SYSCONFDIR=d)
        return env

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, ovs: OvsInstance, mac: str, address: str) -> Ovn:
        workdir.mkdir(parents=True, exist_ok=True)
        ovn = cls(workdir, ovs)
        try:
            ovn._start_central()
            ovn._start_controller()
            ovn._bind_port(mac, address)
        except BaseException:
            ovn.stop()
            raise
        return ovn

    def _daemon(self, argv: list[str], name: str) -> None:
        run(
            [
                *argv,
                f"--pidfile={self._pidfile(name)}",
                f"--log-file={self.dir / (name + '.log')}",
                "--detach",
                "--no-chdir",
            ],
            env=self.env,
            timeout=60,
        )

    def _start_central(self) -> None:
        for db in ("nb", "sb"):
            path = self.dir / f"ovn{db}.db"
            run(["ovsdb-tool", "create", str(path), str(OVN_SCHEMAS / f"ovn-{db}.ovsschema")])
            self._daemon(
                [
                    "ovsdb-server",
                    str(path),
                    f"--remote=p{self._sock(db)}",
                    f"--unixctl={self.dir / (db + '.ctl')}",
                ],
                f"ovsdb-{db}",
            )
        self.nbctl("init")
        self._daemon(
            [
                "ovn-northd",
                f"--ovnnb-db={self._sock('nb')}",
                f"--ovnsb-db={self._sock('sb')}",
                f"--unixctl={self.dir / 'northd.ctl'}",
            ],
            "northd",
        )

    def _start_controller(self) -> None:
        self.ovs.vsctl(
            "--may-exist", "add-br", INTEGRATION_BRIDGE,
            "--", "set", "bridge", INTEGRATION_BRIDGE, "datapath_type=netdev", "fail_mode=secure",
            "--", "set", "Open_vSwitch", ".",
            f"external_ids:system-id={CHASSIS}",
            f"external_ids:ovn-remote={self._sock('sb')}",
            "external_ids:ovn-encap-type=geneve",
            f"external_ids:ovn-encap-ip={ENCAP_IP}",
            "external_ids:ovn-bridge-datapath-type=netdev",
        )  # fmt: skip
        # 23.03 has no --unixctl option: the socket is ovn-controller.<pid>.ctl in OVN_RUNDIR.
        self._daemon(["ovn-controller", self.ovs.db_remote], "ovn-controller")

    def _bind_port(self, mac: str, address: str) -> None:
        self.nbctl(
            "ls-add", SWITCH,
            "--", "lsp-add", SWITCH, PORT,
            "--", "lsp-set-addresses", PORT, f"{mac} {address}",
            "--", "lsp-set-port-security", PORT, f"{mac} {address}",
        )  # fmt: skip
        self.guest_ns = netns.unique_name("bo-", maxlen=24)
        self.veth = "ovnvm0"
        netns.create_netns(self.guest_ns)
        netns.create_veth_pair(self.veth, self.ovs.netns, "eth0", self.guest_ns)
        netns.set_link(self.ovs.netns, self.veth)
        self.ovs.vsctl(
            "add-port", INTEGRATION_BRIDGE, self.veth,
            "--", "set", "Interface", self.veth, f"external_ids:iface-id={PORT}",
        )  # fmt: skip
        self.nbctl("--timeout=60", "wait-until", "Logical_Switch_Port", PORT, "up=true")
        self.nbctl("--wait=hv", "sync")

    def stop(self) -> None:
        for name in ("ovn-controller", "northd", "ovsdb-sb", "ovsdb-nb"):
            with contextlib.suppress(OSError):
                stop_pidfile(self._pidfile(name))
        if self.guest_ns:
            with contextlib.suppress(netns.NetnsError):
                netns.delete_netns(self.guest_ns)
        with contextlib.suppress(Exception):
            self.ovs.vsctl("--if-exists", "del-br", INTEGRATION_BRIDGE)

    # -- commands --------------------------------------------------------------

    def nbctl(self, *args: str) -> str:
        return run(["ovn-nbctl", f"--db={self._sock('nb')}", *args], env=self.env, timeout=WAIT_TIMEOUT_S)

    def timed_nbctl(self, *args: str) -> float:
        return timed_run(["ovn-nbctl", f"--db={self._sock('nb')}", *args], env=self.env)

    def flows(self) -> int:
        """OpenFlow flows on br-int (ovn-controller speaks OpenFlow 1.5)."""
        dump = run(
            ["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", "--no-stats", self.ovs.mgmt(INTEGRATION_BRIDGE)]
        )
        return count_flows(dump)

    def clear_acls(self) -> None:
        self.nbctl("--wait=hv", "acl-del", SWITCH)

    def set_acls(self, acls: Sequence[Acl]) -> float:
        """Add ``acls`` in one transaction; seconds until they are on the bridge."""
        return self.timed_nbctl("--wait=hv", *_acl_commands("acl-add", acls))

    def change_acl(self, old: Acl, new: Acl) -> float:
        """Swap one ACL for another in one transaction, waited for like :meth:`set_acls`."""
        delete = ["--", "acl-del", SWITCH, old.direction, str(old.priority), old.match]
        return self.timed_nbctl("--wait=hv", *delete, *_acl_commands("acl-add", [new]))

    def wait_controller(self, timeout: float = 30.0) -> None:
        """Block until ovn-controller has caught up with the northbound db."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.nbctl("--wait=hv", "sync")
                return
            except BenchError:
                if time.monotonic() > deadline:
                    raise


@dataclass(frozen=True)
class Acl:
    """One OVN ACL on the bench's logical switch."""

    direction: str  # from-lport (leaving the VM) or to-lport (towards it)
    priority: int
    match: str
    action: str


def _acl_commands(verb: str, acls: Sequence[Acl]) -> list[str]:
    args: list[str] = []
    for acl in acls:
        args += ["--", verb, SWITCH, acl.direction, str(acl.priority), acl.match, acl.action]
    return args
