"""Rule compilation: conjunction sizing, determinism, offload-safe output."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.flows import rules as rules_module
from coordinator.flows.compiler import PortFacts, attachment_flows, forget_base_flows
from coordinator.flows.model import Conjunction, Flow
from coordinator.flows.pipeline import load_pipeline
from coordinator.policy.scope import PortRange, Protocol, Rule, RuleAction, Scope
from tests.unit.policy.strategies import scopes

PIPELINE = load_pipeline()
PORT = PortFacts(ofport=4, mac="02:00:5e:00:53:07", slot=9)
OWN_V4 = (ipaddress.ip_network("198.51.100.10/32"),)


def _policy_flows(scope: Scope) -> list[Flow]:
    return [
        f for f in attachment_flows(PIPELINE, PORT, scope) if f.table in ("egress_policy", "ingress_policy")
    ]


def _rule_flows(scope: Scope) -> list[Flow]:
    low, _ = PIPELINE.priorities["allow_rule"]
    _, high = PIPELINE.priorities["deny_rule"]
    return [f for f in _policy_flows(scope) if low <= f.priority <= high]


def _cross(n_cidrs: int, n_ports: int) -> Scope:
    cidrs = tuple(ipaddress.ip_network(f"203.0.113.{4 * i}/30") for i in range(n_cidrs))
    # Ports two apart never merge into one masked range.
    ports = tuple(PortRange(1000 + 2 * i, 1000 + 2 * i) for i in range(n_ports))
    rule = Rule("x", RuleAction.ALLOW, cidrs, Protocol.TCP, ports)
    return Scope(addresses=OWN_V4, egress=(rule,))


def test_conjunction_grows_as_n_plus_m() -> None:
    for n, m in [(2, 2), (20, 10), (50, 40), (3, 17)]:
        assert len(_rule_flows(_cross(n, m))) == n + m + 1, (n, m)


def test_one_dimension_is_emitted_directly() -> None:
    assert len(_rule_flows(_cross(1, 12))) == 12
    assert len(_rule_flows(_cross(9, 1))) == 9
    assert not any(isinstance(a, Conjunction) for f in _rule_flows(_cross(9, 1)) for a in f.actions)


def test_flow_count_is_linear_in_rules() -> None:
    counts = []
    for k in (1, 2, 4, 8):
        rules = tuple(
            Rule(f"r{i}", RuleAction.ALLOW, (ipaddress.ip_network(f"203.0.113.{8 * i}/29"),
                                             ipaddress.ip_network(f"198.51.100.{8 * i}/29")),
                 Protocol.TCP, (PortRange(80 + i, 80 + i), PortRange(9000 + i, 9000 + i)))
            for i in range(k)
        )  # fmt: skip
        counts.append(len(_rule_flows(Scope(addresses=OWN_V4, egress=rules))))
    assert counts == [5 * k for k in (1, 2, 4, 8)]


@settings(max_examples=150, deadline=None)
@given(scopes())
def test_no_two_flows_share_table_priority_and_match(scope: Scope) -> None:
    flows = attachment_flows(PIPELINE, PORT, scope)
    keys = [(f.table, f.priority, f.match) for f in flows]
    assert len(keys) == len(set(keys))


@settings(max_examples=150, deadline=None)
@given(scopes())
def test_overlapping_flows_at_one_priority_agree(scope: Scope) -> None:
    """At one priority every non-conjunction flow of a table has the same
    verdict, so which of two overlapping flows OVS picks cannot matter."""
    verdicts: dict[tuple[str, int], set[object]] = defaultdict(set)
    for flow in _rule_flows(scope):
        if any(isinstance(a, Conjunction) for a in flow.actions):
            assert all(isinstance(a, Conjunction) for a in flow.actions)
            continue
        verdicts[(flow.table, flow.priority)].add(flow.actions)
    assert all(len(v) == 1 for v in verdicts.values()), verdicts


@settings(max_examples=100, deadline=None)
@given(scopes())
def test_every_deny_flow_outranks_every_allow_flow(scope: Scope) -> None:
    deny_low, _ = PIPELINE.priorities["deny_rule"]
    _, allow_high = PIPELINE.priorities["allow_rule"]
    for flow in _rule_flows(scope):
        conj_ids = {a.conj_id for a in flow.actions if isinstance(a, Conjunction)}
        assert flow.priority >= deny_low or flow.priority <= allow_high
        assert conj_ids or flow.actions  # every rule flow decides or contributes


@settings(max_examples=100, deadline=None)
@given(scopes())
def test_compilation_is_deterministic_and_checked(scope: Scope) -> None:
    first = attachment_flows(PIPELINE, PORT, scope)
    assert first == attachment_flows(PIPELINE, PORT, scope)
    PIPELINE.check_all(first)
    assert {f.cookie for f in first} == {PORT.cookie}


@settings(max_examples=60, deadline=None)
@given(scopes(), scopes())
def test_a_compile_from_remembered_rule_terms_equals_a_fresh_one(first: Scope, second: Scope) -> None:
    """Rule terms are remembered across compiles and attachments: whatever
    was compiled before (another scope, another slot), the flows are the
    ones a compile from nothing gives."""
    other = PortFacts(ofport=11, mac="02:00:5e:00:53:0b", slot=300)
    rules_module._remembered_rule_terms.cache_clear()
    fresh_first = attachment_flows(PIPELINE, PORT, first)
    fresh_second = attachment_flows(PIPELINE, other, second)
    rules_module._remembered_rule_terms.cache_clear()
    attachment_flows(PIPELINE, other, first)
    attachment_flows(PIPELINE, PORT, second)
    assert attachment_flows(PIPELINE, PORT, first) == fresh_first
    assert attachment_flows(PIPELINE, other, second) == fresh_second


def test_remembered_rule_terms_are_bounded() -> None:
    info = rules_module._remembered_rule_terms.cache_info()
    assert info.maxsize == rules_module.TERM_CACHE_SIZE
    rules_module._remembered_rule_terms.cache_clear()
    attachment_flows(PIPELINE, PORT, _cross(20, 10))  # 30 terms: compiled, not remembered
    attachment_flows(PIPELINE, PORT, _cross(3, 2))
    assert rules_module._remembered_rule_terms.cache_info().currsize == 1


def _forgetting(scope: Scope, port: PortFacts = PORT) -> list[Flow]:
    rules_module._forget_rule_flows()
    forget_base_flows()
    rules_module._remembered_rule_terms.cache_clear()
    return attachment_flows(PIPELINE, port, scope)


@settings(max_examples=60, deadline=None)
@given(scopes(), scopes())
def test_remembered_rule_flows_are_what_a_fresh_compile_gives(first: Scope, second: Scope) -> None:
    """A compile after others (rules remembered, some shared, some at other
    indexes, another attachment in between) equals the compile of a process
    that remembers nothing."""
    other = PortFacts(ofport=7, mac="02:00:5e:00:53:08", slot=10)
    mixed = Scope(addresses=second.addresses, egress=(*second.egress, *first.egress), ingress=first.ingress)
    fresh = {id(s): _forgetting(s) for s in (first, second, mixed)}
    fresh_other = _forgetting(mixed, other)
    for scope in (first, second, mixed, first):
        assert attachment_flows(PIPELINE, PORT, scope) == fresh[id(scope)]
    assert attachment_flows(PIPELINE, other, mixed) == fresh_other


@settings(max_examples=80, deadline=None)
@given(
    scopes(),
    scopes(),
    st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99), st.booleans()), min_size=1, max_size=6),
)
def test_a_walk_patched_rule_by_rule_is_what_a_fresh_compile_gives(
    first: Scope, second: Scope, edits: list[tuple[int, int, bool]]
) -> None:
    """Policies that differ from the one before in a rule or two (the other
    rules the very same objects; a rule may come twice, or share a clause
    with another) compile, one after the other, to what a process that
    remembers nothing gives for each."""
    pool = [*first.egress, *first.ingress, *second.egress, *second.ingress]
    steps = [first]
    for at, donor, ingress in edits:
        last = steps[-1]
        direction = "ingress" if ingress else "egress"
        rules = list(getattr(last, direction))
        if rules and pool:
            rules[at % len(rules)] = pool[donor % len(pool)]
            steps.append(dataclasses.replace(last, **{direction: tuple(rules)}))
    expected = [_forgetting(scope) for scope in steps]
    for scope, fresh in zip(steps, expected, strict=True):
        assert attachment_flows(PIPELINE, PORT, scope) == fresh


class _CountingGets(dict):  # type: ignore[type-arg]
    gets = 0

    def get(self, *args):  # type: ignore[no-untyped-def]
        self.gets += 1
        return super().get(*args)


def test_a_one_rule_change_looks_up_that_rule_alone(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rules = tuple(
        Rule(f"r{i}", RuleAction.ALLOW, (ipaddress.ip_network(f"203.0.113.{i}/32"),), Protocol.TCP,
             (PortRange(1000 + i, 1000 + i),))
        for i in range(200)
    )  # fmt: skip
    scope = Scope(addresses=OWN_V4, egress=rules)
    changed = dataclasses.replace(
        scope, egress=(*rules[:70], dataclasses.replace(rules[70], name="x"), *rules[71:])
    )
    expected = _forgetting(changed)
    attachment_flows(PIPELINE, PORT, scope)
    counting = _CountingGets(rules_module._emitted)
    monkeypatch.setattr(rules_module, "_emitted", counting)
    assert attachment_flows(PIPELINE, PORT, changed) == expected
    assert counting.gets == 1  # one family, one rule


def test_a_rule_moved_to_another_index_gets_its_own_conjunction_id() -> None:
    cross = _cross(3, 3).egress[0]
    plain = Rule("p", RuleAction.ALLOW, (), Protocol.UDP, (PortRange(53, 53),))
    at_zero = _rule_flows(Scope(addresses=OWN_V4, egress=(cross, plain)))
    at_one = _rule_flows(Scope(addresses=OWN_V4, egress=(plain, cross)))
    ids = {
        a.conj_id
        for flows in (at_zero, at_one)
        for f in flows
        for a in f.actions
        if isinstance(a, Conjunction)
    }
    assert len(ids) == 2
    rules_module._forget_rule_flows()
    assert at_one == _rule_flows(Scope(addresses=OWN_V4, egress=(plain, cross)))


def test_rule_flow_memos_stay_bounded_and_a_compile_past_the_bound_is_whole(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The memos start over before a compile once past their bounds (never
    within one: the interned places of one compile must all be of one
    generation), so a policy larger than the bound still compiles whole,
    and a stream of distinct rules, large ones included, keeps little."""
    monkeypatch.setattr(rules_module, "RULE_FLOWS_KEPT", 16)
    monkeypatch.setattr(rules_module, "PLACES_KEPT", 64)
    rules_module._forget_rule_flows()
    big = Scope(
        addresses=OWN_V4,
        egress=tuple(
            Rule(f"r{i}", RuleAction.ALLOW, (ipaddress.ip_network(f"203.0.113.{i}/32"),), Protocol.TCP,
                 (PortRange(1000 + i, 1000 + i),))
            for i in range(40)
        ),
    )  # fmt: skip
    expected = _forgetting(big)
    assert attachment_flows(PIPELINE, PORT, big) == expected  # the memo full from the start
    assert attachment_flows(PIPELINE, PORT, big) == expected  # started over before it
    for n in range(30):
        large = Rule(
            f"l{n}",
            RuleAction.ALLOW,
            _cross(20, 1).egress[0].cidrs,
            Protocol.TCP,
            tuple(PortRange(2000 + 100 * n + 2 * i, 2000 + 100 * n + 2 * i) for i in range(10)),
        )
        attachment_flows(PIPELINE, PORT, Scope(addresses=OWN_V4, egress=(large,)))  # too large to remember
        attachment_flows(PIPELINE, PORT, _cross(1, n + 1))  # fmt: skip
        assert len(rules_module._emitted) <= 16 + 40
        assert len(rules_module._places) <= 64 + 2 * 40
    assert attachment_flows(PIPELINE, PORT, big) == expected
