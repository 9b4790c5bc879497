"""`python -m bench.profile_reconcile`: where a restart reconcile's time goes.

Sets up what the scale case sets up (a private OVS, N emulated VFs, N
attachments with an R-rule policy each; not timed), converges it once
(untimed), then times a fresh ``coordinator.daemon.build`` on that
programmed switch (the scale case's "restart reconcile, no drift") a few
times, each in a process of its own (a restarted daemon starts with no
memo), with a pyinstrument profile of one more (when pyinstrument is
installed: the `bench` extra). ``--serve`` also times `coordinator serve`
until Health answers (the scale case's daemon start) and reads its RSS
as the scale case does.

``--hold FIFO`` keeps the set-up switch and takes commands from the named
pipe ``FIFO``, one a line: ``measure [DIR]``, ``profile [DIR]``,
``serve [DIR]``, ``quit``; each runs the code as it is now (or the checkout in
``DIR``, e.g. of an earlier commit), so a change is measured again without
setting up a thousand attachments again. Each reconcile's wall and CPU
seconds (of the daemon's side, all threads) also go to ``reconcile-times.log``
in the work directory: on a busy machine CPU seconds compare better. Needs
root, like the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cases.scale import BRIDGE, SETTLE_S, _bridge_flows, _populate, _rss_mb, _serve
from bench.daemon_stack import bench_mapping, toml_text, uplink
from bench.procs import BenchError
from coordinator.certs import DevPki, init_dev_pki
from coordinator.config import Config, load_config
from coordinator.daemon import build
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance, stop_pid
from coordinator.eswitch.emulated import EmulatedEswitch

TIMES_FILE = "reconcile-times.log"  # beside the config: each reconcile's wall and CPU seconds


async def _reconcile(config: Config, bridge_flows: int | None, mgmt: str, *, settle: bool = False) -> float:
    # As the scale case: the emulated backend's veth checks stay off the clock.
    backend = await asyncio.to_thread(EmulatedEswitch, config.eswitch.emulated)
    started = time.perf_counter()
    adapters = await build(config, backend)
    seconds = time.perf_counter() - started
    await adapters.close()
    report = adapters.service.last_converge
    if report is not None and report.corrections and not settle:
        raise BenchError(f"the reconcile corrected {report.corrections} things: not the no-drift case")
    if bridge_flows is not None:
        dump = subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "--no-stats", mgmt],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        if (flows := sum("actions=" in line for line in dump.splitlines())) != bridge_flows:
            raise BenchError(f"reconcile changed the flows: {bridge_flows} -> {flows}")
    return seconds


def _measure(config_path: Path, mgmt: str, flows: int, profile: bool) -> None:
    """One reconcile in this (fresh) process; prints its seconds or its profile."""
    config = load_config(config_path)
    if not profile:
        cpu = time.process_time()
        wall = asyncio.run(_reconcile(config, flows, mgmt))
        cpu = time.process_time() - cpu
        # CPU seconds of the daemon's side (every thread, the flow check
        # after it included), beside the wall time: on a busy machine the
        # wall time mostly measures the others.
        with (config_path.parent / TIMES_FILE).open("a") as out:
            out.write(f"{os.getcwd()} wall {wall:.3f} cpu {cpu:.3f}\n")
        print(f"{wall:.3f}")
        return
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled")
    with profiler:
        asyncio.run(_reconcile(config, flows, mgmt))
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def _in_child(config_path: Path, mgmt: str, flows: int, *, profile: bool, code: str = "") -> str:
    """One reconcile in a process of its own, with the code in ``code``
    (a checkout, e.g. of the previous commit) or this one."""
    argv = [sys.executable, "-m", "bench.profile_reconcile", "--measure", str(config_path),
            "--mgmt", mgmt, "--flows", str(flows), *(["--profile"] if profile else [])]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": code} if code else None
    done = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=code or None, env=env)
    if done.returncode != 0:
        raise BenchError(f"reconcile failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def _times(config_path: Path, mgmt: str, flows: int, reps: int, code: str = "") -> str:
    times = [float(_in_child(config_path, mgmt, flows, profile=False, code=code)) for _ in range(reps)]
    where = f" ({code})" if code else ""
    return f"restart reconcile, no drift{where}: " + ", ".join(f"{t:.3f}" for t in sorted(times)) + " s"


def _serve_once(config_path: Path, config: Config, pki: DevPki, workdir: Path, code: str = "") -> str:
    """`coordinator serve` until Health, with the code in ``code`` (or this
    one), and its resident memory as the scale case measures it."""
    here, path = os.getcwd(), os.environ.get("PYTHONPATH")
    if code:  # the daemon inherits both
        os.chdir(code)
        os.environ["PYTHONPATH"] = code
    try:
        pid, start = _serve(config_path, config, pki, workdir / "coordinator.log")
    finally:
        os.chdir(here)
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path
    try:
        time.sleep(SETTLE_S)
        rss = _rss_mb(pid)
    finally:
        stop_pid(pid)
    where = f" ({code})" if code else ""
    return f"coordinator serve until Health{where}: {start:.2f} s, RSS {rss:.1f} MB"


def profile(attachments: int, rules: int, reps: int, serve: bool, hold: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bfc-reconcile-") as tmp, contextlib.ExitStack() as cleanup:
        workdir = Path(tmp)
        ovs = OvsInstance.start(workdir / "ovs", netns.unique_name("bpr-"))
        cleanup.callback(ovs.stop)
        cleanup.enter_context(uplink(ovs))
        pki = init_dev_pki(workdir / "certs")
        config_path = workdir / "config.toml"
        config_path.write_text(toml_text(bench_mapping(workdir, ovs, BRIDGE, vfs=attachments, pki=pki)))
        config = load_config(config_path)
        backend = EmulatedEswitch(config.eswitch.emulated)
        cleanup.callback(backend.destroy)
        setup = asyncio.run(_populate(ovs, config, backend, attachments, rules))
        # Settle once, untimed, as the scale case's daemon start does (the
        # setup's concurrent applies can leave an attachment to correct).
        asyncio.run(_reconcile(config, None, "", settle=True))
        flows = _bridge_flows(ovs)
        mgmt = ovs.mgmt(BRIDGE)
        print(
            f"setup: {attachments} x {rules} rules in {setup:.1f} s, {flows} flows on the bridge", flush=True
        )
        if serve:
            print(_serve_once(config_path, config, pki, workdir), flush=True)
        print(_times(config_path, mgmt, flows, reps), flush=True)
        print(_in_child(config_path, mgmt, flows, profile=True), flush=True)
        # Writers that come together arrive in one read: one command a line.
        commands: list[str] = []
        while hold is not None:
            if not commands:
                commands = hold.read_text().splitlines()
                continue
            command, _, code = commands.pop(0).strip().partition(" ")
            try:
                if command == "measure":
                    print(_times(config_path, mgmt, flows, reps, code), flush=True)
                elif command == "profile":
                    print(_in_child(config_path, mgmt, flows, profile=True, code=code), flush=True)
                elif command == "serve":
                    print(_serve_once(config_path, config, pki, workdir, code), flush=True)
                elif command == "quit":
                    break
                elif command:
                    print(f"unknown command {command!r}", flush=True)
            except (BenchError, OSError) as exc:
                print(f"failed: {exc}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_reconcile", description=__doc__)
    parser.add_argument("--attachments", type=int, default=256)
    parser.add_argument("--rules", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help="also time `coordinator serve` until Health")
    parser.add_argument("--hold", type=Path, help="a named pipe to take further commands from")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one reconcile of this config
    parser.add_argument("--mgmt", default="", help=argparse.SUPPRESS)
    parser.add_argument("--flows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        _measure(args.measure, args.mgmt, args.flows, args.profile)
        return 0
    profile(args.attachments, args.rules, args.reps, args.serve, args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
