"""Named network classes (ovs_programs/network_classes.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

import yaml

from coordinator.policy.scope import Scope
from coordinator.policy.validate import PolicyError, scope_from_mapping


class NetworkClassError(ValueError):
    pass


def parse_network_classes(raw: object) -> dict[str, Scope]:
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict):
        raise NetworkClassError("network classes: expected a mapping with 'classes'")
    classes: dict[str, Scope] = {}
    for name, entry in raw["classes"].items():
        if not isinstance(entry, dict):
            raise NetworkClassError(f"classes.{name}: expected a mapping")
        try:
            classes[str(name)] = scope_from_mapping(entry.get("scope", {}))
        except PolicyError as exc:
            raise NetworkClassError(f"classes.{name}.scope.{exc.field}: {exc.reason}") from exc
    return classes


def load_network_classes() -> Mapping[str, Scope]:
    text = resources.files("coordinator.programs").joinpath("network_classes.yaml").read_text()
    return parse_network_classes(yaml.safe_load(text))
