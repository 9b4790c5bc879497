"""Rendering flows to the text ovs-ofctl reads (add-flows / bundle files)."""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.flows.model import (
    Conjunction,
    Ct,
    CtClear,
    CtCommit,
    Drop,
    Flood,
    Flow,
    FlowAction,
    Goto,
    Meter,
    Output,
)
from coordinator.flows.pipeline import Pipeline


def render_action(action: FlowAction, pipeline: Pipeline) -> str:
    match action:
        case Goto(table=table):
            return f"goto_table:{pipeline.number(table)}"
        case Output(port=port):
            return f"output:{port}"
        case Flood():
            return "ALL"
        case Ct(zone=zone, table=table):
            return f"ct(zone={zone},table={pipeline.number(table)})"
        case CtCommit(zone=zone, table=table, mark=mark):
            return f"ct(commit,zone={zone},table={pipeline.number(table)},exec(set_field:{mark:#x}->ct_mark))"
        case CtClear():
            return "ct_clear"
        case Conjunction(conj_id=conj_id, clause=clause, n_clauses=n_clauses):
            return f"conjunction({conj_id},{clause}/{n_clauses})"
        case Meter(meter_id=meter_id):
            return f"meter:{meter_id}"
        case Drop():
            return "drop"
    raise TypeError(f"unknown action {action!r}")


def render_match(flow: Flow, pipeline: Pipeline) -> str:
    parts = [f"table={pipeline.number(flow.table)}", f"priority={flow.priority}"]
    parts.extend(f"{name}={value}" for name, value in flow.match)
    return ",".join(parts)


def render_flow(flow: Flow, pipeline: Pipeline) -> str:
    actions = ",".join(render_action(a, pipeline) for a in flow.actions)
    return f"cookie={flow.cookie:#x},{render_match(flow, pipeline)} actions={actions}"


def render_flows(flows: Iterable[Flow], pipeline: Pipeline) -> list[str]:
    return [render_flow(flow, pipeline) for flow in sort_flows(flows, pipeline)]


def sort_flows(flows: Iterable[Flow], pipeline: Pipeline) -> list[Flow]:
    """Stable, reviewable order: by table, then priority (high first)."""
    return sorted(flows, key=lambda f: (pipeline.number(f.table), -f.priority, f.match, repr(f.actions)))
