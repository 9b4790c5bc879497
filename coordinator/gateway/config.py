"""The reference gateway's configuration (TOML).

[gateway]
listen = "127.0.0.1:9443"
cert = "/etc/gateway/tls/gateway.pem"
key = "/etc/gateway/tls/gateway.key"
client_ca = "/etc/gateway/tls/ca.pem"

[allow]   # coordinator identity -> sandbox id patterns (fnmatch)
"spiffe://bluefield.local/coordinator" = ["*"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.config import ConfigError, build_section, read_toml


@dataclass(frozen=True)
class GatewayServerConfig:
    listen: str = "127.0.0.1:9443"
    cert: str = ""
    key: str = ""
    client_ca: str = ""
    # Events a consumer may fall behind before it is disconnected.
    queue_size: int = 256
    poll_interval_ms: int = 200
    # Serve the first stream contract (no REMOVED on registration, no
    # SYNC_COMPLETE): for testing how coordinators handle such a gateway.
    legacy_resync: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    gateway: GatewayServerConfig = field(default_factory=GatewayServerConfig)
    allow: dict[str, tuple[str, ...]] = field(default_factory=dict)


def gateway_config_from_mapping(raw: dict[str, Any]) -> GatewayConfig:
    unknown = raw.keys() - {"gateway", "allow"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown key")
    server: GatewayServerConfig = build_section(GatewayServerConfig, raw.get("gateway", {}), "gateway")
    for key in ("cert", "key", "client_ca"):
        if not getattr(server, key):
            raise ConfigError(f"gateway.{key}", "required")
    if not 1 <= server.queue_size <= 1_000_000:
        raise ConfigError("gateway.queue_size", "must be between 1 and 1000000")
    allow_raw = raw.get("allow", {})
    if not isinstance(allow_raw, dict):
        raise ConfigError("allow", "expected a table of identity = [patterns]")
    allow: dict[str, tuple[str, ...]] = {}
    for identity, patterns in allow_raw.items():
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"allow.{identity}", "expected a list of sandbox id patterns")
        allow[identity] = tuple(patterns)
    return GatewayConfig(server, allow)


def load_gateway_config(path: Path) -> GatewayConfig:
    return gateway_config_from_mapping(read_toml(path))
