"""Crash safety, proven by killing the real daemon: for every fault-injection
point of attach, detach and policy apply, the daemon is SIGKILLed exactly
there, restarted, and the invariants of ``invariants.py`` must hold, while
a guest probes across the crash: the port its policy denies never answers,
the allowed one keeps answering (flows outlive the daemon)."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from coordinator import faults
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.attachment_identity import cookie_for_slot
from coordinator.client import CoordinatorClient, RetryPolicy
from coordinator.config import load_config
from coordinator.dev import env, netns
from coordinator.dev.ovs_instance import OvsInstance, pid_alive
from coordinator.eswitch.base import DeviceKind
from coordinator.eswitch.emulated import EmulatedEswitch
from tests.conftest import require_ovs
from tests.integration import invariants
from tests.integration.stack import NETPROBE, SERVER_V4, probe_tcp

pytestmark = pytest.mark.ovs

STEADY_GUEST = "198.51.100.20"
VICTIM_GUEST = "198.51.100.21"
ALLOWED, DENIED = 80, 8080


def policy(version: int, address: str, ports: list[int]) -> dict[str, object]:
    return {
        "version": version,
        "addresses": [address],
        "egress": [{"name": "web", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP",
                    "cidrs": [f"{SERVER_V4}/32"], "ports": [{"start": p} for p in ports]}],
    }  # fmt: skip


class Lab:
    """A dev environment with the reference gateway, a test server on the
    uplink, and one steady sandbox whose guest probes across every crash."""

    def __init__(self, workdir: Path, endpoint: env.Endpoint) -> None:
        self.workdir = workdir
        self.endpoint = endpoint
        self.server: subprocess.Popen[str] | None = None
        self.steady: pb.Attachment | None = None

    def write_policy(self, sandbox: str, body: dict[str, object]) -> None:
        path = Path(self.endpoint.policies_dir) / f"{sandbox}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(body))
        tmp.rename(path)

    def host(self) -> CoordinatorClient:
        # No client retries: these tests are about the daemon, and a call the
        # crash cut short must fail right there.
        return CoordinatorClient(
            self.endpoint.coordinator, self.endpoint.host_tls(), timeout=20, retry=RetryPolicy(attempts=1)
        )

    def guest(self, attachment: pb.Attachment, address: str) -> str:
        ns = self.endpoint.guest_netns_prefix + attachment.device.representor
        netns.run_in_netns(ns, ["ip", "address", "replace", f"{address}/24", "dev", "eth0"])
        netns.run_in_netns(ns, ["ip", "route", "replace", "default", "via", "198.51.100.1"])
        return ns

    def daemon_pid(self) -> int:
        return self.endpoint.daemon_pid

    def kill_daemon(self) -> None:
        pid = self.daemon_pid()
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        wait_dead(pid)

    def start_with_fault(self, point: str, *, wait: bool = True) -> None:
        self.kill_daemon()
        pid = env.start_daemon(self.workdir, Path(self.endpoint.config), {faults.ENV_VAR: f"{point}=kill"})
        self.endpoint = dataclasses.replace(self.endpoint, daemon_pid=pid)
        if wait:
            self.endpoint = env.dev_up(self.workdir)  # waits until it answers

    def restart(self) -> None:
        """After the crash: a plain start, which must converge."""
        wait_dead(self.daemon_pid())
        self.endpoint = env.dev_up(self.workdir)


def wait_dead(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), f"process {pid} still alive"


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


class Prober(threading.Thread):
    """Probes the allowed and the denied port from a guest until stopped."""

    def __init__(self, ns: str) -> None:
        super().__init__(daemon=True)
        self.ns = ns
        self.allowed_ok = 0
        self.allowed_failed = 0
        self.denied_passed = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            if probe_tcp(self.ns, SERVER_V4, DENIED, timeout=0.3):
                self.denied_passed += 1
            if probe_tcp(self.ns, SERVER_V4, ALLOWED, timeout=1.0):
                self.allowed_ok += 1
            else:
                self.allowed_failed += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_ovs()
    workdir = tmp_path_factory.mktemp("crash")
    knobs = env.PolicyKnobs(initial_policy_timeout_ms=5000)
    endpoint = env.dev_up(workdir, vfs=4, sfs=4, gateway=True, knobs=knobs)
    setup = Lab(workdir, endpoint)
    try:
        netns.add_address(endpoint.uplink_netns, "lo", f"{SERVER_V4}/32")
        setup.server = netns.popen_in_netns(
            endpoint.uplink_netns,
            [sys.executable, NETPROBE, "serve", "--tcp", f"{ALLOWED},{DENIED}"],
            stdin=subprocess.PIPE,
        )
        assert setup.server.stdout is not None and setup.server.stdout.readline().strip() == "ready"
        setup.write_policy("steady", policy(1, STEADY_GUEST, [ALLOWED]))
        setup.write_policy("victim", policy(1, VICTIM_GUEST, [ALLOWED]))
        with setup.host() as host:
            setup.steady = host.attach("steady", "hi-1", "req-steady", device_kind=pb.DEVICE_KIND_VF)
        ns = setup.guest(setup.steady, STEADY_GUEST)
        assert probe_tcp(ns, SERVER_V4, ALLOWED) and not probe_tcp(ns, SERVER_V4, DENIED, timeout=0.5)
        yield setup
    finally:
        if setup.server is not None:
            setup.server.kill()
            setup.server.wait()
        env.dev_down(workdir)


def _victims(lab: Lab) -> list[pb.Attachment]:
    with lab.host() as host:
        return [a for a in host.list(sandbox_id="victim")]


def _clear_victims(lab: Lab) -> None:
    with lab.host() as host:
        for attachment in _victims(lab):
            host.detach(attachment.attachment_id, attachment.lease_generation)


def _expect_crash(call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), caught.value


def _crash_at(lab: Lab, point: str) -> None:
    """Drive the operation that reaches ``point`` against a daemon that
    SIGKILLs itself there."""
    if point.startswith("attach."):
        lab.start_with_fault(point)
        with lab.host() as host:
            _expect_crash(
                lambda: host.attach("victim", "hi-1", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_VF)
            )
    elif point.startswith("detach."):
        lab.start_with_fault(point)
        with lab.host() as host:
            victim = host.attach("victim", "hi-1", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_SF)
            _expect_crash(lambda: host.detach(victim.attachment_id, victim.lease_generation))
    else:  # policy.*: an update of the victim's policy reaches it
        # The new process is sent the policy as soon as it connects.
        with lab.host() as host:
            host.attach("victim", "hi-1", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_VF)
        lab.kill_daemon()
        lab.write_policy("victim", policy(2, VICTIM_GUEST, [ALLOWED, 443]))
        lab.start_with_fault(point, wait=False)
    wait_dead(lab.daemon_pid())


@pytest.mark.parametrize("point", faults.POINTS)
def test_sigkill_at_each_fault_point_converges(lab: Lab, point: str) -> None:
    assert lab.steady is not None
    _clear_victims(lab)
    lab.write_policy("victim", policy(1, VICTIM_GUEST, [ALLOWED]))
    before = invariants.fences(lab.endpoint)
    prober = Prober(lab.endpoint.guest_netns_prefix + lab.steady.device.representor)
    prober.start()
    try:
        _crash_at(lab, point)
        time.sleep(0.5)  # probes while the daemon is dead
        lab.restart()
        if point.startswith("policy."):
            # The gateway re-sends the victim's policy to the new process.
            assert eventually(lambda: all(a.policy.version == 2 for a in _victims(lab)))
    finally:
        prober.stop()
    assert prober.denied_passed == 0, "a denied packet passed across the crash"
    assert prober.allowed_ok > 0
    found = invariants.check(lab.endpoint, before)
    steady = [r for r in found if r.sandbox_id == "steady"]
    assert [r.attachment_id for r in steady] == [lab.steady.attachment_id]
    victims = [r for r in found if r.sandbox_id == "victim"]
    if point in ("attach.bound", "detach.marked", "detach.flows_removed", "detach.port_removed",
                 "detach.device_released"):  # fmt: skip
        # attach.bound: committed before the crash, so it stays; detach.*:
        # the host asked for it to go, and the restart finished the job.
        assert len(victims) == (1 if point == "attach.bound" else 0)
    elif point.startswith("attach."):
        assert victims == []  # the host never got an answer: rolled back
    else:
        assert len(victims) == 1
    print(f"[crash] {point}: converged; steady guest allowed {prober.allowed_ok} ok / "
          f"{prober.allowed_failed} failed, denied passed {prober.denied_passed}")  # fmt: skip


def _events(lab: Lab, since: int, types: set[str]) -> list[pb.AttachmentEvent]:
    with CoordinatorClient(lab.endpoint.coordinator, lab.endpoint.admin_tls(), timeout=20) as admin:
        last = max(invariants.last_event_seq(lab.endpoint), since)
        found = []
        if last == since:
            return found
        for event in admin.watch(since, timeout=5, resume=False):
            if event.condition.type in types:
                found.append(event)
            if event.seq >= last:
                break
        return found


def test_restart_removes_orphans_and_repairs_drift(lab: Lab) -> None:
    """While the daemon is down: a port with our owner tag and no attachment,
    flows of a slot nobody holds, an SF prepared for nobody, and the steady
    attachment's flows tampered with. The restart corrects each, with a
    drift event, and the steady guest's traffic is enforced throughout."""
    assert lab.steady is not None
    _clear_victims(lab)
    before = invariants.fences(lab.endpoint)
    since = invariants.last_event_seq(lab.endpoint)
    lab.kill_daemon()
    ovs = invariants.ovs_of(lab.endpoint)
    netns.create_veth_pair("bfc-orphan", ovs.netns, "bfc-orphan-p", ovs.netns)
    ovs.vsctl("add-port", lab.endpoint.bridge, "bfc-orphan", "--", "set", "Port", "bfc-orphan",
              "external_ids:bluefield-coordinator-owner=bluefield-coordinator",
              "external_ids:bluefield-coordinator-attachment-id=gone")  # fmt: skip
    stray = cookie_for_slot(4000)
    ovs.ofctl("add-flow", ovs.mgmt(lab.endpoint.bridge), f"cookie={stray:#x},table=0,priority=1,actions=drop")
    ovs.ofctl(
        "add-meter",
        ovs.mgmt(lab.endpoint.bridge),
        "meter=4001,kbps,burst,band=type=drop,rate=1000,burst_size=64",
    )
    config = load_config(Path(lab.endpoint.config))
    backend = EmulatedEswitch(config.eswitch.emulated)
    sf = next(s for s in backend.inventory() if s.kind is DeviceKind.SF)
    backend.prepare(sf, "02:00:00:00:00:99")
    steady_cookie = cookie_for_slot(
        next(r.slot for r in invariants.rows(lab.endpoint) if r.sandbox_id == "steady")
    )
    steady_flows = invariants.our_flows(lab.endpoint)[steady_cookie]
    victim_flow = next((f for f in steady_flows if "tp_dst=80" in f), steady_flows[-1])
    ovs.ofctl("del-flows", "--strict", ovs.mgmt(lab.endpoint.bridge),
              invariants.flow_match(victim_flow) + f",cookie={steady_cookie:#x}/-1")  # fmt: skip
    ovs.ofctl("add-flow", ovs.mgmt(lab.endpoint.bridge),
              f"cookie={steady_cookie:#x},table=0,priority=2,ip,nw_src=203.0.113.99,actions=drop")  # fmt: skip
    lab.restart()
    invariants.check(lab.endpoint, before)
    reasons = sorted(e.condition.reason for e in _events(lab, since, {"DpuDriftCorrected"}))
    assert reasons == [
        "FlowsRepaired",
        "OrphanDeviceReleased",
        "OrphanFlowsRemoved",
        "OrphanMeterRemoved",
        "OrphanPortRemoved",
    ]
    ns = lab.endpoint.guest_netns_prefix + lab.steady.device.representor
    assert probe_tcp(ns, SERVER_V4, ALLOWED) and not probe_tcp(ns, SERVER_V4, DENIED, timeout=0.5)
    netns.run_in_netns(ovs.netns, ["ip", "link", "del", "bfc-orphan"], check=False)


