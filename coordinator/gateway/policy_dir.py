"""A directory of policy files, one per sandbox: ``<sandbox_id>.yaml`` holding
a NetworkScope in the proto3 JSON mapping (proto field names, enum value
names as strings), as the README's "Policy from the gateway" describes.

The reference gateway does not judge policies (that is the coordinator's
job, and the tests need to send it bad ones); it only needs each file to
have the NetworkScope message's shape.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf import json_format

from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.identifiers import is_identifier

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")


def sandbox_of(name: str) -> str | None:
    """The sandbox id a file name ``<sandbox_id>.yaml`` / ``.yml`` stands for,
    None unless the id is one the coordinator accepts."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            sandbox_id = name[: -len(suffix)]
            return sandbox_id if is_identifier(sandbox_id) else None
    return None


@dataclass(frozen=True)
class PolicyFile:
    sandbox_id: str
    digest: str
    scope: policy_pb2.NetworkScope
    stamp: tuple[int, int] = (0, 0)  # mtime_ns, size: unchanged files are not re-read


def load_policy(path: Path) -> policy_pb2.NetworkScope:
    """Parse one file; ValueError says what is wrong with it."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path.name}: unreadable: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: expected a mapping (a NetworkScope)")
    try:
        return json_format.ParseDict(raw, policy_pb2.NetworkScope())
    except json_format.ParseError as exc:
        raise ValueError(f"{path.name}: not a NetworkScope: {exc}") from exc


def scan(directory: Path, previous: dict[str, PolicyFile] | None = None) -> dict[str, PolicyFile]:
    """Every well-shaped policy file, by sandbox id. Files whose size and
    mtime match ``previous`` are not read again. A file that cannot be
    parsed is skipped (and logged): its sandbox keeps what it last had."""
    previous = previous or {}
    found: dict[str, PolicyFile] = {}
    for path in sorted(directory.glob("*.y*ml")):
        sandbox_id = sandbox_of(path.name)
        if sandbox_id is None:
            continue
        try:
            stat = path.stat()
            known = previous.get(sandbox_id)
            if known is not None and known.stamp == (stat.st_mtime_ns, stat.st_size):
                found[sandbox_id] = known
                continue
            data = path.read_bytes()
            scope = load_policy(path)
        except (OSError, ValueError) as exc:
            log.warning("skipping policy file: %s", exc)
            if sandbox_id in previous:
                found[sandbox_id] = previous[sandbox_id]
            continue
        digest = hashlib.sha256(data).hexdigest()
        found[sandbox_id] = PolicyFile(sandbox_id, digest, scope, (stat.st_mtime_ns, stat.st_size))
    return found
