"""HTTP/2 floods from a certificate with no role, against the daemon
process: raw frames over TLS, the daemon's resident memory measured before
and after, Health asked all along."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.certs import issue_client_cert
from coordinator.client import CoordinatorClient
from coordinator.dev import env
from tests.conftest import require_ovs
from tests.integration.h2flood import flood, open_streams

pytestmark = pytest.mark.ovs

HEALTH = "/bluefield.coordinator.v1.Coordinator/Health"
CONNECTIONS = 4
STREAMS = 600  # per connection, each with a complete header list and no request
HEADER_BYTES = 8000  # each stream's header list, under the metadata limit
# README "Limits of the API listener": what 4 x 600 such streams may add to
# the daemon's resident memory (with the library defaults every stream is
# kept, about 45 kB each: +110 MB).
STREAM_FLOOD_RSS_MB = 48
CONTINUATION_BYTES = 10_000_000  # per connection, one header block never ended
# README "Limits of the API listener": one header value over the metadata
# limit is skipped unread however long it is (measured: +8 MB for 40 MB).
ONE_VALUE_BYTES = 40_000_000
ONE_VALUE_RSS_MB = 32


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[env.Endpoint, Path, Path]]:
    require_ovs()
    workdir = tmp_path_factory.mktemp("flood")
    try:
        endpoint = env.dev_up(workdir, vfs=1, sfs=0)
        certs = workdir / "certs"
        cert, key = issue_client_cert(
            certs / "ca.pem",
            certs / "ca.key",
            certs,
            "stranger",
            uri="spiffe://bluefield.local/host/stranger",
        )
        yield endpoint, cert, key
    finally:
        env.dev_down(workdir)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _while_flooding(endpoint: env.Endpoint, attack: Callable[[], object]) -> list[float]:
    """Run ``attack`` on CONNECTIONS threads; ask Health all along. The
    seconds each Health took (every one must answer)."""
    threads = [threading.Thread(target=attack) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    took = []
    with CoordinatorClient(endpoint.coordinator, endpoint.admin_tls(), timeout=10) as admin:
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            assert admin.health().version
            took.append(time.monotonic() - started)
            time.sleep(0.05)
    for thread in threads:
        thread.join()
    return took


def test_a_flood_of_open_streams_stays_bounded(dev: tuple[env.Endpoint, Path, Path]) -> None:
    endpoint, cert, key = dev
    host, port = endpoint.coordinator.rsplit(":", 1)
    refused: list[int] = []

    def attack() -> None:
        refused.append(
            open_streams((host, int(port)), Path(endpoint.ca), cert, key, HEALTH, STREAMS, HEADER_BYTES, 2.0)
        )

    before = _rss_mb(endpoint.daemon_pid)
    took = _while_flooding(endpoint, attack)
    grown = _rss_mb(endpoint.daemon_pid) - before
    assert took, "Health was never asked"
    assert grown <= STREAM_FLOOD_RSS_MB, f"RSS grew {grown:.0f} MB; Health took up to {max(took):.2f} s"
    # All but the allowed concurrent streams of each connection were refused.
    assert all(count >= STREAMS - 64 for count in refused), refused


def test_health_answers_through_a_continuation_flood(dev: tuple[env.Endpoint, Path, Path]) -> None:
    endpoint, cert, key = dev
    host, port = endpoint.coordinator.rsplit(":", 1)

    def attack() -> None:
        flood((host, int(port)), Path(endpoint.ca), cert, key, HEALTH, CONTINUATION_BYTES, many=True)

    took = _while_flooding(endpoint, attack)
    assert took and max(took) < 10


def test_one_endless_header_value_is_skipped_not_kept(dev: tuple[env.Endpoint, Path, Path]) -> None:
    endpoint, cert, key = dev
    host, port = endpoint.coordinator.rsplit(":", 1)
    before = _rss_mb(endpoint.daemon_pid)
    sent = flood((host, int(port)), Path(endpoint.ca), cert, key, HEALTH, ONE_VALUE_BYTES)
    grown = _rss_mb(endpoint.daemon_pid) - before
    assert sent >= ONE_VALUE_BYTES  # read to the end: grpcio does not cut the connection
    assert grown <= ONE_VALUE_RSS_MB, f"RSS grew {grown:.0f} MB"