def test_ovs_vswitchd_restart_is_recovered(lab: Lab) -> None:
    """ovs-vswitchd killed and restarted under the running daemon: attaches
    are refused with UNAVAILABLE meanwhile, then every flow is back and the
    policy enforced again. The recovery time is printed (no assertion)."""
    assert lab.steady is not None
    _clear_victims(lab)
    before = invariants.fences(lab.endpoint)
    ovs = invariants.ovs_of(lab.endpoint)
    ns = lab.endpoint.guest_netns_prefix + lab.steady.device.representor
    pid = ovs.vswitchd_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    killed = time.monotonic()
    with lab.host() as host:
        assert eventually(lambda: _attach_refused(host), timeout=10)
    ovs.start_vswitchd()
    restarted = time.monotonic()
    assert eventually(lambda: probe_tcp(ns, SERVER_V4, ALLOWED, timeout=0.5), timeout=30)
    enforced = time.monotonic()
    assert not probe_tcp(ns, SERVER_V4, DENIED, timeout=0.5)
    assert eventually(lambda: _healthy(lab), timeout=10)
    invariants.check(lab.endpoint, before)
    print(f"[ovs-restart] traffic enforced again {enforced - restarted:.2f}s after ovs-vswitchd came back "
          f"({enforced - killed:.2f}s after it was killed)")  # fmt: skip


