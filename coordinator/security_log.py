"""The security event file: one OCSF JSON object per line, appended.

Each line is a single ``write(2)`` on an ``O_APPEND`` descriptor, so it is
on disk (in the page cache) as soon as ``write`` returns and a reader never
sees half a line from us. When logrotate moves or deletes the file, the next
write notices (the path no longer names the open inode) and reopens it, so
no ``copytruncate`` or signal is needed.

A failing write is logged and dropped: the security log must never take
enforcement down with it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# New files: owner read/write only (the unit's UMask narrows it anyway);
# the lines name identities and attachments.
FILE_MODE = 0o600
# How much of the end of the file is searched for the last store sequence.
_TAIL_BYTES = 256 * 1024


class SecurityLogError(RuntimeError):
    pass


class SecurityEventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        try:
            self._open()
        except OSError as exc:
            raise SecurityLogError(f"logs.security_events_path: cannot open {path}: {exc.strerror}") from exc

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        st = os.fstat(fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def write(self, event: dict[str, Any]) -> bool:
        """Append ``event`` as one line; False if it could not be written."""
        line = (json.dumps(event, separators=(",", ":"), sort_keys=True, default=str) + "\n").encode()
        try:
            if self._fd < 0 or self._rotated():
                self._open()
            written = os.write(self._fd, line)
            if written != len(line):  # a full disk mid-line; the next line starts clean
                os.write(self._fd, b"\n")
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            log.error("security event not written to %s: %s", self.path, exc)
            return False
        return True

    def last_sequence(self) -> int:
        """The highest ``metadata.sequence`` (store event seq) among the last
        lines of the file; 0 if there is none (new or rotated file)."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - _TAIL_BYTES))
                tail = f.read()
        except OSError:
            return 0
        for raw in reversed(tail.splitlines()):
            try:
                sequence = json.loads(raw).get("metadata", {}).get("sequence")
            except (ValueError, AttributeError):
                continue  # the first, partial line of the tail, or foreign text
            if isinstance(sequence, int):
                return sequence
        return 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
