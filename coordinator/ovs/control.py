"""Where ovs-vswitchd's control socket is (conntrack, traces, datapath
dumps), and a bridge's OpenFlow management socket."""

from __future__ import annotations

from pathlib import Path

DAEMON = "ovs-vswitchd"


def bridge_mgmt(rundir: str, bridge: str) -> str:
    """The bridge's management socket (OpenFlow, no TLS: local only)."""
    return f"{rundir}/{bridge}.mgmt"


def vswitchd_ctl(rundir: str, configured: str = "") -> str:
    """The configured path, else ``RUNDIR/ovs-vswitchd.ctl`` when it exists
    (a private instance started with --unixctl), else the packaged daemon's
    ``RUNDIR/ovs-vswitchd.<pid>.ctl`` found through its pidfile. A configured
    bare name (``ovs-vswitchd``) is found the same way, through
    ``RUNDIR/NAME.pid``, as ovs-appctl would in its own rundir. Falls back to
    the name when there is no pidfile (no daemon runs).

    The result is a path read from the pidfile: cheap, but not free, so
    long-lived clients look it up when they connect, not per call."""
    name = configured or DAEMON
    if "/" in name:
        return name
    if not configured:
        plain = Path(rundir, f"{name}.ctl")
        if plain.exists():
            return str(plain)
    try:
        pid = int(Path(rundir, f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return name
    return str(Path(rundir, f"{name}.{pid}.ctl"))