def test_ports_renumbered_under_the_daemon_are_followed(lab: Lab) -> None:
    """OpenFlow port numbers are not fixed: after an ovs-vswitchd restart a
    port can come back under another number (a port added while it was down
    may take the old one first). Here the uplink and the steady guest's
    representor are moved by hand; the daemon must notice and re-program,
    so the policy is enforced on the new numbers."""
    assert lab.steady is not None
    _clear_victims(lab)
    before = invariants.fences(lab.endpoint)
    ovs = invariants.ovs_of(lab.endpoint)
    ns = lab.endpoint.guest_netns_prefix + lab.steady.device.representor
    assert probe_tcp(ns, SERVER_V4, ALLOWED, timeout=2)
    for name, number in (("uplink", "4711"), (lab.steady.device.representor, "4712")):
        ovs.vsctl("set", "Interface", name, f"ofport_request={number}")
    assert ovs.vsctl("get", "Interface", "uplink", "ofport").strip() == "4711"
    assert eventually(lambda: probe_tcp(ns, SERVER_V4, ALLOWED, timeout=0.5), timeout=15)
    assert not probe_tcp(ns, SERVER_V4, DENIED, timeout=0.5)
    flows = ovs.ofctl("dump-flows", lab.endpoint.bridge)
    assert "output:4711" in flows and "in_port=4712" in flows
    assert eventually(lambda: _healthy(lab), timeout=10)
    invariants.check(lab.endpoint, before)


