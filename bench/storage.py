"""`python -m bench.storage`: what validating, storing and reading back a
policy costs, without a switch (no root needed).

For each policy size (the bench's ``n_rule`` policies) and each step, the
p50 of a fresh policy (nothing remembered: every rule validated or encoded
from scratch) and of a one-rule change (the previous policy's rules
remembered, rule 0 new each time, as a gateway DELTA brings it):

* validate: a gateway event's NetworkScope message into a Scope;
* encode: the Scope into the bytes the store writes;
* decode: the stored bytes back into a validated Scope;

beside the canonical-JSON form the store wrote before (``json.dumps`` of
the proto3 JSON mapping, and ``json_format`` parsing it back).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.policies import n_rule_scope
from bench.stats import summarize
from coordinator.policy.codec import forget_rule_encodings, scope_from_stored, scope_to_stored
from coordinator.policy.scope import PortRange, Scope
from coordinator.policy.validate import (
    forget_validated_rules,
    scope_from_mapping,
    scope_from_proto,
    scope_to_mapping,
    scope_to_proto,
)

SIZES = (10, 100, 1000)
STEPS = ("validate", "encode", "decode")
# Rule 0's port in the i-th changed policy: clear of every port n_rule_scope uses.
CHANGED_PORT = 40000


def changed_scopes(base: Scope, count: int) -> list[Scope]:
    """``count`` policies, each ``base`` with only rule 0 changed, and each
    rule 0 different, so no change finds its new rule already remembered.
    Built without the validator or the codec, which would remember them."""
    first = base.egress[0]
    return [
        dataclasses.replace(
            base,
            version=base.version + i + 1,
            egress=(
                dataclasses.replace(first, ports=(PortRange(CHANGED_PORT + i, CHANGED_PORT + i),)),
                *base.egress[1:],
            ),
        )
        for i in range(count)
    ]


def _forget() -> None:
    forget_validated_rules()
    forget_rule_encodings()


def _p50_ms(step: Callable[[Any], object], inputs: Sequence[Any], *, fresh: bool) -> float:
    samples = []
    for value in inputs:
        if fresh:
            _forget()
        started = time.perf_counter()
        step(value)
        samples.append(time.perf_counter() - started)
    return summarize(samples).p50


def measure(sizes: Sequence[int] = SIZES, reps: int = 30) -> list[dict[str, Any]]:
    """One row per size and step: p50 ms fresh, one-rule change, and the
    earlier JSON form (nothing remembered, as it was)."""
    # Per step: what it does, what it takes (made from a Scope outside the
    # timing), and the same for the JSON form.
    steps: dict[str, tuple[Callable[[Any], object], Callable[[Scope], Any]]] = {
        "validate": (scope_from_proto, scope_to_proto),
        "encode": (scope_to_stored, lambda s: s),
        "decode": (scope_from_stored, lambda s: scope_to_proto(s).SerializeToString()),
    }
    json_steps: dict[str, tuple[Callable[[Any], object], Callable[[Scope], Any]]] = {
        "validate": (scope_from_mapping, scope_to_mapping),
        "encode": (lambda s: json.dumps(scope_to_mapping(s)), lambda s: s),
        "decode": (scope_from_stored, lambda s: json.dumps(scope_to_mapping(s))),
    }
    rows = []
    for size in sizes:
        base = n_rule_scope(size)
        changes = changed_scopes(base, reps)
        for name in STEPS:
            step, make = steps[name]
            fresh = _p50_ms(step, [make(base)] * reps, fresh=True)
            change_inputs = [make(s) for s in changes]
            _forget()
            step(make(base))  # the previous policy, remembered
            change = _p50_ms(step, change_inputs, fresh=False)
            json_step, json_make = json_steps[name]
            json_ms = _p50_ms(json_step, [json_make(base)] * reps, fresh=True)
            rows.append(
                {"rules": size, "step": name, "fresh_ms": fresh, "change_ms": change, "json_ms": json_ms}
            )
    _forget()
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'rules':>6}  {'step':<9} {'fresh':>9} {'1-rule change':>14} {'JSON form (before)':>19}",
    ]
    for r in rows:
        lines.append(
            f"{r['rules']:>6}  {r['step']:<9} {r['fresh_ms']:>6.2f} ms {r['change_ms']:>11.2f} ms "
            f"{r['json_ms']:>16.2f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("--reps", type=int, default=30, help="repetitions per cell (p50 reported)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated rule counts")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(render(measure(sizes, args.reps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
