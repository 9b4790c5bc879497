"""The front's notion of a peer, and that the relay's names map back."""

from __future__ import annotations

from coordinator.api import front


def test_a_peer_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert front.peer_key("198.51.100.7") == "198.51.100.7"
    assert front.peer_key("2001:db8:1:2::7") == front.peer_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert front.peer_key("2001:db8:1:3::7") != front.peer_key("2001:db8:1:2::7")
    assert front.peer_key("::ffff:198.51.100.7") == "198.51.100.7"


def test_peers_that_are_not_relayed_are_left_as_they_are() -> None:
    assert front.outer_peer("ipv4:198.51.100.7:50123") == "ipv4:198.51.100.7:50123"
    assert front.outer_peer("unix-abstract:nobody/1") == "unix-abstract:nobody/1"
    front.prove("unix-abstract:nobody/1")  # nothing to prove: no error