def _attach_refused(host: CoordinatorClient) -> bool:
    try:
        attachment = host.attach("victim", "hi-1", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_VF)
    except grpc.RpcError as exc:
        return exc.code() is grpc.StatusCode.UNAVAILABLE
    host.detach(attachment.attachment_id, attachment.lease_generation)
    return False


def _healthy(lab: Lab) -> bool:
    with CoordinatorClient(lab.endpoint.coordinator, lab.endpoint.admin_tls(), timeout=10) as admin:
        return bool(admin.health().healthy)


def test_host_reconcile_advisory_authoritative_and_takeover(lab: Lab) -> None:
    assert lab.steady is not None
    _clear_victims(lab)
    with lab.host() as host:
        kept = host.attach("victim", "hi-1", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_VF)
        orphan = host.attach("victim", "hi-1", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_SF)
        known = [
            pb.KnownAttachment(attachment_id=kept.attachment_id, lease_generation=kept.lease_generation,
                               sandbox_id="victim"),
            pb.KnownAttachment(attachment_id="never-was", lease_generation=1, sandbox_id="victim"),
            pb.KnownAttachment(attachment_id=lab.steady.attachment_id, lease_generation=7, sandbox_id="steady"),
        ]  # fmt: skip
        # ADVISORY (the default): a report, nothing changes.
        report = host.reconcile("hi-1", pb.RECONCILE_MODE_ADVISORY, known)
        assert [a.attachment_id for a in report.matched] == [kept.attachment_id]
        assert report.matched[0].lease_generation == kept.lease_generation  # same instance: no takeover
        assert [k.attachment_id for k in report.host_only] == ["never-was"]
        assert [k.attachment_id for k in report.stale_generation] == [lab.steady.attachment_id]
        assert {a.attachment_id for a in report.coordinator_only} == {orphan.attachment_id}
        assert not report.released
        assert len(_victims(lab)) == 2
        # A new host instance, AUTHORITATIVE: takes the known ones over (the
        # generation goes up) and releases the one it does not know.
        steady = next(a for a in host.list(sandbox_id="steady"))
        known = [known[0], pb.KnownAttachment(attachment_id=steady.attachment_id,
                                              lease_generation=steady.lease_generation, sandbox_id="steady")]  # fmt: skip
        report = host.reconcile("hi-2", pb.RECONCILE_MODE_AUTHORITATIVE, known)
        taken = {a.attachment_id: a for a in report.matched}
        assert set(taken) == {kept.attachment_id, steady.attachment_id}
        assert taken[kept.attachment_id].lease_generation == kept.lease_generation + 1
        assert taken[kept.attachment_id].host_instance_id == "hi-2"
        assert list(report.released) == [orphan.attachment_id]
        assert [a.attachment_id for a in _victims(lab)] == [kept.attachment_id]
        lab.steady = taken[steady.attachment_id]
        # The old instance's Detach with its generation is fenced off.
        with pytest.raises(grpc.RpcError) as caught:
            host.detach(kept.attachment_id, kept.lease_generation)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "stale lease generation" in (caught.value.details() or "")
        current = taken[kept.attachment_id]
        assert host.detach(current.attachment_id, current.lease_generation)


