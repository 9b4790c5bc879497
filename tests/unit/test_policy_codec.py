"""The stored form of a policy: the NetworkScope's binary encoding, put
together from remembered rule encodings, read back into a validated Scope;
rows earlier versions wrote as canonical JSON text still read; the store
takes and returns Scopes and refuses a row that no longer decodes."""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings

from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.policy import codec
from coordinator.policy.codec import scope_from_stored, scope_to_stored
from coordinator.policy.scope import PortRange, Protocol, RuleAction, Scope
from coordinator.policy.validate import PolicyError, scope_from_mapping, scope_to_proto
from coordinator.sequences import ByIdentity
from coordinator.store.db import Store, UnreadablePolicy
from coordinator.store.records import StoredPolicy
from coordinator.store.schema import MIGRATIONS
from tests.unit.policy.strategies import scopes

# A policy exactly as the store held it before it kept the binary form
# (json.dumps of the proto3 JSON mapping, proto field names).
STORED = (
    '{"version": "7", "addresses": ["198.51.100.10/32", "2001:db8::10/128"], "egress": [{"name": "web", '
    '"action": "ACTION_ALLOW", "cidrs": ["203.0.113.0/24"], "protocol": "PROTOCOL_TCP", "ports": '
    '[{"start": 443, "end": 443}, {"start": 8000, "end": 8080}]}], "egress_default": "ACTION_DENY", '
    '"ingress_default": "ACTION_DENY", "allow_dhcp": true, "dns_servers": ["198.51.100.53"], '
    '"egress_rate_limit": {"kbps": 10000}}'
)


def test_a_text_earlier_versions_stored_decodes() -> None:
    scope = scope_from_stored(STORED)
    assert scope.version == 7 and scope.allow_dhcp and scope.egress_default is RuleAction.DENY
    (web,) = scope.egress
    assert web.protocol is Protocol.TCP and web.ports == (PortRange(443, 443), PortRange(8000, 8080))
    assert scope.egress_rate_limit is not None and scope.egress_rate_limit.kbps == 10000
    assert scope_from_stored(scope_to_stored(scope)) == scope


@settings(max_examples=60, deadline=None)
@given(scopes())
def test_every_valid_scope_encodes_as_the_library_would_and_round_trips(scope: Scope) -> None:
    stored = scope_to_stored(scope)
    # Put together from remembered rule encodings, yet the library's own bytes.
    assert stored == scope_to_proto(scope).SerializeToString()
    assert scope_from_stored(stored) == scope
    assert scope_to_stored(scope_from_stored(stored)) == stored


def test_a_one_rule_change_encodes_that_rule_only() -> None:
    rules = [{"name": f"r{i}", "action": "ACTION_ALLOW", "cidrs": [f"203.0.113.{i}/32"]} for i in range(30)]
    scope = scope_from_mapping({"version": "1", "egress": rules[:20], "ingress": rules[20:]})
    codec.forget_rule_encodings()
    scope_to_stored(scope)
    assert codec._remembered_entry.cache_info().misses == 30
    changed = dataclasses.replace(
        scope,
        version=2,
        egress=(dataclasses.replace(scope.egress[0], action=RuleAction.DENY), *scope.egress[1:]),
    )
    stored = scope_to_stored(changed)
    assert codec._remembered_entry.cache_info().misses == 31
    assert scope_from_stored(stored) == changed


def test_the_very_rules_encoded_before_are_found_by_identity() -> None:
    """A policy whose rules are the same objects as last time (validation
    hands back the remembered Rule of an unchanged rule) looks none of them
    up by value."""
    rules = [{"name": f"r{i}", "action": "ACTION_ALLOW", "cidrs": [f"203.0.113.{i}/32"]} for i in range(30)]
    scope = scope_from_mapping({"version": "1", "egress": rules[:20], "ingress": rules[20:]})
    codec.forget_rule_encodings()
    scope_to_stored(scope)
    before = codec._remembered_entry.cache_info()
    again = dataclasses.replace(scope, version=2)
    assert scope_to_stored(again) == scope_to_proto(again).SerializeToString()
    assert codec._remembered_entry.cache_info() == before
    anew = functools.partial(map, dataclasses.replace)
    equal = dataclasses.replace(again, egress=tuple(anew(again.egress)), ingress=tuple(anew(again.ingress)))
    assert scope_to_stored(equal) == scope_to_stored(again)  # equal rules, other objects: by value
    assert codec._remembered_entry.cache_info().hits == before.hits + 30


def test_rules_found_by_identity_are_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(codec, "_by_identity", {"egress": ByIdentity(8), "ingress": ByIdentity(8)})
    codec.forget_rule_encodings()
    for n in range(5):
        rules = [{"name": f"r{n}-{i}", "action": "ACTION_ALLOW"} for i in range(6)]
        scope = scope_from_mapping({"version": "1", "egress": rules, "ingress": rules})
        assert scope_to_stored(scope) == scope_to_proto(scope).SerializeToString()
        assert all(len(known) <= 8 for known in codec._by_identity.values())


