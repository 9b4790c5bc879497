"""Shared pytest fixtures: private Open vSwitch instances and network namespaces.

Tests that use them are marked ``@pytest.mark.ovs``. They need root, ``ip`` and Open vSwitch;
without those the fixtures skip locally but FAIL when ``CI=true`` (CI must run them).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OVS_SCHEMA, OvsInstance

_OVS_TOOLS = ("ip", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl")


def pytest_configure(config: pytest.Config) -> None:
    # A run started in the background by a shell without job control
    # (`make test &`, `nohup make test &`) has SIGINT ignored, and every
    # process it starts inherits that: the tests that end a stream with
    # Ctrl-C (ctl's --follow, grpcurl) would wait on clients that cannot
    # hear it. The run takes SIGINT back as an interactive one has it, so
    # the processes it starts have the default.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing_prerequisites(*, ovs: bool) -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root privileges")
    tools = _OVS_TOOLS if ovs else ("ip",)
    missing += [f"`{tool}` on PATH" for tool in tools if shutil.which(tool) is None]
    if ovs and not OVS_SCHEMA.exists():
        missing.append(str(OVS_SCHEMA))
    return missing


def require_ovs(*, ovs: bool = True) -> None:
    """Fail (CI=true) or skip (otherwise) unless root, ip and (with ``ovs``) Open vSwitch exist."""
    missing = _missing_prerequisites(ovs=ovs)
    if not missing:
        return
    msg = "test needs " + ", ".join(missing) + " (apt-get install openvswitch-switch iproute2 iputils-ping)"
    if _in_ci():
        pytest.fail(msg + " -- CI=true, so this is an error, not a skip", pytrace=False)
    pytest.skip(msg)


NetnsFactory = Callable[..., str]


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    """Call ``netns_factory(prefix="t-")`` to create a uniquely named namespace.

    All namespaces created through it are deleted at teardown (also when the test fails).
    """
    require_ovs(ovs=False)
    created: list[str] = []

    def make(prefix: str = "t-") -> str:
        name = netns.unique_name(prefix)
        netns.create_netns(name)
        created.append(name)
        return name

    yield make
    errors = []
    for name in reversed(created):
        try:
            netns.delete_netns(name)
        except netns.NetnsError as exc:
            errors.append(str(exc))
    assert not errors, f"namespace cleanup failed: {errors}"


@pytest.fixture
def private_ovs(tmp_path: Path) -> Iterator[OvsInstance]:
    """A private OVS for one test, in ``tmp_path/ovs`` with its own namespace; stopped afterwards."""
    require_ovs()
    inst = OvsInstance.start(tmp_path / "ovs", netns.unique_name("ovs-"))
    try:
        yield inst
    finally:
        inst.stop()


@pytest.fixture(scope="session")
def ovs_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    """One private OVS shared by a whole session (tests must use unique bridge names)."""
    require_ovs()
    inst = OvsInstance.start(tmp_path_factory.mktemp("ovs-session"), netns.unique_name("ovss-"))
    try:
        yield inst
    finally:
        inst.stop()
