"""Named fault-injection points in attach, detach and policy apply.

Off unless enabled: the ``BLUEFIELD_COORDINATOR_FAULTS`` environment
variable (read when the daemon starts) or :func:`enable` (tests in the same
process). The value is a comma-separated list of ``point=action``; actions:

- ``kill``: SIGKILL this process right there (a crash: no cleanup, no
  flush beyond what SQLite already committed);
- ``raise``: raise :class:`FaultInjected` (an ordinary failure of the step).

Crash tests iterate over :data:`POINTS`; an unknown point name is refused so
a typo cannot silently test nothing.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "BLUEFIELD_COORDINATOR_FAULTS"

POINTS: tuple[str, ...] = (
    # attach: the claim is committed (ATTACHING), nothing done in the world yet
    "attach.claimed",
    # the eswitch function is prepared (SF exists / MAC set)
    "attach.device_prepared",
    # the representor is a port of the bridge; no flows of it yet
    "attach.port_added",
    # the attachment's flows are installed and verified; the store still says ATTACHING
    "attach.flows_installed",
    # the store says BOUND; the client has not had its answer
    "attach.bound",
    # detach: the store says DETACHING, flows still in place
    "detach.marked",
    # the attachment's flows are gone; the port is still on the bridge
    "detach.flows_removed",
    # the port is off the bridge; the device is still prepared
    "detach.port_removed",
    # the device is released; the store row is still DETACHING
    "detach.device_released",
    # policy: the new flows are in the switch; the store still has the old status
    "policy.flows_applied",
    # the attachments' status and the policy as the last good one are committed
    # together; the event watchers are not told yet
    "policy.status_recorded",
)

ACTIONS = ("kill", "raise")


class FaultInjected(RuntimeError):
    """Raised at a point enabled with the ``raise`` action."""


class FaultConfigError(ValueError):
    pass


_enabled: dict[str, str] = {}


def parse(spec: str) -> dict[str, str]:
    """``"attach.claimed=kill,detach.marked=raise"`` -> {point: action}."""
    enabled: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        point, sep, action = item.partition("=")
        point, action = point.strip(), (action.strip() if sep else "kill")
        if point not in POINTS:
            raise FaultConfigError(f"{ENV_VAR}: unknown fault point {point!r} (known: {', '.join(POINTS)})")
        if action not in ACTIONS:
            raise FaultConfigError(
                f"{ENV_VAR}: {point}: unknown action {action!r} (known: {', '.join(ACTIONS)})"
            )
        enabled[point] = action
    return enabled


def enable_from_environment() -> None:
    """Enable the points named in the environment (none when unset)."""
    spec = os.environ.get(ENV_VAR, "")
    _enabled.clear()
    _enabled.update(parse(spec))


def enable(point: str, action: str = "raise") -> None:
    _enabled.update(parse(f"{point}={action}"))


def disable_all() -> None:
    _enabled.clear()


def reached(point: str) -> None:
    """Called by the service at ``point``; does nothing unless enabled."""
    if not _enabled:
        return
    action = _enabled.get(point)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FaultInjected(f"fault injected at {point}")
