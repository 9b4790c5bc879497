"""The store behind two worker threads, for the daemon's event loop.

With synchronous=FULL every commit waits for an fsync; called on the loop,
that wait would stall every RPC, the switch watch and the policy stream.
``AsyncStore`` has the ``Store``'s methods as coroutines. Every method that
writes runs on a single dedicated thread (``writer``), so writes stay
strictly one after another, in the order they were made (the same
discipline as the OVSDB adapter), and transactions never interleave: each
method is one call on that thread. Writes asked while another commits are
committed together, one fsync for all of them, each answered only once
that commit is durable. Plain reads run on a second thread with a
read-only connection of their own: in WAL mode they see every commit made
before they were asked, without waiting behind another caller's fsync.
A few reads by key (an attachment, a sandbox's attachments) run on the
caller's own thread with a third connection: such a read costs tens of
microseconds, the hop to a thread and back about 0.3 ms here, and a
policy apply or a Detach waits for it first. That connection never waits
for a lock (a busy database, e.g. one being recovered, sends the read to
the reader's thread), so the loop is never held by the database.
The idempotency lookup of Attach stays in the writers' order, so a request
asked twice at once sees the first one's claim.

Code not on the daemon's loop (tests, offline tools) may keep using the
``Store`` directly through ``sync``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from coordinator.policy.scope import Scope
from coordinator.store.db import CannotRead, Store
from coordinator.store.policy_rows import PolicyToKeep
from coordinator.store.reader import ReadOnlyStore
from coordinator.store.records import AttachmentRecord, AttachmentState, Fence
from coordinator.store.writer import GroupCommitWriter

P = ParamSpec("P")
R = TypeVar("R")


def _on_store_thread(
    method: Callable[Concatenate[Store, P], R],
) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, R]]:
    """``Store.method`` as a coroutine that runs it on the store's thread."""

    async def call(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.run(functools.partial(method, self.sync, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


def _on_reader_thread(
    method: Callable[Concatenate[Store, P], R],
) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, R]]:
    """``Store.method`` (a read) as a coroutine that runs it on the reader's thread."""

    async def call(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.read(functools.partial(method, self.reads, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.sync = store
        self.reads: Store = ReadOnlyStore(store)
        self._by_key = ReadOnlyStore(store, wait=False)  # on the caller's thread (see above)
        self._writer = GroupCommitWriter(store)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")

    async def run(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` on the store's thread, after every call made before it;
        returns once the commit holding its changes is durable."""
        result: R = await asyncio.wrap_future(self._writer.submit(fn))
        return result

    async def read(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` (reads of ``reads`` only) on the reader's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn)

    @staticmethod
    def policy_to_keep(sandbox_id: str, scope: Scope) -> PolicyToKeep:
        """``scope`` as ``record_policy_results``'s ``last_good``, its
        stored form worked out when first asked (on the caller's thread)."""
        return PolicyToKeep(sandbox_id, scope)

    async def by_key(self, fn: Callable[[Store], R]) -> R:
        """``fn`` (a read by key) on the caller's thread; on the reader's
        thread instead if the database is busy."""
        try:
            return fn(self._by_key)
        except CannotRead:  # locked or busy: it would have to wait
            reads = self.reads
            return await self.read(lambda: fn(reads))

    async def get(self, attachment_id: str) -> AttachmentRecord | None:
        return await self.by_key(lambda store: store.get(attachment_id))

    async def attachments_of(
        self, sandbox_id: str, state: AttachmentState | None = None
    ) -> list[AttachmentRecord]:
        """The sandbox's attachments (in ``state``, if given): ``list_attachments``, by key."""
        return await self.by_key(lambda store: store.list_attachments(sandbox_id=sandbox_id, state=state))

    async def attachment_and_fence(self, attachment_id: str) -> tuple[AttachmentRecord | None, Fence | None]:
        """The attachment and its lease fence, read in one call (Detach needs both)."""
        return await self.by_key(lambda store: (store.get(attachment_id), store.fence(attachment_id)))

    async def answers(self) -> None:
        """Returns once both threads have taken a call (liveness: a write
        stuck in its fsync is noticed although reads still answer)."""
        await self.read(lambda: None)
        await self.run(lambda: None)

    def carry_flow_proof(self, slot: int, proof: bytes) -> None:
        """``proof`` kept with the next commit (see ``writer``)."""
        self._writer.carry(slot, proof)

    async def close(self) -> None:
        """Finish the calls already made (and write the flow proofs carried),
        then close the database."""
        await self.run(lambda: None)
        await self.read(self.reads.close)
        self._by_key.close()
        self._reader.shutdown(wait=True)
        await asyncio.to_thread(self._writer.stop)
        self.sync.close()

    sync_devices = _on_store_thread(Store.sync_devices)
    pool_stats = _on_reader_thread(Store.pool_stats)
    create_attachment = _on_store_thread(Store.create_attachment)
    find_by_request = _on_store_thread(Store.find_by_request)
    list_attachments = _on_reader_thread(Store.list_attachments)
    count = _on_reader_thread(Store.count)
    mark_bound = _on_store_thread(Store.mark_bound)
    mark_detaching = _on_store_thread(Store.mark_detaching)
    delete_attachment = _on_store_thread(Store.delete_attachment)
    take_over = _on_store_thread(Store.take_over)
    record_event = _on_store_thread(Store.record_event)
    fence = _on_reader_thread(Store.fence)
    save_policy = _on_store_thread(Store.save_policy)
    policy = _on_reader_thread(Store.policy)
    policies = _on_reader_thread(Store.policies)
    policy_version = _on_reader_thread(Store.policy_version)
    delete_policy = _on_store_thread(Store.delete_policy)
    set_policy_status = _on_store_thread(Store.set_policy_status)
    record_policy_results = _on_store_thread(Store.record_policy_results)
    flow_proofs = _on_reader_thread(Store.flow_proofs)
    keep_flow_proofs = _on_store_thread(Store.keep_flow_proofs)
    append_event = _on_store_thread(Store.append_event)
    append_coordinator_event = _on_store_thread(Store.append_coordinator_event)
    last_coordinator_event = _on_reader_thread(Store.last_coordinator_event)
    events_since = _on_reader_thread(Store.events_since)
    last_event_seq = _on_reader_thread(Store.last_event_seq)
    oldest_event_seq = _on_reader_thread(Store.oldest_event_seq)
