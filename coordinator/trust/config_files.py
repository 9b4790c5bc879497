"""Which trust files a config names, per listener, and their check for
``bluefield-coordinator check``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from coordinator.config import Config, GatewayClientConfig, MetricsConfig, ServerConfig
from coordinator.trust.material import MaterialError, TrustFiles, load_trust_set


def server_files(server: ServerConfig) -> TrustFiles:
    return TrustFiles(
        server.cert, server.key, server.client_ca, server.crl,
        "server.cert", "server.key", "server.client_ca", "server.crl",
    )  # fmt: skip


def metrics_files(metrics: MetricsConfig) -> TrustFiles | None:
    if not (metrics.listen and metrics.cert):
        return None
    return TrustFiles(
        metrics.cert, metrics.key, metrics.client_ca, metrics.crl,
        "metrics.cert", "metrics.key", "metrics.client_ca", "metrics.crl",
    )  # fmt: skip


def gateway_files(gateway: GatewayClientConfig) -> TrustFiles | None:
    if not gateway.endpoint:
        return None
    return TrustFiles(
        gateway.cert, gateway.key, gateway.ca, gateway.crl,
        "gateway.cert", "gateway.key", "gateway.ca", "gateway.crl",
    )  # fmt: skip


@dataclass(frozen=True)
class TrustCheck:
    name: str
    # warn: a file is not there yet (serve would refuse to start), e.g.
    # right after an install, before the certificates are provisioned.
    status: Literal["ok", "warn", "FAIL"]
    detail: str


def check_trust_files(config: Config) -> list[TrustCheck]:
    """Validate each listener's set as a reload would (mode, key match,
    chain, expiry, CRLs); the detail names the config key and the file."""
    sets = [
        ("server", server_files(config.server), True),
        # Neither is chained to its bundle: that is the other side's CA.
        ("metrics", metrics_files(config.metrics), False),
        ("gateway", gateway_files(config.gateway), False),
    ]
    checks = []
    for name, files, chained in sets:
        if files is None:
            continue
        missing = [f"{key} ({path})" for key, path in files.paths() if path and not os.path.exists(path)]
        if missing:
            checks.append(TrustCheck(name, "warn", f"missing: {', '.join(missing)}"))
            continue
        try:
            material = load_trust_set(files, chain_to_bundle=chained)
        except MaterialError as exc:
            checks.append(TrustCheck(name, "FAIL", str(exc)))
            continue
        checks.append(TrustCheck(name, "ok", material.summary()))
    return checks
