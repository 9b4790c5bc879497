"""Daemons by the pids in their pidfiles: whether one runs, and stopping it.

Only ever signal a pid read from a daemon's own pidfile, and check its
command name where pids may have been reused.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["pid_alive", "read_pid", "stop_pid"]

_STOP_TIMEOUT = 10.0
_POLL = 0.05


def _proc_state(pid: int) -> tuple[str, str] | None:
    """(comm, state letter) of a process from /proc, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # "PID (COMM) STATE ..." where COMM may itself contain spaces and parentheses.
    lpar, rpar = stat.find("("), stat.rfind(")")
    if lpar < 0 or rpar < 0:
        return None
    fields = stat[rpar + 2 :].split()
    return stat[lpar + 1 : rpar], (fields[0] if fields else "?")


def pid_alive(pid: int, comm: str | None = None) -> bool:
    """Whether ``pid`` runs (zombies and dead processes count as not running).

    With ``comm``, the process must also have that command name (guards against pid reuse).
    Zombies matter here: orphaned daemons may never be reaped on machines whose init does not reap.
    """
    if pid <= 0:
        return False
    info = _proc_state(pid)
    if info is None:
        return False
    name, state = info
    if state in ("Z", "X", "x"):
        return False
    return comm is None or name == comm[:15]


def stop_pid(pid: int, timeout: float = _STOP_TIMEOUT) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True once the process is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(_POLL)
    return not pid_alive(pid)


def read_pid(pidfile: Path, comm: str | None = None) -> int | None:
    """The pid recorded in ``pidfile`` if that process is still running, else None.

    A missing, empty or garbled pidfile, or one naming a dead (or zombie) process, gives None.
    With ``comm``, a live process with a different command name (a reused pid) also gives None.
    """
    try:
        text = Path(pidfile).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        pid = int(text.split()[0]) if text else 0
    except ValueError:
        return None
    return pid if pid_alive(pid, comm) else None
