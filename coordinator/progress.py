"""A one-line activity indicator for long work on a terminal.

`dev up` with many VFs, the bench's scale setup and `ctl events --follow`
redraw one status line on stderr while they wait, so a person sees that
something is happening and how far it got. When stderr is not a terminal
(a pipe, a log file, CI) or the caller asked for machine output, nothing is
written: scripts read stdout and logs stay clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

SPINNER = "|/-\\"
# Redrawing faster than this only costs terminal bandwidth.
MIN_REDRAW_S = 0.1


class Activity:
    """``update(text)`` redraws the line (rate-limited), ``clear()`` removes
    it. Disabled unless ``stream`` is a terminal and ``quiet`` is false."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and _is_terminal(self._stream)
        self._clock = clock
        self._last_draw = float("-inf")
        self._frame = 0
        self._shown = False

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if not force and now - self._last_draw < MIN_REDRAW_S:
            return
        self._last_draw = now
        self._frame = (self._frame + 1) % len(SPINNER)
        self._stream.write(f"\r\x1b[K{SPINNER[self._frame]} {text}")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False

    def __enter__(self) -> Activity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def counted(label: str, done: int, total: int) -> str:
    """``label 12/64 (18%)``: the text of a step that has a known size."""
    share = f" ({100 * done // total}%)" if total > 0 else ""
    return f"{label} {done}/{total}{share}"


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False
