"""The embedded default (`dev up`, `dev exec`, `dev down`): a whole coordinator setup on
one Linux box - private OVS in its own namespace, an uplink namespace that
stands for the fabric, dev certificates, a config and the daemon on the
emulated eswitch. Everything lives under one work directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from coordinator.certs import init_dev_pki, issue_client_cert
from coordinator.certs_lifecycle import write_empty_crl
from coordinator.client import CoordinatorClient, TlsFiles
from coordinator.config import load_config
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance, pid_alive, read_pid
from coordinator.eswitch.emulated import EmulatedEswitch
from coordinator.progress import Activity, counted

BRIDGE = "br-dpu"
UPLINK_PORT = "uplink"
UPLINK_GATEWAY = "198.51.100.1/24"
HOST_B = "spiffe://bluefield.local/host/host-b"
DAEMON_START_TIMEOUT_S = 30.0


class DevEnvError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """What `dev up` writes to DIR/endpoint.json for scripts and tests."""

    coordinator: str
    ca: str
    admin_cert: str
    admin_key: str
    host_cert: str
    host_key: str
    host_b_cert: str
    host_b_key: str
    config: str
    ovs_rundir: str
    ovs_netns: str
    bridge: str
    uplink_netns: str
    guest_netns_prefix: str
    gateway: str
    policies_dir: str
    metrics: str
    daemon_pid: int
    gateway_pid: int

    def admin_tls(self) -> TlsFiles:
        return TlsFiles(Path(self.ca), Path(self.admin_cert), Path(self.admin_key))

    def host_tls(self) -> TlsFiles:
        return TlsFiles(Path(self.ca), Path(self.host_cert), Path(self.host_key))

    def host_b_tls(self) -> TlsFiles:
        return TlsFiles(Path(self.ca), Path(self.host_b_cert), Path(self.host_b_key))


def names_for(workdir: Path) -> tuple[str, str, str]:
    tag = hashlib.sha256(str(workdir).encode()).hexdigest()[:6]
    return f"bfc{tag}-ovs", f"bfc{tag}-up", f"bfc{tag}-"


def load_endpoint(workdir: Path) -> Endpoint:
    path = workdir / "endpoint.json"
    try:
        return Endpoint(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise DevEnvError(
            f"{path}: no usable endpoint ({exc}); run `dev up --workdir {workdir}` first"
        ) from exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(
    workdir: Path,
    port: int,
    ovs: OvsInstance,
    vfs: int,
    sfs: int,
    guest_prefix: str,
    gateway_port: int,
    knobs: PolicyKnobs,
) -> Path:
    certs = workdir / "certs"
    path = workdir / "config.toml"
    gateway = (
        f"""
[gateway]
endpoint = "127.0.0.1:{gateway_port}"
cert = "{certs}/coordinator.pem"
key = "{certs}/coordinator.key"
ca = "{certs}/ca.pem"
backoff_cap_ms = 1000
"""
        if gateway_port
        else ""
    )
    path.write_text(f"""# Written by `bluefield-coordinator dev up`.
[server]
listen = "127.0.0.1:{port}"
cert = "{certs}/server.pem"
key = "{certs}/server.key"
client_ca = "{certs}/ca.pem"
crl = ["{certs}/ca.crl"]
reload_interval_s = 1
# Tests and soak runs open several clients at once (production default: 4).
max_connections = 32

[auth]
admins = ["spiffe://bluefield.local/admin/admin"]
hosts = ["spiffe://bluefield.local/host/host-a", "{HOST_B}"]

[store]
path = "{workdir}/state.db"

[ovs]
db = "{ovs.db_remote}"
rundir = "{ovs.rundir}"
bridge = "{BRIDGE}"
datapath_type = "netdev"
uplink = "{UPLINK_PORT}"

[eswitch]
backend = "emulated"
mac_salt = "dev"

[eswitch.emulated]
vfs = {vfs}
sfs = {sfs}
switch_netns = "{ovs.netns}"
guest_netns_prefix = "{guest_prefix}"

[metrics]
listen = "127.0.0.1:{_free_port()}"

[logs]
security_events_path = "{workdir}/security-events.jsonl"

