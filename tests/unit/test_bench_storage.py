"""The storage micro-benchmark: what it times is what it says (one-rule
changes that really change one rule, each a new one), and its table."""

from __future__ import annotations

from bench.policies import n_rule_scope
from bench.storage import STEPS, changed_scopes, measure, render


def test_each_change_differs_from_the_base_in_rule_0_only_and_from_every_other_change() -> None:
    base = n_rule_scope(10)
    changes = changed_scopes(base, 4)
    for scope in changes:
        assert scope.egress[1:] == base.egress[1:] and scope.ingress == base.ingress
        assert scope.egress[0] != base.egress[0] and scope.egress[0].name == base.egress[0].name
        assert scope.addresses == base.addresses and scope.version != base.version
    assert len({scope.egress[0] for scope in changes}) == 4


def test_a_small_run_gives_every_step_at_every_size_and_renders() -> None:
    rows = measure((4, 10), reps=3)
    assert [(r["rules"], r["step"]) for r in rows] == [(n, s) for n in (4, 10) for s in STEPS]
    for r in rows:
        assert r["fresh_ms"] > 0 and r["change_ms"] > 0 and r["json_ms"] > 0
    table = render(rows).splitlines()
    assert "1-rule change" in table[0] and "JSON form" in table[0]
    assert len(table) == 1 + len(rows) and table[1].split()[:2] == ["4", "validate"]
