"""Egress/ingress rules -> policy-table flows (pure).

Per rule and IP family, a rule has two dimensions: remote CIDRs and L4
terms (protocol with port masks, or ICMP type/code). When both have more
than one entry the rule becomes an OpenFlow conjunction - N + M + 1 flows
instead of N x M; otherwise the cross product is at most N or M flows and is
emitted directly.

Deny beats allow by priority: every deny flow sits above every allow flow.
Within a class, direct flows sit one above conjunctive ones so a direct flow
never shares its exact match and priority with a conjunction clause (a flow
cannot mix conjunction() with other actions). Identical clause flows of
different rules at one priority are merged into one flow carrying several
conjunction() actions, which OVS allows.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from coordinator.attachment_identity import MAX_RULE_INDEX, conjunction_id
from coordinator.flows.model import Conjunction, Drop, Flow, FlowAction, Goto, Match
from coordinator.flows.pipeline import FlowViolation, Pipeline
from coordinator.policy.portmask import ranges_to_masks
from coordinator.policy.scope import PortRange, Protocol, Rule, RuleAction, Scope
from coordinator.sequences import changed_span

ETH_BY_FAMILY = {4: "0x0800", 6: "0x86dd"}
PROTO_NUMBER = {Protocol.TCP: "6", Protocol.UDP: "17", Protocol.ICMP: "1", Protocol.ICMPV6: "58"}
CT_NEW = "+trk+new-est-rel-inv"
DNS_PORT = 53


@dataclass(frozen=True)
class Side:
    """How one direction's policy table sees an attachment."""

    name: str  # "egress" or "ingress"
    table: str
    commit_table: str
    attachment: Match  # what identifies the attachment's packets in `table`
    remote_v4: str  # the remote end's address field
    remote_v6: str
    ingress: bool  # the direction, one bit of the conjunction ids


def egress_side(ofport: int) -> Side:
    return Side(
        "egress", "egress_policy", "egress_commit", (("in_port", str(ofport)),), "nw_dst", "ipv6_dst", False
    )


def ingress_side(mac: str) -> Side:
    return Side("ingress", "ingress_policy", "ingress_commit", (("dl_dst", mac),), "nw_src", "ipv6_src", True)


def dns_rules(scope: Scope) -> tuple[Rule, ...]:
    """The DNS toggle as implicit allow rules (deny rules still win)."""
    if not scope.dns_servers:
        return ()
    servers = tuple(ipaddress.ip_network(a) for a in scope.dns_servers)
    port = (PortRange(DNS_PORT, DNS_PORT),)
    return tuple(
        Rule(name="dns", action=RuleAction.ALLOW, cidrs=servers, protocol=p, ports=port)
        for p in (Protocol.UDP, Protocol.TCP)
    )


def _port_text(value: int, mask: int) -> str:
    return str(value) if mask == 0xFFFF else f"{value:#x}/{mask:#x}"


# The terms of a rule depend on the rule and the family alone (not on the
# attachment), and turning port ranges into masks and networks into text is
# most of a compile's work: a policy change recompiles only the rules it
# changed, and a thousand attachments running the same rules share them.
# Bounded in count and in what one entry may hold (a remembered entry keeps
# its Rule alive): rules of many networks or port ranges are compiled each
# time, so a stream of large distinct rules cannot pin much memory.
TERM_CACHE_SIZE = 4096
TERM_CACHE_MAX_TERMS = 16


def _l4_terms(rule: Rule, family: int) -> tuple[Match, ...] | None:
    """The rule's L4 alternatives for ``family``; None if it cannot match it."""
    if rule.protocol is Protocol.ANY:
        return ((),)
    if rule.protocol is Protocol.ICMP and family != 4:
        return None
    if rule.protocol is Protocol.ICMPV6 and family != 6:
        return None
    proto: Match = (("nw_proto", PROTO_NUMBER[rule.protocol]),)
    if rule.protocol.has_ports:
        if not rule.ports:
            return (proto,)
        masks = ranges_to_masks((p.start, p.end) for p in rule.ports)
        return tuple((*proto, ("tp_dst", _port_text(v, m))) for v, m in masks)
    prefix = "icmp" if rule.protocol is Protocol.ICMP else "icmpv6"
    term = proto
    if rule.icmp_type is not None:
        term = (*term, (f"{prefix}_type", str(rule.icmp_type)))
    if rule.icmp_code is not None:
        term = (*term, (f"{prefix}_code", str(rule.icmp_code)))
    return (term,)


def _cidr_terms(rule: Rule, family: int, field: str) -> tuple[Match, ...] | None:
    if not rule.cidrs:
        return ((),)
    nets = [n for n in rule.cidrs if n.version == family]
    if not nets:
        return None
    return tuple(((field, str(n.network_address) if n.num_addresses == 1 else str(n)),) for n in nets)


