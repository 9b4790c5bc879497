"""The front's notion of a peer, that the relay's names map back, and
the count of the connections it sheds."""

from __future__ import annotations

import asyncio
import socket

from coordinator.api import front
from coordinator.api.front import FrontDoor
from coordinator.metrics import PREFIX, Metrics


def test_a_peer_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert front.peer_key("198.51.100.7") == "198.51.100.7"
    assert front.peer_key("2001:db8:1:2::7") == front.peer_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert front.peer_key("2001:db8:1:3::7") != front.peer_key("2001:db8:1:2::7")
    assert front.peer_key("::ffff:198.51.100.7") == "198.51.100.7"


def test_peers_that_are_not_relayed_are_left_as_they_are() -> None:
    assert front.outer_peer("ipv4:198.51.100.7:50123") == "ipv4:198.51.100.7:50123"
    assert front.outer_peer("unix-abstract:nobody/1") == "unix-abstract:nobody/1"
    front.prove("unix-abstract:nobody/1")  # nothing to prove: no error


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # gRPC's end, standing in: holds the relayed connection until it closes
    writer.close()


async def _connected(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        sockets.append(s)
    await asyncio.sleep(0.1)  # accepted and relayed
    return sockets


def test_the_connections_the_front_sheds_are_counted_by_why() -> None:
    """A newcomer that takes an unproven connection's place, an unproven
    connection past its time, a newcomer refused because every place is
    proven: each a count of the daemon's metric, by reason."""
    metrics = Metrics()

    def shed(reason: str) -> int:
        return int(
            metrics.registry.get_sample_value(f"{PREFIX}_api_connections_shed_total", {"reason": reason}) or 0
        )

    async def go() -> None:
        front = FrontDoor(2, 0.5, on_shed=metrics.api_connection_shed)
        inner = await asyncio.start_unix_server(_hold, front.inner_path)
        port = await front.start("127.0.0.1", 0)
        held: list[socket.socket] = []
        try:
            held += await _connected(port, 3)  # the third takes the first's place
            assert (shed("displaced"), shed("expired"), shed("refused")) == (1, 0, 0)
            await asyncio.sleep(0.7)  # the two left never proved themselves
            assert (shed("displaced"), shed("expired"), shed("refused")) == (1, 2, 0)
            held += await _connected(port, 2)
            for connection in list(front._open.values()):
                connection.prove()
            held += await _connected(port, 1)  # every place proven: refused
            assert (shed("displaced"), shed("expired"), shed("refused")) == (1, 2, 1)
        finally:
            for s in held:
                s.close()
            await front.close()
            inner.close()

    asyncio.run(go())
