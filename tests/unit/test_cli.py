from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args], capture_output=True, text=True, check=False
    )


def test_check_prints_the_effective_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[ovs]\nbridge = "br-test"\n')
    result = _cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["ovs"]["bridge"] == "br-test"
    assert effective["eswitch"]["backend"] == "emulated"


def test_check_names_an_unknown_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[ovs]\nbrige = 'x'\n")
    result = _cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "ovs.brige: unknown key" in result.stderr


def test_serve_refuses_a_bad_config_before_doing_anything(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[limits]\nmax_attachments = 'many'\n")
    result = _cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "limits.max_attachments" in result.stderr


def test_certs_init_writes_private_keys_0600(tmp_path: Path) -> None:
    result = _cli("certs", "init", "--out", str(tmp_path / "pki"))
    assert result.returncode == 0, result.stderr
    for name in ("ca", "server", "host", "admin"):
        assert (tmp_path / "pki" / f"{name}.pem").exists()
        assert stat.S_IMODE((tmp_path / "pki" / f"{name}.key").stat().st_mode) == 0o600
