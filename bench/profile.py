"""`python -m bench.profile`: where the time of one policy apply goes.

Applies one-rule changes of a policy (100 rules by default) through the
daemon's real path on a private OVS, and reports (a) every subprocess the
path spawned, by command, with its wall time and (b) a pyinstrument
profile of the whole loop (when pyinstrument is installed: the `bench`
extra). Needs root, like the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cases.policy import BRIDGE, SANDBOX
from bench.daemon_stack import DaemonStack, daemon_stack
from bench.policies import n_rule_scope
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance


@contextlib.contextmanager
def spawn_timer(totals: dict[str, list[float]]) -> Iterator[None]:
    """Record the wall time of every asyncio subprocess, keyed by program and first argument."""
    real = asyncio.create_subprocess_exec

    async def timed(program: Any, *args: Any, **kwargs: Any) -> Any:
        words = [str(a) for a in args if not str(a).startswith("-") and not str(a).startswith("OpenFlow")]
        key = f"{Path(str(program)).name} {words[0] if words else ''}".strip()
        started = time.perf_counter()
        proc = await real(program, *args, **kwargs)
        wait = proc.wait

        async def waited() -> int:
            code = await wait()
            totals[key].append(time.perf_counter() - started)
            return code

        proc.wait = waited  # type: ignore[method-assign]
        return proc

    asyncio.create_subprocess_exec = timed
    try:
        yield
    finally:
        asyncio.create_subprocess_exec = real


async def _loop(stack: DaemonStack, rules: int, reps: int) -> float:
    scopes = [n_rule_scope(rules), n_rule_scope(rules, changed=True)]
    started = time.perf_counter()
    for i in range(reps):
        scope = scopes[i % 2]
        await stack.adapters.service.apply_policy(
            SANDBOX, type(scope)(**{**scope.__dict__, "version": i + 2})
        )
    return time.perf_counter() - started


async def profile(rules: int, reps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bfc-profile-") as tmp:
        ovs = OvsInstance.start(Path(tmp) / "ovs", netns.unique_name("bpp-"))
        try:
            async with daemon_stack(Path(tmp) / "daemon", ovs, BRIDGE) as stack:
                await stack.attach(SANDBOX)
                await _loop(stack, rules, 5)  # warm up: first apply, meters forgotten
                totals: dict[str, list[float]] = defaultdict(list)
                with spawn_timer(totals):
                    wall = await _loop(stack, rules, reps)
                _print_spawns(totals, wall, reps)
                await _pyinstrument(stack, rules, reps)
        finally:
            ovs.stop()


def _print_spawns(totals: dict[str, list[float]], wall: float, reps: int) -> None:
    print(f"{reps} one-rule changes: {1000 * wall / reps:.1f} ms per apply (wall)")
    print(f"{'subprocess':<28} {'per apply':>10} {'ms each':>9} {'ms/apply':>9}")
    spent = 0.0
    for key, times in sorted(totals.items(), key=lambda kv: -sum(kv[1])):
        spent += sum(times)
        print(f"{key:<28} {len(times) / reps:>10.1f} {1000 * sum(times) / len(times):>9.2f} "
              f"{1000 * sum(times) / reps:>9.2f}")  # fmt: skip
    print(f"{'all subprocesses':<28} {'':>10} {'':>9} {1000 * spent / reps:>9.2f}  "
          f"({100 * spent / wall:.0f}% of the wall time)")  # fmt: skip


async def _pyinstrument(stack: DaemonStack, rules: int, reps: int) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("(pyinstrument not installed: pip install -e '.[bench]' for the call profile)")
        return
    profiler = Profiler(async_mode="enabled")
    with profiler:
        await _loop(stack, rules, reps)
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(profile(args.rules, args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
