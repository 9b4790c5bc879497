"""Deterministic, unique MAC addresses for eswitch functions (pure)."""

from __future__ import annotations

import hashlib

from coordinator.eswitch.base import DeviceKind

MAX_FUNCTION_NUMBER = (1 << 20) - 1


def mac_for_device(salt: str, kind: DeviceKind, controller: int, pf: int, number: int) -> str:
    """``02:SS:SS:DD:DD:DD``: locally administered unicast.

    The two ``S`` bytes come from a per-DPU salt (and the controller), so two
    DPUs on one fabric do not hand out the same MAC for their VF 0; the three
    ``D`` bytes encode kind, PF and function number exactly, so on one DPU two
    devices never collide.
    """
    if not 0 <= pf <= 7:
        raise ValueError(f"pf {pf} outside 0..7")
    if not 0 <= number <= MAX_FUNCTION_NUMBER:
        raise ValueError(f"function number {number} outside 0..{MAX_FUNCTION_NUMBER}")
    salt_bytes = hashlib.sha256(f"{salt}/{controller}".encode()).digest()[:2]
    code = ((1 if kind is DeviceKind.SF else 0) << 23) | (pf << 20) | number
    octets = [0x02, *salt_bytes, (code >> 16) & 0xFF, (code >> 8) & 0xFF, code & 0xFF]
    return ":".join(f"{o:02x}" for o in octets)
