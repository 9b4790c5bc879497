"""End to end over real mTLS: the daemon process on the emulated eswitch,
a private OVS, real SQLite, real packets between guest namespaces."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.attachment_identity import BRIDGE_COOKIE, cookie_for_slot
from coordinator.certs import init_dev_pki, issue_client_cert
from coordinator.client import CoordinatorClient, TlsFiles
from coordinator.dev import env, netns
from coordinator.dev.ovs_instance import OvsInstance, pid_alive
from coordinator.dev.reflection import list_services
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs.port_keys import is_parked
from tests.conftest import require_ovs
from tests.integration.invariants import inert_ports
from tests.integration.stack import NETPROBE

pytestmark = pytest.mark.ovs

GUEST_A = "198.51.100.10/24"
GUEST_B = "198.51.100.11/24"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[env.Endpoint]:
    require_ovs()
    workdir = tmp_path_factory.mktemp("dev")
    try:
        yield env.dev_up(workdir, vfs=3, sfs=2)
    finally:
        env.dev_down(workdir)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert env.names_for(workdir)[2] not in listed


@pytest.fixture
def admin(dev: env.Endpoint) -> Iterator[CoordinatorClient]:
    with CoordinatorClient(dev.coordinator, dev.admin_tls()) as client:
        yield client


@pytest.fixture
def host(dev: env.Endpoint) -> Iterator[CoordinatorClient]:
    with CoordinatorClient(dev.coordinator, dev.host_tls()) as client:
        yield client


@pytest.fixture
def host_b(dev: env.Endpoint) -> Iterator[CoordinatorClient]:
    with CoordinatorClient(dev.coordinator, dev.host_b_tls()) as client:
        yield client


def _ovs(dev: env.Endpoint) -> OvsInstance:
    return OvsInstance(Path(dev.ovs_rundir), dev.ovs_netns)


def _flows(dev: env.Endpoint, slot: int) -> list[str]:
    out = _ovs(dev).ofctl(
        "dump-flows", "--no-stats", _ovs(dev).mgmt(dev.bridge), f"cookie={cookie_for_slot(slot):#x}/-1"
    )
    return [line for line in out.splitlines() if "actions=" in line]


def _port_ids(dev: env.Endpoint, port: str) -> dict[str, str]:
    out = _ovs(dev).vsctl("--if-exists", "get", "Port", port, "external_ids").strip()
    if not out:
        return {}
    return dict(item.split("=", 1) for item in out.strip("{}").replace('"', "").split(", ") if item)


def _slot(dev: env.Endpoint, attachment_id: str) -> int | None:
    db = sqlite3.connect(Path(dev.config).parent / "state.db")
    try:
        row = db.execute("SELECT slot FROM attachments WHERE attachment_id = ?", (attachment_id,)).fetchone()
        return int(row[0]) if row else None
    finally:
        db.close()


def _guest(dev: env.Endpoint, attachment: pb.Attachment) -> str:
    return dev.guest_netns_prefix + attachment.device.representor


def _configure_guest(dev: env.Endpoint, attachment: pb.Attachment, cidr: str) -> str:
    ns = _guest(dev, attachment)
    netns.run_in_netns(ns, ["ip", "address", "replace", cidr, "dev", "eth0"])
    netns.run_in_netns(ns, ["ip", "link", "set", "lo", "up"])
    return ns


def _ping(ns: str, address: str) -> bool:
    return netns.run_in_netns(ns, ["ping", "-c", "1", "-W", "1", address], check=False).returncode == 0


def _neighbour_mac(ns: str, address: str) -> str:
    out = netns.run_in_netns(ns, ["ip", "neigh", "show", address]).stdout
    parts = out.split()
    return parts[parts.index("lladdr") + 1] if "lladdr" in parts else ""


def _probes_forwarded(dev: env.Endpoint) -> int:
    """Packets the bridge's ARP-probe flow (sender 0.0.0.0, to the uplink) has forwarded."""
    forward = load_pipeline().number("forward")
    match = f"cookie={BRIDGE_COOKIE:#x}/-1,table={forward},arp,arp_spa=0.0.0.0,arp_op=1"
    out = _ovs(dev).ofctl("dump-flows", _ovs(dev).mgmt(dev.bridge), match)
    [count] = [int(f.split("n_packets=")[1].split(",")[0]) for f in out.splitlines() if "n_packets=" in f]
    return count


