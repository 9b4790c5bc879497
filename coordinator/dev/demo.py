"""`make demo`: the main job end to end on one box.

Brings up the embedded default with the reference gateway, attaches two
sandboxes over mTLS as a host (each waits for its policy from the gateway),
shows with real packets that policy is enforced and that sandboxes are
isolated, edits a policy file and shows the traffic change, explains a
packet, detaches and tears everything down.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.client import CoordinatorClient
from coordinator.dev import env, netns
from coordinator.dev.reflection import list_services

GUESTS = {"sandbox-a": "198.51.100.10", "sandbox-b": "198.51.100.11"}
SERVER = "203.0.113.5"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _policy(address: str, version: int, ports: list[int]) -> dict[str, object]:
    rules = [{"name": f"web-{p}", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP",
              "cidrs": ["203.0.113.0/24"], "ports": [{"start": p}]} for p in ports]  # fmt: skip
    return {"version": version, "addresses": [address], "egress": rules}


def _in_guest(
    endpoint: env.Endpoint, attachment: pb.Attachment, *argv: str
) -> subprocess.CompletedProcess[str]:
    ns = endpoint.guest_netns_prefix + attachment.device.representor
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=False)


def _http(endpoint: env.Endpoint, attachment: pb.Attachment, port: int) -> bool:
    probe = _in_guest(
        endpoint, attachment, "curl", "-s", "-o", "/dev/null", "-m", "2", f"http://{SERVER}:{port}/"
    )
    return probe.returncode == 0


def _show_http(endpoint: env.Endpoint, attachment: pb.Attachment, ports: list[int]) -> dict[int, bool]:
    results = {port: _http(endpoint, attachment, port) for port in ports}
    for port, ok in results.items():
        print(f"    {attachment.sandbox_id} -> http://{SERVER}:{port}/  {'passes' if ok else 'dropped'}")
    return results


def _start_servers(endpoint: env.Endpoint) -> list[subprocess.Popen[bytes]]:
    netns.add_address(endpoint.uplink_netns, "lo", f"{SERVER}/32")
    servers = []
    for port in (80, 8080):
        argv = ["ip", "netns", "exec", endpoint.uplink_netns, sys.executable, "-m", "http.server",
                "--bind", SERVER, str(port)]  # fmt: skip
        servers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    return servers


def _write_policies(policies: Path) -> None:
    say(f"policies served by the gateway from {policies}:")
    for sandbox, address in GUESTS.items():
        body = _policy(address, 1, [80] if sandbox == "sandbox-a" else [])
        (policies / f"{sandbox}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
        print(
            f"    {sandbox}.yaml: own address {address}, egress allowed to tcp/80: {sandbox == 'sandbox-a'}"
        )


def _show_health(endpoint: env.Endpoint, host: CoordinatorClient) -> None:
    health = host.health()
    say(f"Health over mTLS as host-a: healthy={health.healthy}")
    for check in health.checks:
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        print(f"    {mark} {check.name}: {check.detail}{'' if check.required else ' (optional)'}")
    services = list_services(endpoint.coordinator, endpoint.admin_tls())
    say("server reflection (as admin) lists: " + ", ".join(services))


def _attach_all(endpoint: env.Endpoint, host: CoordinatorClient) -> dict[str, pb.Attachment]:
    attachments = {}
    for sandbox, kind in (("sandbox-a", pb.DEVICE_KIND_VF), ("sandbox-b", pb.DEVICE_KIND_SF)):
        started = time.monotonic()
        att = host.attach(sandbox, "demo-host", f"demo-{uuid.uuid4()}", device_kind=kind)
        attachments[sandbox] = att
        say(f"attached {sandbox} in {1000 * (time.monotonic() - started):.0f} ms: "
            f"{pb.DeviceKind.Name(att.device.kind)} {att.device.representor} mac {att.device.mac}, "
            f"policy v{att.policy.version} {pb.PolicyState.Name(att.policy.state)} (enforced before "
            "Attach returned)")  # fmt: skip
        address = GUESTS[sandbox]
        _in_guest(endpoint, att, "ip", "address", "add", f"{address}/24", "dev", "eth0")
        _in_guest(endpoint, att, "ip", "route", "add", "default", "via", "198.51.100.1")
    return attachments


def _traffic(endpoint: env.Endpoint, a: pb.Attachment, b: pb.Attachment) -> list[bool]:
    say("traffic from the guests' namespaces:")
    first = _show_http(endpoint, a, [80, 8080])
    blocked_b = not any(_show_http(endpoint, b, [80]).values())
    ping = _in_guest(endpoint, a, "ping", "-c", "1", "-W", "1", GUESTS["sandbox-b"])
    print(f"    sandbox-a -> ping sandbox-b  {'passes' if ping.returncode == 0 else 'dropped'}")
    return [first[80], not first[8080], blocked_b, ping.returncode != 0]


def _edit(endpoint: env.Endpoint, host: CoordinatorClient, a: pb.Attachment) -> list[bool]:
    say("editing sandbox-a.yaml: allow tcp/8080 instead of tcp/80 (the gateway sends a DELTA)")
    policy_file = Path(endpoint.policies_dir) / "sandbox-a.yaml"
    policy_file.write_text(yaml.safe_dump(_policy(GUESTS["sandbox-a"], 2, [8080])))
    deadline = time.monotonic() + 10
    while host.get(a.attachment_id).policy.version != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"    sandbox-a now runs policy v{host.get(a.attachment_id).policy.version}")
    second = _show_http(endpoint, a, [80, 8080])
    return [not second[80], second[8080]]


def _explain(endpoint: env.Endpoint, workdir: Path, a: pb.Attachment) -> bool:
    with CoordinatorClient(endpoint.coordinator, endpoint.admin_tls()) as admin:
        answer = admin.explain(pb.ExplainPacketRequest(
            attachment_id=a.attachment_id, direction=pb.DIRECTION_EGRESS, protocol=policy_pb2.PROTOCOL_TCP,
            src_ip=GUESTS["sandbox-a"], dst_ip=SERVER, src_port=40000, dst_port=80, ct_state="new"))  # fmt: skip
    say(f"ExplainPacket (admin) for sandbox-a -> {SERVER}:80: allowed={answer.allowed}, "
        f"rule={answer.rule!r}, live switch agrees={answer.switch_agrees}")  # fmt: skip
    say("an admin can ask the same while a `dev up` setup runs, with ctl or grpcurl:")
    print(f"    bluefield-coordinator ctl --workdir {workdir} status")
    print(f"    bluefield-coordinator ctl --workdir {workdir} explain {a.attachment_id} --egress tcp "
          f"{GUESTS['sandbox-a']} {SERVER} 80")  # fmt: skip
    tls = f"-cacert {endpoint.ca} -cert {endpoint.admin_cert} -key {endpoint.admin_key}"
    print(f"    grpcurl {tls} {endpoint.coordinator} bluefield.coordinator.v1.Coordinator/ListAttachments")
    return not answer.allowed and answer.switch_agrees


def run(workdir: Path) -> int:
    say(f"bringing up the embedded default in {workdir}: private OVS, fabric namespace, dev certs, "
        "reference gateway, daemon")  # fmt: skip
    endpoint = env.dev_up(workdir, vfs=2, sfs=2, gateway=True)
    servers: list[subprocess.Popen[bytes]] = []
    checks: list[bool] = []
    try:
        servers = _start_servers(endpoint)
        _write_policies(Path(endpoint.policies_dir))
        with CoordinatorClient(endpoint.coordinator, endpoint.host_tls()) as host:
            _show_health(endpoint, host)
            attachments = _attach_all(endpoint, host)
            a, b = attachments["sandbox-a"], attachments["sandbox-b"]
            checks += _traffic(endpoint, a, b)
            checks += _edit(endpoint, host, a)
            checks.append(_explain(endpoint, workdir, a))
            for att in attachments.values():
                host.detach(att.attachment_id, att.lease_generation)
                say(f"detached {att.sandbox_id}")
            print(f"    attachments left: {len(host.list())}")
    finally:
        for server in servers:
            server.kill()
            server.wait()
        say("tearing down")
        env.dev_down(workdir)
    ok = all(checks)
    say(
        "demo " + ("succeeded: every packet went where the policy said" if ok else f"FAILED: checks {checks}")
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    return run(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
