"""Attachment identity: slot -> cookie, zone, meter and conjunction ids, and
back from a cookie (ours or someone else's) to the slot."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.attachment_identity import (
    BRIDGE_COOKIE,
    COOKIE_OWNER,
    COOKIE_OWNER_MASK,
    MAX_RULE_INDEX,
    MAX_SLOT,
    MAX_ZONE,
    MIN_SLOT,
    check_slot,
    conjunction_id,
    cookie_for_slot,
    cookie_in_flow,
    cookie_range,
    is_ours,
    meter_of_slot,
    slot_of_cookie,
    zone_of_slot,
)

slots = st.integers(MIN_SLOT, MAX_SLOT)


@given(slots)
def test_cookie_round_trips_to_its_slot(slot: int) -> None:
    cookie = cookie_for_slot(slot)
    assert slot_of_cookie(cookie) == slot
    assert is_ours(cookie) and cookie & COOKIE_OWNER_MASK == COOKIE_OWNER
    assert cookie != BRIDGE_COOKIE


def test_the_layout_is_the_one_flows_on_switches_carry() -> None:
    # Flows installed by earlier versions must still be recognised as ours.
    assert cookie_for_slot(1) == 0xBFC0_0000_0000_0001
    assert cookie_for_slot(MAX_SLOT) == 0xBFC0_0000_0000_FFFF
    assert BRIDGE_COOKIE == 0xBFC0_0000_0000_0000
    assert (MIN_SLOT, MAX_SLOT, MAX_ZONE) == (1, 65535, 65535)


@given(slots)
def test_zone_and_meter_are_the_slot(slot: int) -> None:
    assert zone_of_slot(slot) == meter_of_slot(slot) == slot


@pytest.mark.parametrize("bad", [0, -1, MAX_SLOT + 1, 1 << 32, True])
def test_slots_outside_the_16_bit_space_are_refused(bad: int) -> None:
    for derive in (check_slot, cookie_for_slot, zone_of_slot, meter_of_slot):
        with pytest.raises(ValueError, match=r"outside 1\.\.65535"):
            derive(bad)


@pytest.mark.parametrize(
    "cookie",
    [
        BRIDGE_COOKIE,  # ours, but the bridge's
        0,  # OVS's default cookie
        0x1,
        0xBFC1 << 48 | 5,  # another owner prefix
        COOKIE_OWNER | 1 << 16 | 5,  # bits between the owner and the slot
        COOKIE_OWNER | 1 << 47,
        0xFFFF_FFFF_FFFF_FFFF,
    ],
)
def test_foreign_and_bridge_cookies_have_no_slot(cookie: int) -> None:
    assert slot_of_cookie(cookie) is None


def test_only_owner_prefixed_cookies_are_ours() -> None:
    assert is_ours(BRIDGE_COOKIE) and is_ours(COOKIE_OWNER | 1 << 20)
    assert not is_ours(0) and not is_ours(0xBFC1 << 48) and not is_ours(0x00C0 << 48)


@given(
    st.lists(
        st.tuples(slots, st.booleans(), st.booleans(), st.integers(0, MAX_RULE_INDEX)),
        min_size=2,
        max_size=2,
        unique=True,
    )
)
def test_conjunction_ids_are_unique_and_carry_the_slot(keys: list[tuple[int, bool, bool, int]]) -> None:
    ids = [conjunction_id(s, ingress=i, ipv6=v6, rule_index=r) for s, i, v6, r in keys]
    assert ids[0] != ids[1]
    for conj, (slot, _, _, _) in zip(ids, keys, strict=True):
        assert conj >> 16 == slot and 0 < conj < 1 << 32


def test_conjunction_id_layout() -> None:
    assert conjunction_id(3, ingress=False, ipv6=False, rule_index=0) == 0x0003_0000
    assert conjunction_id(3, ingress=True, ipv6=False, rule_index=1) == 0x0003_8001
    assert conjunction_id(3, ingress=False, ipv6=True, rule_index=MAX_RULE_INDEX) == 0x0003_7FFF
    with pytest.raises(ValueError, match="rule index"):
        conjunction_id(3, ingress=False, ipv6=False, rule_index=MAX_RULE_INDEX + 1)
    with pytest.raises(ValueError, match="slot"):
        conjunction_id(0, ingress=False, ipv6=False, rule_index=0)


@pytest.mark.parametrize(
    ("flow", "cookie"),
    [
        ("cookie=0xbfc0000000000007, table=3, priority=5,ip actions=drop", 0xBFC0_0000_0000_0007),
        ("table=3 priority=5,ip cookie=0xbfc0000000000007 actions=drop", 0xBFC0_0000_0000_0007),
        ("cookie=42, table=0, priority=0 actions=drop", 42),
        ("table=0, priority=0 actions=drop", None),
        ("table=0, priority=0,nocookie=0x5 actions=drop", None),
    ],
)
def test_cookie_in_printed_flow(flow: str, cookie: int | None) -> None:
    assert cookie_in_flow(flow) == cookie


@given(st.lists(slots, min_size=1, max_size=20))
def test_a_cookie_range_selects_its_cookies_and_an_aligned_range_of_slots_no_wider(chosen: list[int]) -> None:
    cookie, mask = cookie_range(cookie_for_slot(s) for s in chosen)
    assert all(cookie_for_slot(s) & mask == cookie for s in chosen)
    assert mask & COOKIE_OWNER_MASK == COOKIE_OWNER_MASK  # only ours
    covered = (~mask & ((1 << 64) - 1)) + 1  # slots the range spans, aligned
    assert covered == 1 or covered < 2 * (max(chosen) ^ min(chosen)) + 2
    assert (cookie & MAX_SLOT) % covered == 0


def test_a_cookie_range_of_a_few_slots() -> None:
    assert cookie_range([cookie_for_slot(5)]) == (cookie_for_slot(5), (1 << 64) - 1)
    assert cookie_range(cookie_for_slot(s) for s in (4, 7, 5)) == (COOKIE_OWNER | 4, ((1 << 64) - 1) & ~3)
    with pytest.raises(ValueError, match="not ours"):
        cookie_range([cookie_for_slot(4), 0x1234])
