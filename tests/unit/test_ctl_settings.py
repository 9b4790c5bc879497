"""Where `ctl` connects: flag over --workdir over environment over client
config file, and errors that name the setting."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from coordinator.ctl.settings import SettingsError, resolve
from coordinator.progress import Activity, counted

NO_FLAGS: dict[str, str | None] = {}


def _workdir(tmp_path: Path) -> Path:
    workdir = tmp_path / "dev"
    workdir.mkdir(parents=True)
    endpoint = {"coordinator": "127.0.0.1:7000", "ca": "/w/ca.pem", "admin_cert": "/w/admin.pem",
                "admin_key": "/w/admin.key", "host_cert": "/w/host.pem"}  # fmt: skip
    (workdir / "endpoint.json").write_text(json.dumps(endpoint))
    return workdir


def test_each_setting_comes_from_the_first_source_that_has_it(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(
        'target = "file:1"\nca = "certs/ca.pem"\ncert = "/abs/c.pem"\nkey = "k"\ntimeout_s = 7\n'
    )
    env = {"BLUEFIELD_COORDINATOR_TARGET": "env:1", "BLUEFIELD_COORDINATOR_CERT": "/env/c.pem"}
    only_file = resolve(NO_FLAGS, workdir=None, client_config=config, environ={})
    assert only_file.target == "file:1"
    assert only_file.tls.ca == tmp_path / "certs/ca.pem"  # relative to the file
    assert only_file.tls.cert == Path("/abs/c.pem")
    assert only_file.timeout_s == 7
    with_env = resolve(NO_FLAGS, workdir=None, client_config=config, environ=env)
    assert (with_env.target, with_env.tls.cert, with_env.tls.key) == (
        "env:1",
        Path("/env/c.pem"),
        tmp_path / "k",
    )
    with_workdir = resolve(NO_FLAGS, workdir=_workdir(tmp_path), client_config=config, environ=env)
    assert (with_workdir.target, with_workdir.tls.cert) == ("127.0.0.1:7000", Path("/w/admin.pem"))
    flagged = resolve(
        {"cert": "/flag/c.pem", "target": None}, workdir=_workdir(tmp_path / "x"), client_config=None
    )
    assert (flagged.target, flagged.tls.cert, flagged.tls.key) == ("127.0.0.1:7000", Path("/flag/c.pem"),
                                                                     Path("/w/admin.key"))  # fmt: skip


def test_the_default_client_config_is_read_only_when_present(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"no --target .*--key"):
        resolve(NO_FLAGS, workdir=None, client_config=None, environ={"XDG_CONFIG_HOME": str(tmp_path)})
    default = tmp_path / "bluefield-coordinator" / "client.toml"
    default.parent.mkdir()
    default.write_text('target = "t:1"\nca = "a"\ncert = "b"\nkey = "c"\n')
    found = resolve(NO_FLAGS, workdir=None, client_config=None, environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert found.target == "t:1" and found.timeout_s == 30


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('target = "t"\nport = 1\n', "unknown key 'port'"),
        ("target = 5\n", "target: wrong type int"),
        ('timeout_s = "soon"\n', "timeout_s: wrong type str"),
        ("target = [\n", "client config"),
    ],
)
def test_a_bad_client_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "client.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        resolve(NO_FLAGS, workdir=None, client_config=config, environ={})


def test_a_bad_timeout_and_a_missing_endpoint_are_named(tmp_path: Path) -> None:
    flags = {"target": "t", "ca": "a", "cert": "b", "key": "c", "timeout_s": "-1"}
    with pytest.raises(SettingsError, match="timeout_s: must be in"):
        resolve(flags, workdir=None, client_config=None, environ={})
    with pytest.raises(SettingsError, match=r"--workdir: .*endpoint\.json"):
        resolve(NO_FLAGS, workdir=tmp_path, client_config=None, environ={})


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_activity_draws_only_on_a_terminal_and_not_when_quiet() -> None:
    clock = iter(float(i) for i in range(100))
    terminal = FakeTerminal()
    with Activity(terminal, clock=lambda: next(clock)) as activity:
        activity.update(counted("VFs", 3, 12))
        assert terminal.getvalue().endswith("VFs 3/12 (25%)")
    assert terminal.getvalue().endswith("\r\x1b[K")  # cleared on the way out
    for stream, quiet in ((io.StringIO(), False), (FakeTerminal(), True)):
        with Activity(stream, quiet=quiet) as activity:
            activity.update("busy")
        assert stream.getvalue() == ""
