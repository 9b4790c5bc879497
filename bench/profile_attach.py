"""`python -m bench.profile_attach`: where the time of one Attach goes.

Runs the bench's attach case (the daemon as its own process, mTLS clients,
the emulated eswitch on a private OVS) with the daemon started under this
module, which times every step of the Attach and Detach path: store calls
(and the SQLite commits, each an fsync), OVSDB calls, eswitch calls,
OpenFlow and conntrack calls, and every subprocess spawned (threads
included). Steps are reported by total time per attach; overlapping steps
(concurrent clients) are summed, so with several clients the column says
how much work there is, not how long one Attach waited. The daemon's CPU
time (all its threads) from its first Attach on is reported per attach +
detach cycle: on a machine others load too, the figure that compares
across runs better than wall time. With pyinstrument
installed (the `bench` extra) the daemon's event-loop thread is profiled
as well. Needs root, like the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS_FILE = "attach-steps.json"
# In STEPS_FILE beside the steps: the daemon's CPU seconds (all threads)
# at its first Attach and when it stopped.
CPU_KEY = "daemon CPU seconds"
PROFILE_FILE = "attach-profile.txt"


# -- inside the daemon ----------------------------------------------------------------


class StepTimes:
    """Wall time per step name, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.times: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.times[name].append(seconds)

    def wrap_async(self, owner: Any, method: str, name: str) -> None:
        real = getattr(owner, method)

        @functools.wraps(real)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await real(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        setattr(owner, method, timed)

    def wrap_sync(self, owner: Any, method: str, name: Callable[..., str] | str) -> None:
        real = getattr(owner, method)

        @functools.wraps(real)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.add(name(*args) if callable(name) else name, time.perf_counter() - started)

        setattr(owner, method, timed)


def _spawn_name(argv: Any, *_: Any) -> str:
    words = [str(a) for a in (argv if isinstance(argv, list | tuple) else [argv])]
    program = Path(words[0]).name
    rest = [w for w in words[1:] if not w.startswith("-") and w not in ("ip",)]
    return f"spawn {program} {' '.join(rest[1:3] if program == 'ip' else rest[:1])}".strip()


def _instrument_ports(steps: StepTimes, ovsdb: Any) -> None:
    for method in ("ensure_port", "delete_port", "relabel_port", "interface_state"):
        if hasattr(ovsdb, method):  # (an older tree may lack one: the tool compares trees)
            steps.wrap_async(ovsdb, method, f"ovsdb.{method}")
    try:
        from coordinator.dataplane_parking import PortParking
    except ImportError:  # a tree from before parking
        return
    for method in ("take", "give_back", "park", "unpark"):
        steps.wrap_async(PortParking, method, f"parking.{method}")


def instrument(steps: StepTimes) -> None:
    """Wrap the classes the Attach path goes through (before the daemon builds them)."""
    from coordinator.dataplane import Dataplane
    from coordinator.eswitch.emulated import EmulatedEswitch
    from coordinator.ovs.conntrack import ConntrackControl
    from coordinator.ovs.ofsync import ChannelSwitch
    from coordinator.ovs.ovsdb import Ovsdb
    from coordinator.service.lifecycle import Lifecycle
    from coordinator.store.db import Store
    from coordinator.store.worker import AsyncStore

    steps.wrap_async(Lifecycle, "attach", "Attach (whole)")
    counted = Lifecycle.attach

    async def first_attach(*args: Any, **kwargs: Any) -> Any:
        if CPU_KEY not in steps.times:
            steps.times[CPU_KEY].append(time.process_time())
        return await counted(*args, **kwargs)

    Lifecycle.attach = first_attach  # type: ignore[method-assign]
    steps.wrap_async(Lifecycle, "detach", "Detach (whole)")
    for method in ("prepare", "add_port", "enforce", "teardown"):
        steps.wrap_async(Dataplane, method, f"dataplane.{method}")
    _instrument_ports(steps, Ovsdb)
    for method in ("prepare", "release", "health"):
        steps.wrap_sync(EmulatedEswitch, method, f"eswitch.{method}")
    # The OpenFlow channel the daemon programs the bridge through.
    for method in ("read", "sync", "delete", "delete_meter", "set_meter"):
        steps.wrap_async(ChannelSwitch, method, f"openflow.{method}")
    for method in ("set_zone_limit", "flush_zone", "delete_zone_limit", "clear_zone"):
        if hasattr(ConntrackControl, method):
            steps.wrap_async(ConntrackControl, method, f"conntrack.{method}")
    from coordinator.ovs.unixctl import UnixctlClient

    steps.wrap_async(UnixctlClient, "_exchange", "unixctl exchanges (round trips)")
    steps.wrap_sync(Ovsdb, "_commit", "ovsdb transactions (on its thread)")
    for method in ("create_attachment", "mark_bound", "mark_detaching",
                   "delete_attachment", "save_policy", "find_by_request", "get", "fence", "policy",
                   "list_attachments"):  # fmt: skip
        if hasattr(AsyncStore, method):  # (an older tree may lack one: the tool compares trees)
            steps.wrap_async(AsyncStore, method, f"store.{method} (queued + run)")
    real_txn = Store._txn

    def counted_txn(self: Store) -> Any:
        if not self._db.in_transaction:  # a nested one commits with the outer one
            steps.add("sqlite commits (count only)", 0.0)
        return real_txn(self)

    Store._txn = counted_txn  # type: ignore[method-assign]
    try:
        from coordinator.store.writer import GroupCommitWriter
    except ImportError:  # a tree without group commit
        pass
    else:
        steps.wrap_sync(
            GroupCommitWriter, "_commit", lambda _, group: f"store commit groups of {_sizes(len(group))}"
        )
    steps.wrap_sync(subprocess, "run", _spawn_name)
    real_exec = asyncio.create_subprocess_exec

    async def timed_exec(program: Any, *args: Any, **kwargs: Any) -> Any:
        name = _spawn_name([program, *args])
        started = time.perf_counter()
        proc = await real_exec(program, *args, **kwargs)
        wait = proc.wait

        async def waited() -> int:
            code = await wait()
            steps.add(name, time.perf_counter() - started)
            return code

        proc.wait = waited
        return proc

    asyncio.create_subprocess_exec = timed_exec


def _sizes(n: int) -> str:
    return "1 write" if n == 1 else "2-3 writes" if n < 4 else "4+ writes"


def run_daemon_profiled(config_path: Path, out: Path) -> int:
    from coordinator.config import load_config
    from coordinator.daemon import run_daemon
    from coordinator.logs import setup_logging

    setup_logging("WARNING")
    steps = StepTimes()
    instrument(steps)
    profiler: Any = None
    try:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled", interval=0.0005)
    except ImportError:
        pass
    if profiler is not None:
        profiler.start()
    try:
        code = asyncio.run(run_daemon(load_config(config_path)))
    finally:
        if profiler is not None:
            profiler.stop()
            text = profiler.output_text(unicode=False, color=False, show_all=False)
            (out / PROFILE_FILE).write_text(text)
        steps.times[CPU_KEY].append(time.process_time())
        (out / STEPS_FILE).write_text(json.dumps(steps.times))
    return code


# -- the driver ----------------------------------------------------------------------


def profile(count: int, clients: int) -> None:
    from bench.cases.attach import POOL_VFS, WAIT_POLICY_RULES, _latency, _throughput
    from bench.devstack import dev_stack, write_policy
    from bench.policies import n_rule_mapping
    from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
    from coordinator.dev.ovs_instance import stop_pid

    with tempfile.TemporaryDirectory(prefix="bfc-attach-profile-") as tmp:
        workdir, out = Path(tmp) / "dev", Path(tmp)
        with dev_stack(workdir, vfs=max(POOL_VFS, clients)) as endpoint:
            stop_pid(endpoint.daemon_pid)
            log = (workdir / "coordinator.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.profile_attach", "--daemon", endpoint.config, str(out)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            (workdir / "coordinator.pid").write_text(f"{proc.pid}\n")  # dev down stops it too
            try:
                _wait_answering(endpoint, proc)
            except Exception:
                print((workdir / "coordinator.log").read_text()[-3000:], file=sys.stderr)
                raise
            for i in range(count):
                write_policy(endpoint, f"wait-{i}", n_rule_mapping(WAIT_POLICY_RULES))
            time.sleep(0.5)
            started = time.perf_counter()
            baseline = _latency(endpoint, "base", count, pb.INITIAL_POLICY_BASELINE)
            wait = _latency(endpoint, "wait", count, pb.INITIAL_POLICY_WAIT_INITIAL)
            seconds, _ = _throughput(endpoint, clients, max(1, count // clients))
            wall = time.perf_counter() - started
            stop_pid(proc.pid)
        attaches = 3 * count
        print(f"BASELINE p50 {baseline.p50:.1f} ms, WAIT_INITIAL p50 {wait.p50:.1f} ms, "
              f"{clients} clients: {count / seconds:.1f} attaches/s; {attaches} attaches in {wall:.1f} s")  # fmt: skip
        times = json.loads((out / STEPS_FILE).read_text())
        first, last = times.pop(CPU_KEY, [0.0, 0.0])
        cpu = last - first
        print(f"daemon CPU from the first Attach on (all threads): {cpu:.2f} s, "
              f"{1000 * cpu / attaches:.1f} ms per attach + detach")  # fmt: skip
        _print_steps(times, attaches)
        profile_text = out / PROFILE_FILE
        if profile_text.exists():
            print(profile_text.read_text())
        else:
            print("(pyinstrument not installed: pip install -e '.[bench]' for the call profile)")


def _wait_answering(endpoint: Any, proc: subprocess.Popen[bytes]) -> None:
    from coordinator.client import CoordinatorClient

    deadline = time.monotonic() + 60
    while proc.poll() is None:
        try:
            with CoordinatorClient(endpoint.coordinator, endpoint.admin_tls(), timeout=2) as client:
                client.health()
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    raise RuntimeError(f"the profiled daemon exited ({proc.returncode})")


def _print_steps(times: dict[str, list[float]], attaches: int) -> None:
    print(f"{'step (Attach and Detach)':<52} {'per attach':>10} {'ms each':>8} {'ms/attach':>9}")
    for name, samples in sorted(times.items(), key=lambda kv: (-sum(kv[1]), kv[0])):
        each = 1000 * sum(samples) / len(samples)
        print(
            f"{name:<52} {len(samples) / attaches:>10.2f} {each:>8.2f} {1000 * sum(samples) / attaches:>9.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_attach", description=__doc__)
    parser.add_argument("--attaches", type=int, default=50, help="attaches per series (3 series)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--daemon", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.daemon:
        return run_daemon_profiled(Path(args.daemon[0]), Path(args.daemon[1]))
    profile(args.attaches, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
