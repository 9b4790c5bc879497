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
  back (checked); beside it the same flows as one raw ``ovs-ofctl --bundle
  add-flows`` after the same restart. The two take turns three times and
  each side's median counts.
- stale deny-all: every zone filled with connections from the uplink (TCP
  SYNs the policy admits, committed to conntrack), the gateway stream
  reported down, and the daemon's own staleness watch (``on_stale =
  "deny-all"``) left to act; the time from the stale threshold until every
  attachment is cut (its drops installed) and recorded STALE, and until
  their connections are flushed too; beside it, the cut's bundle alone and
  the replacement of every attachment's flows by deny-all's (what follows
  the cut) as raw ovs-ofctl bundles.

Not `dev up`: its daemon must answer within 30 s, and with a thousand
VFs the emulated eswitch alone takes longer to check its veth pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.daemon_stack import HOST, bench_mapping, toml_text, uplink
from bench.policies import n_rule_scope
from bench.procs import BenchError, count_flows, run
from coordinator.attachment_identity import cookie_for_slot
from coordinator.certs import DevPki, init_dev_pki
from coordinator.client import CoordinatorClient, TlsFiles
from coordinator.config import Config, load_config
from coordinator.daemon import Adapters, build
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance, pid_alive, stop_pid
from coordinator.eswitch.base import DeviceKind
from coordinator.eswitch.emulated import EmulatedEswitch
from coordinator.flows.classes import load_network_classes
from coordinator.flows.pipeline import load_pipeline
from coordinator.flows.render import render_flows
from coordinator.gateway.client import StreamStatus
from coordinator.gateway.policy_stream import PolicyStreamHandler
from coordinator.progress import Activity, counted
from coordinator.service import DENY_ALL_CLASS, AttachmentService, AttachParams
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState

BRIDGE = "br-scale"
SETUP_CONCURRENCY = 4
DAEMON_START_TIMEOUT_S = 900.0
SETTLE_S = 2.0
LOAD_SCRIPT = Path(__file__).resolve().parent.parent / "conntrack_load.py"
STALE_THRESHOLD_MS = 1000
REPROGRAM_ROUNDS = 3
_TOTAL_RE = re.compile(r"Total:\s*(\d+)")


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
    reprogram_floor_s: float  # the same flows as one raw ovs-ofctl --bundle add-flows after a restart
    stale_connections: int  # conntrack entries in the attachments' zones when the stream went stale
    stale_cut_s: float  # stale threshold -> every attachment deny-all and recorded STALE
    stale_flushed_s: float  # stale threshold -> their connections flushed as well
    stale_floor_s: float  # the cut's bundle alone (the drops), as a raw ovs-ofctl bundle
    stale_replace_floor_s: float  # every attachment's flows replaced by deny-all's, as a raw bundle

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
            # The work directory goes with the case: the reason, in the error.
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"the daemon exited during start-up: {' | '.join(tail)[-600:]}")
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


def _dumped_flows(ovs: OvsInstance) -> list[str]:
    dump = run(["ovs-ofctl", "-O", "OpenFlow13", "--no-names", "dump-flows", "--no-stats", ovs.mgmt(BRIDGE)])
    return [line.strip() for line in dump.splitlines() if "actions=" in line]


def _add_flows_floor(ovs: OvsInstance, flows: list[str]) -> float:
    """Seconds one raw ``ovs-ofctl --bundle add-flows`` of ``flows`` takes
    (the file written beforehand): what the switch alone takes for them."""
    path = ovs.rundir / "reprogram.flows"
    path.write_text("".join(f"{line}\n" for line in flows))
    started = time.perf_counter()
    argv = [
        "ovs-ofctl",
        "-O",
        "OpenFlow13",
        "--no-names",
        "--bundle",
        "add-flows",
        ovs.mgmt(BRIDGE),
        str(path),
    ]
    run(argv, timeout=600)
    return time.perf_counter() - started


