"""`python -m bench`: run the cases, print the table, write the JSON and the docs page."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cases.attach import run_attach_case
from bench.cases.policy import run_policy_cases
from bench.cases.scale import run_scale_case
from bench.docs import render_docs
from bench.machine import machine_facts
from bench.report import headlines, render_table

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
DEFAULT_DOCS = ROOT / "docs" / "BENCHMARKS.md"
CASES = ("policy", "attach", "scale")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    p.add_argument("--quick", action="store_true", help="few repetitions and small sizes (a smoke run)")
    p.add_argument("--no-ovn", action="store_true", help="skip the OVN comparison")
    p.add_argument(
        "--reps", type=int, default=0, help="repetitions per policy size (default 100; 30 at 1,000 rules)"
    )
    p.add_argument("--attaches", type=int, default=200, help="attaches per latency series")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients for attach throughput")
    p.add_argument("--scale", type=int, default=1024, help="attachments in the scale case")
    p.add_argument("--scale-rules", type=int, default=32, help="rules per attachment in the scale case")
    p.add_argument(
        "--scale-conns",
        type=int,
        default=100,
        help="connections per attachment for the scale case's stale deny-all",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where the JSON results go")
    p.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="the page regenerated from the results")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite the docs page")
    p.add_argument("--render", type=Path, help="only re-render table and docs from a saved JSON file")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        reps = {10: 5, 100: 5, 1000: 3}
        return {"reps_by_size": reps, "attaches": 20, "clients": args.clients, "scale": 32,
                "scale_rules": args.scale_rules, "scale_conns": 10, "ovn": not args.no_ovn}  # fmt: skip
    reps = {10: args.reps or 100, 100: args.reps or 100, 1000: args.reps or 30}
    return {"reps_by_size": reps, "attaches": args.attaches, "clients": args.clients, "scale": args.scale,
            "scale_rules": args.scale_rules, "scale_conns": args.scale_conns, "ovn": not args.no_ovn}  # fmt: skip


def _progress(started: float) -> Any:
    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def run(args: argparse.Namespace) -> dict[str, Any]:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(sorted(unknown))}")
    settings = _settings(args)
    started = time.monotonic()
    say = _progress(started)
    results: dict[str, Any] = {
        "schema": 1,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "settings": {**settings, "reps_by_size": {str(k): v for k, v in settings["reps_by_size"].items()}},
        "policy": None,
        "attach": None,
        "scale": None,
    }
    runners: dict[str, Callable[[Path], Any]] = {
        "policy": lambda d: asyncio.run(
            run_policy_cases(d, settings["reps_by_size"], with_ovn=settings["ovn"], progress=say)
        ),
        "attach": lambda d: run_attach_case(d, settings["attaches"], settings["clients"], say),
        "scale": lambda d: run_scale_case(
            d, settings["scale"], settings["scale_rules"], say, connections=settings["scale_conns"]
        ),
    }
    workdir = Path(tempfile.mkdtemp(prefix="bfc-bench-"))
    try:
        for case in cases:
            # One case failing (its private processes already cleaned up)
            # does not cost the others' numbers.
            try:
                results[case] = runners[case](workdir / case).to_json()
            except Exception as exc:
                traceback.print_exc()
                say(f"{case}: FAILED: {exc}")
                results[case] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["headlines"] = headlines(results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The in-process daemon logs drift it corrects (expected here); keep the table readable.
    logging.basicConfig(level=logging.ERROR)
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        if os.geteuid() != 0:
            print("the bench needs root (network namespaces, Open vSwitch); run it as root", file=sys.stderr)
            return 2
        results = run(args)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(render_table(results))
    failed = [case for case in CASES if isinstance(results.get(case), dict) and "error" in results[case]]
    if not args.render:
        print(f"\nresults: {args.output}", file=sys.stderr)
    if not args.no_docs:
        args.docs.write_text(render_docs(results))
        print(f"docs: {args.docs}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
