"""Who may import whom (docs/ARCHITECTURE.md, "Import rules"), checked on the
source: every ``import`` and ``from … import`` of every module under
``coordinator/`` (the generated protobuf code aside), also those inside
functions, is held against the rules below; and who may build the adapters
of the switch."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "coordinator"

# The pure core: decisions without I/O, tested exhaustively on their own.
PURE_CORE = (
    "policy/",
    "flows/",
    "attachment_identity.py",
    "event_kinds.py",
    "leases.py",
    "host_reconcile.py",
    "reconcile.py",
    "identifiers.py",
    "bounded.py",
    "sequences.py",
    "toplevel.py",
    "callers.py",
    "errors.py",
    "health.py",
    "store/records.py",
    "ovs/port_keys.py",
    "service/intent.py",
)
# What the pure core may never reach: network, database, threads of the
# adapters, the event loop, and the adapters themselves.
PURE_CORE_FORBIDDEN = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "sqlite3",
    "ovsdbapp",
    "pyroute2",
    "pyudev",
    "asyncio",
    "subprocess",
    "coordinator.api",
    "coordinator.gateway",
    "coordinator.service",
    "coordinator.dataplane",
    "coordinator.daemon",
    "coordinator.store.db",
    "coordinator.ovs.ovsdb",
    "coordinator.ovs.openflow",
    "coordinator.ovs.conntrack",
    "coordinator.ovs.trace",
    "coordinator.ovs.unixctl",
    "coordinator._proto.bluefield.coordinator",
)


# The attachment service reaches the switch and the eswitch only through the
# dataplane port (``dataplane_port.DataplanePort``): none of its parts imports
# an OVS or eswitch adapter, nor the real dataplane.
SERVICE_PARTS = ("service/",)
SERVICE_FORBIDDEN = (
    "coordinator.ovs",
    "coordinator.eswitch.switchdev",
    "coordinator.eswitch.devlink",
    "coordinator.eswitch.sysfs",
    "coordinator.eswitch.emulated",
    "coordinator.dataplane",
    "ovsdbapp",
    "pyroute2",
    "pyudev",
)
# The switch's adapters are built by the composition root (and the dev tools)
# only; everything else is handed them.
BUILT_ONLY_BY_ROOT = ("Dataplane", "OpenFlowSwitch", "OpenFlowChannel", "ChannelSwitch", "Ovsdb")
ROOT = ("daemon.py", "dev/")


@dataclass(frozen=True)
class OnlyIn:
    """``module`` (and its submodules) may be imported only by these files or folders."""

    module: str
    allowed: tuple[str, ...]


ONLY_IN = (
    OnlyIn("sqlite3", ("store/db.py",)),
    OnlyIn("ovsdbapp", ("ovs/ovsdb.py",)),
    OnlyIn("pyudev", ("eswitch/",)),
    OnlyIn("pyroute2", ("eswitch/", "dev/")),
    # gRPC lives at the edges: the API, the gateway stream, the clients and
    # the composition root. security_events.py still carries its gRPC
    # interceptor.
    OnlyIn(
        "grpc",
        (
            "api/",
            "gateway/",
            "client.py",
            "ctl/",
            "daemon.py",
            "dev/",
            "cli.py",
            "security_events.py",
        ),
    ),
    OnlyIn("grpc_health", ("api/",)),
    OnlyIn("grpc_reflection", ("api/", "dev/")),
    OnlyIn("coordinator.daemon", ("cli.py", "dev/")),
    OnlyIn("coordinator.dev", ("cli.py", "dev/")),
    OnlyIn("coordinator.ctl", ("cli.py", "ctl/")),
)


def _modules(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if "_proto" not in path.relative_to(root).parts:
            yield path


def _imports(path: Path, root: Path) -> set[str]:
    found: set[str] = set()
    package = ".".join(("coordinator", *path.relative_to(root).parent.parts))
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _built(path: Path) -> set[str]:
    """The names of ``BUILT_ONLY_BY_ROOT`` this module calls (builds)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in BUILT_ONLY_BY_ROOT:
                found.add(name)
    return found


def _within(relative: str, places: tuple[str, ...]) -> bool:
    return any(relative == p or (p.endswith("/") and relative.startswith(p)) for p in places)


def _reaches(imported: str, module: str) -> bool:
    return imported == module or imported.startswith(module + ".")


def violations(package: Path = PACKAGE) -> list[str]:
    found: list[str] = []
    for path in _modules(package):
        relative = path.relative_to(package).as_posix()
        imports = _imports(path, package)
        if _within(relative, PURE_CORE):
            found += [
                f"{relative} (pure core) imports {name}"
                for name in sorted(imports)
                if any(_reaches(name, bad) for bad in PURE_CORE_FORBIDDEN)
            ]
        if _within(relative, SERVICE_PARTS):
            found += [
                f"{relative} (service part) imports {name}"
                for name in sorted(imports)
                if any(_reaches(name, bad) for bad in SERVICE_FORBIDDEN)
            ]
        if not _within(relative, ROOT):
            found += [
                f"{relative} builds {name} (only {', '.join(ROOT)} may)" for name in sorted(_built(path))
            ]
        for rule in ONLY_IN:
            if _within(relative, rule.allowed):
                continue
            found += [
                f"{relative} imports {name} (only {', '.join(rule.allowed)} may)"
                for name in sorted(imports)
                if _reaches(name, rule.module)
            ]
    return found


def test_every_module_keeps_the_import_rules() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("flows/extra.py", "import asyncio\n", "flows/extra.py (pure core) imports asyncio"),
        ("reconcile.py", "from coordinator.ovs.ovsdb import OWNER_KEY\n", "reconcile.py (pure core) imports"),
        ("service.py", "def f():\n    import sqlite3\n", "service.py imports sqlite3 (only store/db.py may)"),
        ("store/db.py", "import grpc\n", "store/db.py imports grpc"),
        ("api/x.py", "from ..daemon import run\n", "api/x.py imports coordinator.daemon"),
        ("service/intent.py", "import asyncio\n", "service/intent.py (pure core) imports asyncio"),
        (
            "service/lifecycle.py",
            "from coordinator.ovs.openflow import OpenFlowError\n",
            "service/lifecycle.py (service part) imports coordinator.ovs.openflow",
        ),
        (
            "service/health_checks.py",
            "def f():\n    from ..eswitch import sysfs\n",
            "service/health_checks.py (service part) imports coordinator.eswitch.sysfs",
        ),
        (
            "service/convergence.py",
            "from coordinator.dataplane import Dataplane\n",
            "service/convergence.py (service part) imports coordinator.dataplane",
        ),
        (
            "service/facade.py",
            "def f(c):\n    return Dataplane(config=c)\n",
            "service/facade.py builds Dataplane",
        ),
        (
            "switch_watch.py",
            "x = openflow.OpenFlowSwitch('t', timeout=1)\n",
            "switch_watch.py builds OpenFlowSwitch",
        ),
        ("api/server.py", "db = Ovsdb('unix:x', timeout=1)\n", "api/server.py builds Ovsdb"),
    ],
)
def test_a_broken_rule_is_named(tmp_path: Path, relative: str, source: str, expected: str) -> None:
    root = tmp_path / "coordinator"
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    found = violations(root)
    assert any(v.startswith(expected) for v in found), found
