"""The one way ``ovs-ofctl`` and ``ovs-appctl`` are run: a deadline, output
read with a bound, one error type naming the command and its exit code.

What OVS prints is an external input: stdout larger than ``max_output``
bytes stops the command (nothing that large is ever asked for), and only
the first ``MAX_STDERR_BYTES`` of stderr are kept (the rest is read and
dropped, so a chatty command cannot block on a full pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from coordinator.waiting import wait_within

__all__ = [
    "MAX_OUTPUT_BYTES",
    "MAX_STDERR_BYTES",
    "CommandResult",
    "OvsCommandError",
    "run_command",
]

#: Far above any dump we ask for (a 64k-attachment bridge's flows), far below harm.
MAX_OUTPUT_BYTES: Final = 64 * 1024 * 1024
MAX_STDERR_BYTES: Final = 4096
_CHUNK: Final = 64 * 1024


class OvsCommandError(RuntimeError):
    """An OVS command could not be started, timed out, printed too much or
    exited with a status it should not have. ``argv`` is the command,
    ``stderr`` its (bounded) error output, ``returncode`` its exit status
    (None when it did not exit on its own)."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        stderr: str = "",
        returncode: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.stderr = stderr
        self.returncode = returncode
        super().__init__(message)


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class _OutputTooLarge(Exception):
    pass


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    label: str | None = None,
    ok_codes: Sequence[int] = (0,),
    max_output: int = MAX_OUTPUT_BYTES,
    error: type[OvsCommandError] = OvsCommandError,
) -> CommandResult:
    """Run ``argv`` (stdin empty) within ``timeout`` seconds. An exit status
    outside ``ok_codes`` raises ``error`` (OvsCommandError or a subclass a
    caller catches by name); ``label`` names the command in messages
    (default: the whole command line)."""
    argv = list(argv)
    name = label if label is not None else shlex.join(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise error(f"{name}: cannot run: {exc}", argv=argv) from exc
    try:
        out, err = await wait_within(_communicate(proc, max_output), timeout)
    except asyncio.TimeoutError as exc:
        await _kill(proc)
        raise error(f"{name} timed out after {timeout}s", argv=argv) from exc
    except _OutputTooLarge as exc:
        await _kill(proc)
        raise error(f"{name}: output larger than {max_output} bytes", argv=argv) from exc
    except BaseException:
        await _kill(proc)  # cancelled: leave no process behind
        raise
    stderr = err.decode(errors="replace").strip()
    code = proc.returncode if proc.returncode is not None else -1
    if code not in ok_codes:
        raise error(
            f"{name} failed (exit code {code}): {stderr or '(no stderr)'}",
            argv=argv,
            stderr=stderr,
            returncode=code,
        )
    return CommandResult(code, out.decode(errors="replace"), stderr)


async def _communicate(proc: asyncio.subprocess.Process, max_output: int) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = await asyncio.gather(_read_stdout(proc.stdout, max_output), _read_stderr(proc.stderr))
    await proc.wait()
    return out, err


async def _read_stdout(stream: asyncio.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _OutputTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_stderr(stream: asyncio.StreamReader) -> bytes:
    kept = b""
    while chunk := await stream.read(_CHUNK):
        if len(kept) < MAX_STDERR_BYTES:
            kept += chunk[: MAX_STDERR_BYTES - len(kept)]
    return kept


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
