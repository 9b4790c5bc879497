"""Health checks (the Health RPC, Attach's gate): each required or
optional; a failing required check refuses Attach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.eswitch.base import HealthFact


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[HealthFact, ...]

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def failing_required(self) -> list[HealthFact]:
        return [c for c in self.checks if c.required and not c.ok]


def ovs_checks(
    facts: dict[str, Any] | None, error: str, bridge: str, *, hw_offload_required: bool
) -> list[HealthFact]:
    """Checks derived from what OVSDB says (``facts`` None: unreachable)."""
    if facts is None:
        return [HealthFact("ovs_reachable", False, error or "OVSDB unreachable", required=True)]
    checks = [HealthFact("ovs_reachable", True, "OVSDB answers", required=True)]
    row = facts.get("bridge")
    if row is None:
        checks.append(HealthFact("bridge_secure", False, f"bridge {bridge} missing", required=True))
    else:
        mode = row.get("fail_mode")
        mode = mode[0] if isinstance(mode, list) and mode else mode
        ok = mode == "secure"
        checks.append(
            HealthFact(
                "bridge_secure", ok, f"bridge {bridge} fail_mode={mode or 'standalone'}", required=True
            )
        )
    offload = str(facts.get("other_config", {}).get("hw-offload", "false")).lower() == "true"
    checks.append(
        HealthFact(
            "ovs_hw_offload",
            offload,
            f"other_config:hw-offload={str(offload).lower()}",
            required=hw_offload_required,
        )
    )
    return checks
