"""The policy stream end to end: the daemon process, the reference gateway
process, a private OVS, real packets. Policies are YAML files the tests
write into the gateway's directory."""

from __future__ import annotations

import os
import signal
import sqlite3
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

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.client import CoordinatorClient, RetryPolicy
from coordinator.dev import env, netns
from coordinator.dev.ovs_instance import OvsInstance, pid_alive
from tests.conftest import require_ovs
from tests.integration.stack import NETPROBE, SERVER_V4, probe_tcp

pytestmark = pytest.mark.ovs

GUEST = "198.51.100.10"
STALE_MS = 1000


def policy(version: int, ports: list[int], *, address: str = GUEST, **extra: object) -> dict[str, object]:
    return {
        "version": version,
        "addresses": [address],
        "egress": [{"name": "web", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP",
                    "cidrs": ["203.0.113.0/24"], "ports": [{"start": p} for p in ports]}],
        **extra,
    }  # fmt: skip


class Setup:
    def __init__(self, workdir: Path, endpoint: env.Endpoint) -> None:
        self.workdir = workdir
        self.endpoint = endpoint
        self.server: subprocess.Popen[str] | None = None

    def write_policy(self, sandbox: str, body: dict[str, object] | str) -> None:
        path = Path(self.endpoint.policies_dir) / f"{sandbox}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
        tmp.rename(path)

    def remove_policy(self, sandbox: str) -> None:
        (Path(self.endpoint.policies_dir) / f"{sandbox}.yaml").unlink()

    def client(self) -> CoordinatorClient:
        return CoordinatorClient(self.endpoint.coordinator, self.endpoint.host_tls())

    def admin(self) -> CoordinatorClient:
        return CoordinatorClient(self.endpoint.coordinator, self.endpoint.admin_tls())

    def guest(self, attachment: pb.Attachment, address: str = GUEST) -> str:
        ns = self.endpoint.guest_netns_prefix + attachment.device.representor
        netns.run_in_netns(ns, ["ip", "address", "replace", f"{address}/24", "dev", "eth0"])
        netns.run_in_netns(ns, ["ip", "route", "replace", "default", "via", "198.51.100.1"])
        return ns

    def kill_gateway(self) -> None:
        pid = self.endpoint.gateway_pid
        os.kill(pid, signal.SIGKILL)
        _wait_dead(pid)

    def restart(self) -> None:
        self.endpoint = env.dev_up(self.workdir)

    def ovs(self) -> OvsInstance:
        return OvsInstance(Path(self.endpoint.ovs_rundir), self.endpoint.ovs_netns)

    def conntrack_of(self, address: str) -> list[str]:
        return [line for line in self.ovs().dpctl_dump_conntrack() if f"src={address}," in line]

    def events(self, attachment_id: str) -> list[pb.AttachmentEvent]:
        with self.admin() as admin:
            out = []
            for event in admin.watch(0, timeout=2):
                if event.attachment_id == attachment_id:
                    out.append(event)
                if event.seq >= self._last_seq():
                    break
            return out

    def _last_seq(self) -> int:
        db = sqlite3.connect(Path(self.endpoint.config).parent / "state.db")
        try:
            return int(db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0)
        finally:
            db.close()


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _make(tmp: Path, on_stale: str, *, stale_ms: int = STALE_MS, resync_ms: int = 10000) -> Iterator[Setup]:
    require_ovs()
    knobs = env.PolicyKnobs(
        stale_threshold_ms=stale_ms,
        on_stale=on_stale,
        initial_policy_timeout_ms=2000,
        resync_timeout_ms=resync_ms,
    )
    endpoint = env.dev_up(tmp, vfs=3, sfs=1, gateway=True, knobs=knobs)
    setup = Setup(tmp, endpoint)
    netns.add_address(endpoint.uplink_netns, "lo", f"{SERVER_V4}/32")
    setup.server = netns.popen_in_netns(
        endpoint.uplink_netns, [sys.executable, NETPROBE, "serve", "--tcp", "80,443"], stdin=subprocess.PIPE
    )
    try:
        assert setup.server.stdout is not None and setup.server.stdout.readline().strip() == "ready"
        yield setup
    finally:
        setup.server.kill()
        setup.server.wait()
        env.dev_down(tmp)


