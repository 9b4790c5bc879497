"""Keeping one listener's trust set current while the daemon runs.

The files are polled every interval (and at once on request, SIGHUP): their
stamps (inode identity and content digest) are compared with those of the
set in force, and only a change leads to a load. A new set replaces the
old one only after it validated completely; a bad one leaves the old one in
force and is reported once per distinct content (not on every poll).
Consumers read ``state`` whenever they need it (the TLS layer on each new
connection, the peer check on each call): the swap is one attribute write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from coordinator.trust.material import (
    FileStamp,
    MaterialError,
    TrustFiles,
    TrustSet,
    TrustState,
    load_trust_set,
    stamps,
)
from coordinator.waiting import wait_within

log = logging.getLogger(__name__)

OnFailure = Callable[[str, MaterialError], None]
OnReloaded = Callable[[str, TrustSet, bool], None]


class TrustReloader:
    """``name`` says which listener it serves (``server``, ``metrics``)."""

    def __init__(
        self,
        name: str,
        files: TrustFiles,
        *,
        chain_to_bundle: bool = True,
        on_failure: OnFailure | None = None,
        on_reloaded: OnReloaded | None = None,
    ) -> None:
        self.name = name
        self.files = files
        self._chain_to_bundle = chain_to_bundle
        # Who hears of outcomes (the daemon's reporting may be set later).
        self.on_failure = on_failure
        self.on_reloaded = on_reloaded
        # At start a bad set is fatal (MaterialError propagates): fail closed.
        self._stamps = stamps(files)
        self.state = TrustState(1, load_trust_set(files, chain_to_bundle=chain_to_bundle))
        self.failing: MaterialError | None = None
        self._failed_stamps: tuple[FileStamp | None, ...] | None = None
        self._wake: asyncio.Event | None = None

    def reload(self, *, force: bool = False) -> bool:
        """Load the files if they changed (``force``: even if not); True if
        a new set is now in force."""
        current = stamps(self.files)
        if not force and current in (self._stamps, self._failed_stamps):
            return False
        try:
            material = load_trust_set(self.files, chain_to_bundle=self._chain_to_bundle)
        except MaterialError as exc:
            self._failed(current, exc)
            return False
        recovered = self.failing is not None
        self._stamps, self._failed_stamps, self.failing = current, None, None
        self.state = TrustState(self.state.version + 1, material)
        log.info(
            "%s trust material reloaded: %s",
            self.name,
            material.summary(),
            extra={"version": self.state.version},
        )
        if self.on_reloaded is not None:
            self.on_reloaded(self.name, material, recovered)
        return True

    def _failed(self, current: tuple[FileStamp | None, ...], exc: MaterialError) -> None:
        self._failed_stamps = current
        self.failing = exc
        log.error("%s trust material not reloaded, the previous set stays in force: %s", self.name, exc)
        if self.on_failure is not None:
            self.on_failure(self.name, exc)

    def request(self) -> None:
        """Reload at once (SIGHUP), whether or not the files look changed."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, interval_s: float) -> None:
        """Poll every ``interval_s`` seconds until cancelled."""
        self._wake = asyncio.Event()
        while True:
            forced = False
            try:
                await wait_within(self._wake.wait(), interval_s)
                forced = True
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.reload(force=forced)
            except Exception:
                # A bug in one reload must not end the watch.
                log.exception("%s trust reload failed unexpectedly", self.name)
