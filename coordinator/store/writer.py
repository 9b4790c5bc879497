"""The store's writer thread, committing concurrent writes together.

Every write of the daemon runs on this one thread, in the order asked.
With synchronous=FULL each commit waits for an fsync, the slowest part of
a write; writes asked while one commits would each wait for their own
after it. Instead the thread takes every write queued by the time it is
free and runs them in one transaction with one commit (group commit), each
inside a savepoint: a write that raises is undone alone and gets its own
error, the others are kept. No caller hears back before the commit that
holds its write is durable; if that commit fails, every write of the group
gets the failure and none of them is kept. A write alone costs what it
did; under load the fsyncs are shared.

Flow proofs (``carry``) ride along: kept until the next commit, whoever's
it is, and written in it. A proof is only ever a shortcut for a later
restart, so one lost with a failed commit or a crash costs that restart a
compile, nothing more; meanwhile an apply pays no commit of its own for it.

When it has nothing queued after a few commits, the thread checkpoints
the WAL (see ``CHECKPOINT_AFTER``), so commits write it over instead of
appending to it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from coordinator.store.db import Store
from coordinator.store.errors import TransactionLost

log = logging.getLogger(__name__)

# The most writes one commit takes; more wait for the next (bounds how
# long one transaction holds the write lock).
MAX_GROUP = 64
# After this many commits the WAL is copied into the database as soon as
# no write is queued. A commit that appends to the WAL file waits for an
# fsync that also makes the file's new size durable, about twice one that
# overwrites it (~0.4 against ~0.2 ms on the bench machine); SQLite starts
# the WAL over only once a checkpoint has copied all of it, by itself at
# 1,000 pages (4 MB), so every write of a daemon's first 4 MB after a
# start appended. Checkpointed when idle, the WAL stays small and is
# written over, off the commits' path; SQLite's own checkpoint stays the
# backstop under sustained load.
CHECKPOINT_AFTER = 16


@dataclass
class _Write:
    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)
    outcome: tuple[bool, Any] | None = None  # (ok, result or exception) once run


class GroupCommitWriter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._riders: dict[int, bytes] = {}  # slot -> its newest flow proof (bounded by the slots)
        self._riders_lock = threading.Lock()
        self._commits_unchecked = 0  # commits since the last checkpoint
        self._thread = threading.Thread(target=self._serve, name="store", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` (calls of the store) on the writer thread; its future is
        resolved once the commit holding its changes returned."""
        write = _Write(fn)
        self._queue.put(write)
        return write.future

    def carry(self, slot: int, proof: bytes) -> None:
        """``proof`` written with the next commit (replacing one of ``slot``
        not yet written). Any thread."""
        with self._riders_lock:
            self._riders[slot] = proof

    def stop(self) -> None:
        """Finish every write already asked for, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stopping = False
            while len(group) < MAX_GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                group.append(more)
            # A write whose caller gave up before it ran is not made (as
            # with an executor); one that is running can no longer be cancelled.
            group = [w for w in group if w.future.set_running_or_notify_cancel()]
            if group:
                self._commit(group)
                self._commits_unchecked += 1
            if stopping:
                return
            if self._commits_unchecked >= CHECKPOINT_AFTER and self._queue.empty():
                self._checkpoint()

    def _checkpoint(self) -> None:
        self._commits_unchecked = 0
        try:
            self._store.checkpoint()
        except Exception as exc:  # the commits are durable in the WAL all the same
            log.warning("store checkpoint failed: %s", exc)

    def _commit(self, group: list[_Write]) -> None:
        store = self._store
        try:
            with store.group():
                self._write_riders()
                for write in group:
                    try:
                        with store.part():
                            write.outcome = (True, write.fn())
                    except TransactionLost as exc:
                        # The writes before are lost too: the group fails.
                        write.outcome = (False, exc.__cause__ or exc)
                        raise
                    except Exception as exc:
                        write.outcome = (False, exc)
        except BaseException as exc:
            for write in group:
                ok = write.outcome is not None and write.outcome[0]
                # A write that failed by itself keeps its own error.
                _resolve(write, (False, exc) if ok or write.outcome is None else write.outcome)
            if not isinstance(exc, Exception):
                raise
            return
        for write in group:
            assert write.outcome is not None
            _resolve(write, write.outcome)

    def _write_riders(self) -> None:
        with self._riders_lock:
            riders, self._riders = self._riders, {}
        if not riders:
            return
        try:
            with self._store.part():
                self._store.keep_flow_proofs(riders)
        except TransactionLost:
            raise
        except Exception as exc:  # the group's own writes go on; the proofs are lost
            log.warning("flow proofs of %d slots not kept: %s", len(riders), exc)


def _resolve(write: _Write, outcome: tuple[bool, Any]) -> None:
    ok, value = outcome
    if ok:
        write.future.set_result(value)
    else:
        write.future.set_exception(value)