@dataclass(frozen=True)
class _Conjunctive:
    """A rule with several networks and several L4 terms: one conjunction."""

    cidrs: tuple[Match, ...]
    l4: tuple[Match, ...]


def _rule_terms(rule: Rule, family: int, remote_field: str) -> _Conjunctive | tuple[Match, ...] | None:
    if len(rule.cidrs) + len(rule.ports) > TERM_CACHE_MAX_TERMS:
        return _compute_rule_terms(rule, family, remote_field)
    return _remembered_rule_terms(rule, family, remote_field)


def _compute_rule_terms(
    rule: Rule, family: int, remote_field: str
) -> _Conjunctive | tuple[Match, ...] | None:
    """What ``rule`` matches in ``family``: a conjunction's two dimensions,
    or the direct matches (the cross product); None if it cannot match."""
    cidrs = _cidr_terms(rule, family, remote_field)
    l4 = _l4_terms(rule, family)
    if cidrs is None or l4 is None:
        return None
    if len(cidrs) > 1 and len(l4) > 1:
        return _Conjunctive(cidrs, l4)
    return tuple((*c, *t) for c in cidrs for t in l4)


_remembered_rule_terms = functools.lru_cache(maxsize=TERM_CACHE_SIZE)(_compute_rule_terms)


# What one rule of one attachment's direction and family asks for is
# remembered too (the rule's flows before merging, each already a checked
# Flow): a one-rule change of a thousand-rule policy compiles one rule, and
# the unchanged rules hand back the very Flow objects of the last compile,
# whose encodings the switch adapter has already memoised. Bounded like the
# terms: past RULE_FLOWS_KEPT entries it starts over, and a rule too large
# for the term cache is compiled each time.
RULE_FLOWS_KEPT = 4096
# Interned places: those of the remembered flows, and those of the large
# rules compiled each time (which is what this bound is for).
PLACES_KEPT = 4 * RULE_FLOWS_KEPT


@dataclass(frozen=True, eq=False)
class _Place:
    """Where a flow goes in a policy table: its priority and match.

    Interned (``_place``): equal places are one object, so the merge of
    every compile, which looks each one up, hashes and compares them by
    identity (in C) instead of by value. Only sound while every place a
    compile sees comes from one generation of the intern table: the table
    is started over together with the remembered flows, and only before a
    compile, never during one."""

    priority: int
    match: Match


@dataclass(frozen=True)
class _Emitted:
    """One flow a rule asks for: its place, its action, and the checked flow
    it is when no other rule asks for the same place."""

    place: _Place
    action: FlowAction
    flow: Flow


_emitted: dict[tuple[int, int, Rule], tuple[_Emitted, ...]] = {}
# The daemon compiles on its loop alone; held through a walk so that the
# memos never start over during one should a compile ever run on another
# thread too (that would split equal places, see _Place).
_walking = threading.Lock()
_places: dict[tuple[int, Match], _Place] = {}
# (pipeline id, side, family, slot, cookie) -> (a number for it, the pipeline
# kept alive so its id stays its own while the entry exists)
_contexts: dict[tuple[int, Side, int, int, int], tuple[int, Pipeline]] = {}


def _context(pipeline: Pipeline, side: Side, family: int, slot: int, cookie: int) -> int:
    key = (id(pipeline), side, family, slot, cookie)
    found = _contexts.get(key)
    if found is None:
        found = _contexts[key] = (next(_context_numbers), pipeline)
    return found[0]


# Never reused, so no entry can be found under another context's number.
_context_numbers = itertools.count()


# The last walk of each attachment's direction, for its next walk to patch:
# a one-rule change of a thousand-rule policy then looks at that one rule,
# not at every rule and flow again. Bounded in the rules the kept walks
# hold, the least recently walked going first.
WALK_RULES_KEPT = 2 * RULE_FLOWS_KEPT
# A walk is patched where at most this many rules changed (or an eighth of
# them, if more): a larger change walks the whole way.
PATCHED_RULES_MAX = 16


@dataclass
class _Walk:
    """One walk over an attachment direction's rules in which no two rules
    asked for one place, so its flows are what each rule asked for, family
    by family and rule by rule: ``asked[f * len(rules) + i]`` is what rule
    ``i`` asked for in the ``f``-th family."""

    pipeline: Pipeline  # kept, so that its id (in the key) stays its own
    rules: tuple[Rule, ...]
    families: tuple[int, ...]
    contexts: tuple[int, ...]
    asked: list[tuple[_Emitted, ...]]
    places: set[_Place]
    flows: list[Flow]