[policy]
initial_policy = "{"auto" if gateway_port else "BASELINE"}"
initial_policy_timeout_ms = {knobs.initial_policy_timeout_ms}
stale_threshold_ms = {knobs.stale_threshold_ms}
on_stale = "{knobs.on_stale}"
resync_timeout_ms = {knobs.resync_timeout_ms}
{gateway}""")
    return path


def _ensure_uplink(ovs: OvsInstance, uplink_ns: str) -> None:
    if not netns.netns_exists(uplink_ns):
        netns.create_netns(uplink_ns)
    links = netns.run_in_netns(ovs.netns, ["ip", "-o", "link", "show"]).stdout
    if f" {UPLINK_PORT}@" not in links:
        netns.create_veth_pair(UPLINK_PORT, ovs.netns, "eth0", uplink_ns)
        netns.set_link(ovs.netns, UPLINK_PORT)
        netns.set_link(uplink_ns, "eth0")
        netns.add_address(uplink_ns, "eth0", UPLINK_GATEWAY)
        # The uplink routes for the guests to test servers callers add here.
        netns.run_in_netns(uplink_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])


def start_daemon(workdir: Path, config: Path, extra_env: dict[str, str] | None = None) -> int:
    """Start ``serve`` in the background; ``extra_env`` adds to its
    environment (tests: fault injection)."""
    log = (workdir / "coordinator.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "serve", "--config", str(config)],
        env={**os.environ, **(extra_env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    (workdir / "coordinator.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def _representors(switch_ns: str) -> int:
    """VF representors the daemon's emulated eswitch has created so far."""
    links = subprocess.run(["ip", "-n", switch_ns, "-o", "link", "show"], capture_output=True, text=True,
                           check=False).stdout  # fmt: skip
    return len(re.findall(r"^\d+: pf\d+vf\d+[@:]", links, flags=re.MULTILINE))


def _wait_healthy(endpoint: Endpoint, pid: int, vfs: int, progress: Activity) -> None:
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if progress.enabled:
            # With many VFs most of the start is creating their veth pairs.
            made = _representors(endpoint.ovs_netns)
            step = (
                counted("coordinator starting: VF representors", made, vfs)
                if made < vfs
                else "coordinator converging"
            )
            progress.update(step, force=True)
        if not pid_alive(pid):
            log = Path(endpoint.config).parent / "coordinator.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
            raise DevEnvError(f"coordinator exited during start-up; {log} ends with:\n{tail}")
        try:
            with CoordinatorClient(endpoint.coordinator, endpoint.admin_tls(), timeout=2) as client:
                client.health()
                return
        except Exception as exc:
            last = str(exc)
            time.sleep(0.2)
    raise DevEnvError(f"coordinator did not answer within {DAEMON_START_TIMEOUT_S}s: {last}")


@dataclass(frozen=True)
class PolicyKnobs:
    """Policy settings `dev up` writes into a fresh config (tests vary them)."""

    stale_threshold_ms: int = 5000
    on_stale: str = "keep-last-known"
    initial_policy_timeout_ms: int = 5000
    resync_timeout_ms: int = 10000


def _write_gateway_config(workdir: Path, port: int) -> Path:
    certs = workdir / "certs"
    path = workdir / "gateway.toml"
    path.write_text(f"""# Written by `bluefield-coordinator dev up --gateway`.
[gateway]
listen = "127.0.0.1:{port}"
cert = "{certs}/gateway.pem"
key = "{certs}/gateway.key"
client_ca = "{certs}/ca.pem"

[allow]
"spiffe://bluefield.local/coordinator" = ["*"]
""")
    return path


