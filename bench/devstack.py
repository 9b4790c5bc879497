"""The daemon as a separate process over mTLS: the embedded default (`dev
up --gateway`: private OVS, reference gateway, dev certificates, emulated
eswitch), with the attach rate limit lifted so the bench measures the
daemon rather than its admission control."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.client import CoordinatorClient
from coordinator.dev import env
from coordinator.dev.ovs_instance import stop_pid

LIMITS = """
[limits]
max_attachments = 4096
max_attach_qps = 100000
"""


@contextlib.contextmanager
def dev_stack(workdir: Path, *, vfs: int, lift_limits: bool = True) -> Iterator[env.Endpoint]:
    """`dev up --gateway` with ``vfs`` VFs and no SFs; `dev down` afterwards, also on failure."""
    try:
        endpoint = env.dev_up(workdir, vfs=vfs, sfs=0, gateway=True)
        if not lift_limits:
            yield endpoint
            return
        config = Path(endpoint.config)
        config.write_text(config.read_text() + LIMITS)
        # `dev up` on an existing workdir starts again what is not running.
        stop_pid(endpoint.daemon_pid)
        yield env.dev_up(workdir, vfs=vfs, sfs=0, gateway=True)
    finally:
        env.dev_down(workdir)


def write_policy(endpoint: env.Endpoint, sandbox: str, mapping: dict[str, Any]) -> None:
    path = Path(endpoint.policies_dir) / f"{sandbox}.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(mapping, sort_keys=False))
    tmp.rename(path)  # the gateway never sees half a file


def attach(client: CoordinatorClient, sandbox: str, initial: int) -> pb.Attachment:
    return client.attach(
        sandbox, "bench-host", str(uuid.uuid4()), device_kind=pb.DEVICE_KIND_VF, initial_policy=initial
    )