_WalkKey = tuple[int, Side, tuple[int, ...], int, int]


class _KeptWalks:
    """The kept walks by key, least recently walked first, bounded in the
    rules they hold (over all families)."""

    def __init__(self) -> None:
        self._walks: OrderedDict[_WalkKey, _Walk] = OrderedDict()
        self._rules = 0

    def take(self, key: _WalkKey) -> _Walk | None:
        walk = self._walks.pop(key, None)
        if walk is not None:
            self._rules -= len(walk.asked)
        return walk

    def keep(self, key: _WalkKey, walk: _Walk) -> None:
        if len(walk.asked) > WALK_RULES_KEPT:
            return
        self._walks[key] = walk
        self._rules += len(walk.asked)
        while self._rules > WALK_RULES_KEPT:
            _, dropped = self._walks.popitem(last=False)
            self._rules -= len(dropped.asked)

    def clear(self) -> None:
        self._walks.clear()
        self._rules = 0


_walks = _KeptWalks()
_flow_of = attrgetter("flow")


def _forget_rule_flows() -> None:
    _contexts.clear()
    _emitted.clear()
    _places.clear()
    _walks.clear()


def _place(priority: int, match: Match) -> _Place:
    found = _places.get((priority, match))
    if found is None:
        found = _places[(priority, match)] = _Place(priority, match)
    return found


def _emit_rule(
    pipeline: Pipeline, side: Side, family: int, index: int, rule: Rule, *, cookie: int, slot: int
) -> tuple[_Emitted, ...]:
    """The flows ``rule`` (at ``index``) asks for in ``family``, unmerged."""
    terms = _rule_terms(rule, family, side.remote_v4 if family == 4 else side.remote_v6)
    if terms is None:
        return ()
    common: Match = (*side.attachment, ("dl_type", ETH_BY_FAMILY[family]), ("ct_state", CT_NEW))
    deny = rule.action is RuleAction.DENY
    verdict: FlowAction = Drop() if deny else Goto(side.commit_table)
    base = pipeline.priority("deny_rule" if deny else "allow_rule")
    wanted: list[tuple[int, Match, FlowAction]] = []
    if isinstance(terms, _Conjunctive):
        conj_id = conjunction_id(slot, ingress=side.ingress, ipv6=family == 6, rule_index=index)
        wanted += [(base, (*common, *term), Conjunction(conj_id, 1, 2)) for term in terms.cidrs]
        wanted += [(base, (*common, *term), Conjunction(conj_id, 2, 2)) for term in terms.l4]
        wanted.append((base, (*common, ("conj_id", str(conj_id))), verdict))
    else:
        wanted += [(base + 1, (*common, *term), verdict) for term in terms]
    return tuple(
        _Emitted(
            _place(priority, match), action, _merge(pipeline, side.table, priority, match, [action], cookie)
        )
        for priority, match, action in wanted
    )


def _rule_emitted(
    pipeline: Pipeline,
    side: Side,
    family: int,
    index: int,
    rule: Rule,
    *,
    cookie: int,
    slot: int,
    context: int,
) -> tuple[_Emitted, ...]:
    """What ``rule`` asks for, remembered unless it is too large to be."""
    found = _emit_rule(pipeline, side, family, index, rule, cookie=cookie, slot=slot)
    if len(rule.cidrs) + len(rule.ports) <= TERM_CACHE_MAX_TERMS:
        _emitted[(context, index, rule)] = found
    return found


def rule_flows(
    pipeline: Pipeline,
    side: Side,
    rules: Sequence[Rule],
    families: Iterable[int],
    *,
    cookie: int,
    slot: int,
) -> list[Flow]:
    """The flows deciding new connections by ``rules`` (deny before allow)."""
    if len(rules) > MAX_RULE_INDEX:
        raise FlowViolation(f"{side.name}: {len(rules)} rules exceed the conjunction id space")
    with _walking:
        return _rule_flows(pipeline, side, rules, families, cookie=cookie, slot=slot)


def _rule_flows(
    pipeline: Pipeline, side: Side, rules: Sequence[Rule], families: Iterable[int], *, cookie: int, slot: int
) -> list[Flow]:
    # Started over here, before the walk, never within it (see _Place): so
    # the memo may exceed its bound by one compile's rules until the next.
    if len(_emitted) >= RULE_FLOWS_KEPT or len(_contexts) >= RULE_FLOWS_KEPT or len(_places) >= PLACES_KEPT:
        _forget_rule_flows()
    rules = tuple(rules)
    families = tuple(families)
    key = (id(pipeline), side, families, slot, cookie)
    last = _walks.take(key)
    walk = None
    if last is not None and last.pipeline is pipeline:
        walk = _patched_walk(last, pipeline, side, rules, cookie=cookie, slot=slot)
    if walk is None:
        contexts = tuple(_context(pipeline, side, family, slot, cookie) for family in families)
        flows, walk = _whole_walk(pipeline, side, rules, families, contexts, cookie=cookie, slot=slot)
        if walk is None:
            return flows
    _walks.keep(key, walk)
    return list(walk.flows)  # the kept list stays the walk's own


