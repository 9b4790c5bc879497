"""Net device events (udev): an early nudge to re-read the eswitch inventory.

A VF the host adds or removes shows up on the next inventory poll anyway;
where udevd runs, :class:`RepresentorWatcher` makes that poll happen at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["NetEvent", "NetEventSource", "PyudevNetEventSource", "RepresentorWatcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetEvent:
    action: str  # "add", "remove", "move" (rename), "change", ...
    ifname: str


class NetEventSource(Protocol):
    def poll(self, timeout: float) -> NetEvent | None:
        """The next event, or None after ``timeout`` seconds without one."""
        ...

    def close(self) -> None: ...


class PyudevNetEventSource:
    """Net device events from pyudev.

    ``source="udev"`` (after udevd's processing, renames done) needs a running
    udevd; ``"kernel"`` gets raw uevents, but only of the daemon's own network
    namespace. Without udevd nothing arrives: polling stays the fallback.
    """

    def __init__(self, source: str = "udev") -> None:
        import pyudev  # imported here: only daemons that watch need libudev

        self._monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        self._monitor.filter_by("net")
        self._monitor.start()

    def poll(self, timeout: float) -> NetEvent | None:
        device = self._monitor.poll(timeout)
        if device is None:
            return None
        return NetEvent(str(device.action or ""), str(device.sys_name))

    def close(self) -> None:
        # pyudev has no close(); dropping the monitor releases its socket.
        self._monitor = None


class RepresentorWatcher:
    """Calls ``callback(event)`` for net add/remove/move events on a daemon thread.

    Meant to trigger an early ``inventory()`` (a VF appeared or went) instead
    of waiting for the next poll. The callback runs on the watcher's thread;
    an exception in it is logged and the watcher goes on.
    """

    ACTIONS = frozenset({"add", "remove", "move"})

    def __init__(
        self,
        callback: Callable[[NetEvent], None],
        source: NetEventSource | None = None,
        *,
        poll_timeout_s: float = 0.5,
    ) -> None:
        self._callback = callback
        self._source = source
        self._own_source = source is None
        self._poll_timeout = poll_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._source is None:
            self._source = PyudevNetEventSource()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="representor-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        source = self._source
        assert source is not None
        while not self._stop.is_set():
            try:
                event = source.poll(self._poll_timeout)
            except Exception:
                log.exception("representor watcher: event source failed; stopping (polling continues)")
                return
            if event is None or event.action not in self.ACTIONS:
                continue
            try:
                self._callback(event)
            except Exception:
                log.exception("representor watcher: callback failed for %s %s", event.action, event.ifname)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._source is not None and self._own_source:
            self._source.close()
            self._source = None

    def __enter__(self) -> RepresentorWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
