"""The dataplane's conntrack calls follow ovs-vswitchd across restarts when
its control socket is named after its pid (``ovs-vswitchd.<pid>.ctl``, as
the packaged daemon names it): zone limits, dumps and flushes reach the new
daemon, never the dead one's socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.attachment_identity import zone_of_slot
from coordinator.config import config_from_mapping
from coordinator.dataplane import Dataplane
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.ovs.conntrack_text import parse_limits

pytestmark = pytest.mark.ovs

SLOT = 5
LIMIT = 321


def _restart(ovs: OvsInstance) -> Path:
    """ovs-vswitchd stopped and started again under a new pid; its new socket."""
    before = ovs.vswitchd_pid
    ovs.stop_vswitchd()
    ovs.start_vswitchd(ctl_named_by_pid=True)
    assert ovs.vswitchd_pid not in (None, before)
    ctl = ovs.vswitchd_ctl
    assert ctl.name == f"ovs-vswitchd.{ovs.vswitchd_pid}.ctl" and ctl.exists()
    return ctl


def _limit(ovs: OvsInstance) -> int:
    """The zone's limit as the running daemon reports it (0: none)."""
    _, limits = parse_limits(ovs.appctl("dpctl/ct-get-limits", f"zone={zone_of_slot(SLOT)}"))
    return limits[zone_of_slot(SLOT)].limit


@pytest.fixture
def pid_named(private_ovs: OvsInstance) -> Iterator[OvsInstance]:
    """A private OVS whose ovs-vswitchd names its socket by pid, with a
    userspace datapath (conntrack lives in it; the private instance is
    stopped after the test, bridge and all)."""
    bridge = netns.unique_name("brc-")
    private_ovs.vsctl("add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=netdev")
    _restart(private_ovs)
    yield private_ovs


def _dataplane(ovs: OvsInstance, tmp_path: Path, configured_ctl: str) -> Dataplane:
    config = config_from_mapping(
        {
            "store": {"path": str(tmp_path / "state.db")},
            "ovs": {"db": ovs.db_remote, "rundir": str(ovs.rundir), "bridge": "br-ctl", "uplink": "",
                    "vswitchd_ctl": configured_ctl,
                    "datapath_type": "netdev", "timeout_s": 5},
            "eswitch": {"mac_salt": "unit"},
            "limits": {"conntrack_per_attachment": LIMIT},
        }
    )  # fmt: skip
    # Only the conntrack side of the dataplane is used here.
    unused: Any = None
    return Dataplane(config=config, backend=unused, ovsdb=unused, switch=unused, pipeline=unused)


# "": found in the rundir; a bare name: found through its pidfile in the rundir, as ovs-appctl
# finds one in its own.
@pytest.mark.parametrize("configured_ctl", ["", "ovs-vswitchd"])
async def test_conntrack_calls_reach_the_restarted_daemon(
    pid_named: OvsInstance, tmp_path: Path, configured_ctl: str
) -> None:
    ovs = pid_named
    dataplane = _dataplane(ovs, tmp_path, configured_ctl)
    try:
        await dataplane.set_zone_limits([SLOT])
        assert _limit(ovs) == LIMIT
        assert await dataplane.conntrack.dump(zone_of_slot(SLOT)) == []

        for _ in range(2):  # twice: the second restart follows a connection to the first new daemon
            _restart(ovs)
            assert _limit(ovs) == 0  # a new daemon starts without zone limits
            await dataplane.set_zone_limits([SLOT])
            assert _limit(ovs) == LIMIT
            assert await dataplane.conntrack.dump(zone_of_slot(SLOT)) == []
            await dataplane.conntrack.flush_zones([zone_of_slot(SLOT)])
            await dataplane.conntrack.delete_zone_limit(zone_of_slot(SLOT))
            assert _limit(ovs) == 0
        # One connection per daemon: kept across calls, opened again only after each restart.
        assert dataplane._control.connects == 3
    finally:
        await dataplane.close()