@pytest.fixture(scope="module")
def keep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from _make(tmp_path_factory.mktemp("gw-keep"), "keep-last-known")


@pytest.fixture(scope="module")
def deny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from _make(tmp_path_factory.mktemp("gw-deny"), "deny-all")


def _attach(setup: Setup, sandbox: str) -> pb.Attachment:
    with setup.client() as client:
        return client.attach(sandbox, "hi", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_VF)


def _detach(setup: Setup, attachment: pb.Attachment) -> None:
    with setup.client() as client:
        client.detach(attachment.attachment_id, attachment.lease_generation)


def _state(setup: Setup, attachment: pb.Attachment) -> pb.PolicyStatus:
    with setup.client() as client:
        return client.get(attachment.attachment_id).policy


def test_wait_initial_enforces_the_policy_before_attach_returns(keep: Setup) -> None:
    keep.write_policy("sb-live", policy(1, [443]))
    a = _attach(keep, "sb-live")
    try:
        assert a.policy.state == pb.POLICY_STATE_APPLIED and a.policy.version == 1
        ns = keep.guest(a)
        assert probe_tcp(ns, SERVER_V4, 443)
        assert not probe_tcp(ns, SERVER_V4, 80)
    finally:
        _detach(keep, a)


def test_wait_initial_without_a_policy_times_out_and_leaves_nothing(keep: Setup) -> None:
    with keep.admin() as admin:
        before = (len(admin.list()), [(p.kind, p.free) for p in admin.health().pools])
    ovs = OvsInstance(Path(keep.endpoint.ovs_rundir), keep.endpoint.ovs_netns)
    flows_before = ovs.ofctl("dump-flows", "--no-stats", ovs.mgmt(keep.endpoint.bridge))
    ports_before = ovs.vsctl("list-ports", keep.endpoint.bridge)
    with pytest.raises(grpc.RpcError) as err:
        _attach(keep, "sb-no-policy")
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with keep.admin() as admin:
        assert (len(admin.list()), [(p.kind, p.free) for p in admin.health().pools]) == before
    assert ovs.ofctl("dump-flows", "--no-stats", ovs.mgmt(keep.endpoint.bridge)) == flows_before
    assert ovs.vsctl("list-ports", keep.endpoint.bridge) == ports_before


def test_delta_changes_traffic_and_removed_denies_everything(keep: Setup) -> None:
    keep.write_policy("sb-delta", policy(1, [443]))
    a = _attach(keep, "sb-delta")
    try:
        ns = keep.guest(a)
        assert probe_tcp(ns, SERVER_V4, 443) and not probe_tcp(ns, SERVER_V4, 80)
        keep.write_policy("sb-delta", policy(2, [80]))
        assert _eventually(lambda: _state(keep, a).version == 2)
        assert probe_tcp(ns, SERVER_V4, 80) and not probe_tcp(ns, SERVER_V4, 443)
        keep.remove_policy("sb-delta")
        assert _eventually(lambda: _state(keep, a).state == pb.POLICY_STATE_PENDING)
        assert not probe_tcp(ns, SERVER_V4, 80) and not probe_tcp(ns, SERVER_V4, 443)
    finally:
        _detach(keep, a)


