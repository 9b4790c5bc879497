"""Port range -> (value, mask) decomposition, checked against brute force and
against the known-optimal recursive (trie) decomposition."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.policy.portmask import merge_port_ranges, port_range_masks, ranges_to_masks
from coordinator.policy.scope import PortRange

FULL = 1 << 16


def matched_ports(value: int, mask: int) -> list[int]:
    """Every port p with p & mask == value, by enumerating the free bits
    (works for any mask, prefix or not)."""
    assert value & ~mask & 0xFFFF == 0, f"value {value:#x} has bits outside mask {mask:#x}"
    free = ~mask & 0xFFFF
    ports = []
    sub = free
    while True:
        ports.append(value | sub)
        if sub == 0:
            return ports
        sub = (sub - 1) & free


def coverage(pairs: list[tuple[int, int]]) -> bytearray:
    """How many pairs match each port."""
    counts = bytearray(FULL)
    for value, mask in pairs:
        assert 0 <= value <= 0xFFFF and 0 <= mask <= 0xFFFF
        for port in matched_ports(value, mask):
            counts[port] += 1
    return counts


def expected_coverage(ranges: list[tuple[int, int]]) -> bytearray:
    counts = bytearray(FULL)
    for start, end in ranges:
        counts[start : end + 1] = b"\x01" * (end - start + 1)
    return counts


def optimal(lo: int, hi: int, node: int = 0, size: int = FULL) -> list[tuple[int, int]]:
    """The minimal prefix cover of lo..hi: walk the binary trie of ports,
    taking a node whole when it lies inside the range."""
    node_hi = node + size - 1
    if hi < node or lo > node_hi:
        return []
    if lo <= node and node_hi <= hi:
        return [(node, 0xFFFF & ~(size - 1))]
    half = size // 2
    return optimal(lo, hi, node, half) + optimal(lo, hi, node + half, half)


def is_prefix_mask(mask: int) -> bool:
    inverted = ~mask & 0xFFFF
    return inverted & (inverted + 1) == 0


ports = st.one_of(
    st.sampled_from([1, 2, 79, 80, 81, 1023, 1024, 1025, 32767, 32768, 65534, 65535]), st.integers(1, 65535)
)


@st.composite
def port_range(draw: st.DrawFn) -> tuple[int, int]:
    a, b = draw(ports), draw(ports)
    return (min(a, b), max(a, b))


# --------------------------------------------------------------------------
# Concrete cases


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (80, 80, [(80, 0xFFFF)]),
        (80, 81, [(80, 0xFFFE)]),
        (81, 82, [(81, 0xFFFF), (82, 0xFFFF)]),
        (0, 65535, [(0, 0)]),
        (65535, 65535, [(65535, 0xFFFF)]),
        (32768, 65535, [(32768, 0x8000)]),
        (
            1024,
            65535,
            [
                (0x0400, 0xFC00),
                (0x0800, 0xF800),
                (0x1000, 0xF000),
                (0x2000, 0xE000),
                (0x4000, 0xC000),
                (0x8000, 0x8000),
            ],
        ),
        (1, 65535, [(1 << k, 0xFFFF & ~((1 << k) - 1)) for k in range(16)]),
        (1, 1023, [(1 << k, 0xFFFF & ~((1 << k) - 1)) for k in range(10)]),
    ],
)
def test_concrete_ranges(start: int, end: int, expected: list[tuple[int, int]]) -> None:
    assert port_range_masks(start, end) == expected


def test_one_to_max_is_not_the_wildcard() -> None:
    pairs = port_range_masks(1, 65535)
    assert len(pairs) == 16
    assert coverage(pairs) == expected_coverage([(1, 65535)])


def test_worst_case_size() -> None:
    # 2 * 16 - 2 prefixes is the known worst case for 16-bit ranges.
    assert len(port_range_masks(1, 65534)) == 30


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 0), (0, 80), (0, 65534), (5, 4), (65535, 65536), (1, 65536), (-1, 5), (-1, 65535), (70000, 70001)],
)
def test_bad_ranges_are_rejected(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        port_range_masks(start, end)
    with pytest.raises(ValueError):
        ranges_to_masks([(80, 80), (start, end)])


@pytest.mark.parametrize("value", [True, 1.0, "80", None])
def test_non_integers_are_rejected(value: object) -> None:
    with pytest.raises(ValueError):
        port_range_masks(value, 80)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        port_range_masks(1, value)  # type: ignore[arg-type]


def test_ranges_to_masks_merges_overlapping_and_adjacent() -> None:
    assert merge_port_ranges([(81, 81), (80, 80), (100, 200), (150, 300), (302, 302)]) == [
        (80, 81),
        (100, 300),
        (302, 302),
    ]
    assert ranges_to_masks([(80, 80), (81, 81)]) == [(80, 0xFFFE)]
    assert ranges_to_masks([(443, 443), (80, 80), (80, 80)]) == [(80, 0xFFFF), (443, 0xFFFF)]
    assert ranges_to_masks([(1024, 65535), (1, 1023)]) == port_range_masks(1, 65535)
    assert ranges_to_masks([(0, 65535), (80, 80)]) == [(0, 0)]


def test_ranges_to_masks_accepts_port_ranges() -> None:
    assert ranges_to_masks([PortRange(22, 22), PortRange(80, 81)]) == [(22, 0xFFFF), (80, 0xFFFE)]


def test_no_ranges_match_nothing() -> None:
    assert ranges_to_masks([]) == []


# --------------------------------------------------------------------------
# Properties


@settings(max_examples=150, deadline=None)
@given(port_range())
def test_union_is_exactly_the_range_without_overlap(bounds: tuple[int, int]) -> None:
    start, end = bounds
    pairs = port_range_masks(start, end)
    # Each port of the range matched exactly once, nothing outside matched.
    assert coverage(pairs) == expected_coverage([bounds])


@settings(max_examples=500)
@given(port_range())
def test_minimal_and_equal_to_the_trie_decomposition(bounds: tuple[int, int]) -> None:
    start, end = bounds
    pairs = port_range_masks(start, end)
    assert pairs == optimal(start, end)
    assert all(is_prefix_mask(mask) and value & ~mask & 0xFFFF == 0 for value, mask in pairs)
    assert pairs == sorted(pairs)


@settings(max_examples=100, deadline=None)
@given(st.lists(port_range(), max_size=5))
def test_several_ranges_union_exact(ranges: list[tuple[int, int]]) -> None:
    pairs = ranges_to_masks(ranges)
    assert coverage(pairs) == expected_coverage(ranges)
    # Minimal: as many pairs as the trie decompositions of the merged ranges.
    assert len(pairs) == sum(len(optimal(lo, hi)) for lo, hi in merge_port_ranges(ranges))


@settings(max_examples=300)
@given(st.lists(port_range(), max_size=6))
def test_merged_ranges_are_disjoint_non_adjacent_and_cover_the_same_ports(
    ranges: list[tuple[int, int]],
) -> None:
    merged = merge_port_ranges(ranges)
    for (_, end), (start, _) in itertools.pairwise(merged):
        assert start > end + 1
    covered = {p for lo, hi in ranges for p in (lo, hi)}
    assert all(any(lo <= p <= hi for lo, hi in merged) for p in covered)
    assert expected_coverage(merged) == expected_coverage(ranges)
