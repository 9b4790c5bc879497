"""Which of a scope's IPv6 networks make a guest's link."""

from __future__ import annotations

from ipaddress import IPv6Network

from coordinator.flows.nd import on_link_prefixes


def test_the_link_is_the_64_of_each_address_or_longer_prefix() -> None:
    listed = [IPv6Network("2001:db8::10/128"), IPv6Network("2001:db8::/64"), IPv6Network("2001:db8:1::/112")]
    assert on_link_prefixes(listed) == ["2001:db8::/64", "2001:db8:1::/64"]


def test_a_prefix_wider_than_64_adds_no_neighbours() -> None:
    assert on_link_prefixes([IPv6Network("::/0"), IPv6Network("2001:db8:100::/44")]) == []
