"""Fixtures shared by the in-process integration tests: one private OVS per
test module (userspace datapath, in a namespace of its own), an uplink
namespace on it with the test servers, and the real API server on the test
module's own ``BRIDGE`` with a development PKI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from coordinator.certs import DevPki, init_dev_pki
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from tests.conftest import require_ovs
from tests.integration.api_served import Served, serve
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture
async def served(
    request: pytest.FixtureRequest, tmp_path: Path, ovs: OvsInstance, uplink: Uplink, pki: DevPki
) -> AsyncIterator[Served]:
    server = getattr(request.module, "SERVER_SETTINGS", {})
    async with serve(tmp_path, ovs, pki, request.module.BRIDGE, "uplink", **server) as running:
        yield running
