"""HTTP/2 floods from a certificate with no role, against the daemon
process: raw frames over TLS, the daemon's resident memory measured before
and after, Health asked all along."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.certs import issue_client_cert
from coordinator.client import CoordinatorClient
from coordinator.dev import env
from coordinator.dev.pids import stop_pid
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
# README "Limits of the API listener": a connection that never acknowledges
# the listener's SETTINGS can make the daemon hold up to this much with a
# header block that never ends (1-byte references to one table entry: ~0.5 MB
# on the wire is 16 MiB of header list), so [server] max_connections bounds
# what floods on open connections hold. The capped daemon takes the admin's
# connection and two more.
PER_CONNECTION_RSS_MB = 170
CAPPED_CONNECTIONS = 3
FLOODERS = 6
INDEXED_BYTES = 1_000_000  # per flooder, past the 16 MiB of header list


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
        flood((host, int(port)), Path(endpoint.ca), cert, key, HEALTH, CONTINUATION_BYTES, shape="small")

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


@pytest.fixture
def capped(dev: tuple[env.Endpoint, Path, Path]) -> Iterator[env.Endpoint]:
    """The module's daemon restarted with [server] max_connections =
    CAPPED_CONNECTIONS; restarted as it was afterwards (under a new pid: the
    module's last test)."""
    endpoint, _, _ = dev
    config = Path(endpoint.config)
    original = config.read_text()
    stop_pid(endpoint.daemon_pid)
    capped_text, replaced = re.subn(
        r"(?m)^max_connections = \d+$", f"max_connections = {CAPPED_CONNECTIONS}", original
    )
    assert replaced == 1, "the dev config sets [server] max_connections"
    config.write_text(capped_text)
    try:
        yield env.dev_up(config.parent, vfs=1, sfs=0)
    finally:
        stop_pid(env.load_endpoint(config.parent).daemon_pid)
        config.write_text(original)
        env.dev_up(config.parent, vfs=1, sfs=0)


def test_continuation_floods_on_every_connection_stay_bounded(
    dev: tuple[env.Endpoint, Path, Path], capped: env.Endpoint
) -> None:
    _, cert, key = dev
    host, port = capped.coordinator.rsplit(":", 1)
    sent: list[int] = []

    def attack() -> None:
        sent.append(
            flood(
                (host, int(port)),
                Path(capped.ca),
                cert,
                key,
                HEALTH,
                INDEXED_BYTES,
                shape="indexed",
                hold_s=3.0,
            )
        )

    before, peak, took = _rss_mb(capped.daemon_pid), [0.0], []
    with CoordinatorClient(capped.coordinator, capped.admin_tls(), timeout=10) as admin:
        assert admin.health().version  # connected before the flood: one of the slots
        threads = [threading.Thread(target=attack) for _ in range(FLOODERS)]
        for thread in threads:
            thread.start()

        def sample() -> None:
            while any(t.is_alive() for t in threads):
                peak[0] = max(peak[0], _rss_mb(capped.daemon_pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            assert admin.health().version
            took.append(time.monotonic() - started)
            time.sleep(0.05)
        for thread in [*threads, sampler]:
            thread.join()
    grown = peak[0] - before
    flooded = sum(1 for count in sent if count >= INDEXED_BYTES)
    bound = (CAPPED_CONNECTIONS - 1) * PER_CONNECTION_RSS_MB
    assert grown <= bound, f"peak RSS +{grown:.0f} MB with {flooded} connections flooding (bound {bound} MB)"
    assert flooded >= 1, sent  # the flood did reach the daemon
    assert took and max(took) < 10
