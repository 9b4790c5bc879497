"""The stored form of a policy: canonical JSON, the same text earlier
versions wrote, read back into a validated Scope; the store takes and
returns Scopes and refuses a row that no longer decodes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings

from coordinator.policy.codec import scope_from_json, scope_to_json
from coordinator.policy.scope import PortRange, Protocol, RuleAction
from coordinator.policy.validate import PolicyError
from coordinator.store.db import Store, UnreadablePolicy
from coordinator.store.records import StoredPolicy
from coordinator.store.schema import MIGRATIONS
from tests.unit.policy.strategies import scopes

# A policy exactly as the store has held it since sandbox policies were
# first kept (json.dumps of the proto3 JSON mapping, proto field names).
STORED = (
    '{"version": "7", "addresses": ["198.51.100.10/32", "2001:db8::10/128"], "egress": [{"name": "web", '
    '"action": "ACTION_ALLOW", "cidrs": ["203.0.113.0/24"], "protocol": "PROTOCOL_TCP", "ports": '
    '[{"start": 443, "end": 443}, {"start": 8000, "end": 8080}]}], "egress_default": "ACTION_DENY", '
    '"ingress_default": "ACTION_DENY", "allow_dhcp": true, "dns_servers": ["198.51.100.53"], '
    '"egress_rate_limit": {"kbps": 10000}}'
)


def test_a_stored_text_decodes_and_encodes_to_the_same_text() -> None:
    scope = scope_from_json(STORED)
    assert scope.version == 7 and scope.allow_dhcp and scope.egress_default is RuleAction.DENY
    (web,) = scope.egress
    assert web.protocol is Protocol.TCP and web.ports == (PortRange(443, 443), PortRange(8000, 8080))
    assert scope.egress_rate_limit is not None and scope.egress_rate_limit.kbps == 10000
    assert scope_to_json(scope) == STORED


@settings(max_examples=60, deadline=None)
@given(scopes())
def test_every_valid_scope_round_trips(scope: object) -> None:
    text = scope_to_json(scope)  # type: ignore[arg-type]
    assert scope_from_json(text) == scope
    assert scope_to_json(scope_from_json(text)) == text


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", None),
        ("[]", "network"),
        ('{"version": "1", "egress": [{"name": "x", "ports": [{"start": 0}]}]}', "egress[0]"),
    ],
)
def test_a_text_that_is_no_policy_is_refused(text: str, field: str | None) -> None:
    with pytest.raises(ValueError) as caught:
        scope_from_json(text)
    if field is not None:
        assert isinstance(caught.value, PolicyError) and caught.value.field.startswith(field)


def test_the_store_takes_and_returns_scopes(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    scope = scope_from_json(STORED)
    store.save_policy("sb-1", scope)
    assert store.policy("sb-1") == StoredPolicy(7, scope)
    assert store.policy_version("sb-1") == 7
    assert store.policy("sb-2") is None and store.policy_version("sb-2") is None
    (text,) = store._db.execute("SELECT scope_json FROM sandbox_policies").fetchone()
    assert text == STORED


def test_a_row_written_by_an_earlier_version_reads(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for migration in MIGRATIONS[:3]:
        db.executescript(migration)
    db.execute("INSERT INTO sandbox_policies VALUES ('sb-1', 7, ?, 1.0)", (STORED,))
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    stored = Store(path).policy("sb-1")
    assert stored is not None and stored.version == 7 and stored.scope == scope_from_json(STORED)


def test_a_tampered_row_is_unreadable_but_keeps_its_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.save_policy("sb-1", scope_from_json(STORED))
    store._db.execute('UPDATE sandbox_policies SET scope_json = \'{"addresses": ["not-an-ip"]}\'')
    with pytest.raises(UnreadablePolicy) as caught:
        store.policy("sb-1")
    assert caught.value.version == 7 and "addresses[0]" in caught.value.problem
    assert store.policy_version("sb-1") == 7
