"""A Scope as the store keeps it, and back (pure).

The stored form is the canonical proto3 JSON mapping of the NetworkScope
(proto field names), serialised by ``json.dumps`` with its default
separators: the text every earlier version wrote, so existing databases
keep reading. Decoding validates like a policy from the gateway: a stored
policy is trusted no more than the file it lives in.
"""

from __future__ import annotations

import json

from coordinator.policy.scope import Scope
from coordinator.policy.validate import scope_from_mapping, scope_to_mapping


def scope_to_json(scope: Scope) -> str:
    """The stored text of ``scope``."""
    return json.dumps(scope_to_mapping(scope))


def scope_from_json(text: str) -> Scope:
    """The Scope a stored text holds. Raises ValueError: PolicyError (naming
    the field) for a text that is not a valid NetworkScope, json's own
    error for one that is not JSON."""
    return scope_from_mapping(json.loads(text))


__all__ = ["scope_from_json", "scope_to_json"]
