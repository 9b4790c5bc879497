"""Where ovs-vswitchd's unixctl socket is (for ovs-appctl: traces,
conntrack)."""

from __future__ import annotations

from pathlib import Path


def vswitchd_ctl(rundir: str, configured: str = "") -> str:
    """The configured path, else ``RUNDIR/ovs-vswitchd.ctl`` when it exists
    (a private instance started with --unixctl), else the packaged daemon's
    ``RUNDIR/ovs-vswitchd.<pid>.ctl`` found through its pidfile. Falls back
    to ``ovs-vswitchd``, which ovs-appctl resolves itself."""
    if configured:
        return configured
    plain = Path(rundir, "ovs-vswitchd.ctl")
    if plain.exists():
        return str(plain)
    try:
        pid = int(Path(rundir, "ovs-vswitchd.pid").read_text().strip())
    except (OSError, ValueError):
        return "ovs-vswitchd"
    return str(Path(rundir, f"ovs-vswitchd.{pid}.ctl"))
