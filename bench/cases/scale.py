"""Case 6: many attachments with a policy each.

Setup (not a headline): a private OVS, N emulated VFs, dev certificates
and a config; the representor ports plugged in one OVSDB transaction;
the daemon's service, in-process, attaches N sandboxes and applies an
R-rule policy to each. Then:

- daemon RSS: the daemon process (`coordinator serve`) started on that
  state, once it answers Health over mTLS (its start-up has converged the
  switch to the store);
- total flows on the bridge;
- restart reconcile with no drift: a fresh ``coordinator.daemon.build``
  on the programmed switch, timed - its ``service.start()`` converges the
  switch to the store - and checked to have changed no flow;
- re-program after an ovs-vswitchd restart: vswitchd stopped and started
  (flows gone, ports back from OVSDB), then the time until every flow is
  back (checked).

Not `dev up`: its daemon must answer within 30 s, and with a thousand
VFs the emulated eswitch alone takes longer to check its veth pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.daemon_stack import HOST, bench_mapping, toml_text, uplink
from bench.policies import n_rule_scope
from bench.procs import BenchError, count_flows, run
from coordinator.certs import DevPki, init_dev_pki
from coordinator.client import CoordinatorClient, TlsFiles
from coordinator.config import Config, load_config
from coordinator.daemon import Adapters, build
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance, pid_alive, stop_pid
from coordinator.eswitch.base import DeviceKind
from coordinator.eswitch.emulated import EmulatedEswitch
from coordinator.progress import Activity, counted
from coordinator.service import AttachParams

BRIDGE = "br-scale"
SETUP_CONCURRENCY = 4
DAEMON_START_TIMEOUT_S = 900.0
SETTLE_S = 2.0


@dataclass(frozen=True)
class ScaleResults:
    attachments: int
    rules: int
    setup_s: float  # in-process attach + apply of every attachment
    daemon_start_s: float  # `coordinator serve` until Health answers
    rss_mb: float
    total_flows: int
    reconcile_s: float
    reprogram_s: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def _bridge_flows(ovs: OvsInstance) -> int:
    dump = run(["ovs-ofctl", "-O", "OpenFlow13", "--no-names", "dump-flows", "--no-stats", ovs.mgmt(BRIDGE)])
    return count_flows(dump)


async def _populate(
    ovs: OvsInstance, config: Config, backend: EmulatedEswitch, count: int, rules: int
) -> float:
    adapters = await build(config, backend)
    # Every port added to a userspace-datapath bridge costs ovs-vswitchd
    # time that grows with the ports already there: plugged one by one, a
    # thousand take minutes. Plug them all in one transaction; each Attach
    # then finds its port (may_exist) and only tags it as ours.
    plug: list[str] = []
    for slot in backend.inventory()[:count]:
        plug += ["--", "--may-exist", "add-port", BRIDGE, slot.representor]
    await asyncio.to_thread(ovs.vsctl, *plug, timeout=600)
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    scope = n_rule_scope(rules)

    done = 0
    # On a terminal: how many of the N are attached with their policy.
    activity = Activity()

    async def one(i: int) -> None:
        nonlocal done
        sandbox = f"scale-{i}"
        async with gate:
            params = AttachParams(sandbox, "bench-host", f"req-{sandbox}", DeviceKind.VF, "", "BASELINE")
            await adapters.service.attach(HOST, params)
            await adapters.service.apply_policy(sandbox, scope)
        done += 1
        activity.update(counted("scale: attached with policy", done, count))

    started = time.perf_counter()
    try:
        with activity:
            await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await adapters.close()
    return time.perf_counter() - started


def _serve(config_path: Path, config: Config, pki: DevPki, log: Path) -> tuple[int, float]:
    """Start `coordinator serve` on the populated state; (pid, seconds until Health answers)."""
    started = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "serve", "--config", str(config_path)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    tls = TlsFiles(pki.ca_cert, pki.admin_cert, pki.admin_key)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    while True:
        if not pid_alive(proc.pid):
            raise BenchError(f"the daemon exited during start-up; see {log}")
        try:
            with CoordinatorClient(config.server.listen, tls, timeout=30) as client:
                client.health()
            return proc.pid, time.perf_counter() - started
        except Exception as exc:
            if time.monotonic() > deadline:
                stop_pid(proc.pid)
                raise BenchError(f"the daemon did not answer within {DAEMON_START_TIMEOUT_S}s") from exc
            time.sleep(0.5)


async def reprogram_after_vswitchd_restart(adapters: Adapters) -> None:
    """What the daemon's switch watch runs once it sees ovs-vswitchd lost
    our flows: re-program the whole switch from the store."""
    await adapters.service.reconverge("ovs-restart")


async def _reconcile_and_reprogram(
    config: Config, ovs: OvsInstance, expected_flows: int
) -> tuple[float, float]:
    # Building the emulated backend checks every veth pair: an emulation
    # cost a real eswitch does not have, so it stays outside the clock.
    backend = await asyncio.to_thread(EmulatedEswitch, config.eswitch.emulated)
    started = time.perf_counter()
    adapters = await build(config, backend)
    reconcile = time.perf_counter() - started
    try:
        if (flows := _bridge_flows(ovs)) != expected_flows:
            raise BenchError(f"reconcile changed the flows: {expected_flows} -> {flows}")
        await asyncio.to_thread(ovs.stop_vswitchd)
        await asyncio.to_thread(ovs.start_vswitchd)
        started = time.perf_counter()
        await reprogram_after_vswitchd_restart(adapters)
        reprogram = time.perf_counter() - started
        if (flows := _bridge_flows(ovs)) != expected_flows:
            raise BenchError(f"re-program after vswitchd restart: {flows} flows, expected {expected_flows}")
    finally:
        await adapters.close()
    return reconcile, reprogram


def run_scale_case(workdir: Path, attachments: int, rules: int, progress: Any) -> ScaleResults:
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        ovs = OvsInstance.start(workdir / "ovs", netns.unique_name("bps-"))
        cleanup.callback(ovs.stop)
        cleanup.enter_context(uplink(ovs))
        pki = init_dev_pki(workdir / "certs")
        config_path = workdir / "config.toml"
        config_path.write_text(toml_text(bench_mapping(workdir, ovs, BRIDGE, vfs=attachments, pki=pki)))
        config = load_config(config_path)
        progress(f"scale: {attachments} emulated VFs (veth pairs, guest namespaces)")
        backend = EmulatedEswitch(config.eswitch.emulated)
        cleanup.callback(backend.destroy)
        progress(f"scale: {attachments} attachments x {rules} rules (setup)")
        setup = asyncio.run(_populate(ovs, config, backend, attachments, rules))
        progress("scale: the daemon process on that state")
        pid, start = _serve(config_path, config, pki, workdir / "coordinator.log")
        try:
            time.sleep(SETTLE_S)
            rss = _rss_mb(pid)
            flows = _bridge_flows(ovs)
        finally:
            stop_pid(pid)
        progress("scale: restart reconcile, then ovs-vswitchd restart")
        reconcile, reprogram = asyncio.run(_reconcile_and_reprogram(config, ovs, flows))
    return ScaleResults(attachments, rules, setup, start, rss, flows, reconcile, reprogram)
