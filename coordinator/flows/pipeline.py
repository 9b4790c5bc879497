"""The pipeline declaration (ovs_programs/pipeline.yaml) and the check every
emitted flow must pass against it."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from coordinator.flows.model import Ct, CtCommit, Flow, Goto

KNOWN_ACTIONS = frozenset(
    {"goto", "output", "flood", "ct", "ct_commit", "ct_clear", "conjunction", "meter", "drop"}
)
MISS_ACTIONS = frozenset({"drop"})
# Offload safety. Hardware offload (TC flower on BlueField) cannot match
# these at all, so a table that uses them would pin every flow through it to
# software: no table may declare them. Besides the first three, what Open
# vSwitch 3.1's TC offload refuses outright (lib/netdev-offload-tc.c): the
# conntrack original-direction tuple, registers and metadata, nw_tos, the
# packet type, skb priority and the action-set output.
UNOFFLOADABLE_MATCHES = frozenset(
    {
        "pkt_mark",
        "dp_hash",
        "recirc_id",
        "ct_nw_src",
        "ct_nw_dst",
        "ct_ipv6_src",
        "ct_ipv6_dst",
        "ct_nw_proto",
        "ct_tp_src",
        "ct_tp_dst",
        "metadata",
        "nw_tos",
        "packet_type",
        "skb_priority",
        "actset_output",
        *(f"reg{n}" for n in range(16)),
        *(f"xreg{n}" for n in range(8)),
        *(f"xxreg{n}" for n in range(4)),
    }
)
# Neighbour-discovery payload matches keep that traffic in software. It is
# rare, so one dedicated table (declared `software_ok: true`) may use them.
SOFTWARE_ONLY_MATCHES = frozenset({"nd_target", "nd_sll", "nd_tll"})


class PipelineError(ValueError):
    """The pipeline declaration itself is malformed."""


class FlowViolation(ValueError):
    """A flow breaks its table's declaration: a compiler bug, caught before
    anything reaches the switch."""


@dataclass(frozen=True)
class Table:
    name: str
    number: int
    match_fields: frozenset[str]
    actions: frozenset[str]
    next_tables: frozenset[str]
    priority_ranges: tuple[tuple[int, int], ...]
    miss: str


@dataclass(frozen=True)
class Pipeline:
    tables: tuple[Table, ...]
    priorities: Mapping[str, tuple[int, int]]

    def table(self, name: str) -> Table:
        table = self._by_name.get(name)
        if table is None:
            raise KeyError(f"no table named {name!r} in the pipeline")
        return table

    @functools.cached_property
    def _by_name(self) -> dict[str, Table]:
        return {table.name: table for table in self.tables}

    def number(self, name: str) -> int:
        return self.table(name).number

    def priority(self, range_name: str, offset: int = 0) -> int:
        low, high = self.priorities[range_name]
        if not 0 <= offset <= high - low:
            raise FlowViolation(f"priority offset {offset} outside range {range_name} [{low}, {high}]")
        return low + offset

    def check(self, flow: Flow) -> None:
        # Every flow of every compile passes here, so the message naming the
        # flow is only built for a flow that breaks a rule.
        try:
            table = self.table(flow.table)
        except KeyError as exc:
            raise FlowViolation(str(exc)) from exc
        if not any(low <= flow.priority <= high for low, high in table.priority_ranges):
            raise FlowViolation(f"{_where(table, flow)}: priority outside the table's ranges")
        for field_name, _ in flow.match:
            if field_name not in table.match_fields:
                raise FlowViolation(f"{_where(table, flow)}: match field {field_name!r} not allowed here")
        if not flow.actions:
            raise FlowViolation(f"{_where(table, flow)}: no actions")
        for action in flow.actions:
            if action.kind not in table.actions:
                raise FlowViolation(f"{_where(table, flow)}: action {action.kind!r} not allowed here")
            if isinstance(action, Goto | Ct | CtCommit) and action.table not in table.next_tables:
                raise FlowViolation(f"{_where(table, flow)}: may not continue in table {action.table!r}")

    def check_all(self, flows: Iterable[Flow]) -> None:
        for flow in flows:
            self.check(flow)


def _where(table: Table, flow: Flow) -> str:
    return f"flow in table {table.name} (priority {flow.priority}, match {dict(flow.match)})"


def _str_list(raw: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PipelineError(f"{where}.{key}: expected a list of strings")
    return value


def parse_pipeline(raw: object) -> Pipeline:
    if not isinstance(raw, dict):
        raise PipelineError("pipeline: expected a mapping")
    raw_priorities = raw.get("priorities")
    if not isinstance(raw_priorities, dict):
        raise PipelineError("priorities: expected a mapping of name to [low, high]")
    priorities: dict[str, tuple[int, int]] = {}
    for name, bounds in raw_priorities.items():
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int) for b in bounds)):
            raise PipelineError(f"priorities.{name}: expected [low, high]")
        if not 0 <= bounds[0] <= bounds[1] <= 0xFFFF:
            raise PipelineError(f"priorities.{name}: bounds out of order or range")
        priorities[str(name)] = (bounds[0], bounds[1])
    raw_tables = raw.get("tables")
    if not isinstance(raw_tables, list) or not raw_tables:
        raise PipelineError("tables: expected a non-empty list")
    names = [t.get("name") if isinstance(t, dict) else None for t in raw_tables]
    if len(set(names)) != len(names):
        raise PipelineError("tables: duplicate table names")
    tables = []
    for number, raw_table in enumerate(raw_tables):
        where = f"tables[{number}]"
        if not isinstance(raw_table, dict) or not isinstance(raw_table.get("name"), str):
            raise PipelineError(f"{where}.name: required")
        actions = _str_list(raw_table, "actions", where)
        unknown = set(actions) - KNOWN_ACTIONS
        if unknown:
            raise PipelineError(f"{where}.actions: unknown {sorted(unknown)}")
        next_tables = _str_list(raw_table, "next", where)
        for next_name in next_tables:
            if next_name not in names or names.index(next_name) <= number:
                raise PipelineError(f"{where}.next: {next_name!r} must be a later table")
        ranges = []
        for range_name in _str_list(raw_table, "priorities", where):
            if range_name not in priorities:
                raise PipelineError(f"{where}.priorities: unknown range {range_name!r}")
            ranges.append(priorities[range_name])
        match_fields = set(_str_list(raw_table, "match", where))
        if match_fields & UNOFFLOADABLE_MATCHES:
            raise PipelineError(
                f"{where}.match: {sorted(match_fields & UNOFFLOADABLE_MATCHES)} cannot be offloaded"
            )
        if match_fields & SOFTWARE_ONLY_MATCHES and raw_table.get("software_ok") is not True:
            raise PipelineError(
                f"{where}.match: {sorted(match_fields & SOFTWARE_ONLY_MATCHES)} only in a table "
                "declared software_ok: true"
            )
        miss = raw_table.get("miss", "drop")
        if miss not in MISS_ACTIONS:
            raise PipelineError(f"{where}.miss: must be one of {sorted(MISS_ACTIONS)}")
        tables.append(
            Table(
                name=raw_table["name"],
                number=number,
                match_fields=frozenset(match_fields),
                actions=frozenset(actions),
                next_tables=frozenset(next_tables),
                priority_ranges=tuple(ranges),
                miss=miss,
            )
        )
    return Pipeline(tables=tuple(tables), priorities=priorities)


def load_pipeline() -> Pipeline:
    text = resources.files("coordinator.programs").joinpath("pipeline.yaml").read_text()
    return parse_pipeline(yaml.safe_load(text))
