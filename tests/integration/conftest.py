"""Fixtures shared by the in-process integration tests: one private OVS per
test module (userspace datapath, in a namespace of its own) and an uplink
namespace on it with the test servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from tests.conftest import require_ovs
from tests.integration.stack import Uplink


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    require_ovs()
    inst = OvsInstance.start(tmp_path_factory.mktemp("ovs"), netns.unique_name("ovsm-"))
    try:
        yield inst
    finally:
        inst.stop()


@pytest.fixture(scope="module")
def uplink(ovs: OvsInstance) -> Iterator[Uplink]:
    up = Uplink.create(ovs, "uplink")
    try:
        yield up
    finally:
        up.close()
