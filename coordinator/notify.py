"""The systemd notification protocol (sd_notify), spoken without libsystemd.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``$NOTIFY_SOCKET``; the service sends newline-separated ``KEY=VALUE``
assignments to it (``READY=1``, ``STATUS=…``, ``WATCHDOG=1``,
``STOPPING=1``). The kernel attaches the sender's pid, which is how
``NotifyAccess=main`` knows the message comes from the daemon itself.

Without ``$NOTIFY_SOCKET`` (run by hand, under tests, in ``dev up``) every
call is a no-op, so the daemon never needs to know how it was started.

The watchdog is only as useful as what it proves: ``watchdog_task`` pings
only after the given checks answered True within a deadline, so a wedged
event loop (the task never runs), a stuck store or a hung OVSDB worker
stops the pings and systemd restarts the daemon after ``WatchdogSec=``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

from coordinator.waiting import wait_within

log = logging.getLogger(__name__)

# A STATUS= line is shown by `systemctl status`; keep it one short line.
_STATUS_MAX = 256
_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends sd_notify messages to one socket address (None: disabled)."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """The notifier systemd asked for: ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
        ``WATCHDOG_PID``. Malformed watchdog values disable the watchdog (and
        are logged) rather than failing start-up.

        ``unset`` removes the variables from ``os.environ`` afterwards (like
        sd_notify's unset_environment), so the processes the daemon spawns
        (ovs-ofctl, ovs-appctl, OVS daemons of the dev environment) do not
        take systemd's socket for theirs."""
        env = dict(os.environ if environ is None else environ)
        if unset and environ is None:
            for key in _ENV_KEYS:
                os.environ.pop(key, None)
        address = env.get("NOTIFY_SOCKET", "") or None
        if address is not None and not address.startswith(("/", "@")):
            # vsock: and other transports newer systemd may hand out; the
            # daemon only ever runs under the local service manager.
            log.warning("NOTIFY_SOCKET %r is not a unix socket path: notifications disabled", address)
            address = None
        return cls(
            address,
            watchdog_usec=_positive_int(env, "WATCHDOG_USEC"),
            watchdog_pid=_positive_int(env, "WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects WATCHDOG=1, or None when the
        watchdog is off, meant for another process (``WATCHDOG_PID``), or
        there is no socket to ping."""
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 1_000_000

    # -- messages -------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd starts ordering dependents after us
        and arms the watchdog."""
        return self._send("READY=1", *_status_line(status))

    def status(self, text: str) -> bool:
        return self._send(*_status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        return self._send("STOPPING=1", *_status_line(status))

    def watchdog(self) -> bool:
        return self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start (or stop) timeout fires:
        for a start-up convergence that re-installs many attachments."""
        return self._send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, *assignments: str) -> bool:
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a full receive queue: a lost
                # status line is harmless, a lost ping is retried next period.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"notify": message.decode(), "error": str(exc)})
            return False
        return True


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte instead of '@'.
        return b"\0" + address[1:].encode()
    return address


def _positive_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key, "")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("ignoring malformed %s=%r", key, raw)
        return None
    return value


def _status_line(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # One assignment per line: a newline inside would start a new one.
    flat = " ".join(text.split())
    return (f"STATUS={flat[:_STATUS_MAX]}",)


async def watchdog_task(
    notifier: Notifier,
    checks: Callable[[], Awaitable[bool]],
    interval: float,
    *,
    check_timeout: float | None = None,
) -> None:
    """Ping WATCHDOG=1 every ``interval / 2`` seconds while ``checks()``
    returns True within ``check_timeout`` (default ``interval / 4``).

    ``interval`` is the watchdog timeout (``Notifier.watchdog_interval()``).
    A check that fails, raises or hangs skips that ping only; systemd acts
    when no ping arrived for a whole ``interval``, so a blip shorter than
    that is tolerated. Runs until cancelled."""
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval}")
    period = interval / 2
    deadline = interval / 4 if check_timeout is None else check_timeout
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        if await _alive(checks, deadline):
            notifier.watchdog()
        await asyncio.sleep(max(0.0, period - (loop.time() - started)))


async def _alive(checks: Callable[[], Awaitable[bool]], deadline: float) -> bool:
    try:
        ok = await wait_within(checks(), timeout=deadline)
    except asyncio.TimeoutError:
        log.warning("watchdog check did not answer in time: not pinging", extra={"deadline_s": deadline})
        return False
    except Exception as exc:
        log.warning("watchdog check failed: not pinging", extra={"error": repr(exc)})
        return False
    if not ok:
        log.warning("watchdog check reported unhealthy: not pinging")
    return bool(ok)
