"""``ovs-appctl ofproto/trace`` and ``dpif/show`` against one ovs-vswitchd.

Runs the commands only; building the flow string and reading the verdict is
:mod:`coordinator.flows.trace` (pure). Tracing sends no packet: it shows
what the installed flows would do, with conntrack states supplied by the
caller (``--ct-next``). Used by the differential tests and by ExplainPacket.

When ``ctl`` is a :class:`~coordinator.ovs.unixctl.UnixctlClient`, the
command goes over its kept connection; when it is the control socket's path
and no other executable is asked for, over a connection to that socket
opened for the call. Either way: the same text as ``ovs-appctl`` prints,
without a process spawn per call.
Otherwise (a name such as ``ovs-vswitchd`` that ovs-appctl resolves through
the rundir and pidfile, or a wrapper such as ``ip netns exec``) ovs-appctl
runs.

Example::

    text = await trace("/run/openvswitch/ovs-vswitchd.ctl", "br-int",
                       "in_port=5,ip,nw_src=198.51.100.10,...", ["trk,new"])
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Awaitable, Sequence
from os import PathLike

from coordinator.ovs.process import OvsCommandError, run_command
from coordinator.ovs.unixctl import Reply, UnixctlClient, UnixctlError, call_many

APPCTL: tuple[str, ...] = ("ovs-appctl",)

DEFAULT_TIMEOUT = 10.0

#: ovs-vswitchd's control socket: a kept client, a path, or a name ovs-appctl resolves.
Ctl = str | PathLike[str] | UnixctlClient


class TraceError(OvsCommandError):
    """ovs-appctl (or ovs-vswitchd over its control socket) failed, timed out or could not be
    reached; ``argv`` is the command as ovs-appctl would run it."""


def trace_argv(
    ctl: Ctl,
    bridge: str,
    flow: str,
    ct_next: Sequence[str] = (),
    *,
    executable: Sequence[str] = ("ovs-appctl",),
) -> list[str]:
    """The command line of one trace; ``ctl`` is ovs-vswitchd's unixctl socket."""
    argv = [*executable, "-t", _target(ctl), "ofproto/trace", bridge, flow]
    for state in ct_next:
        argv += ["--ct-next", state]
    return argv


async def run_appctl(
    ctl: Ctl,
    *args: str,
    timeout: float = DEFAULT_TIMEOUT,
    executable: Sequence[str] = ("ovs-appctl",),
) -> str:
    """``ovs-appctl -t CTL ARGS`` (over the socket when CTL is one); its output, or :class:`TraceError`."""
    return await _run(executable, ctl, list(args), timeout)


async def trace(
    ctl: Ctl,
    bridge: str,
    flow: str,
    ct_next: Sequence[str] = (),
    *,
    timeout: float = DEFAULT_TIMEOUT,
    executable: Sequence[str] = ("ovs-appctl",),
) -> str:
    """The text of ``ovs-appctl -t CTL ofproto/trace BRIDGE FLOW --ct-next S...``.

    ``ct_next`` holds one conntrack state (``"trk,new"``, ...) per ct()
    recirculation, in order. ``executable`` replaces the executable (e.g. to add
    ``--timeout``, or run it through ``ip netns exec``).
    """
    command = trace_argv(ctl, bridge, flow, ct_next, executable=())[2:]
    return await _run(executable, ctl, command, timeout)


async def dpif_show(
    ctl: Ctl,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    executable: Sequence[str] = ("ovs-appctl",),
) -> str:
    """``ovs-appctl dpif/show``: each port's OpenFlow and datapath numbers."""
    return await _run(executable, ctl, ["dpif/show"], timeout)


def _target(ctl: Ctl) -> str:
    return ctl.path if isinstance(ctl, UnixctlClient) else str(ctl)


async def _run(executable: Sequence[str], ctl: Ctl, command: list[str], timeout: float) -> str:
    """``EXECUTABLE -t CTL COMMAND...``, or COMMAND over the socket ``CTL``."""
    argv = [*executable, "-t", _target(ctl), *command]
    if isinstance(ctl, UnixctlClient):
        return await _answer(ctl.call_many([command]), argv)
    if tuple(executable) == APPCTL and _is_socket(str(ctl)):
        return await _answer(call_many(str(ctl), [command], timeout=timeout), argv)
    return (await run_command(argv, timeout=timeout, error=TraceError)).stdout


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


async def _answer(replies: Awaitable[list[Reply]], argv: list[str]) -> str:
    name = shlex.join(argv)
    try:
        (reply,) = await replies
    except UnixctlError as exc:
        raise TraceError(f"{name}: {exc}", argv=argv) from exc
    if reply.error is not None:
        # What ovs-appctl would print to stderr before exiting with status 2.
        raise TraceError(f"{name} failed: {reply.error}", argv=argv, stderr=reply.error)
    return reply.result


__all__ = ["DEFAULT_TIMEOUT", "Ctl", "TraceError", "dpif_show", "run_appctl", "trace", "trace_argv"]
