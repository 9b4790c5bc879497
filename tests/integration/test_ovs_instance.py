"""Integration tests for the private Open vSwitch helper and the namespace helpers."""

from __future__ import annotations

import os
import signal
import string
import time
from pathlib import Path

import pytest

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance, pid_alive, read_pid
from tests.conftest import NetnsFactory

SUBNET_PREFIX = "198.51.100."


# ---------------------------------------------------------------------------- unit tests


@pytest.mark.parametrize("prefix", ["", "a", "sw-", "bridge-", "exactly11ch", "a-very-long-prefix-indeed"])
def test_unique_name_fits_ifnamsiz(prefix: str) -> None:
    names = {netns.unique_name(prefix) for _ in range(200)}
    # 200 draws from >= 36**6 suffixes: a collision has probability ~1e-5.
    assert len(names) == 200, "suffixes must be random"
    kept = prefix[: 15 - 6]
    for name in names:
        assert 6 <= len(name) <= 15
        assert name.startswith(kept)
        assert len(name) - len(kept) >= 6, "at least six random characters"
        assert set(name[len(kept) :]) <= set(string.ascii_lowercase + string.digits)


def test_unique_name_maxlen() -> None:
    assert len(netns.unique_name("ns-", maxlen=40)) <= 40
    assert len(netns.unique_name("abcdefgh", maxlen=6)) == 6
    with pytest.raises(ValueError):
        netns.unique_name("x", maxlen=5)
    with pytest.raises(ValueError):
        netns.unique_name("bad/name")


