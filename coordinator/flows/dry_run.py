"""Compile a policy file to flows without a switch (the `compile` command
and the golden files)."""

from __future__ import annotations

from pathlib import Path

import yaml

from coordinator.flows.compiler import BridgeFacts, PortFacts, attachment_flows, bridge_flows
from coordinator.flows.pipeline import load_pipeline
from coordinator.flows.render import render_flows
from coordinator.policy.validate import PolicyError, scope_from_mapping

EXAMPLE_PORT = PortFacts(ofport=2, mac="02:00:5e:00:53:01", slot=1)
EXAMPLE_UPLINK = 1


def compile_policy_file(
    path: Path, port: PortFacts = EXAMPLE_PORT, *, with_bridge: bool = False
) -> list[str]:
    """The rendered flows for the NetworkScope in ``path`` (YAML or JSON in
    the proto3 JSON mapping). Raises PolicyError naming the bad field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError("", f"cannot read {path}: {exc}") from exc
    scope = scope_from_mapping(raw)
    pipeline = load_pipeline()
    flows = attachment_flows(pipeline, port, scope)
    if with_bridge:
        flows += bridge_flows(pipeline, BridgeFacts(uplink_ofport=EXAMPLE_UPLINK))
    return render_flows(flows, pipeline)