def start_gateway(workdir: Path) -> int:
    """Start the reference gateway of a `dev up --gateway` setup (again)."""
    log = (workdir / "gateway.log").open("ab")
    argv = [sys.executable, "-m", "coordinator", "gateway", "--policies", str(workdir / "policies"),
            "--config", str(workdir / "gateway.toml")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    (workdir / "gateway.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def dev_up(
    workdir: Path,
    *,
    vfs: int = 4,
    sfs: int = 4,
    gateway: bool = False,
    knobs: PolicyKnobs | None = None,
    progress: Activity | None = None,
) -> Endpoint:
    """``progress`` shows the steps on a terminal (the CLI passes one)."""
    progress = progress or Activity(quiet=True)
    with progress:
        return _dev_up(workdir, vfs, sfs, gateway, knobs, progress)


def _dev_up(
    workdir: Path, vfs: int, sfs: int, gateway: bool, knobs: PolicyKnobs | None, progress: Activity
) -> Endpoint:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ovs_ns, uplink_ns, guest_prefix = names_for(workdir)
    pki = init_dev_pki(workdir / "certs")
    write_empty_crl(pki.directory)
    host_b_cert, host_b_key = workdir / "certs" / "host-b.pem", workdir / "certs" / "host-b.key"
    if not host_b_cert.exists():
        # A second host identity, to show (and test) that hosts are isolated.
        host_b_cert, host_b_key = issue_client_cert(
            pki.ca_cert, pki.ca_key, workdir / "certs", "host-b", uri=HOST_B
        )
    progress.update("starting Open vSwitch", force=True)
    ovs = OvsInstance.start(workdir / "ovs", ovs_ns)
    _ensure_uplink(ovs, uplink_ns)
    config_path = workdir / "config.toml"
    if not config_path.exists():
        gateway_port = 0
        if gateway:
            gateway_port = _free_port()
            _write_gateway_config(workdir, gateway_port)
            (workdir / "policies").mkdir(exist_ok=True)
        _write_config(
            workdir, _free_port(), ovs, vfs, sfs, guest_prefix, gateway_port, knobs or PolicyKnobs()
        )
    config = load_config(config_path)
    gateway_pid = 0
    if config.gateway.endpoint:
        gateway_pid = read_pid(workdir / "gateway.pid") or 0
        if not gateway_pid or not pid_alive(gateway_pid):
            gateway_pid = start_gateway(workdir)
    pid = read_pid(workdir / "coordinator.pid")
    if pid is None or not pid_alive(pid):
        pid = start_daemon(workdir, config_path)
    endpoint = Endpoint(
        coordinator=config.server.listen,
        ca=str(pki.ca_cert),
        admin_cert=str(pki.admin_cert),
        admin_key=str(pki.admin_key),
        host_cert=str(pki.host_cert),
        host_key=str(pki.host_key),
        host_b_cert=str(host_b_cert),
        host_b_key=str(host_b_key),
        config=str(config_path),
        ovs_rundir=str(ovs.rundir),
        ovs_netns=ovs.netns,
        bridge=BRIDGE,
        uplink_netns=uplink_ns,
        guest_netns_prefix=guest_prefix,
        gateway=config.gateway.endpoint,
        metrics=config.metrics.listen,
        policies_dir=str(workdir / "policies") if config.gateway.endpoint else "",
        daemon_pid=pid,
        gateway_pid=gateway_pid,
    )
    (workdir / "endpoint.json").write_text(json.dumps(asdict(endpoint), indent=2) + "\n")
    _wait_healthy(endpoint, pid, config.eswitch.emulated.vfs, progress)
    return endpoint


def guest_netns(workdir: Path, attachment_id: str) -> str:
    endpoint = load_endpoint(workdir.resolve())
    with CoordinatorClient(endpoint.coordinator, endpoint.admin_tls()) as client:
        try:
            attachment = client.get(attachment_id)
        except grpc.RpcError as exc:
            raise DevEnvError(f"attachment {attachment_id}: {exc.details()}") from exc
    return endpoint.guest_netns_prefix + attachment.device.representor


def dev_exec(workdir: Path, argv: list[str], *, attachment_id: str = "", uplink: bool = False) -> int:
    workdir = workdir.resolve()
    if uplink == bool(attachment_id):
        raise DevEnvError("dev exec: give exactly one of --attachment ID or --uplink")
    ns = load_endpoint(workdir).uplink_netns if uplink else guest_netns(workdir, attachment_id)
    return subprocess.call(["ip", "netns", "exec", ns, *argv])


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def dev_down(workdir: Path) -> None:
    workdir = workdir.resolve()
    ovs_ns, uplink_ns, _ = names_for(workdir)
    for pidfile in ("coordinator.pid", "gateway.pid"):
        pid = read_pid(workdir / pidfile)
        if pid is not None:
            _stop_pid(pid)
    config_path = workdir / "config.toml"
    if config_path.exists() and netns.netns_exists(ovs_ns):
        with contextlib.suppress(Exception):
            EmulatedEswitch(load_config(config_path).eswitch.emulated).destroy()
    if (workdir / "ovs").exists():
        OvsInstance(workdir / "ovs", ovs_ns).stop()
    for ns in (uplink_ns, ovs_ns):
        netns.delete_netns(ns)
    shutil.rmtree(workdir, ignore_errors=True)
