"""`check --health` runs the health checks of a config on this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.config import config_from_mapping
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.emulated import EmulatedEswitch

pytestmark = pytest.mark.ovs


def test_check_health_names_each_check_and_fails_on_a_required_one(
    private_ovs: OvsInstance, tmp_path: Path
) -> None:
    prefix = netns.unique_name("ck", maxlen=10) + "-"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[ovs]
db = "{private_ovs.db_remote}"
rundir = "{private_ovs.rundir}"
bridge = "br-missing"
datapath_type = "netdev"
[eswitch.emulated]
vfs = 1
sfs = 0
switch_netns = "{private_ovs.netns}"
guest_netns_prefix = "{prefix}"
""")
    try:
        argv = [sys.executable, "-m", "coordinator", "check", "--config", str(config), "--health"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        assert "ok   ovs_reachable" in result.stdout
        assert "FAIL bridge_secure: bridge br-missing missing" in result.stdout
        assert "ok   eswitch_representors" in result.stdout
        assert result.returncode == 1
        private_ovs.vsctl("add-br", "br-missing", "--", "set", "bridge", "br-missing", "datapath_type=netdev",
                          "fail_mode=secure")  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        assert "ok   bridge_secure" in result.stdout and result.returncode == 0, result.stdout
    finally:
        raw = {"eswitch": {"emulated": {"vfs": 1, "sfs": 0, "switch_netns": private_ovs.netns,
                                        "guest_netns_prefix": prefix}}}  # fmt: skip
        EmulatedEswitch(config_from_mapping(raw).eswitch.emulated).destroy()
