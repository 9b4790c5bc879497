"""The host's Reconcile call, decided (pure): matched, taken over,
coordinator-only, host-only and stale-generation attachments.

A host driver that restarted sends what it restored: (attachment id, lease
generation, sandbox id) per attachment it believes it holds. Compared with
the coordinator's attachments of that host identity:

- matched: the coordinator has it, for that sandbox, at that generation.
  If the caller is a new host instance, it takes the attachment over: the
  generation is bumped so the previous instance's later calls are fenced off;
- stale generation: the coordinator has it, but the host's generation is
  not the current one (an old snapshot, or a superseded instance);
- host only: the host believes in an attachment the coordinator does not
  have (detached meanwhile, rolled back, or never created);
- coordinator only: the coordinator holds it, the host does not know it
  (an orphan). AUTHORITATIVE mode releases these; ADVISORY only reports.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.store.records import AttachmentRecord, AttachmentState


class ReconcileMode(enum.Enum):
    ADVISORY = "advisory"
    AUTHORITATIVE = "authoritative"


@dataclass(frozen=True)
class Known:
    attachment_id: str
    lease_generation: int
    sandbox_id: str


@dataclass(frozen=True)
class HostReconcilePlan:
    matched: tuple[AttachmentRecord, ...]
    take_over: tuple[AttachmentRecord, ...]  # matched ones held by another host instance
    coordinator_only: tuple[AttachmentRecord, ...]
    host_only: tuple[Known, ...]
    stale_generation: tuple[Known, ...]


def plan_host_reconcile(
    host_instance_id: str, known: Iterable[Known], held: Iterable[AttachmentRecord]
) -> HostReconcilePlan:
    """``held``: the coordinator's attachments of the caller's identity."""
    # Only BOUND attachments count as held: ATTACHING ones are mid-operation
    # (the host will get its answer) and DETACHING ones are going away.
    held_by_id = {r.attachment_id: r for r in held if r.state is AttachmentState.BOUND}
    matched, take_over, host_only, stale = [], [], [], []
    seen: set[str] = set()
    for entry in known:
        seen.add(entry.attachment_id)
        record = held_by_id.get(entry.attachment_id)
        if record is None or (entry.sandbox_id and entry.sandbox_id != record.sandbox_id):
            host_only.append(entry)
        elif entry.lease_generation != record.lease_generation:
            stale.append(entry)
        else:
            matched.append(record)
            if record.host_instance_id != host_instance_id:
                take_over.append(record)
    orphans = tuple(r for i, r in sorted(held_by_id.items()) if i not in seen)
    return HostReconcilePlan(tuple(matched), tuple(take_over), orphans, tuple(host_only), tuple(stale))
