"""An attachment's identity on the switch, derived from its slot (pure).

Every attachment holds one slot, a 16-bit index (1..65535) the store hands
out. The slot is the attachment's conntrack zone, its meter id, the low 16
bits of its flow cookie and the top bits of its conjunction ids, so each of
these can be read back and mapped to exactly one attachment. The layout of
all of them lives here and nowhere else.

Flow cookie (64 bits)::

    0xbfc0 | 0000 0000 | <slot, 16 bits>

The top 16 bits (``COOKIE_OWNER``) mark a flow as ours; the bridge-wide
flows carry the owner bits and slot 0 (``BRIDGE_COOKIE``). Any other cookie
belongs to someone else and is never touched.

Conjunction id (32 bits)::

    <slot, 16 bits> | ingress bit | IPv6 bit | <rule index, 14 bits>
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

SLOT_BITS: Final = 16
MIN_SLOT: Final = 1  # zone 0 is every untracked connection's zone: never an attachment's
MAX_SLOT: Final = (1 << SLOT_BITS) - 1
# OVS's conntrack zone field is 16 bits wide: every slot is a zone, and a
# zone read back from OVS is at most this.
MAX_ZONE: Final = MAX_SLOT

COOKIE_OWNER: Final = 0xBFC0 << 48
COOKIE_OWNER_MASK: Final = 0xFFFF << 48
BRIDGE_COOKIE: Final = COOKIE_OWNER
_COOKIE_BITS: Final = (1 << 64) - 1
_SLOT_MASK: Final = MAX_SLOT

_CONJ_INGRESS_BIT: Final = 1 << 15
_CONJ_IPV6_BIT: Final = 1 << 14
MAX_RULE_INDEX: Final = _CONJ_IPV6_BIT - 1

# The cookie as ovs-ofctl prints it in a flow ("cookie=0xbfc0000000000001,
# ..."), in hex or (older versions) decimal.
_COOKIE_IN_FLOW: Final = re.compile(r"\bcookie=(0x[0-9a-fA-F]+|\d+)")


def check_slot(slot: int) -> int:
    """``slot`` itself; ValueError unless it is 1..65535."""
    if isinstance(slot, bool) or not isinstance(slot, int) or not MIN_SLOT <= slot <= MAX_SLOT:
        raise ValueError(f"slot {slot!r} outside {MIN_SLOT}..{MAX_SLOT}")
    return slot


def cookie_for_slot(slot: int) -> int:
    """The cookie of every flow of the attachment in ``slot``."""
    return COOKIE_OWNER | check_slot(slot)


def is_ours(cookie: int) -> bool:
    """Whether a flow cookie carries our owner bits (bridge or attachment)."""
    return cookie & COOKIE_OWNER_MASK == COOKIE_OWNER


def slot_of_cookie(cookie: int) -> int | None:
    """The slot a flow cookie belongs to; None for the bridge's own cookie
    and for cookies that are not ours (another owner, bits set between the
    owner and the slot)."""
    if not is_ours(cookie):
        return None
    low = cookie & ~COOKIE_OWNER_MASK
    return low if MIN_SLOT <= low <= MAX_SLOT else None


def cookie_range(cookies: Iterable[int]) -> tuple[int, int]:
    """A cookie and mask selecting every cookie of ``cookies`` (all ours)
    and no more others than the smallest aligned range of slots holding
    them: what a read of only their flows asks the switch for. ValueError
    if one is not ours."""
    listed = list(cookies)
    if not listed:
        return COOKIE_OWNER, COOKIE_OWNER_MASK
    spread = 0
    for cookie in listed:
        if not is_ours(cookie):
            raise ValueError(f"cookie {cookie:#x} is not ours")
        spread |= cookie ^ listed[0]
    mask = _COOKIE_BITS & ~((1 << spread.bit_length()) - 1)
    return listed[0] & mask, mask


def zone_of_slot(slot: int) -> int:
    """The conntrack zone of the attachment in ``slot``."""
    return check_slot(slot)


def meter_of_slot(slot: int) -> int:
    """The OpenFlow meter id of the attachment in ``slot`` (one meter each)."""
    return check_slot(slot)


def conjunction_id(slot: int, *, ingress: bool, ipv6: bool, rule_index: int) -> int:
    """The id of the conjunction deciding rule ``rule_index`` of one direction
    and address family of the attachment in ``slot``: unique across all
    attachments, directions and families of the bridge."""
    if not 0 <= rule_index <= MAX_RULE_INDEX:
        raise ValueError(f"rule index {rule_index} outside 0..{MAX_RULE_INDEX}")
    return (
        check_slot(slot) << SLOT_BITS
        | (_CONJ_INGRESS_BIT if ingress else 0)
        | (_CONJ_IPV6_BIT if ipv6 else 0)
        | rule_index
    )


def cookie_in_flow(flow: str) -> int | None:
    """The cookie of a flow as ovs-ofctl prints it; None if it shows none."""
    match = _COOKIE_IN_FLOW.search(flow)
    return int(match.group(1), 0) if match else None


__all__ = [
    "BRIDGE_COOKIE",
    "COOKIE_OWNER",
    "COOKIE_OWNER_MASK",
    "MAX_RULE_INDEX",
    "MAX_SLOT",
    "MAX_ZONE",
    "MIN_SLOT",
    "check_slot",
    "conjunction_id",
    "cookie_for_slot",
    "cookie_in_flow",
    "cookie_range",
    "is_ours",
    "meter_of_slot",
    "slot_of_cookie",
    "zone_of_slot",
]