async def _reconcile_and_reprogram(
    config: Config, ovs: OvsInstance, expected_flows: int
) -> tuple[float, float, float]:
    # Building the emulated backend checks every veth pair: an emulation
    # cost a real eswitch does not have, so it stays outside the clock.
    backend = await asyncio.to_thread(EmulatedEswitch, config.eswitch.emulated)
    started = time.perf_counter()
    adapters = await build(config, backend)
    reconcile = time.perf_counter() - started
    ours: list[float] = []
    floors: list[float] = []
    try:
        if (flows := _bridge_flows(ovs)) != expected_flows:
            raise BenchError(f"reconcile changed the flows: {expected_flows} -> {flows}")
        installed: list[str] = []
        # Each side is timed REPROGRAM_ROUNDS times, the daemon and the raw
        # bundle taking turns, and each side's median counts: one sample of
        # a dozen seconds moves by a tenth from run to run on this machine.
        for _ in range(REPROGRAM_ROUNDS):
            await asyncio.to_thread(ovs.stop_vswitchd)
            await asyncio.to_thread(ovs.start_vswitchd)
            started = time.perf_counter()
            await reprogram_after_vswitchd_restart(adapters)
            ours.append(time.perf_counter() - started)
            if (flows := _bridge_flows(ovs)) != expected_flows:
                raise BenchError(
                    f"re-program after vswitchd restart: {flows} flows, expected {expected_flows}"
                )
            # The floor: the very flows the daemon installed, right after the
            # same restart, as one raw bundle (the channel sees the restart
            # too and stays out of the way; nothing re-programs meanwhile).
            installed = installed or await asyncio.to_thread(_dumped_flows, ovs)
            await asyncio.to_thread(ovs.stop_vswitchd)
            await asyncio.to_thread(ovs.start_vswitchd)
            floors.append(await asyncio.to_thread(_add_flows_floor, ovs, installed))
            if (flows := _bridge_flows(ovs)) != expected_flows:
                raise BenchError(
                    f"raw add-flows after vswitchd restart: {flows} flows, expected {expected_flows}"
                )
    finally:
        await adapters.close()
    return reconcile, statistics.median(ours), statistics.median(floors)


