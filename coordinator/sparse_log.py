"""One log line per interval for one kind of event, with how many there
were since the last: a flood (connections, refused scrapers) must not
flood the log, and the line still says how big it was."""

from __future__ import annotations

import logging
import time


class SparseLog:
    def __init__(self, logger: logging.Logger, level: int, message: str, interval_s: float) -> None:
        """``message``: a %-format for ``note``'s arguments."""
        self._logger = logger
        self._level = level
        self._message = message
        self._interval_s = interval_s
        self._last = float("-inf")
        self._since = 0

    def note(self, *args: object) -> None:
        """One more such event; logged (``args`` into the message, then the
        count) if the last line was ``interval_s`` ago or more."""
        now = time.monotonic()
        self._since += 1
        if now - self._last >= self._interval_s:
            self._logger.log(
                self._level, self._message + " (%d since the last such line)", *args, self._since
            )
            self._last, self._since = now, 0
