"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.notify import Notifier, watchdog_task


class FakeSystemd:
    """A bound datagram socket plus a thread recording (arrival time, message),
    so arrival times are right even while the test's event loop is blocked."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.received.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        with self._lock:
            return [m for _, m in self.received]

    def pings(self) -> list[float]:
        with self._lock:
            return [t for t, m in self.received if m == "WATCHDOG=1"]

    def wait_for(self, count: int, timeout: float = 2.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages()) < count:
            time.sleep(0.01)
        return self.messages()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = tmp_path / "notify.sock"
    fake = FakeSystemd(str(path))
    yield fake, str(path)
    fake.close()


def _notifier(address: str, **watchdog: str) -> Notifier:
    return Notifier.from_environment({"NOTIFY_SOCKET": address, **watchdog})


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.watchdog_interval() is None


def test_messages_arrive_in_protocol_form(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    notifier = _notifier(path)
    assert notifier.enabled
    assert notifier.ready("serving on 127.0.0.1:8443")
    assert notifier.status("3 attachments\n(2 bound)")
    assert notifier.watchdog()
    assert notifier.extend_timeout(1.5)
    assert notifier.stopping()
    notifier.close()
    assert fake.wait_for(5) == [
        "READY=1\nSTATUS=serving on 127.0.0.1:8443",
        # A newline would start a new assignment: flattened to one line.
        "STATUS=3 attachments (2 bound)",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=1500000",
        "STOPPING=1",
    ]


def test_abstract_namespace_socket() -> None:
    name = f"bfc-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode())
    try:
        notifier = _notifier("@" + name)
        assert notifier.ready()
        assert fake.wait_for(1) == ["READY=1"]
    finally:
        fake.close()


def test_unreachable_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = _notifier(str(tmp_path / "missing.sock"))
    assert notifier.ready() is False


def test_unset_keeps_the_socket_from_child_processes(
    systemd: tuple[FakeSystemd, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, path = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    notifier = Notifier.from_environment(unset=True)
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert notifier.watchdog_interval() == 3.0
    assert notifier.status("still works")
    assert fake.wait_for(1) == ["STATUS=still works"]


def test_non_unix_notify_socket_disables_notifications() -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_watchdog_interval_from_environment(systemd: tuple[FakeSystemd, str]) -> None:
    _, path = systemd
    assert _notifier(path).watchdog_interval() is None
    assert _notifier(path, WATCHDOG_USEC="2000000").watchdog_interval() == 2.0
    own = str(os.getpid())
    assert _notifier(path, WATCHDOG_USEC="2000000", WATCHDOG_PID=own).watchdog_interval() == 2.0
    # The watchdog is meant for another process (e.g. a wrapper that exec'd us).
    other = str(os.getpid() + 1)
    assert _notifier(path, WATCHDOG_USEC="2000000", WATCHDOG_PID=other).watchdog_interval() is None
    assert _notifier(path, WATCHDOG_USEC="soon").watchdog_interval() is None
    assert _notifier(path, WATCHDOG_USEC="0").watchdog_interval() is None


async def _run_for(seconds: float, coro: asyncio.Future[None] | asyncio.Task[None]) -> None:
    await asyncio.sleep(seconds)
    coro.cancel()
    with pytest.raises(asyncio.CancelledError):
        await coro


async def _healthy() -> bool:
    return True


async def test_watchdog_pings_at_half_the_interval(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    interval = 0.4
    task = asyncio.create_task(watchdog_task(_notifier(path), _healthy, interval))
    await _run_for(1.1, task)
    pings = fake.pings()
    # At t = 0, 0.2, ... 1.0: six pings; allow one either way for a slow box.
    assert 5 <= len(pings) <= 7, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.1 < gap < interval for gap in gaps), gaps


async def test_watchdog_stops_while_checks_fail_and_resumes(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    healthy = True

    async def check() -> bool:
        return healthy

    task = asyncio.create_task(watchdog_task(_notifier(path), check, 0.2))
    await asyncio.sleep(0.35)
    assert len(fake.pings()) >= 2
    healthy = False
    await asyncio.sleep(0.15)  # let a ping that was already due land
    failed_at = time.monotonic()
    await asyncio.sleep(0.5)
    assert [t for t in fake.pings() if t > failed_at] == []
    healthy = True
    await _run_for(0.3, task)
    assert [t for t in fake.pings() if t > failed_at], "pings did not resume after recovery"


async def test_watchdog_skips_hanging_and_raising_checks(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    calls = 0

    async def check() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("store closed")
        if calls <= 4:
            await asyncio.Event().wait()  # an OVSDB call that never answers
        return True

    # Period 0.2 s, checks get 0.1 s: calls 1-4 yield no ping, then pings flow.
    task = asyncio.create_task(watchdog_task(_notifier(path), check, 0.4, check_timeout=0.1))
    await asyncio.sleep(0.7)
    assert fake.pings() == []
    await _run_for(0.5, task)
    assert calls >= 5
    assert fake.pings(), "pings did not start once the check answered"


async def test_wedged_event_loop_sends_no_pings(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    task = asyncio.create_task(watchdog_task(_notifier(path), _healthy, 0.2))
    await asyncio.sleep(0.25)
    assert fake.pings()
    wedged_at = time.monotonic()
    time.sleep(0.6)  # blocks the loop: exactly what a stuck handler would do
    unwedged_at = time.monotonic()
    await _run_for(0.15, task)
    assert [t for t in fake.pings() if wedged_at < t < unwedged_at] == []
    assert [t for t in fake.pings() if t >= unwedged_at], "pings did not resume after the loop recovered"


async def test_watchdog_rejects_a_nonpositive_interval(systemd: tuple[FakeSystemd, str]) -> None:
    _, path = systemd
    with pytest.raises(ValueError, match="positive"):
        await watchdog_task(_notifier(path), _healthy, 0)
