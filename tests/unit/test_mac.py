from __future__ import annotations

import itertools

import pytest

from coordinator.eswitch.base import DeviceKind
from coordinator.eswitch.mac import mac_for_device


def test_macs_are_locally_administered_unicast_deterministic_and_unique() -> None:
    seen = set()
    for kind, pf, number in itertools.product(DeviceKind, range(2), range(300)):
        mac = mac_for_device("dpu-1", kind, 0, pf, number)
        first = int(mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01
        assert mac == mac_for_device("dpu-1", kind, 0, pf, number)
        seen.add(mac)
    assert len(seen) == 2 * 2 * 300


def test_salt_separates_dpus() -> None:
    assert mac_for_device("dpu-1", DeviceKind.VF, 0, 0, 0) != mac_for_device("dpu-2", DeviceKind.VF, 0, 0, 0)


def test_out_of_range() -> None:
    with pytest.raises(ValueError, match="pf"):
        mac_for_device("s", DeviceKind.VF, 0, 8, 0)
    with pytest.raises(ValueError, match="function number"):
        mac_for_device("s", DeviceKind.SF, 0, 0, 1 << 20)
