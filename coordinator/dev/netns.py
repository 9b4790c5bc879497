"""Small typed helpers around the ``ip`` command for network namespaces and veth pairs.

Every helper runs ``ip`` as a subprocess and raises :class:`NetnsError` (with the command and its
stderr) when it fails. Interfaces are always created directly inside namespaces: nothing these
helpers create ever appears in the root namespace.
"""

from __future__ import annotations

import re
import secrets
import string
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "IFNAMSIZ_MAX",
    "NetnsError",
    "add_address",
    "add_route",
    "create_netns",
    "create_veth_pair",
    "delete_netns",
    "netns_exists",
    "popen_in_netns",
    "run_in_netns",
    "set_link",
    "unique_name",
]

#: Longest interface name Linux accepts (IFNAMSIZ - 1).
IFNAMSIZ_MAX = 15

DEFAULT_TIMEOUT = 30.0

_NETNS_DIR = Path("/run/netns")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_MIN_SUFFIX = 6
_MAX_SUFFIX = 8
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


class NetnsError(RuntimeError):
    """An ``ip`` (or in-namespace) command failed."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        what = "timed out" if returncode is None else f"exited with status {returncode}"
        detail = stderr.strip() or "(no stderr)"
        super().__init__(f"command {' '.join(self.argv)!r} {what}: {detail}")


def _check_name(kind: str, name: str) -> None:
    if not name or not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"invalid {kind} name {name!r}: use letters, digits, '_', '.', '-'")


def _check_ifname(name: str) -> None:
    _check_name("interface", name)
    if len(name) > IFNAMSIZ_MAX:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ_MAX} characters")


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        raise NetnsError(argv, None, f"timeout after {timeout}s {stderr or ''}") from exc
    except FileNotFoundError as exc:
        raise NetnsError(argv, 127, f"executable not found: {argv[0]}") from exc
    if check and proc.returncode != 0:
        raise NetnsError(argv, proc.returncode, proc.stderr)
    return proc


def unique_name(prefix: str, maxlen: int = IFNAMSIZ_MAX) -> str:
    """Return ``prefix`` plus a random suffix (``[a-z0-9]``), at most ``maxlen`` characters long.

    The default ``maxlen`` fits an interface name (IFNAMSIZ). The prefix is shortened when needed
    so that at least six random characters remain (36**6, about 2e9 values); up to eight are used.
    """
    if maxlen < _MIN_SUFFIX:
        raise ValueError(f"maxlen must be at least {_MIN_SUFFIX}, got {maxlen}")
    if prefix:
        _check_name("prefix", prefix)
    prefix = prefix[: maxlen - _MIN_SUFFIX]
    suffix_len = min(_MAX_SUFFIX, maxlen - len(prefix))
    return prefix + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(suffix_len))


def netns_exists(name: str) -> bool:
    """Whether a named network namespace (``/run/netns/NAME``) exists."""
    _check_name("netns", name)
    return (_NETNS_DIR / name).exists()


def create_netns(name: str, *, loopback_up: bool = True) -> None:
    """Create the named network namespace (error if it exists) and bring its loopback up."""
    _check_name("netns", name)
    _run(["ip", "netns", "add", name])
    if loopback_up:
        try:
            _run(["ip", "-n", name, "link", "set", "dev", "lo", "up"])
        except NetnsError:
            delete_netns(name)
            raise


def delete_netns(name: str) -> None:
    """Delete the named network namespace; does nothing if it does not exist."""
    _check_name("netns", name)
    if not netns_exists(name):
        return
    proc = _run(["ip", "netns", "delete", name], check=False)
    if proc.returncode != 0 and netns_exists(name):
        raise NetnsError(["ip", "netns", "delete", name], proc.returncode, proc.stderr)


def _netns_argv(name: str, argv: Sequence[str]) -> list[str]:
    _check_name("netns", name)
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of strings, not a string")
    if not argv:
        raise ValueError("argv must not be empty")
    return ["ip", "netns", "exec", name, *argv]


def run_in_netns(
    name: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the namespace and capture its output as text.

    With ``check`` a non-zero exit raises :class:`NetnsError`; a timeout always raises it.
    """
    return _run(_netns_argv(name, argv), check=check, timeout=timeout, input=input, env=env)


def popen_in_netns(
    name: str,
    argv: Sequence[str],
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    text: bool = True,
    start_new_session: bool = False,
) -> subprocess.Popen[str]:
    """Start ``argv`` inside the namespace without waiting for it (the caller owns the process)."""
    full = _netns_argv(name, argv)
    try:
        return subprocess.Popen(
            full,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            text=text,
            start_new_session=start_new_session,
        )
    except FileNotFoundError as exc:
        raise NetnsError(full, 127, "executable not found: ip") from exc


def create_veth_pair(name_a: str, ns_a: str, name_b: str, ns_b: str) -> None:
    """Create a veth pair with end ``name_a`` in ``ns_a`` and end ``name_b`` in ``ns_b``.

    The pair is created inside ``ns_a`` with its peer placed directly in ``ns_b``, so neither end
    ever appears in the root namespace. Both ends are left down.
    """
    _check_ifname(name_a)
    _check_ifname(name_b)
    _check_name("netns", ns_a)
    _check_name("netns", ns_b)
    _run(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b])


def set_link(
    ns: str,
    ifname: str,
    up: bool = True,
    mac: str | None = None,
    mtu: int | None = None,
) -> None:
    """Set an interface in ``ns`` up or down, optionally changing its MAC address and MTU."""
    _check_name("netns", ns)
    argv = ["ip", "-n", ns, "link", "set", "dev", ifname]
    if mac is not None:
        argv += ["address", mac]
    if mtu is not None:
        argv += ["mtu", str(mtu)]
    argv.append("up" if up else "down")
    _run(argv)


def add_address(ns: str, ifname: str, cidr: str, *, nodad: bool = False) -> None:
    """Add an address (``198.51.100.2/24`` or ``2001:db8::2/64``) to an interface in ``ns``.

    ``nodad`` skips IPv6 duplicate address detection so the address is usable at once.
    """
    _check_name("netns", ns)
    argv = ["ip", "-n", ns, "address", "add", cidr, "dev", ifname]
    if nodad:
        argv.append("nodad")
    _run(argv)


def add_route(ns: str, dest: str, via: str) -> None:
    """Add a route to ``dest`` (a CIDR or ``default``) via gateway ``via`` in ``ns``."""
    _check_name("netns", ns)
    family = "-6" if ":" in via or ":" in dest else "-4"
    _run(["ip", family, "-n", ns, "route", "add", dest, "via", via])