def _asked(
    pipeline: Pipeline,
    side: Side,
    index: int,
    rule: Rule,
    context: int,
    family: int,
    *,
    cookie: int,
    slot: int,
) -> tuple[_Emitted, ...]:
    found = _emitted.get((context, index, rule))
    if found is None:
        found = _rule_emitted(pipeline, side, family, index, rule, cookie=cookie, slot=slot, context=context)
    return found


def _whole_walk(
    pipeline: Pipeline,
    side: Side,
    rules: tuple[Rule, ...],
    families: tuple[int, ...],
    contexts: tuple[int, ...],
    *,
    cookie: int,
    slot: int,
) -> tuple[list[Flow], _Walk | None]:
    """The flows of every rule, and the walk to keep (None when a place was
    asked for twice: those flows are merges, which a patch does not redo)."""
    # A place one rule asks for holds its flow; a place several ask for
    # (identical clauses of two conjunctions) collects their actions.
    merged: dict[_Place, _Emitted | list[FlowAction]] = {}
    asked: list[tuple[_Emitted, ...]] = []
    remembered = _emitted.get  # ``_asked`` inline: this loop runs once per rule of a fresh compile
    shared = False
    for family, context in zip(families, contexts, strict=True):
        for index, rule in enumerate(rules):
            found = remembered((context, index, rule))
            if found is None:
                found = _rule_emitted(
                    pipeline, side, family, index, rule, cookie=cookie, slot=slot, context=context
                )
            asked.append(found)
            for emitted in found:
                earlier = merged.get(emitted.place)
                if earlier is None:
                    merged[emitted.place] = emitted
                    continue
                shared = True
                if isinstance(earlier, _Emitted):
                    merged[emitted.place] = [earlier.action, emitted.action]
                else:
                    earlier.append(emitted.action)
    flows = [
        held.flow
        if isinstance(held, _Emitted)
        else _merge(pipeline, side.table, place.priority, place.match, held, cookie)
        for place, held in merged.items()
    ]
    if shared:
        return flows, None
    return flows, _Walk(pipeline, rules, families, contexts, asked, set(merged), flows)


def _patched_walk(
    last: _Walk, pipeline: Pipeline, side: Side, rules: tuple[Rule, ...], *, cookie: int, slot: int
) -> _Walk | None:
    """``last`` (taken out of the memo: changed in place) made the walk of
    ``rules``, looking only at the rules that are not the very ones of
    ``last`` at the same index; None where a whole walk is needed (rules
    added, removed or many changed, or a place now asked for twice). The
    flows are in the whole walk's order: as no place is shared, each rule's
    flows in turn."""
    count = len(rules)
    if len(last.rules) != count:
        return None  # the later rules' indexes (their conjunction ids) moved
    start, _, end = changed_span(last.rules, rules)
    if end - start > max(PATCHED_RULES_MAX, count // 8):
        return None
    if start == end:
        return last
    asked, places = last.asked, last.places
    for f in range(len(last.families)):
        for index in range(start, end):
            for emitted in asked[f * count + index]:
                places.discard(emitted.place)
    for f, (family, context) in enumerate(zip(last.families, last.contexts, strict=True)):
        for index in range(start, end):
            found = _asked(pipeline, side, index, rules[index], context, family, cookie=cookie, slot=slot)
            for emitted in found:
                if emitted.place in places:
                    return None  # asked for twice: a merge
                places.add(emitted.place)
            asked[f * count + index] = found
    last.rules = rules
    last.flows = list(map(_flow_of, itertools.chain.from_iterable(asked)))
    return last


def _merge(
    pipeline: Pipeline, table: str, priority: int, match: Match, actions: list[FlowAction], cookie: int
) -> Flow:
    conj = sorted({a for a in actions if isinstance(a, Conjunction)}, key=lambda a: (a.conj_id, a.clause))
    plain = set(actions) - set(conj)
    if conj and plain:
        raise FlowViolation(f"{table} priority {priority} {dict(match)}: conjunction mixed with {plain}")
    if len(plain) > 1:
        raise FlowViolation(f"{table} priority {priority} {dict(match)}: conflicting actions {plain}")
    flow = Flow(
        table=table, priority=priority, match=match, actions=tuple(conj) or tuple(plain), cookie=cookie
    )
    pipeline.check(flow)
    return flow
