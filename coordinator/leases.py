"""Lease fencing rules (pure).

Every attachment id has a fence: the highest lease generation ever issued
for it, kept after detach. A caller proves it is current by presenting that
generation; an older one comes from a host process that has since been
superseded (a new host instance took over and bumped the generation) and
must not be able to detach anything.
"""

from __future__ import annotations

import enum


class DetachDecision(enum.Enum):
    PROCEED = "proceed"
    ALREADY_DETACHED = "already-detached"
    STALE = "stale"
    NEVER_ISSUED = "never-issued"
    NOT_FOUND = "not-found"


def decide_detach(requested: int, fence: int | None, attached: bool) -> DetachDecision:
    """What a Detach presenting generation ``requested`` may do, given the
    fence (None: the id was never issued) and whether it is still attached."""
    if fence is None:
        return DetachDecision.NOT_FOUND
    if requested < fence:
        return DetachDecision.STALE
    if requested > fence:
        return DetachDecision.NEVER_ISSUED
    return DetachDecision.PROCEED if attached else DetachDecision.ALREADY_DETACHED


def next_generation(fence: int | None) -> int:
    """The generation to issue next: fences only ever grow."""
    return 1 if fence is None else fence + 1