def _attach(client: CoordinatorClient, sandbox: str, **kwargs: object) -> pb.Attachment:
    return client.attach(sandbox, "host-instance-1", f"req-{uuid.uuid4()}", **kwargs)  # type: ignore[arg-type]


def test_attach_two_sandboxes_baseline_isolates_them(dev: env.Endpoint, host: CoordinatorClient) -> None:
    a = _attach(host, "sandbox-a", device_kind=pb.DEVICE_KIND_VF)
    b = _attach(host, "sandbox-b", device_kind=pb.DEVICE_KIND_SF)
    try:
        assert a.policy.state == pb.POLICY_STATE_BASELINE and a.state == pb.ATTACHMENT_STATE_BOUND
        assert b.device.kind == pb.DEVICE_KIND_SF and b.device.sf_number >= 1000
        assert a.device.mac != b.device.mac and a.lease_generation == 1
        # Real state: the port carries our tags, the flows are installed.
        ids = _port_ids(dev, a.device.representor)
        assert ids["bluefield-coordinator-attachment-id"] == a.attachment_id
        assert ids["bluefield-coordinator-sandbox-id"] == "sandbox-a"
        slot_a = _slot(dev, a.attachment_id)
        assert slot_a is not None and len(_flows(dev, slot_a)) > 5
        ns_a = _configure_guest(dev, a, GUEST_A)
        ns_b = _configure_guest(dev, b, GUEST_B)
        # The guest function carries the MAC the coordinator assigned.
        link = netns.run_in_netns(ns_a, ["ip", "-o", "link", "show", "eth0"]).stdout
        assert a.device.mac in link
        # IP between the sandboxes is dropped by the baseline ...
        assert not _ping(ns_a, GUEST_B.split("/", maxsplit=1)[0])
        assert not _ping(ns_b, GUEST_A.split("/", maxsplit=1)[0])
        # ... and so is IP towards the fabric's gateway ...
        assert not _ping(ns_a, "198.51.100.1")
        # ... and so is their ARP: the baseline knows no address of theirs, so
        # only address probes (sender 0.0.0.0, to the fabric) would pass, and
        # their kernels ask from the configured address. Neither resolves.
        assert _neighbour_mac(ns_a, GUEST_B.split("/", maxsplit=1)[0]) == ""
        assert _neighbour_mac(ns_b, GUEST_A.split("/", maxsplit=1)[0]) == ""
        assert _neighbour_mac(ns_a, "198.51.100.1") == ""
        # Control: the same probe passes once a catch-all flow outranks ours,
        # so the failures above are the baseline's doing.
        ovs = _ovs(dev)
        ovs.ofctl("add-flow", ovs.mgmt(dev.bridge), "cookie=0x1,table=0,priority=65535,actions=NORMAL")
        try:
            # A few tries: the neighbour entries the failed probes left behind
            # must be resolved again first, which a loaded machine can delay.
            assert any(_ping(ns_a, GUEST_B.split("/", maxsplit=1)[0]) for _ in range(5))
        finally:
            ovs.ofctl("del-flows", ovs.mgmt(dev.bridge), "cookie=0x1/-1")
    finally:
        host.detach(a.attachment_id, a.lease_generation)
        host.detach(b.attachment_id, b.lease_generation)