class _TransitionDone(logging.Handler):
    """Notices the service's log line that ends a stale transition."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = asyncio.Event()
        self.phases: dict[str, object] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "policy STALE":
            self.phases = {
                k: getattr(record, k, None) for k in ("attachments", "cut_ms", "recorded_ms", "done_ms")
            }
            self.seen.set()


def _connections(ovs: OvsInstance) -> int:
    match = _TOTAL_RE.search(ovs.appctl("dpctl/ct-stats-show"))
    return int(match.group(1)) if match else 0


async def _stale_deny_all(
    config: Config, ovs: OvsInstance, uplink_ns: str, per_attachment: int, progress: Any
) -> tuple[int, float, float, float, float]:
    """(connections, threshold -> all cut and STALE, threshold -> flushed,
    the cut's bundle alone and the replacement by deny-all as raw
    ovs-ofctl bundles)."""
    backend = await asyncio.to_thread(EmulatedEswitch, config.eswitch.emulated)
    adapters = await build(config, backend)
    try:
        service = adapters.service
        bound = await service.list_all()
        load = [sys.executable, str(LOAD_SCRIPT), "eth0", str(per_attachment), *(r.mac for r in bound)]
        await asyncio.to_thread(netns.set_link, uplink_ns, "eth0")
        await asyncio.to_thread(netns.run_in_netns, uplink_ns, load, timeout=600)
        await asyncio.sleep(1.0)  # the switch works through its queues
        connections = await asyncio.to_thread(_connections, ovs)
        policy = dataclasses.replace(
            config.policy, on_stale="deny-all", stale_threshold_ms=STALE_THRESHOLD_MS
        )
        handler = PolicyStreamHandler(service, policy)
        done = _TransitionDone()
        service_log = logging.getLogger("coordinator.service")
        level, propagate = service_log.level, service_log.propagate
        service_log.addHandler(done)
        service_log.setLevel(logging.INFO)
        service_log.propagate = False  # its INFO lines are for the handler only
        status = StreamStatus(connected=False, down_since=time.monotonic())
        threshold = status.down_since + STALE_THRESHOLD_MS / 1000  # type: ignore[operator]
        watch = asyncio.ensure_future(handler.watch_staleness(lambda: status))
        try:
            while not all(
                r.policy_state is PolicyState.STALE
                for r in await adapters.store.list_attachments(state=AttachmentState.BOUND)
            ):
                await asyncio.sleep(0.005)
            cut = time.monotonic() - threshold
            while await asyncio.to_thread(_connections, ovs) > 0:
                await asyncio.sleep(0.01)
            flushed = time.monotonic() - threshold
            # Let the transition finish (read-back, meters) before the service goes.
            await asyncio.wait_for(done.seen.wait(), 600)
        finally:
            watch.cancel()
            service_log.removeHandler(done)
            service_log.setLevel(level)
            service_log.propagate = propagate
        progress(f"scale: stale transition as the service timed it: {done.phases}")
        # Every attachment holds exactly its deny-all flows (what the daemon verified).
        if (flows := _bridge_flows(ovs)) != service.dataplane.installed_flows():
            raise BenchError(
                f"after the stale deny-all: {flows} flows, {service.dataplane.installed_flows()} expected"
            )
        replace_floor = await asyncio.to_thread(_replace_floor, ovs, service, bound)
        floor = await asyncio.to_thread(_cut_floor, ovs, service, bound)
    finally:
        await adapters.close()
    return connections, cut, flushed, floor, replace_floor


def _replace_floor(ovs: OvsInstance, service: AttachmentService, bound: list[AttachmentRecord]) -> float:
    """The bundle that follows the cut (each cookie's flows deleted, the
    deny-all flows added), as a raw ``ovs-ofctl bundle``."""
    deny_all = load_network_classes()[DENY_ALL_CLASS]
    lines = []
    for record in bound:
        lines.append(f"flow delete cookie={cookie_for_slot(record.slot):#x}/-1")
        flows = render_flows(
            service.dataplane.desired_flows(record, record.ofport, deny_all), load_pipeline()
        )
        lines += [f"flow add {f}" for f in flows]
    return _raw_bundle(ovs, "stale-replace.bundle", lines)


def _cut_floor(ovs: OvsInstance, service: AttachmentService, bound: list[AttachmentRecord]) -> float:
    """The same bundle the cut sends (two drops per attachment added), as a
    raw ``ovs-ofctl bundle``: what the switch alone takes for it."""
    flows = [f for record in bound for f in service.dataplane.cut_flows(record)]
    lines = [f"flow add {f}" for f in render_flows(flows, load_pipeline())]
    return _raw_bundle(ovs, "stale-cut.bundle", lines)


def _raw_bundle(ovs: OvsInstance, name: str, lines: list[str]) -> float:
    """Seconds ``ovs-ofctl bundle`` takes for ``lines``, from a file written beforehand."""
    path = ovs.rundir / name
    path.write_text("".join(f"{line}\n" for line in lines))
    started = time.perf_counter()
    run(["ovs-ofctl", "-O", "OpenFlow13", "--no-names", "bundle", ovs.mgmt(BRIDGE), str(path)], timeout=600)
    return time.perf_counter() - started


def run_scale_case(
    workdir: Path, attachments: int, rules: int, progress: Any, connections: int = 100
) -> ScaleResults:
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        ovs = OvsInstance.start(workdir / "ovs", netns.unique_name("bps-"))
        cleanup.callback(ovs.stop)
        uplink_ns = cleanup.enter_context(uplink(ovs))
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
        reconcile, reprogram, reprogram_floor = asyncio.run(_reconcile_and_reprogram(config, ovs, flows))
        progress(f"scale: stale deny-all with {connections} connections per attachment")
        stale = asyncio.run(_stale_deny_all(config, ovs, uplink_ns, connections, progress))
    return ScaleResults(
        attachments, rules, setup, start, rss, flows, reconcile, reprogram, reprogram_floor, *stale
    )