STORM_ROUNDS = int(os.environ.get("STORM_ROUNDS", "3"))
STORM_CLIENTS = int(os.environ.get("STORM_CLIENTS", "4"))


class StormClient(threading.Thread):
    """Attaches and detaches as fast as it can until the daemon dies."""

    def __init__(self, lab: Lab, index: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.lab, self.index = lab, index
        self.random = random.Random(seed)
        self.done = 0
        self.refused: dict[str, int] = {}

    def run(self) -> None:
        with self.lab.host() as host:
            held: list[pb.Attachment] = []
            while True:
                try:
                    if held and (len(held) > 1 or self.random.random() < 0.5):
                        gone = held.pop(self.random.randrange(len(held)))
                        host.detach(gone.attachment_id, gone.lease_generation)
                    else:
                        kind = self.random.choice(
                            [pb.DEVICE_KIND_VF, pb.DEVICE_KIND_SF, pb.DEVICE_KIND_UNSPECIFIED]
                        )
                        held.append(host.attach(f"storm-{self.index}", "hi-storm", f"req-{uuid.uuid4()}",
                                                device_kind=kind, initial_policy=pb.INITIAL_POLICY_BASELINE))  # fmt: skip
                    self.done += 1
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                        return  # the daemon is gone
                    self.refused[code.name] = self.refused.get(code.name, 0) + 1
                    if code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    time.sleep(0.05)  # the pool is small: let the others detach


def test_storm_of_clients_with_sigkill_at_random_moments(lab: Lab) -> None:
    """STORM_CLIENTS clients attach and detach concurrently; the daemon is
    SIGKILLed at a random moment and restarted; STORM_ROUNDS times. The
    invariants hold after every restart (``make soak`` runs it longer)."""
    _clear_victims(lab)
    seed = int(os.environ.get("STORM_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    for round_ in range(STORM_ROUNDS):
        _clear_storm(lab)  # what the last round left: detached by the new process
        before = invariants.fences(lab.endpoint)
        clients = [StormClient(lab, i, rng.randrange(1 << 30)) for i in range(STORM_CLIENTS)]
        for client in clients:
            client.start()
        time.sleep(rng.uniform(0.5, 3.0))
        lab.kill_daemon()
        for client in clients:
            client.join(timeout=30)
            assert not client.is_alive()
        lab.restart()
        found = invariants.check(lab.endpoint, before)
        storm = [r for r in found if r.sandbox_id.startswith("storm-")]
        print(f"[storm] seed {seed} round {round_ + 1}: {sum(c.done for c in clients)} operations, "
              f"refused {[c.refused for c in clients]}, {len(storm)} storm attachments survive")  # fmt: skip
    _clear_storm(lab)


def _clear_storm(lab: Lab) -> None:
    with lab.host() as host:
        for attachment in host.list():
            if attachment.sandbox_id.startswith("storm-"):
                host.detach(attachment.attachment_id, attachment.lease_generation)


def test_whole_ovs_restart_is_recovered(lab: Lab) -> None:
    """ovsdb-server and ovs-vswitchd both killed and restarted (what
    `systemctl restart openvswitch-switch` does): the OVSDB connection comes
    back by itself and the switch is re-programmed."""
    assert lab.steady is not None
    _clear_victims(lab)
    before = invariants.fences(lab.endpoint)
    ovs = invariants.ovs_of(lab.endpoint)
    ns = lab.endpoint.guest_netns_prefix + lab.steady.device.representor
    pids = [ovs.vswitchd_pid, ovs.ovsdb_pid]
    for pid in pids:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
    assert eventually(lambda: not _healthy(lab), timeout=15)
    began = time.monotonic()
    OvsInstance.start(ovs.rundir, ovs.netns)
    assert eventually(lambda: probe_tcp(ns, SERVER_V4, ALLOWED, timeout=0.5), timeout=60)
    enforced = time.monotonic()
    assert not probe_tcp(ns, SERVER_V4, DENIED, timeout=0.5)
    assert eventually(lambda: _healthy(lab), timeout=20)
    invariants.check(lab.endpoint, before)
    print(f"[ovs-restart] whole OVS: traffic enforced again {enforced - began:.2f}s after it came back")


def test_sigterm_finishes_the_attach_in_flight_and_leaves_flows(lab: Lab) -> None:
    """SIGTERM while an Attach waits for its initial policy: no new calls
    are taken, the one in flight completes (its policy arrives during the
    drain) and answers, the process exits 0, and every flow stays in OVS."""
    assert lab.steady is not None
    _clear_victims(lab)
    (Path(lab.endpoint.policies_dir) / "latecomer.yaml").unlink(missing_ok=True)
    before = invariants.fences(lab.endpoint)
    result: dict[str, object] = {}

    def attach() -> None:
        with lab.host() as host:
            try:
                result["attachment"] = host.attach("latecomer", "hi-1", f"req-{uuid.uuid4()}",
                                                   initial_policy=pb.INITIAL_POLICY_WAIT_INITIAL,
                                                   initial_policy_timeout_ms=8000)  # fmt: skip
            except grpc.RpcError as exc:
                result["error"] = exc

    caller = threading.Thread(target=attach, daemon=True)
    caller.start()
    assert eventually(lambda: any(r.sandbox_id == "latecomer" for r in invariants.rows(lab.endpoint)))
    pid = lab.daemon_pid()
    flows_before = invariants.our_flows(lab.endpoint)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    with lab.host() as host, pytest.raises(grpc.RpcError) as refused:
        host.attach("latecomer-2", "hi-1", f"req-{uuid.uuid4()}", initial_policy=pb.INITIAL_POLICY_BASELINE)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    lab.write_policy("latecomer", policy(1, "198.51.100.22", [ALLOWED]))
    caller.join(timeout=20)
    assert "error" not in result, result
    attachment = result["attachment"]
    assert isinstance(attachment, pb.Attachment) and attachment.policy.version == 1
    wait_dead(pid)
    exit_log = (lab.workdir / "coordinator.log").read_text().splitlines()[-3:]
    assert any('"stopped"' in line for line in exit_log), exit_log
    after = invariants.our_flows(lab.endpoint)
    assert set(flows_before) <= set(after)  # nothing removed on the way out
    lab.restart()
    invariants.check(lab.endpoint, before)
    with lab.host() as host:
        host.detach(attachment.attachment_id, attachment.lease_generation)