def test_spoofed_arp_is_dropped(dev: env.Endpoint, host: CoordinatorClient) -> None:
    a = _attach(host, "sandbox-spoof", device_kind=pb.DEVICE_KIND_VF)
    try:
        ns = _configure_guest(dev, a, GUEST_A)
        # Before its policy the guest may probe for addresses (ARP from
        # 0.0.0.0, counted by the bridge's probe flow on its way to the
        # fabric), but only with its own MAC: a changed MAC loses that too.
        netns.run_in_netns(ns, ["ip", "link", "set", "eth0", "address", "02:00:00:00:be:ef"])
        before = _probes_forwarded(dev)
        netns.run_in_netns(ns, [sys.executable, NETPROBE, "arp-request", "eth0", "0.0.0.0", "198.51.100.1"])
        assert _probes_forwarded(dev) == before
        netns.run_in_netns(ns, ["ip", "link", "set", "eth0", "address", a.device.mac])
        netns.run_in_netns(ns, [sys.executable, NETPROBE, "arp-request", "eth0", "0.0.0.0", "198.51.100.1"])
        assert _probes_forwarded(dev) == before + 1
        # An ARP request from an address the baseline does not know is dropped.
        netns.run_in_netns(
            ns, [sys.executable, NETPROBE, "arp-request", "eth0", "198.51.100.10", "198.51.100.1"]
        )
        assert _probes_forwarded(dev) == before + 1 and _neighbour_mac(ns, "198.51.100.1") == ""
    finally:
        host.detach(a.attachment_id, a.lease_generation)


