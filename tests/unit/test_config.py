from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import Config, ConfigError, config_from_mapping, config_to_mapping, load_config


def test_empty_config_gives_the_documented_defaults() -> None:
    config = config_from_mapping({})
    assert config == Config()
    assert config.ovs.bridge == "br-dpu" and config.eswitch.backend == "emulated"
    assert config.policy.network_class_defaults == "dpu-ovs-isolated"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"servr": {}}, "servr"),
        ({"server": {"listen": 8443}}, "server.listen"),
        ({"server": {"listn": "x"}}, "server.listn"),
        ({"eswitch": {"emulated": {"vfs": "4"}}}, "eswitch.emulated.vfs"),
        ({"eswitch": {"emulated": {"vfs": True}}}, "eswitch.emulated.vfs"),
        ({"eswitch": {"emulated": {"vfs": -1}}}, "eswitch.emulated.vfs"),
        ({"eswitch": {"backend": "magic"}}, "eswitch.backend"),
        ({"auth": {"admins": "a"}}, "auth.admins"),
        ({"auth": {"admins": [1]}}, "auth.admins[0]"),
        ({"ovs": {"datapath_type": "dpdk"}}, "ovs.datapath_type"),
        ({"ovs": {"db": "/var/run/db.sock"}}, "ovs.db"),
        ({"server": {"listen": "nohost"}}, "server.listen"),
        ({"limits": {"max_attachments": 0}}, "limits.max_attachments"),
        ({"server": {"max_connections": 1}}, "server.max_connections"),
        ({"policy": {"initial_policy": "OPEN"}}, "policy.initial_policy"),
        ({"ovs": []}, "ovs"),
    ],
)
def test_bad_config_names_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(raw)
    assert err.value.key == key
    assert str(err.value).startswith(key)


def test_identity_in_two_roles_is_refused() -> None:
    with pytest.raises(ConfigError, match="both admins and hosts"):
        config_from_mapping({"auth": {"admins": ["x"], "hosts": ["x"]}})


def test_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nlisten = "0.0.0.0:9443"\n[limits]\nmax_attach_qps = 5\n')
    config = load_config(path)
    assert config.server.listen == "0.0.0.0:9443"
    assert config.limits.max_attach_qps == 5.0
    assert config_to_mapping(config)["server"]["listen"] == "0.0.0.0:9443"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
