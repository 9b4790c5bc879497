"""Port ranges as OpenFlow (value, mask) matches.

OpenFlow matches ``tp_dst=value/mask`` on the 16-bit port; a range becomes
the minimal set of aligned power-of-two blocks ("prefixes") covering it
exactly, e.g. 1024..65535 -> 0x0400/0xfc00, 0x0800/0xf800, 0x1000/0xf000,
0x2000/0xe000, 0x4000/0xc000, 0x8000/0x8000. The blocks are disjoint, so
each port of the range is matched by exactly one pair.

Valid ranges are the policy's: 1 <= start <= end <= 65535. The only range
that may include port 0 is the full range 0..65535, which is the single
wildcard pair (0, 0). Note 1..65535 is *not* the wildcard: a packet with
port 0 is outside it, and the decomposition says so (16 pairs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from coordinator.policy.scope import PortRange

PORT_BITS: Final = 16
PORT_MAX: Final = (1 << PORT_BITS) - 1
EXACT_MASK: Final = PORT_MAX


def _check_range(start: int, end: int) -> None:
    for value in (start, end):
        # bool is an int; a True port is a bug in the caller, not port 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"port {value!r} is not an integer")
    if (start, end) == (0, PORT_MAX):
        return
    if not 1 <= start <= PORT_MAX or not 1 <= end <= PORT_MAX:
        raise ValueError(f"port range {start}..{end} is outside 1..{PORT_MAX}")
    if start > end:
        raise ValueError(f"port range {start}..{end} has start > end")


def port_range_masks(start: int, end: int) -> list[tuple[int, int]]:
    """The minimal list of disjoint (value, mask) pairs, ascending by value,
    whose union is exactly the inclusive range ``start..end``.

    Raises ValueError unless 1 <= start <= end <= 65535 or the range is the
    full 0..65535.
    """
    _check_range(start, end)
    pairs: list[tuple[int, int]] = []
    low = start
    while low <= end:
        # Largest block that starts at ``low`` (so is aligned to its lowest
        # set bit; any size for 0) and does not run past ``end``: taking the
        # largest each time is what makes the result minimal.
        size = low & -low if low else 1 << PORT_BITS
        while low + size - 1 > end:
            size >>= 1
        mask = PORT_MAX & ~(size - 1)
        pairs.append((low, mask))
        low += size
    return pairs


def merge_port_ranges(ranges: Iterable[tuple[int, int] | PortRange]) -> list[tuple[int, int]]:
    """Validate ``ranges`` and merge overlapping or adjacent ones; ascending."""
    spans: list[tuple[int, int]] = []
    for item in ranges:
        start, end = (item.start, item.end) if isinstance(item, PortRange) else item
        _check_range(start, end)
        spans.append((start, end))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def ranges_to_masks(ranges: Iterable[tuple[int, int] | PortRange]) -> list[tuple[int, int]]:
    """(value, mask) pairs, disjoint and ascending, covering exactly the union
    of ``ranges`` (each ``(start, end)`` or a PortRange, validated as for
    :func:`port_range_masks`). Overlapping and adjacent ranges are merged
    first, so e.g. 80..80 and 81..81 become the single pair 80/0xfffe.

    No ranges give an empty list (matches nothing); a rule with no ports
    means "any port" and must not be passed here.
    """
    pairs: list[tuple[int, int]] = []
    for start, end in merge_port_ranges(ranges):
        pairs.extend(port_range_masks(start, end))
    return pairs