def test_a_rule_with_many_networks_is_encoded_each_time_not_remembered() -> None:
    wide = {"name": "wide", "action": "ACTION_ALLOW", "cidrs": [f"203.0.113.{i}/32" for i in range(20)]}
    scope = scope_from_mapping({"version": "1", "egress": [wide], "ingress": [wide]})
    codec.forget_rule_encodings()
    assert scope_to_stored(scope) == scope_to_proto(scope).SerializeToString()
    assert codec._remembered_entry.cache_info().currsize == 0


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("{not json", None),
        ("[]", "network"),
        ('{"version": "1", "egress": [{"name": "x", "ports": [{"start": 0}]}]}', "egress[0]"),
        (b"\xff\xff\xff", "network"),
        (policy_pb2.NetworkScope(addresses=["not-an-ip"]).SerializeToString(), "addresses[0]"),
        (7, "network"),
    ],
)
def test_a_value_that_is_no_policy_is_refused(value: object, field: str | None) -> None:
    with pytest.raises(ValueError) as caught:
        scope_from_stored(value)
    if field is not None:
        assert isinstance(caught.value, PolicyError) and caught.value.field.startswith(field)


def test_the_store_takes_and_returns_scopes_and_keeps_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    scope = scope_from_stored(STORED)
    store.save_policy("sb-1", scope)
    assert store.policy("sb-1") == StoredPolicy(7, scope)
    assert store.policy_version("sb-1") == 7
    assert store.policy("sb-2") is None and store.policy_version("sb-2") is None
    (stored,) = store._db.execute("SELECT scope FROM sandbox_policies").fetchone()
    assert isinstance(stored, bytes) and stored == scope_to_stored(scope)
    store.delete_policy("sb-1")
    assert store.policy("sb-1") is None


def test_a_row_written_by_an_earlier_version_reads(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for migration in MIGRATIONS[:3]:
        db.executescript(migration)
    db.execute("INSERT INTO sandbox_policies VALUES ('sb-1', 7, ?, 1.0)", (STORED,))
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    stored = store.policy("sb-1")
    assert stored is not None and stored.version == 7 and stored.scope == scope_from_stored(STORED)
    # The text is kept as it was until the policy is next saved, as bytes.
    (kept,) = store._db.execute("SELECT scope FROM sandbox_policies").fetchone()
    assert kept == STORED
    store.save_policy("sb-1", dataclasses.replace(stored.scope, version=8))
    (saved,) = store._db.execute("SELECT scope FROM sandbox_policies").fetchone()
    assert isinstance(saved, bytes) and store.policy("sb-1") == StoredPolicy(
        8, dataclasses.replace(stored.scope, version=8)
    )


@pytest.mark.parametrize(
    ("tampered", "where"),
    [
        ('{"addresses": ["not-an-ip"]}', "addresses[0]"),
        (policy_pb2.NetworkScope(addresses=["not-an-ip"]).SerializeToString(), "addresses[0]"),
        (b"\x1a\x05garbage", "network"),
    ],
)
def test_a_tampered_row_is_unreadable_but_keeps_its_version(
    tmp_path: Path, tampered: str | bytes, where: str
) -> None:
    store = Store(tmp_path / "state.db")
    store.save_policy("sb-1", scope_from_stored(STORED))
    store._db.execute("UPDATE sandbox_policies SET scope = ?", (tampered,))
    with pytest.raises(UnreadablePolicy) as caught:
        store.policy("sb-1")
    assert caught.value.version == 7 and where in caught.value.problem
    assert store.policy_version("sb-1") == 7


def test_every_stored_policy_in_one_read_alike_ones_decoded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start reads every sandbox's policy at once: each as ``policy`` would
    return it, an unusable one as its error (the others still read), and a
    policy several sandboxes hold alike decoded once, into one Scope."""
    store = Store(tmp_path / "state.db")
    shared, own = scope_from_stored(STORED), dataclasses.replace(scope_from_stored(STORED), version=8)
    for sandbox in ("sb-1", "sb-2", "sb-3"):
        store.save_policy(sandbox, shared)
    store.save_policy("sb-4", own)
    store.save_policy("sb-5", shared)
    store._db.execute(
        "UPDATE sandbox_policies SET scope = ? WHERE sandbox_id = 'sb-5'", (b"\x1a\x05garbage",)
    )
    decodes: list[object] = []
    real = codec.scope_from_stored

    def counted(value: object) -> Scope:
        decodes.append(value)
        return real(value)

    monkeypatch.setattr("coordinator.store.policy_rows.scope_from_stored", counted)
    found = store.policies()
    assert sorted(found) == ["sb-1", "sb-2", "sb-3", "sb-4", "sb-5"]
    assert len(decodes) == 3  # the shared one, sb-4's, and the garbage
    for sandbox in ("sb-1", "sb-2", "sb-3", "sb-4"):
        assert found[sandbox] == store.policy(sandbox)
    assert found["sb-1"].scope is found["sb-2"].scope is found["sb-3"].scope  # type: ignore[union-attr]
    unusable = found["sb-5"]
    assert isinstance(unusable, UnreadablePolicy) and unusable.version == 7
    assert "network" in unusable.problem