def test_read_pid(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    assert read_pid(pidfile) is None
    pidfile.write_text("garbage\n")
    assert read_pid(pidfile) is None
    pidfile.write_text(f"{os.getpid()}\n")
    assert read_pid(pidfile) == os.getpid()
    assert read_pid(pidfile, "no-such-comm") is None


# ---------------------------------------------------------------------------- helpers


def _ping(ns: str, addr: str) -> bool:
    return netns.run_in_netns(ns, ["ping", "-c1", "-W1", addr], check=False, timeout=10).returncode == 0


def _ping_eventually(ns: str, addr: str, attempts: int = 5) -> bool:
    return any(_ping(ns, addr) for _ in range(attempts))


def _add_bridge(ovs: OvsInstance) -> str:
    br = netns.unique_name("br-")
    ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev", "fail_mode=secure")
    return br


def _attach_guest(ovs: OvsInstance, bridge: str, netns_factory: NetnsFactory, host: int) -> str:
    """A guest namespace with eth0 = SUBNET_PREFIX.host/24, its veth peer a port of ``bridge``."""
    guest = netns_factory("g-")
    sw_if = netns.unique_name("sw-")
    netns.create_veth_pair(sw_if, ovs.netns, "eth0", guest)
    netns.set_link(ovs.netns, sw_if, up=True)
    netns.set_link(guest, "eth0", up=True, mac=f"02:00:00:00:00:{host:02x}")
    netns.add_address(guest, "eth0", f"{SUBNET_PREFIX}{host}/24")
    ovs.vsctl("add-port", bridge, sw_if)
    ofport = ovs.vsctl("get", "Interface", sw_if, "ofport")
    assert int(ofport) > 0, f"port {sw_if} not attached: {ovs.vsctl('get', 'Interface', sw_if, 'error')}"
    return guest


def _links(ns: str) -> str:
    return netns.run_in_netns(ns, ["ip", "-o", "link"]).stdout


# ---------------------------------------------------------------------------- integration tests


@pytest.mark.ovs
def test_start_runs_private_daemons(private_ovs: OvsInstance) -> None:
    ovs = private_ovs
    assert ovs.ovsdb_pid is not None and ovs.vswitchd_pid is not None
    assert ovs.db_sock.exists() and ovs.vswitchd_ctl.exists()
    assert ovs.db_remote == f"unix:{ovs.db_sock}"
    assert netns.netns_exists(ovs.netns)
    # ovs-vswitchd runs in the instance's namespace, not in ours.
    vs_ns = os.stat(f"/proc/{ovs.vswitchd_pid}/ns/net")
    own_ns = os.stat(f"/run/netns/{ovs.netns}")
    assert vs_ns.st_ino == own_ns.st_ino
    assert os.stat("/proc/self/ns/net").st_ino != vs_ns.st_ino
    assert ovs.vsctl("get", "Open_vSwitch", ".", "other_config:userspace-tso-enable") == '"true"'
    assert "Open vSwitch" in ovs.appctl("version")
    for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"):
        assert ovs.env[var] == str(ovs.rundir)

    # A second start on the same rundir reuses the running daemons.
    again = OvsInstance.start(ovs.rundir)
    assert again.netns == ovs.netns
    assert (again.ovsdb_pid, again.vswitchd_pid) == (ovs.ovsdb_pid, ovs.vswitchd_pid)
    with pytest.raises(RuntimeError, match="belongs to"):
        OvsInstance.start(ovs.rundir, netns.unique_name("other-"))


@pytest.mark.ovs
def test_secure_bridge_forwards_only_with_flows(
    private_ovs: OvsInstance, netns_factory: NetnsFactory
) -> None:
    ovs = private_ovs
    br = _add_bridge(ovs)
    g1 = _attach_guest(ovs, br, netns_factory, 11)
    g2 = _attach_guest(ovs, br, netns_factory, 12)
    # Nothing of the topology is in the root namespace.
    assert "eth0" not in _links(ovs.netns)
    assert not _ping(g1, f"{SUBNET_PREFIX}12"), "fail_mode=secure without flows must drop"
    assert not _ping(g1, f"{SUBNET_PREFIX}12")

    ovs.ofctl("add-flow", br, "actions=NORMAL")
    assert _ping_eventually(g1, f"{SUBNET_PREFIX}12")
    assert _ping(g2, f"{SUBNET_PREFIX}11")
    # ofctl through the explicit management socket sees the same flow.
    assert "actions=NORMAL" in ovs.ofctl("dump-flows", ovs.mgmt(br))


@pytest.mark.ovs
def test_conntrack_zone(private_ovs: OvsInstance, netns_factory: NetnsFactory) -> None:
    ovs = private_ovs
    br = _add_bridge(ovs)
    g1 = _attach_guest(ovs, br, netns_factory, 21)
    _attach_guest(ovs, br, netns_factory, 22)
    flows = "\n".join(
        [
            "table=0,priority=200,arp,actions=NORMAL",
            "table=0,priority=100,ip,actions=ct(table=1,zone=5)",
            "table=1,priority=100,ct_state=+trk+new,ip,actions=ct(commit,zone=5),NORMAL",
            "table=1,priority=100,ct_state=+trk+est,ip,actions=NORMAL",
        ]
    )
    ovs.ofctl("--bundle", "add-flows", br, "-", input=flows + "\n")
    assert ovs.dpctl_dump_conntrack(zone=5) == []
    assert _ping_eventually(g1, f"{SUBNET_PREFIX}22")
    entries = ovs.dpctl_dump_conntrack(zone=5)
    assert any(
        "icmp" in e and f"src={SUBNET_PREFIX}21" in e and f"dst={SUBNET_PREFIX}22" in e for e in entries
    ), entries
    assert all("zone=5" in e for e in entries), entries
    ovs.dpctl_flush_conntrack(zone=5)
    assert ovs.dpctl_dump_conntrack(zone=5) == []


@pytest.mark.ovs
def test_vswitchd_restart_keeps_db(private_ovs: OvsInstance, netns_factory: NetnsFactory) -> None:
    ovs = private_ovs
    br = _add_bridge(ovs)
    g1 = _attach_guest(ovs, br, netns_factory, 31)
    _attach_guest(ovs, br, netns_factory, 32)
    ovs.ofctl("add-flow", br, "actions=NORMAL")
    assert _ping_eventually(g1, f"{SUBNET_PREFIX}32")

    old_pid = ovs.vswitchd_pid
    db_pid = ovs.ovsdb_pid
    assert old_pid is not None
    ovs.stop_vswitchd()
    assert not pid_alive(old_pid)
    assert ovs.vswitchd_pid is None
    assert ovs.ovsdb_pid == db_pid
    assert not _ping(g1, f"{SUBNET_PREFIX}32")
    ovs.stop_vswitchd()  # idempotent

    ovs.start_vswitchd()
    assert ovs.vswitchd_pid not in (None, old_pid)
    assert br in ovs.vsctl("list-br").split()
    # Flows are not persistent: the restarted switch comes up empty (and secure).
    assert "actions=" not in ovs.ofctl("dump-flows", br)
    ovs.ofctl("add-flow", br, "actions=NORMAL")
    assert _ping_eventually(g1, f"{SUBNET_PREFIX}32")


@pytest.mark.ovs
def test_start_after_crash_reuses_db(private_ovs: OvsInstance) -> None:
    ovs = private_ovs
    br = _add_bridge(ovs)
    pids = [ovs.ovsdb_pid, ovs.vswitchd_pid]
    for pid in pids:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid is not None and pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ovs.ovsdb_pid is None and ovs.vswitchd_pid is None

    again = OvsInstance.start(ovs.rundir)  # like `dev up` after a crash: same db, same namespace
    assert again.netns == ovs.netns
    assert again.ovsdb_pid not in (None, *pids) and again.vswitchd_pid not in (None, *pids)
    assert br in again.vsctl("list-br").split()
    assert again.vsctl("get", "bridge", br, "fail_mode") == "secure"


@pytest.mark.ovs
def test_stop_leaves_nothing(tmp_path: Path) -> None:
    from tests.conftest import require_ovs

    require_ovs()
    ns = netns.unique_name("ovs-")
    ovs = OvsInstance.start(tmp_path / "ovs", ns)
    try:
        br = _add_bridge(ovs)
        assert br in _links(ns)
        pids = [ovs.ovsdb_pid, ovs.vswitchd_pid]
        assert all(pids)
    finally:
        ovs.stop()
    for pid in pids:
        assert pid is not None and not pid_alive(pid), f"pid {pid} still running"
    assert not netns.netns_exists(ns)
    assert ns not in netns._run(["ip", "netns", "list"]).stdout
    ovs.stop()  # idempotent
    with OvsInstance.start(tmp_path / "ovs") as again:  # the db survives stop()
        assert again.netns == ns
        assert br in again.vsctl("list-br").split()
    assert not netns.netns_exists(ns)
