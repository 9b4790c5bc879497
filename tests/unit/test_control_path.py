"""Where ovs-vswitchd's control socket is found: a configured path as is,
a plain --unixctl socket, else the socket named after the pidfile's pid;
a configured bare name through its own pidfile in the rundir."""

from __future__ import annotations

from pathlib import Path

from coordinator.ovs.control import vswitchd_ctl


def test_the_socket_is_found_in_the_rundir(tmp_path: Path) -> None:
    rundir = str(tmp_path)
    assert vswitchd_ctl(rundir) == "ovs-vswitchd"  # nothing runs: the name, for the error message
    (tmp_path / "ovs-vswitchd.pid").write_text("4242\n")
    assert vswitchd_ctl(rundir) == str(tmp_path / "ovs-vswitchd.4242.ctl")
    (tmp_path / "ovs-vswitchd.ctl").touch()
    assert vswitchd_ctl(rundir) == str(tmp_path / "ovs-vswitchd.ctl")
    assert vswitchd_ctl(rundir, "/elsewhere/x.ctl") == "/elsewhere/x.ctl"


def test_a_configured_name_is_found_through_its_pidfile_in_the_rundir(tmp_path: Path) -> None:
    (tmp_path / "ovs-vswitchd.ctl").touch()  # not what the name stands for
    assert vswitchd_ctl(str(tmp_path), "ovs-vswitchd") == "ovs-vswitchd"
    (tmp_path / "ovs-vswitchd.pid").write_text("77\n")
    assert vswitchd_ctl(str(tmp_path), "ovs-vswitchd") == str(tmp_path / "ovs-vswitchd.77.ctl")
    (tmp_path / "ovs-vswitchd.pid").write_text("garbage\n")
    assert vswitchd_ctl(str(tmp_path), "ovs-vswitchd") == "ovs-vswitchd"
