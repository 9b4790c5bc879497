#!/usr/bin/env python3
"""What a host extension does with the coordinator, end to end: check
health, attach a device for a sandbox, follow the attachment's events
until it is bound, detach it with its lease generation, and follow the
events until it is gone.

Every step prints one JSON object on stdout (``{"step": ...}``), so the
output can be read by a script. With a `dev up` setup (DIR/endpoint.json
has the address):

    python examples/host_extension.py --target ADDR \\
        --ca DIR/certs/ca.pem --cert DIR/certs/host.pem --key DIR/certs/host.key \\
        --sandbox sb-example

A real extension would persist the last ``seq`` it saw (printed with every
event) and pass it as ``--since-seq`` next time, so a restart resumes the
event stream instead of reading the coordinator's whole bounded log.
Exit status: 0 on success, 1 when a step fails (the error is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.client import CoordinatorClient, RetryPolicy, TlsFiles

_KINDS = {"any": pb.DEVICE_KIND_UNSPECIFIED, "vf": pb.DEVICE_KIND_VF, "sf": pb.DEVICE_KIND_SF}
_POLICIES = {
    "default": pb.INITIAL_POLICY_UNSPECIFIED,
    "wait-initial": pb.INITIAL_POLICY_WAIT_INITIAL,
    "baseline": pb.INITIAL_POLICY_BASELINE,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="coordinator address, HOST:PORT")
    parser.add_argument(
        "--ca", required=True, type=Path, help="CA bundle that signed the coordinator's certificate"
    )
    parser.add_argument("--cert", required=True, type=Path, help="this host's client certificate")
    parser.add_argument("--key", required=True, type=Path, help="this host's private key")
    parser.add_argument("--server-name", default="", help="name expected in the coordinator's certificate")
    parser.add_argument("--sandbox", required=True, help="sandbox id to attach")
    parser.add_argument("--host-instance", default="host-extension-example", help="host_instance_id")
    parser.add_argument("--request-id", default="", help="idempotency key (default: a new UUID)")
    parser.add_argument("--device-kind", choices=sorted(_KINDS), default="any")
    parser.add_argument("--initial-policy", choices=sorted(_POLICIES), default="default")
    parser.add_argument("--since-seq", type=int, default=0, help="resume events after this seq")
    parser.add_argument("--watch-timeout", type=float, default=30.0, help="seconds to wait for each event")
    parser.add_argument(
        "--attempts", type=int, default=4, help="tries per call while the coordinator is unreachable"
    )
    return parser.parse_args(argv)


def emit(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def wait_for(
    client: CoordinatorClient,
    attachment_id: str,
    since_seq: int,
    condition: str,
    status: bool,
    timeout: float,
) -> int:
    """Follow the event stream until ``attachment_id`` reports ``condition``
    with ``status``; returns the seq to resume from."""
    seq = since_seq
    for event in client.watch(since_seq, timeout=timeout):
        seq = event.seq
        if event.attachment_id != attachment_id:
            continue
        c = event.condition
        emit("event", seq=event.seq, type=c.type, status=c.status, reason=c.reason, message=c.message)
        if c.type == condition and c.status == status:
            return seq
    raise RuntimeError(f"event stream ended before {condition}={status}")


def run(args: argparse.Namespace) -> int:
    tls = TlsFiles(args.ca, args.cert, args.key)
    retry = RetryPolicy(attempts=args.attempts)
    with CoordinatorClient(args.target, tls, retry=retry, server_name=args.server_name) as client:
        health = client.health()
        emit(
            "health",
            healthy=health.healthy,
            backend=health.backend,
            failing=[c.name for c in health.checks if c.required and not c.ok],
            free={pb.DeviceKind.Name(p.kind): p.free for p in health.pools},
        )
        if not health.healthy:
            return 1
        attachment = client.attach(
            args.sandbox,
            args.host_instance,
            args.request_id or str(uuid.uuid4()),
            device_kind=_KINDS[args.device_kind],
            initial_policy=_POLICIES[args.initial_policy],
        )
        emit(
            "attached",
            attachment_id=attachment.attachment_id,
            lease_generation=attachment.lease_generation,
            kind=pb.DeviceKind.Name(attachment.device.kind),
            mac=attachment.device.mac,
            host_pci_address=attachment.device.host_pci_address,
            policy=pb.PolicyState.Name(attachment.policy.state),
        )
        seq = wait_for(
            client, attachment.attachment_id, args.since_seq, "DpuAttachmentBound", True, args.watch_timeout
        )
        # The VM would run here, with the device passed through to it.
        detached = client.detach(attachment.attachment_id, attachment.lease_generation, args.host_instance)
        emit("detached", attachment_id=attachment.attachment_id, detached=detached)
        seq = wait_for(client, attachment.attachment_id, seq, "DpuAttachmentBound", False, args.watch_timeout)
        emit("done", last_seq=seq)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        emit("error", code=code.name if code else "UNKNOWN", details=details)
    except (OSError, RuntimeError) as exc:
        emit("error", code="LOCAL", details=str(exc))
    return 1


if __name__ == "__main__":
    sys.exit(main())
