"""Where `ctl` connects and with which credentials.

Each setting is taken from the first source that has it:

1. a command-line flag (``--target``, ``--ca``, ``--cert``, ``--key``,
   ``--server-name``, ``--timeout``);
2. ``--workdir DIR``: the ``endpoint.json`` a `dev up` wrote (address, CA
   and the admin's certificate);
3. the environment (``BLUEFIELD_COORDINATOR_TARGET``, ``_CA``, ``_CERT``,
   ``_KEY``, ``_SERVER_NAME``, ``_TIMEOUT``);
4. the client config file: ``--client-config F``, else
   ``$BLUEFIELD_COORDINATOR_CLIENT_CONFIG``, else
   ``$XDG_CONFIG_HOME/bluefield-coordinator/client.toml`` (``~/.config/…``)
   when it exists. TOML with the keys ``target``, ``ca``, ``cert``, ``key``,
   ``server_name``, ``timeout_s``; relative paths are relative to the file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.client import TlsFiles

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "BLUEFIELD_COORDINATOR_"
CONFIG_ENV = ENV_PREFIX + "CLIENT_CONFIG"
DEFAULT_TIMEOUT_S = 30.0
FIELDS = ("target", "ca", "cert", "key", "server_name", "timeout_s")
PATH_FIELDS = frozenset({"ca", "cert", "key"})
ENV_NAMES = {
    "target": "TARGET",
    "ca": "CA",
    "cert": "CERT",
    "key": "KEY",
    "server_name": "SERVER_NAME",
    "timeout_s": "TIMEOUT",
}
FLAG_NAMES = {
    "target": "--target",
    "ca": "--ca",
    "cert": "--cert",
    "key": "--key",
    "server_name": "--server-name",
    "timeout_s": "--timeout",
}


class SettingsError(ValueError):
    """A connection setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Connection:
    target: str
    tls: TlsFiles
    server_name: str
    timeout_s: float


def resolve(
    flags: Mapping[str, str | None],
    *,
    workdir: Path | None,
    client_config: Path | None,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Connection:
    env = os.environ if environ is None else environ
    sources = [
        ("flag", {k: v for k, v in flags.items() if v not in (None, "")}),
        ("--workdir", _from_workdir(workdir) if workdir is not None else {}),
        ("environment", _from_env(env)),
        ("client config", _from_file(_config_path(client_config, env, home))),
    ]
    chosen: dict[str, str] = {}
    for field in FIELDS:
        for _, values in sources:
            value = values.get(field)
            if value not in (None, ""):
                chosen[field] = str(value)
                break
    missing = [f for f in ("target", "ca", "cert", "key") if f not in chosen]
    if missing:
        names = ", ".join(f"{FLAG_NAMES[f]} (or {ENV_PREFIX}{ENV_NAMES[f]})" for f in missing)
        raise SettingsError(f"no {names}: give them, --workdir DIR of a `dev up`, or a client config file")
    return Connection(
        target=chosen["target"],
        tls=TlsFiles(Path(chosen["ca"]), Path(chosen["cert"]), Path(chosen["key"])),
        server_name=chosen.get("server_name", ""),
        timeout_s=_timeout(chosen.get("timeout_s")),
    )


def _timeout(raw: str | None) -> float:
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"timeout_s: not a number: {raw[:40]!r}") from None
    if not 0 < value <= 3600:
        raise SettingsError(f"timeout_s: must be in (0, 3600] seconds, got {value}")
    return value


def _from_env(env: Mapping[str, str]) -> dict[str, str]:
    return {field: env[ENV_PREFIX + name] for field, name in ENV_NAMES.items() if ENV_PREFIX + name in env}


def _from_workdir(workdir: Path) -> dict[str, str]:
    path = workdir / "endpoint.json"
    try:
        endpoint = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"--workdir: {path}: {exc}") from None
    if not isinstance(endpoint, dict):
        raise SettingsError(f"--workdir: {path}: not a JSON object")
    wanted = {"target": "coordinator", "ca": "ca", "cert": "admin_cert", "key": "admin_key"}
    values: dict[str, str] = {}
    for field, key in wanted.items():
        value = endpoint.get(key)
        if not isinstance(value, str) or not value:
            raise SettingsError(f"--workdir: {path}: {key!r} missing or not a string")
        values[field] = value
    return values


def _config_path(explicit: Path | None, env: Mapping[str, str], home: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else (home or Path.home()) / ".config"
    default = base / "bluefield-coordinator" / "client.toml"
    return default if default.exists() else None


def _from_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"client config {path}: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise SettingsError(
                f"client config {path}: unknown key {key[:40]!r} (known: {', '.join(FIELDS)})"
            )
        expected = (int, float) if key == "timeout_s" else str
        if isinstance(value, bool) or not isinstance(value, expected):
            raise SettingsError(f"client config {path}: {key}: wrong type {type(value).__name__}")
        values[key] = str(path.parent / value) if key in PATH_FIELDS and isinstance(value, str) else value
    return values
