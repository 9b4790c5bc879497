"""`make demo`: the main job end to end on one box.

Brings up the embedded default, attaches two sandboxes over mTLS as a host,
shows them, proves with real packets that the baseline isolates them,
detaches and tears everything down.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import uuid
from pathlib import Path

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.client import CoordinatorClient
from coordinator.dev import env
from coordinator.dev.reflection import list_services

GUESTS = {"sandbox-a": "198.51.100.10/24", "sandbox-b": "198.51.100.11/24"}


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _in_guest(
    endpoint: env.Endpoint, attachment: pb.Attachment, *argv: str
) -> subprocess.CompletedProcess[str]:
    ns = endpoint.guest_netns_prefix + attachment.device.representor
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=False)


def _grpcurl_hint(endpoint: env.Endpoint) -> str:
    return (
        f"grpcurl -cacert {endpoint.ca} -cert {endpoint.admin_cert} -key {endpoint.admin_key} \\\n"
        f"      {endpoint.coordinator} list\n"
        f"  grpcurl -cacert {endpoint.ca} -cert {endpoint.admin_cert} -key {endpoint.admin_key} \\\n"
        f"      {endpoint.coordinator} bluefield.coordinator.v1.Coordinator/ListAttachments"
    )


def run(workdir: Path) -> int:
    say(f"bringing up the embedded default in {workdir} (private OVS, uplink namespace, dev certs, daemon)")
    endpoint = env.dev_up(workdir, vfs=2, sfs=2)
    ok = True
    try:
        with CoordinatorClient(endpoint.coordinator, endpoint.host_tls()) as host:
            health = host.health()
            say(f"Health over mTLS as host-a: healthy={health.healthy}")
            for check in health.checks:
                mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
                print(f"    {mark} {check.name}: {check.detail}{'' if check.required else ' (optional)'}")
            services = list_services(endpoint.coordinator, endpoint.admin_tls())
            say("server reflection (as admin) lists: " + ", ".join(services))
            attachments = {}
            for sandbox, kind in (("sandbox-a", pb.DEVICE_KIND_VF), ("sandbox-b", pb.DEVICE_KIND_SF)):
                att = host.attach(sandbox, "demo-host", f"demo-{uuid.uuid4()}", device_kind=kind)
                attachments[sandbox] = att
                say(
                    f"attached {sandbox}: {pb.DeviceKind.Name(att.device.kind)} {att.device.representor} "
                    f"mac {att.device.mac} policy {pb.PolicyState.Name(att.policy.state)} "
                    f"lease_generation {att.lease_generation}"
                )
            say("ListAttachments as host-a:")
            for att in host.list():
                print(
                    f"    {att.attachment_id}  {att.sandbox_id}  {att.device.representor}  {att.device.mac}"
                )
            for sandbox, cidr in GUESTS.items():
                _in_guest(endpoint, attachments[sandbox], "ip", "address", "add", cidr, "dev", "eth0")
            a, b = attachments["sandbox-a"], attachments["sandbox-b"]
            b_ip = GUESTS["sandbox-b"].split("/")[0]
            say(f"from sandbox-a's guest namespace: ping {b_ip} (sandbox-b) - the baseline must drop it")
            ping = _in_guest(endpoint, a, "ping", "-c", "2", "-W", "1", b_ip)
            print(f"    ping exit code {ping.returncode}: {'dropped' if ping.returncode else 'PASSED'}")
            ok &= ping.returncode != 0
            neigh = _in_guest(endpoint, a, "ip", "neigh", "show", b_ip).stdout.strip()
            print(f"    ARP still resolves (allowed by the baseline): {neigh or 'nothing'}")
            ok &= b.device.mac in neigh
            say(
                "an admin can ask the same with grpcurl while a `dev up` setup runs (grpcurl is not packaged by Debian):"
            )
            print("  " + _grpcurl_hint(endpoint))
            for att in attachments.values():
                host.detach(att.attachment_id, att.lease_generation)
                say(f"detached {att.sandbox_id}")
            print(f"    attachments left: {len(host.list())}")
    finally:
        say("tearing down")
        env.dev_down(workdir)
    say("demo " + ("succeeded" if ok else "FAILED: isolation did not hold"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    return run(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