def test_an_invalid_policy_keeps_the_last_good_one_and_degrades(keep: Setup) -> None:
    keep.write_policy("sb-bad", policy(1, [443]))
    a = _attach(keep, "sb-bad")
    try:
        ns = keep.guest(a)
        bad_cidr = policy(2, [80])
        bad_cidr["egress"][0]["cidrs"] = ["203.0.113.7/24"]  # type: ignore[index]
        keep.write_policy("sb-bad", bad_cidr)
        assert _eventually(lambda: _state(keep, a).state == pb.POLICY_STATE_DEGRADED)
        assert _state(keep, a).version == 1
        assert probe_tcp(ns, SERVER_V4, 443) and not probe_tcp(ns, SERVER_V4, 80)
        too_many = policy(3, [80])
        too_many["egress"] = [
            {"name": f"r{i}", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP"} for i in range(1100)
        ]
        keep.write_policy("sb-bad", too_many)
        time.sleep(1.0)
        assert (
            _state(keep, a).version == 1
            and probe_tcp(ns, SERVER_V4, 443)
            and not probe_tcp(ns, SERVER_V4, 80)
        )
        degraded = [e for e in keep.events(a.attachment_id) if e.condition.type == "DpuPolicyDegraded"]
        assert any("host bits" in e.condition.message for e in degraded)
        assert any("too many" in e.condition.message for e in degraded)
        keep.write_policy("sb-bad", policy(4, [80]))
        assert _eventually(lambda: _state(keep, a).state == pb.POLICY_STATE_APPLIED)
        assert probe_tcp(ns, SERVER_V4, 80)
    finally:
        _detach(keep, a)


def test_keep_last_known_goes_stale_but_keeps_enforcing_then_resyncs(keep: Setup) -> None:
    keep.write_policy("sb-stale", policy(1, [443]))
    a = _attach(keep, "sb-stale")
    try:
        ns = keep.guest(a)
        keep.kill_gateway()
        assert _eventually(
            lambda: _state(keep, a).state == pb.POLICY_STATE_STALE, timeout=STALE_MS / 1000 + 5
        )
        assert probe_tcp(ns, SERVER_V4, 443) and not probe_tcp(ns, SERVER_V4, 80)
        stale = [e for e in keep.events(a.attachment_id) if e.condition.type == "DpuPolicyStale"]
        assert len(stale) == 1
        keep.restart()  # brings the gateway back
        assert _eventually(lambda: _state(keep, a).state == pb.POLICY_STATE_APPLIED)
        with keep.admin() as admin:
            stream = next(c for c in admin.health().checks if c.name == "policy_stream")
        assert (stream.ok and "1 reconnects" in stream.detail) or "reconnects" in stream.detail
        print(f"[gateway] after restart: {stream.detail}")
    finally:
        _detach(keep, a)


def test_deny_all_cuts_traffic_when_stale_until_fresh_policy(deny: Setup) -> None:
    deny.write_policy("sb-cut", policy(1, [443]))
    a = _attach(deny, "sb-cut")
    try:
        ns = deny.guest(a)
        assert probe_tcp(ns, SERVER_V4, 443)
        deny.kill_gateway()
        assert _eventually(
            lambda: _state(deny, a).state == pb.POLICY_STATE_STALE, timeout=STALE_MS / 1000 + 5
        )
        assert not probe_tcp(ns, SERVER_V4, 443)
        deny.restart()
        assert _eventually(lambda: _state(deny, a).state == pb.POLICY_STATE_APPLIED)
        assert probe_tcp(ns, SERVER_V4, 443)
    finally:
        _detach(deny, a)


def test_gateway_restart_with_a_new_epoch_resyncs(keep: Setup) -> None:
    keep.write_policy("sb-epoch", policy(1, [443]))
    a = _attach(keep, "sb-epoch")
    try:
        ns = keep.guest(a)
        os.kill(keep.endpoint.gateway_pid, signal.SIGUSR1)  # simulated restart: new epoch, seq from 1
        keep.write_policy("sb-epoch", policy(2, [80]))
        assert _eventually(lambda: _state(keep, a).version == 2)
        assert probe_tcp(ns, SERVER_V4, 80) and not probe_tcp(ns, SERVER_V4, 443)
        with keep.admin() as admin:
            stream = next(c for c in admin.health().checks if c.name == "policy_stream")
        assert stream.ok
    finally:
        _detach(keep, a)


def test_restart_while_the_gateway_is_down_reapplies_the_stored_policy(keep: Setup) -> None:
    keep.write_policy("sb-stored", policy(1, [443]))
    a = _attach(keep, "sb-stored")
    try:
        ns = keep.guest(a)
        keep.kill_gateway()
        os.kill(keep.endpoint.daemon_pid, signal.SIGKILL)
        _wait_dead(keep.endpoint.daemon_pid)
        # Lose the enforcement too: only the store can bring it back.
        ovs = OvsInstance(Path(keep.endpoint.ovs_rundir), keep.endpoint.ovs_netns)
        ovs.ofctl("del-flows", ovs.mgmt(keep.endpoint.bridge))
        env.start_daemon(keep.workdir, Path(keep.endpoint.config))
        with keep.admin() as admin:
            assert _eventually(lambda: _healthy(admin))
        assert probe_tcp(ns, SERVER_V4, 443) and not probe_tcp(ns, SERVER_V4, 80)
    finally:
        keep.restart()
        _detach(keep, a)


def _healthy(admin: CoordinatorClient) -> bool:
    try:
        return admin.health().healthy
    except grpc.RpcError:
        return False


def test_a_sandbox_not_delegated_to_this_coordinator_gets_no_policy(keep: Setup) -> None:
    config = Path(keep.workdir) / "gateway.toml"
    original = config.read_text()
    config.write_text(original.replace('= ["*"]', '= ["sb-*"]'))
    keep.kill_gateway()
    keep.restart()
    try:
        keep.write_policy("other-1", policy(1, [443]))
        keep.write_policy("sb-ok", policy(1, [443]))
        with pytest.raises(grpc.RpcError) as err:
            _attach(keep, "other-1")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        a = _attach(keep, "sb-ok")  # the stream carries on for the sandboxes it may have
        _detach(keep, a)
    finally:
        config.write_text(original)
        keep.kill_gateway()
        keep.restart()


def test_baseline_attach_is_replaced_by_the_gateway_policy_when_it_arrives(keep: Setup) -> None:
    with keep.client() as client:
        a = client.attach(
            "sb-baseline", "hi", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_VF,
            initial_policy=pb.INITIAL_POLICY_BASELINE,
        )  # fmt: skip
    try:
        assert a.policy.state == pb.POLICY_STATE_BASELINE
        ns = keep.guest(a)
        assert not probe_tcp(ns, SERVER_V4, 443)  # the baseline isolates
        keep.write_policy("sb-baseline", policy(1, [443]))
        assert _eventually(lambda: _state(keep, a).state == pb.POLICY_STATE_APPLIED)
        assert probe_tcp(ns, SERVER_V4, 443) and not probe_tcp(ns, SERVER_V4, 80)
    finally:
        _detach(keep, a)


# -- failing closed at once, and resyncs as a full statement of the truth ------------------

CUT_BOUND_S = 0.3  # how long after the stale threshold a new connection may still get through
PROBED = [("sb-probe-0", "198.51.100.11"), ("sb-probe-1", "198.51.100.12"), ("sb-probe-2", "198.51.100.13")]
RESYNC_MS = 1500


@pytest.fixture(scope="module")
def resync(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    # The stream is never down long enough to turn stale here: what happens
    # is the resync's doing alone.
    yield from _make(
        tmp_path_factory.mktemp("gw-resync"), "keep-last-known", stale_ms=60000, resync_ms=RESYNC_MS
    )


def _busy(setup: Setup, ns: str, address: str, count: int = 150) -> None:
    """Leave ``count`` conntrack entries in the guest's zone (closed TCP
    connections linger in TIME_WAIT): revoking them must not delay the cut."""
    done = netns.run_in_netns(
        ns, [sys.executable, NETPROBE, "burst", SERVER_V4, "443", "--count", str(count)]
    )
    assert int(done.stdout) == count
    assert len(setup.conntrack_of(address)) >= count


def _start_prober(ns: str) -> subprocess.Popen[str]:
    argv = [sys.executable, NETPROBE, "prober", SERVER_V4, "443", "--interval", "0.02", "--timeout", "0.2"]
    return netns.popen_in_netns(ns, argv, stdin=subprocess.PIPE)


def _prober_results(proc: subprocess.Popen[str]) -> list[tuple[float, bool]]:
    out, _ = proc.communicate("", timeout=10)
    return [(float(began), verdict == "ok") for began, verdict in (line.split() for line in out.splitlines())]


def _gateway_mode(setup: Setup, *, legacy: bool) -> None:
    """Restart the gateway serving the current contract or the first one
    (no REMOVED on registration, no SYNC_COMPLETE)."""
    config = Path(setup.workdir) / "gateway.toml"
    text = config.read_text().replace("legacy_resync = true\n", "")
    if legacy:
        text = text.replace("[gateway]\n", "[gateway]\nlegacy_resync = true\n")
    config.write_text(text)


def test_deny_all_cuts_every_attachment_at_once_after_the_threshold(deny: Setup) -> None:
    attachments, probers = [], []
    try:
        for sandbox, address in PROBED:
            deny.write_policy(sandbox, policy(1, [443], address=address))
            a = _attach(deny, sandbox)
            attachments.append(a)
            ns = deny.guest(a, address)
            _busy(deny, ns, address)
            probers.append(_start_prober(ns))
        time.sleep(0.3)
        killed_wall, killed = time.time(), time.monotonic()
        deny.kill_gateway()
        assert _eventually(
            lambda: all(_state(deny, a).state == pb.POLICY_STATE_STALE for a in attachments),
            timeout=STALE_MS / 1000 + 5,
        )
        time.sleep(0.5)
        results = [_prober_results(p) for p in probers]
        cut_by = killed + STALE_MS / 1000 + CUT_BOUND_S
        for (sandbox, _), probes in zip(PROBED, results, strict=True):
            assert any(ok for began, ok in probes if began < killed), f"{sandbox}: no traffic before the kill"
            late = [round(began - killed, 3) for began, ok in probes if ok and began > cut_by]
            assert not late, f"{sandbox}: connections accepted {late} s after the gateway died"
            last_ok = max(began for began, ok in probes if ok) - killed
            print(f"[deny-all] {sandbox}: last accepted connection began {last_ok:.3f} s after the kill")
            assert not probes[-1][1], f"{sandbox}: still open"
        for a in attachments:
            stale = [e for e in deny.events(a.attachment_id) if e.condition.type == "DpuPolicyStale"]
            assert len(stale) == 1
            recorded = stale[0].time.seconds + stale[0].time.nanos / 1e9
            assert recorded - killed_wall <= STALE_MS / 1000 + CUT_BOUND_S, "STALE recorded late"
        # The zones' connections are revoked after the cut, each zone at once.
        assert _eventually(lambda: not any(deny.conntrack_of(address) for _, address in PROBED), timeout=5)
        deny.restart()
        assert _eventually(lambda: all(_state(deny, a).state == pb.POLICY_STATE_APPLIED for a in attachments))
    finally:
        for proc in probers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for a in attachments:
            _detach(deny, a)


def test_removed_is_recorded_as_promptly_as_it_cuts(keep: Setup) -> None:
    address = "198.51.100.21"
    keep.write_policy("sb-removed", policy(1, [443], address=address))
    a = _attach(keep, "sb-removed")
    prober = None
    try:
        ns = keep.guest(a, address)
        _busy(keep, ns, address)
        prober = _start_prober(ns)
        time.sleep(0.3)
        keep.remove_policy("sb-removed")
        with keep.client() as client:
            deadline = time.monotonic() + 5
            while client.get(a.attachment_id).policy.state != pb.POLICY_STATE_PENDING:
                assert time.monotonic() < deadline, "never PENDING"
                time.sleep(0.01)
            pending_seen = time.monotonic()
        time.sleep(0.3)
        probes = _prober_results(prober)
        last_ok = max(began for began, ok in probes if ok)
        # Cut (the last accepted connection began just before it) and record, ~together.
        print(
            f"[removed] PENDING seen {pending_seen - last_ok:.3f} s after the last accepted connection began"
        )
        assert pending_seen - last_ok <= CUT_BOUND_S, "PENDING recorded long after the cut"
        assert not probes[-1][1] and not probe_tcp(ns, SERVER_V4, 443)
        assert _eventually(lambda: not keep.conntrack_of(address), timeout=5)
    finally:
        if prober is not None and prober.poll() is None:
            prober.kill()
            prober.wait()
        _detach(keep, a)


def test_a_policy_deleted_while_the_gateway_is_down_is_withdrawn_by_the_resync(resync: Setup) -> None:
    address = "198.51.100.31"
    resync.write_policy("sb-gone", policy(1, [443], address=address))
    a = _attach(resync, "sb-gone")
    try:
        ns = resync.guest(a, address)
        assert probe_tcp(ns, SERVER_V4, 443)
        resync.kill_gateway()
        resync.remove_policy("sb-gone")
        resync.restart()  # the gateway answers the resync with REMOVED
        assert _eventually(lambda: _state(resync, a).state == pb.POLICY_STATE_PENDING)
        assert not probe_tcp(ns, SERVER_V4, 443)
        withdrawn = [e for e in resync.events(a.attachment_id) if e.condition.reason == "PolicyRemoved"]
        assert len(withdrawn) == 1 and not withdrawn[0].condition.status
        resync.write_policy("sb-gone", policy(2, [443], address=address))
        assert _eventually(lambda: _state(resync, a).state == pb.POLICY_STATE_APPLIED)
        assert probe_tcp(ns, SERVER_V4, 443)
    finally:
        _detach(resync, a)


def test_a_resync_that_never_completes_leaves_the_unconfirmed_stale(resync: Setup) -> None:
    kept, dropped = ("sb-kept", "198.51.100.32"), ("sb-dropped", "198.51.100.33")
    attachments = []
    try:
        for sandbox, address in (kept, dropped):
            resync.write_policy(sandbox, policy(1, [443], address=address))
            attachments.append(_attach(resync, sandbox))
        a_kept, a_dropped = attachments
        ns = resync.guest(a_dropped, dropped[1])
        resync.kill_gateway()
        resync.remove_policy(dropped[0])
        _gateway_mode(resync, legacy=True)  # answers only what it has, never SYNC_COMPLETE
        resync.restart()
        began = time.monotonic()
        assert _eventually(lambda: _state(resync, a_dropped).state == pb.POLICY_STATE_STALE, timeout=10)
        assert time.monotonic() - began >= RESYNC_MS / 1000 - 0.5
        assert _state(resync, a_kept).state == pb.POLICY_STATE_APPLIED  # confirmed by its INITIAL
        stale = [e for e in resync.events(a_dropped.attachment_id) if e.condition.type == "DpuPolicyStale"]
        assert [e.condition.reason for e in stale] == ["ResyncIncomplete"]
        assert probe_tcp(ns, SERVER_V4, 443)  # keep-last-known: still the last policy
        time.sleep(0.5)
        assert _state(resync, a_dropped).state == pb.POLICY_STATE_STALE  # and never APPLIED again
    finally:
        _gateway_mode(resync, legacy=False)
        resync.kill_gateway()
        resync.restart()
        for a in attachments:
            _detach(resync, a)


def test_a_long_initial_wait_does_not_hold_back_the_repair_of_a_restarted_switch(keep: Setup) -> None:
    """A host may ask an Attach to wait an hour for the gateway's policy. A
    re-programming of the switch (after ovs-vswitchd restarts) runs alone,
    once no operation is in flight: the waiting Attach gives way
    (UNAVAILABLE, rolled back) rather than keep every guest unrepaired."""
    outcome: list[grpc.StatusCode] = []
    client = CoordinatorClient(
        keep.endpoint.coordinator, keep.endpoint.host_tls(), timeout=3_700, retry=RetryPolicy(attempts=1)
    )

    def wait_an_hour() -> None:
        try:
            client.attach("sb-waits-long", "hi", f"req-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_VF,
                          initial_policy=pb.INITIAL_POLICY_WAIT_INITIAL, initial_policy_timeout_ms=3_600_000)  # fmt: skip
            outcome.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            outcome.append(err.code())

    waiter = threading.Thread(target=wait_an_hour, daemon=True)
    waiter.start()
    try:
        with keep.admin() as admin:
            assert _eventually(lambda: any(a.sandbox_id == "sb-waits-long" for a in admin.list()), timeout=10)
        ovs = OvsInstance(Path(keep.endpoint.ovs_rundir), keep.endpoint.ovs_netns)
        pid = ovs.vswitchd_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait_dead(pid)
        ovs.start_vswitchd()
        assert _eventually(lambda: bool(outcome), timeout=30), (
            "the waiting Attach held the switch's repair back"
        )
        assert outcome == [grpc.StatusCode.UNAVAILABLE]
        keep.write_policy("sb-after-repair", policy(1, [443]))
        assert _eventually(lambda: _attached_once(keep, "sb-after-repair"), timeout=30)
        with keep.admin() as admin:
            assert not any(a.sandbox_id == "sb-waits-long" for a in admin.list())
    finally:
        client.close()
        waiter.join(timeout=10)


def _attached_once(setup: Setup, sandbox: str) -> bool:
    try:
        a = _attach(setup, sandbox)
    except grpc.RpcError:
        return False
    _detach(setup, a)
    return a.policy.state == pb.POLICY_STATE_APPLIED
