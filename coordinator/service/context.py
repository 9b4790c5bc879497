"""What every part of the attachment service works on: the store, the
switch, the network classes, the per-sandbox locks, the gateway's latest
policies and where metrics are reported; plus the few store reads and
writes several parts share."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from coordinator.callers import Caller
from coordinator.config import Config
from coordinator.dataplane_port import DataplanePort
from coordinator.errors import NotFound
from coordinator.events import EventHub
from coordinator.gateway.client import StreamStatus
from coordinator.gateway.policy_book import PolicyBook
from coordinator.keyed_lock import KeyedLocks
from coordinator.policy.scope import Scope
from coordinator.service import intent
from coordinator.store.errors import UnreadablePolicy
from coordinator.store.records import AttachmentRecord
from coordinator.store.worker import AsyncStore

log = logging.getLogger(__name__)


class ServiceObserver(Protocol):
    """Where the service reports what metrics count (the daemon plugs in
    Prometheus; nothing by default)."""

    def policy_applied(self, seconds: float, *, ok: bool) -> None: ...

    def corrected(self, kind: str) -> None: ...


class NoObserver:
    def policy_applied(self, seconds: float, *, ok: bool) -> None:
        pass

    def corrected(self, kind: str) -> None:
        pass


class PolicySource(Protocol):
    """The gateway stream, as the service sees it."""

    status: StreamStatus

    def register(self, sandbox_ids: Iterable[str]) -> None: ...

    def unregister(self, sandbox_ids: Iterable[str]) -> None: ...


@dataclass
class ServiceContext:
    config: Config
    store: AsyncStore
    dataplane: DataplanePort  # the only door to the switch and the eswitch
    classes: Mapping[str, Scope]
    events: EventHub
    mac_salt: str
    # Mutations of one sandbox (attach, detach, policy) run one at a time;
    # different sandboxes proceed in parallel. A sandbox's lock exists only
    # while it is held or awaited.
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    # Latest gateway policies; the gateway stream (if any) registers
    # sandboxes through policy_source.
    book: PolicyBook = field(default_factory=PolicyBook)
    policy_source: PolicySource | None = None
    observer: ServiceObserver = field(default_factory=NoObserver)
    # Host identities heard from since start (Reconcile, Attach, Detach).
    heard_from: set[str] = field(default_factory=set)

    @property
    def deny_all(self) -> Scope:
        return self.classes[intent.DENY_ALL_CLASS]

    async def visible(self, caller: Caller, attachment_id: str) -> AttachmentRecord:
        """The attachment if ``caller`` may see it; NOT_FOUND otherwise."""
        record = await self.store.get(attachment_id)
        if record is None or not caller.may_see(record.owner):
            raise NotFound(f"attachment {attachment_id} not found")
        return record

    async def last_good(self, record: AttachmentRecord) -> intent.Intent:
        """The sandbox's stored last good policy, else its class."""
        chosen = intent.last_good(record.network_class, await self.stored(record.sandbox_id), self.classes)
        self._log_problem(record, chosen)
        return chosen

    async def reinstalled(self, record: AttachmentRecord) -> tuple[intent.Intent, bool]:
        """What a BOUND attachment enforces when re-installed (see
        ``intent.reinstalled``), and whether that becomes the sandbox's
        stored last good policy once installed."""
        return self.reinstalled_with(record, await self.stored(record.sandbox_id))

    def reinstalled_with(self, record: AttachmentRecord, stored: intent.Stored) -> tuple[intent.Intent, bool]:
        """``reinstalled``, with what the store holds for the sandbox already read."""
        chosen = intent.reinstalled(
            record, stored, self.book.latest(record.sandbox_id), self.classes, self.config.policy.on_stale
        )
        self._log_problem(record, chosen)
        return chosen, intent.becomes_last_good(chosen, stored)

    async def enforced(self, record: AttachmentRecord) -> intent.Intent:
        """What the switch enforces for ``record`` now (see ``intent.enforced``)."""
        stored = await self.stored(record.sandbox_id)
        chosen = intent.enforced(record, stored, self.classes, self.config.policy.on_stale)
        self._log_problem(record, chosen)
        return chosen

    async def stored(self, sandbox_id: str) -> intent.Stored:
        """What the store holds as the sandbox's last good policy."""
        try:
            return await self.store.policy(sandbox_id)
        except UnreadablePolicy as exc:
            return intent.Unreadable(exc.version, exc.problem)

    async def stored_all(self) -> dict[str, intent.Stored]:
        """What the store holds as every sandbox's last good policy, in one
        read (a sandbox absent holds none)."""
        return {
            sandbox_id: intent.Unreadable(found.version, found.problem)
            if isinstance(found, UnreadablePolicy)
            else found
            for sandbox_id, found in (await self.store.policies()).items()
        }

    async def save_last_good(self, sandbox_id: str, scope: Scope) -> None:
        await self.store.save_policy(sandbox_id, scope)

    def register(self, sandbox_id: str) -> None:
        if self.policy_source is not None:
            self.policy_source.register([sandbox_id])

    async def unregister_if_unused(self, sandbox_id: str) -> None:
        if self.policy_source is not None and not await self.store.attachments_of(sandbox_id):
            self.policy_source.unregister([sandbox_id])
            self.book.forget(sandbox_id)

    @staticmethod
    def _log_problem(record: AttachmentRecord, chosen: intent.Intent) -> None:
        if chosen.problem:
            # Validated before it was stored; unreadable now means the store
            # was tampered with or limits tightened. Fail closed.
            log.error(
                "stored policy of sandbox %s unusable (%s); denying all", record.sandbox_id, chosen.problem
            )
