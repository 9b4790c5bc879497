"""Validated rules are remembered per encoding: a policy change revalidates
only the rules it changed, and every error still names the rule's own path."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.policy import validate
from coordinator.policy.validate import PolicyError, scope_from_mapping, scope_from_proto, scope_to_proto


def _rule(index: int, port: int | None = None) -> dict[str, Any]:
    return {
        "name": f"r{index}",
        "action": "ACTION_ALLOW",
        "protocol": "PROTOCOL_TCP",
        "cidrs": [f"203.0.113.{index}/32"],
        "ports": [{"start": port or 1000 + index}],
    }


def _policy(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": "1", "addresses": ["198.51.100.10"], "egress": rules}


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the rules validated from scratch, with a cold memo."""
    names: list[str] = []
    real = validate._parse_rule

    def counting(msg: Any, path: str, name: str) -> Any:
        names.append(name)
        return real(msg, path, name)

    validate._valid_rule.cache_clear()
    monkeypatch.setattr(validate, "_parse_rule", counting)
    yield names
    validate._valid_rule.cache_clear()


def test_a_one_rule_change_revalidates_that_rule_only(parsed: list[str]) -> None:
    rules = [_rule(i) for i in range(40)]
    first = scope_from_mapping(_policy(rules))
    assert len(parsed) == 40
    parsed.clear()
    changed = scope_from_mapping(_policy([_rule(0, port=9000), *rules[1:]]))
    assert parsed == ["r0"]
    assert changed.egress[1:] == first.egress[1:] and changed.egress[0].ports[0].start == 9000
    parsed.clear()
    # The same rules in the other direction and at other positions are the same rules.
    moved = scope_from_mapping({"addresses": ["198.51.100.10"], "ingress": rules[::-1]})
    assert parsed == [] and moved.ingress == first.egress[::-1]


def test_a_stored_policy_read_back_is_looked_up_after_the_first_time(parsed: list[str]) -> None:
    scope = scope_from_mapping(_policy([_rule(i) for i in range(5)]))
    stored = scope_to_proto(scope).SerializeToString()
    parsed.clear()
    for _ in range(3):
        msg = policy_pb2.NetworkScope.FromString(stored)
        assert scope_from_proto(msg) == scope
    assert len(parsed) == 5


def test_a_remembered_rule_repeated_is_a_duplicate_at_its_own_path(parsed: list[str]) -> None:
    scope_from_mapping(_policy([_rule(1)]))
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping(_policy([_rule(0), _rule(1), _rule(1)]))
    assert caught.value.field == "egress[2].name"
    assert caught.value.reason == "duplicate rule name 'r1' (also egress[1])"


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_a_bad_rule_seen_before_names_its_own_path_every_time(parsed: list[str], direction: str) -> None:
    bad = {**_rule(3), "ports": [{"start": 70000}]}
    for position in (0, 2):
        rules = [_rule(i + 10) for i in range(position)] + [bad]
        with pytest.raises(PolicyError) as caught:
            scope_from_mapping({"addresses": ["198.51.100.10"], direction: rules})
        assert caught.value.field == f"{direction}[{position}].ports[0].start"
        assert caught.value.reason == "port 70000 is outside 1..65535"


def test_a_large_rule_is_validated_without_being_remembered(parsed: list[str]) -> None:
    big = {**_rule(1), "cidrs": [f"203.0.113.{i}/32" for i in range(60)]}
    for _ in range(2):
        scope_from_mapping(_policy([big]))
    assert parsed == ["r1", "r1"]
    assert validate._valid_rule.cache_info().currsize == 0


def test_a_rule_hashes_by_its_fields_and_a_pickled_one_forgets_its_hash() -> None:
    rule = scope_from_mapping(_policy([_rule(1)])).egress[0]
    twin = dataclasses.replace(rule)
    assert twin == rule and hash(twin) == hash(rule) and twin is not rule
    other = dataclasses.replace(rule, name="r2")
    assert other != rule and {rule: 1, other: 2}[twin] == 1
    assert "_hash" in rule.__dict__ and "_hash" not in pickle.loads(pickle.dumps(rule)).__dict__
    assert pickle.loads(pickle.dumps(rule)) == rule


def test_size_limits_are_still_checked_before_any_rule_whatever_is_remembered(parsed: list[str]) -> None:
    bad = {**_rule(1), "action": "ACTION_UNSPECIFIED"}
    too_wide = {**_rule(2), "cidrs": [f"198.51.100.{i % 256}/32" for i in range(257)]}
    for _ in range(2):  # cold, then with both remembered as far as they are
        with pytest.raises(PolicyError) as caught:
            scope_from_mapping({"egress": [bad], "ingress": [too_wide]})
        assert caught.value.field == "ingress[0].cidrs"
    many = [_rule(i % 250 + 3) | {"name": f"m{i}"} for i in range(1025)]
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping({"egress": [too_wide], "ingress": many})
    assert caught.value.field == "egress[0].cidrs"
    with pytest.raises(PolicyError) as caught:
        scope_from_mapping({"egress": [bad], "ingress": many})
    assert caught.value.field == "ingress" and caught.value.reason == "too many rules: 1025 (limit 1024)"
