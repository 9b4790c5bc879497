"""``ovs-appctl ofproto/trace`` and ``dpif/show`` against one ovs-vswitchd.

Runs the commands only; building the flow string and reading the verdict is
:mod:`coordinator.flows.trace` (pure). Tracing sends no packet: it shows
what the installed flows would do, with conntrack states supplied by the
caller (``--ct-next``). Used by the differential tests and by ExplainPacket.

Example::

    text = await trace("/run/openvswitch/ovs-vswitchd.ctl", "br-int",
                       "in_port=5,ip,nw_src=198.51.100.10,...", ["trk,new"])
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

from coordinator.ovs.process import OvsCommandError, run_command

DEFAULT_TIMEOUT = 10.0


class TraceError(OvsCommandError):
    """ovs-appctl failed, timed out or could not be started; ``argv`` is the command."""


def trace_argv(
    ctl: str | PathLike[str],
    bridge: str,
    flow: str,
    ct_next: Sequence[str] = (),
    *,
    executable: Sequence[str] = ("ovs-appctl",),
) -> list[str]:
    """The command line of one trace; ``ctl`` is ovs-vswitchd's unixctl socket."""
    argv = [*executable, "-t", str(ctl), "ofproto/trace", bridge, flow]
    for state in ct_next:
        argv += ["--ct-next", state]
    return argv


async def run_appctl(
    ctl: str | PathLike[str],
    *args: str,
    timeout: float = DEFAULT_TIMEOUT,
    executable: Sequence[str] = ("ovs-appctl",),
) -> str:
    """Run ``ovs-appctl -t CTL ARGS``; its stdout, or :class:`TraceError`."""
    return await _run([*executable, "-t", str(ctl), *args], timeout)


async def trace(
    ctl: str | PathLike[str],
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
    return await _run(trace_argv(ctl, bridge, flow, ct_next, executable=executable), timeout)


async def dpif_show(
    ctl: str | PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    executable: Sequence[str] = ("ovs-appctl",),
) -> str:
    """``ovs-appctl dpif/show``: each port's OpenFlow and datapath numbers."""
    return await _run([*executable, "-t", str(ctl), "dpif/show"], timeout)


async def _run(argv: list[str], timeout: float) -> str:
    return (await run_command(argv, timeout=timeout, error=TraceError)).stdout


__all__ = ["DEFAULT_TIMEOUT", "TraceError", "dpif_show", "run_appctl", "trace", "trace_argv"]