@pytest.mark.parametrize("kind", [pb.DEVICE_KIND_VF, pb.DEVICE_KIND_SF])
def test_detach_gives_the_port_back_removes_flows_and_row_but_keeps_the_fence(
    dev: env.Endpoint, host: CoordinatorClient, kind: int
) -> None:
    a = _attach(host, f"sandbox-detach-{kind}", device_kind=kind)
    slot = _slot(dev, a.attachment_id)
    assert slot is not None and _flows(dev, slot)
    assert host.detach(a.attachment_id, a.lease_generation) is True
    assert _flows(dev, slot) == []
    if kind == pb.DEVICE_KIND_VF:  # the representor stays: its port parked, inert
        assert is_parked(_port_ids(dev, a.device.representor))
        assert a.device.representor in inert_ports(_ovs(dev), dev.bridge)
    else:  # the SF and its representor are gone: so is the port
        assert _port_ids(dev, a.device.representor) == {}
    assert _slot(dev, a.attachment_id) is None
    # Idempotent with the current generation ...
    assert host.detach(a.attachment_id, a.lease_generation) is False
    # ... while a generation that was never issued is refused.
    with pytest.raises(grpc.RpcError) as err:
        host.detach(a.attachment_id, a.lease_generation + 1)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        host.get(a.attachment_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_same_request_id_returns_the_same_attachment(dev: env.Endpoint, host: CoordinatorClient) -> None:
    before = {p.kind: p.free for p in host.health().pools}
    request_id = f"req-{uuid.uuid4()}"
    first = host.attach("sandbox-idem", "host-instance-1", request_id)
    second = host.attach("sandbox-idem", "host-instance-1", request_id)
    try:
        assert first.attachment_id == second.attachment_id
        assert first.device == second.device
        after = {p.kind: p.free for p in host.health().pools}
        assert sum(before.values()) - sum(after.values()) == 1
        with pytest.raises(grpc.RpcError) as err:
            host.attach("another-sandbox", "host-instance-1", request_id)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        host.detach(first.attachment_id, first.lease_generation)


def test_pool_exhaustion_is_resource_exhausted_and_leaves_nothing(
    dev: env.Endpoint, host: CoordinatorClient, admin: CoordinatorClient
) -> None:
    attached = []
    try:
        free_sfs = next(p.free for p in host.health().pools if p.kind == pb.DEVICE_KIND_SF)
        for i in range(free_sfs):
            attached.append(_attach(host, f"sandbox-sf-{i}", device_kind=pb.DEVICE_KIND_SF))
        count = len(admin.list())
        with pytest.raises(grpc.RpcError) as err:
            _attach(host, "sandbox-one-too-many", device_kind=pb.DEVICE_KIND_SF)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no free SF" in (err.value.details() or "")
        assert len(admin.list()) == count
    finally:
        for a in attached:
            host.detach(a.attachment_id, a.lease_generation)


@pytest.mark.parametrize(
    ("field", "request_kwargs"),
    [
        ("sandbox_id", {"sandbox_id": ""}),
        ("host_instance_id", {"host_instance_id": "bad id with spaces"}),
        ("request_id", {"request_id": ""}),
        ("device_kind", {"device_kind": 7}),
        ("network_class", {"network_class": "no-such-class"}),
    ],
)
def test_bad_attach_input_names_the_field_and_claims_nothing(
    dev: env.Endpoint,
    host: CoordinatorClient,
    admin: CoordinatorClient,
    field: str,
    request_kwargs: dict[str, object],
) -> None:
    before = (len(admin.list()), [p.free for p in admin.health().pools])
    args: dict[str, object] = {"sandbox_id": "sandbox-bad", "host_instance_id": "hi", "request_id": "r-bad"}
    args.update(request_kwargs)
    kind = args.pop("device_kind", pb.DEVICE_KIND_UNSPECIFIED)
    with pytest.raises(grpc.RpcError) as err:
        host.attach(
            str(args["sandbox_id"]),
            str(args["host_instance_id"]),
            str(args["request_id"]),
            device_kind=int(kind),
            network_class=str(args.get("network_class", "")),
        )  # type: ignore[call-overload]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field)
    assert (len(admin.list()), [p.free for p in admin.health().pools]) == before


def test_host_sees_only_its_own_attachments(
    dev: env.Endpoint, host: CoordinatorClient, host_b: CoordinatorClient, admin: CoordinatorClient
) -> None:
    a = _attach(host, "sandbox-owned")
    try:
        assert [x.attachment_id for x in host_b.list()] == []
        for call in (lambda: host_b.get(a.attachment_id), lambda: host_b.detach(a.attachment_id, 1)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert a.attachment_id in [x.attachment_id for x in admin.list()]
        assert admin.get(a.attachment_id).sandbox_id == "sandbox-owned"
    finally:
        host.detach(a.attachment_id, a.lease_generation)


def test_stale_generation_is_refused(dev: env.Endpoint, host: CoordinatorClient) -> None:
    a = _attach(host, "sandbox-stale")
    try:
        with pytest.raises(grpc.RpcError) as err:
            host.detach(a.attachment_id, 0)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "lease_generation" in (err.value.details() or "")
    finally:
        host.detach(a.attachment_id, a.lease_generation)


def test_clients_without_a_valid_certificate_are_refused(dev: env.Endpoint, tmp_path: Path) -> None:
    target = dev.coordinator
    # No client certificate at all: the TLS handshake fails.
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(Path(dev.ca).read_bytes()))
    stub_call = channel.unary_unary(
        "/bluefield.coordinator.v1.Coordinator/Health",
        request_serializer=pb.HealthRequest.SerializeToString,
        response_deserializer=pb.HealthResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as err:
        stub_call(pb.HealthRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
    # A certificate from another CA, even with a known identity.
    other = init_dev_pki(tmp_path / "other-ca")
    tls = TlsFiles(Path(dev.ca), other.host_cert, other.host_key)
    with CoordinatorClient(target, tls, timeout=5) as client, pytest.raises(grpc.RpcError) as err:
        client.health()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # A valid certificate whose identity has no role.
    cert, key = issue_client_cert(
        Path(dev.ca),
        Path(dev.ca).with_name("ca.key"),
        tmp_path,
        "stranger",
        uri="spiffe://bluefield.local/host/stranger",
    )
    with (
        CoordinatorClient(target, TlsFiles(Path(dev.ca), cert, key), timeout=5) as client,
        pytest.raises(grpc.RpcError) as err,
    ):
        client.list()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_restart_keeps_attachments_listed_and_enforced(dev: env.Endpoint, host: CoordinatorClient) -> None:
    a = _attach(host, "sandbox-restart", device_kind=pb.DEVICE_KIND_VF)
    b = _attach(host, "sandbox-restart-b", device_kind=pb.DEVICE_KIND_VF)
    try:
        ns_a = _configure_guest(dev, a, GUEST_A)
        _configure_guest(dev, b, GUEST_B)
        slot = _slot(dev, a.attachment_id)
        assert slot is not None
        flows_before = sorted(_flows(dev, slot))
        os.kill(dev.daemon_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(dev.daemon_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Enforcement outlives the daemon: flows stay, IP stays blocked.
        assert sorted(_flows(dev, slot)) == flows_before
        assert not _ping(ns_a, GUEST_B.split("/", maxsplit=1)[0])
        restarted = env.dev_up(Path(dev.config).parent)
        assert restarted.daemon_pid != dev.daemon_pid
        with CoordinatorClient(restarted.coordinator, restarted.host_tls()) as client:
            listed = {x.attachment_id: x for x in client.list()}
            assert listed[a.attachment_id].device == a.device
            assert listed[a.attachment_id].state == pb.ATTACHMENT_STATE_BOUND
        assert sorted(_flows(dev, slot)) == flows_before
        assert not _ping(ns_a, GUEST_B.split("/", maxsplit=1)[0])
    finally:
        with CoordinatorClient(dev.coordinator, dev.host_tls()) as client:
            client.detach(a.attachment_id, a.lease_generation)
            client.detach(b.attachment_id, b.lease_generation)


def test_watch_events_resumes_from_since_seq(dev: env.Endpoint, host: CoordinatorClient) -> None:
    a = _attach(host, "sandbox-events")
    host.detach(a.attachment_id, a.lease_generation)
    events = []
    for event in host.watch(0, timeout=3):
        events.append(event)
        if event.attachment_id == a.attachment_id and event.condition.reason == "Detached":
            break
    mine = [e for e in events if e.attachment_id == a.attachment_id]
    assert [e.condition.type for e in mine] == [
        "DpuAttachInProgress",
        "DpuAttachmentBound",
        "DpuAttachmentBound",
    ]
    assert [e.condition.status for e in mine] == [True, True, False]
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    resumed = []
    for event in host.watch(mine[0].seq, timeout=3):
        resumed.append(event)
        if event.seq == mine[-1].seq:
            break
    assert [e.seq for e in resumed if e.attachment_id == a.attachment_id] == [e.seq for e in mine[1:]]


def test_reflection_lists_the_coordinator_over_mtls(dev: env.Endpoint) -> None:
    services = list_services(dev.coordinator, dev.admin_tls())
    assert "bluefield.coordinator.v1.Coordinator" in services
    assert "grpc.health.v1.Health" in services


def test_health_reports_checks_and_pools(host: CoordinatorClient) -> None:
    health = host.health()
    assert health.healthy and health.backend == "emulated"
    checks = {c.name: c for c in health.checks}
    assert checks["bridge_secure"].ok and checks["bridge_secure"].required
    assert not checks["ovs_hw_offload"].required
    pools = {p.kind: p for p in health.pools}
    assert pools[pb.DEVICE_KIND_VF].total == 3 and pools[pb.DEVICE_KIND_SF].total == 2


def test_explain_packet_is_for_admins_and_agrees_with_the_switch(
    dev: env.Endpoint, host: CoordinatorClient, admin: CoordinatorClient
) -> None:
    a = _attach(host, "sandbox-explain")
    try:
        request = pb.ExplainPacketRequest(
            attachment_id=a.attachment_id,
            direction=pb.DIRECTION_EGRESS,
            protocol=policy_pb2.PROTOCOL_TCP,
            src_ip="198.51.100.10",
            dst_ip="203.0.113.5",
            src_port=40000,
            dst_port=443,
            ct_state="new",
        )
        answer = admin.explain(request)
        # The baseline knows no address of the guest: its IP is spoofed.
        assert not answer.allowed and answer.rule == "anti-spoof" and answer.switch_agrees
        assert "Datapath actions" in answer.trace
        tagged = pb.ExplainPacketRequest()
        tagged.CopyFrom(request)
        tagged.vlan_id = 0
        answer = admin.explain(tagged)
        assert not answer.allowed and answer.rule == "l2-guard" and answer.switch_agrees
        tagged.ethertype = 0x0806
        with pytest.raises(grpc.RpcError) as err:
            admin.explain(tagged)
        assert (err.value.details() or "").startswith("ethertype")
        with pytest.raises(grpc.RpcError) as err:
            host.explain(request)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        bad = pb.ExplainPacketRequest()
        bad.CopyFrom(request)
        bad.dst_ip = "2001:db8::1"
        with pytest.raises(grpc.RpcError) as err:
            admin.explain(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("dst_ip")
    finally:
        host.detach(a.attachment_id, a.lease_generation)


def test_dev_exec_runs_in_the_guest_and_the_uplink(dev: env.Endpoint, host: CoordinatorClient) -> None:
    workdir = str(Path(dev.config).parent)
    a = _attach(host, "sandbox-exec")
    try:

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            argv = [sys.executable, "-m", "coordinator", "dev", "exec", "--workdir", workdir, *args]
            return subprocess.run(argv, capture_output=True, text=True, check=False)

        guest = cli("--attachment", a.attachment_id, "--", "ip", "-o", "link", "show", "eth0")
        assert guest.returncode == 0 and a.device.mac in guest.stdout
        up = cli("--uplink", "--", "ip", "-o", "addr", "show")
        assert up.returncode == 0 and "198.51.100.1/24" in up.stdout
        assert cli("--uplink", "--", "false").returncode == 1
        missing = cli("--attachment", "no-such-attachment", "--", "true")
        assert missing.returncode == 1 and "not found" in missing.stderr
        assert "Traceback" not in missing.stderr
    finally:
        host.detach(a.attachment_id, a.lease_generation)


def test_metrics_endpoint_reports_attachments_and_rpcs(dev: env.Endpoint, host: CoordinatorClient) -> None:
    a = _attach(host, "sandbox-metrics")
    try:
        text = urllib.request.urlopen(f"http://{dev.metrics}/metrics", timeout=5).read().decode()
        bound = [
            line
            for line in text.splitlines()
            if line.startswith('bluefield_coordinator_attachments{state="BOUND"}')
        ]
        assert bound and float(bound[0].split()[-1]) >= 1
        attach_ok = [
            line for line in text.splitlines()
            if line.startswith("bluefield_coordinator_rpcs_total") and 'Coordinator/Attach"' in line and 'code="OK"' in line
        ]  # fmt: skip
        assert attach_ok and float(attach_ok[0].split()[-1]) >= 1
    finally:
        host.detach(a.attachment_id, a.lease_generation)


def test_systemd_notify_ready_watchdog_and_stopping(dev: env.Endpoint, tmp_path: Path) -> None:
    """The daemon under a test NOTIFY_SOCKET: READY=1 only once it answers,
    WATCHDOG=1 on schedule, STOPPING=1 on SIGTERM."""
    running = env.load_endpoint(Path(dev.config).parent).daemon_pid  # earlier tests may have restarted it
    os.kill(running, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while pid_alive(running) and time.monotonic() < deadline:
        time.sleep(0.05)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    environ = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    argv = [sys.executable, "-m", "coordinator", "serve", "--config", dev.config]
    proc = subprocess.Popen(argv, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        with CoordinatorClient(dev.coordinator, dev.admin_tls(), timeout=5) as admin:
            assert admin.health().healthy  # it listens by the time it says READY
        started = time.monotonic()
        pings = 0
        while pings < 3:
            if "WATCHDOG=1" in sock.recv(4096).decode():
                pings += 1
        assert time.monotonic() - started < 5  # about every half second
        proc.send_signal(signal.SIGTERM)
        tail = []
        while not any("STOPPING=1" in m for m in tail):
            tail.append(sock.recv(4096).decode())
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
        env.dev_up(Path(dev.config).parent)  # the module's other tests keep a daemon
