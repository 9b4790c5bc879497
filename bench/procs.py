"""Subprocess helpers: run a command, time it, stop a daemon by its pidfile."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from coordinator.dev.ovs_instance import read_pid, stop_pid

DEFAULT_TIMEOUT_S = 120.0


class BenchError(RuntimeError):
    """A step of the benchmark failed (the message says which)."""


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    ok_codes: Sequence[int] = (0,),
) -> str:
    """Run ``argv``; its stdout, or BenchError with its stderr."""
    try:
        proc = subprocess.run(
            list(argv), env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv[:4])} ... timed out after {timeout}s") from exc
    if proc.returncode not in ok_codes:
        raise BenchError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")
    return proc.stdout


def timed_run(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> float:
    """Seconds ``argv`` took from spawn to exit (it must succeed)."""
    started = time.perf_counter()
    run(argv, env=env)
    return time.perf_counter() - started


def stop_pidfile(pidfile: Path, comm: str | None = None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the process named in ``pidfile`` (if it runs)."""
    pid = read_pid(pidfile, comm)
    if pid is not None:
        stop_pid(pid, timeout)


def count_flows(dump: str) -> int:
    """Flows in an `ovs-ofctl dump-flows` answer: the lines with actions."""
    return sum(1 for line in dump.splitlines() if "actions=" in line)
