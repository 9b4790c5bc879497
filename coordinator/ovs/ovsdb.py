"""OVSDB through ovsdbapp, behind one worker thread.

ovsdbapp is thread-based and blocking; every call here runs on a single
dedicated thread so the asyncio loop never blocks on the switch and
transactions are never interleaved. ovsdbapp commits one transaction at a
time and waits for the server's reply before the next, so port additions
and removals asked for while one is committing are merged into the next
transaction (taken by the worker when it gets to them): concurrent
attaches share one round trip instead of queueing behind each other.

A port change is answered once ovs-vswitchd has applied it (its
``cur_cfg`` reached the ``next_cfg`` the transaction set), waited for on
the loop, woken by the IDL's notifications, not on the worker or
ovsdbapp's connection thread (its own transactions hold that for the whole
reconfiguration): the next transaction commits while ovs-vswitchd applies
the one before, and it applies all committed by then in one pass. A new
port's OpenFlow number is awaited the same way. A relabel sets no
``next_cfg``: ovs-vswitchd reads no external_ids, and would reconfigure
the whole switch for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

from coordinator.ovs.port_keys import ATTACHMENT_KEY, OWNER_KEY, OWNER_VALUE, ROLE_KEY, SANDBOX_KEY
from coordinator.waiting import wait_within

T = TypeVar("T")

log = logging.getLogger(__name__)

# What the IDL replicates: the columns the daemon and ovsdbapp's commands
# here (add_br, add_port, del_port, list_ports, db_set, db_list and the
# wait for vswitchd's cur_cfg after a commit) read or write. Replicating
# the whole schema costs ~18 KB a port resident (1024 ports: ~18 MB), most
# of it Interface's statistics and status, which ovsdb-server also re-sends
# for every port each time vswitchd refreshes them; with these, a few KB.
REPLICATED_COLUMNS: dict[str, tuple[str, ...]] = {
    "Open_vSwitch": ("bridges", "other_config", "next_cfg", "cur_cfg"),
    "Bridge": ("name", "ports", "fail_mode", "datapath_type", "protocols"),
    "Port": ("name", "interfaces", "external_ids"),
    "Interface": ("name", "type", "ofport", "ifindex", "error", "external_ids"),
}

# Re-read a port's OpenFlow number at least this often while waiting, in
# case a change notification was missed (e.g. across a reconnect).
OFPORT_RECHECK_S = 0.1


class OvsdbError(RuntimeError):
    pass


class _CommitOnly(impl_idl.OvsVsctlTransaction):  # type: ignore[misc]
    """ovsdbapp's Open_vSwitch transaction, not waiting on its thread. If it
    ``applies``, it bumps ``next_cfg`` (ovs-vswitchd reconfigures the whole
    switch, then reports) and keeps it for the caller to wait for on the loop."""

    next_cfg: int | None = None
    applies = True

    def pre_commit(self, txn: Any) -> None:
        if self.applies:
            super().pre_commit(txn)

    def do_post_commit(self, txn: Any) -> None:
        self.next_cfg = txn.get_increment_new_value() if self.applies else None


class _WatchingIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """The IDL that tells the loop when a watched Interface row changes.
    ``notify`` runs on ovsdbapp's connection thread; it only schedules a
    wake-up, the loop reads the row itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A changed Interface row, and whether it was deleted.
        self.on_interface_change: Callable[[Any, bool], None] | None = None
        self.on_applied: Callable[[int], None] | None = None

    def cooperative_yield(self) -> None:
        # ovsdbapp sleeps 0 s here, before each row of an update: a yield
        # for green threads. In this daemon it only gives the interpreter
        # to the busy event loop and waits to get it back, row by row.
        pass

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        table = row._table.name
        if table == "Interface" and self.on_interface_change is not None:
            self.on_interface_change(row, event == "delete")
        elif table == "Open_vSwitch" and self.on_applied is not None and event != "delete":
            applied = _scalar(getattr(row, "cur_cfg", None))
            if isinstance(applied, int):
                self.on_applied(applied)


@dataclass
class _PortChange:
    """One port addition or removal waiting for the next transaction."""

    what: str  # for errors: "adding port X to BR"
    commands: Callable[[Any], list[Any]]  # the ovsdbapp commands, built from the API
    committed: bool = False
    error: OvsdbError | None = None
    next_cfg: int | None = None  # what ovs-vswitchd reports once it has applied the change
    applies: bool = True  # False: nothing for ovs-vswitchd (labels only), next_cfg stays


class Ovsdb:
    def __init__(self, remote: str, *, timeout: float) -> None:
        self._remote = remote
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovsdb")
        self._api: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Interface name -> the events of those waiting for its row to change.
        self._watched: dict[str, set[asyncio.Event]] = {}
        # What the last change notification of a watched interface said
        # (number, error): a new port's number without another read.
        self._notified: dict[str, tuple[int | None, str]] = {}
        # Port changes not yet taken by the worker: appended on the loop,
        # taken on the worker thread.
        self._pending: list[_PortChange] = []
        self._pending_lock = threading.Lock()
        # ovs-vswitchd's cur_cfg as last notified, and those waiting for it
        # to reach a value (each woken once, when it does).
        self._applied = 0
        # Interface name -> (OpenFlow port, kernel index) as the replica holds
        # them, kept by the IDL's change notifications (one dict item set
        # or popped on its thread at a time): read on the loop, no hop.
        self._interfaces: dict[str, tuple[int | None, int]] = {}
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- connection ---------------------------------------------------------

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._run(self._connect)
        applied = await self._run(self._read_applied)
        self._note_applied(applied or 0)

    def _connect(self) -> None:
        try:
            helper = idlutils.get_schema_helper(self._remote, "Open_vSwitch")
            for table, columns in REPLICATED_COLUMNS.items():
                helper.register_columns(table, list(columns))
            idl = _WatchingIdl(self._remote, helper)
            idl.on_interface_change = self._interface_changed
            idl.on_applied = self._vswitchd_applied
            conn = connection.Connection(idl=idl, timeout=self._timeout)
        except Exception as exc:
            raise OvsdbError(f"cannot connect to OVSDB at {self._remote}: {exc}") from exc
        # ovsdbapp keeps the connection on the API class; a subclass per
        # instance keeps two instances in one process apart.
        api_class = type(f"OvsdbIdl_{uuid.uuid4().hex}", (impl_idl.OvsdbIdl,), {})
        self._api = api_class(conn)

    async def close(self) -> None:
        def stop() -> None:
            if self._api is not None:
                self._api.ovsdb_connection.stop()
                self._api = None

        await self._run(stop)
        self._executor.shutdown(wait=True)

    def _execute(self, what: str, command: Any) -> Any:
        try:
            return command.execute(check_error=True, log_errors=False)
        except Exception as exc:
            raise OvsdbError(f"{what}: {exc}") from exc

    # -- bridge and ports -----------------------------------------------------

    async def ensure_bridge(self, bridge: str, datapath_type: str) -> None:
        await self._run(self._ensure_bridge, bridge, datapath_type)

    def _ensure_bridge(self, bridge: str, datapath_type: str) -> None:
        api = self._api
        with api.transaction(check_error=True) as txn:
            txn.add(api.add_br(bridge, may_exist=True, datapath_type=datapath_type))
            # secure: with no flows nothing passes, so a bridge without our
            # flows (fresh, or after a crash) is closed, never open.
            txn.add(
                api.db_set(
                    "Bridge", bridge, ("fail_mode", "secure"), ("protocols", ["OpenFlow13", "OpenFlow15"])
                )
            )
        dp = self._execute("reading bridge", api.db_get("Bridge", bridge, "datapath_type"))
        if dp != datapath_type:
            raise OvsdbError(f"bridge {bridge} has datapath_type {dp!r}, config says {datapath_type!r}")

    async def ensure_port(self, bridge: str, name: str, external_ids: dict[str, str]) -> int:
        """Put ``name`` on ``bridge`` (if it is not there) with ``external_ids``;
        returns its OpenFlow port number once ovs-vswitchd has assigned one."""

        def commands(api: Any) -> list[Any]:
            return [
                api.add_port(bridge, name, may_exist=True),
                api.db_set("Port", name, ("external_ids", external_ids)),
                api.db_set("Interface", name, ("external_ids", external_ids)),
            ]

        # Watched before the transaction: a number assigned right after it
        # commits is not missed.
        with self._watch(name) as changed:
            change = _PortChange(f"adding port {name} to {bridge}", commands)
            await self._change_ports(change)
            await self._wait_applied(change)
            return await self._wait_ofport(name, changed)

    async def _wait_ofport(self, name: str, changed: asyncio.Event) -> int:
        # A missing netdev is not an error to OVSDB: the row exists with
        # ofport -1 and the reason in `error`. Report that instead.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            changed.clear()
            # Usually notified by the time ovs-vswitchd has applied the
            # change (it writes the number then); read if not.
            notified = self._notified.get(name)
            ofport, error = (
                notified if notified is not None and notified[0] is not None
                else await self._run(self._read_interface, name)
            )  # fmt: skip
            if ofport is not None:
                return ofport
            remaining = deadline - loop.time()
            if error or remaining <= 0:
                raise OvsdbError(f"port {name}: no OpenFlow port number ({error or 'timed out'})")
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_within(changed.wait(), min(remaining, OFPORT_RECHECK_S))

    def _read_interface(self, name: str) -> tuple[int | None, str]:
        rows = self._execute("reading interface", api_list(self._api, name))
        row = rows[0] if rows else {}
        return _ofport(row.get("ofport")), str(_scalar(row.get("error")) or "")

    @contextlib.contextmanager
    def _watch(self, name: str) -> Iterator[asyncio.Event]:
        changed = asyncio.Event()
        self._watched.setdefault(name, set()).add(changed)
        try:
            yield changed
        finally:
            waiting = self._watched[name]
            waiting.discard(changed)
            if not waiting:
                del self._watched[name]
                self._notified.pop(name, None)

    def _interface_changed(self, row: Any, deleted: bool) -> None:
        # On ovsdbapp's connection thread: the row is read here (a deleted
        # row's values are those it had: never a number to use); only a
        # membership test of the loop's dict, the wake-up runs on the loop.
        name = str(row.name)
        if deleted:
            self._interfaces.pop(name, None)
        else:
            index = _scalar(getattr(row, "ifindex", None))
            ofport_now = _ofport(getattr(row, "ofport", None))
            self._interfaces[name] = (ofport_now, index if isinstance(index, int) else 0)
        if name in self._watched and self._loop is not None:
            ofport = None if deleted else _ofport(getattr(row, "ofport", None))
            error = str(_scalar(getattr(row, "error", "")) or "")
            self._loop.call_soon_threadsafe(self._wake, name, ofport, error)

    def _wake(self, name: str, ofport: int | None, error: str) -> None:
        if name in self._watched:
            self._notified[name] = (ofport, error)
        for changed in self._watched.get(name, ()):
            changed.set()

    def _vswitchd_applied(self, cur_cfg: int) -> None:
        # On ovsdbapp's connection thread, like ``_interface_changed``.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._note_applied, cur_cfg)

    def _note_applied(self, cur_cfg: int) -> None:
        self._applied = cur_cfg
        waiting = []
        for target, applied in self._applied_waiters:
            if not applied.done():
                if target <= cur_cfg:
                    applied.set_result(None)
                else:
                    waiting.append((target, applied))
        self._applied_waiters = waiting

    async def _wait_applied(self, change: _PortChange) -> None:
        """Until ovs-vswitchd has applied ``change``'s transaction. Past the
        timeout the caller goes on, as ovs-vsctl does (a new port's missing
        number is then the error); cur_cfg is read again now and then in
        case a notification was missed."""
        target = change.next_cfg
        if target is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while self._applied < target:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("%s: ovs-vswitchd did not apply it within %.0f s", change.what, self._timeout)
                return
            applied: asyncio.Future[None] = loop.create_future()
            self._applied_waiters.append((target, applied))
            try:
                await wait_within(applied, min(remaining, OFPORT_RECHECK_S))
            except asyncio.TimeoutError:
                read = await self._run(self._read_applied)
                if read is not None and read != self._applied:
                    self._note_applied(read)

    def _read_applied(self) -> int | None:
        rows = self._execute("reading Open_vSwitch", self._api.db_list("Open_vSwitch", columns=["cur_cfg"]))
        value = _scalar(rows[0].get("cur_cfg")) if rows else None
        return value if isinstance(value, int) else None

    async def relabel_port(self, name: str, external_ids: dict[str, str]) -> None:
        """Replace the external_ids of port ``name`` (and its interface), once
        committed (nothing for ovs-vswitchd to apply). Absent is fine."""

        def commands(api: Any) -> list[Any]:
            # A map set merges keys into what is there: cleared first, so
            # the ids of whoever had the port before do not stay.
            return [
                step
                for table in ("Port", "Interface")
                for step in (
                    api.db_clear(table, name, "external_ids"),
                    api.db_set(table, name, ("external_ids", external_ids), if_exists=True),
                )
            ]

        await self._change_ports(_PortChange(f"relabelling port {name}", commands, applies=False))

    async def delete_port(self, bridge: str, name: str) -> None:
        change = _PortChange(
            f"deleting port {name}", lambda api: [api.del_port(name, bridge, if_exists=True)]
        )
        await self._change_ports(change)
        await self._wait_applied(change)

    async def _change_ports(self, change: _PortChange) -> None:
        """Commit ``change`` in the next transaction, with the others asked
        for meanwhile; raises OvsdbError if it failed. Each caller queues a
        job on the worker; the first job to run commits every change
        pending by then, so the later ones find theirs done (one hand-over
        between loop and worker per caller, as for any other call)."""
        with self._pending_lock:
            self._pending.append(change)
        await self._run(self._commit_pending)
        if not change.committed:  # pragma: no cover - the worker takes every pending change
            raise OvsdbError(f"{change.what}: not committed")
        if change.error is not None:
            raise change.error

    def _commit_pending(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        if not batch:  # an earlier job committed this caller's change
            return
        errors = self._commit_batch(batch)
        for change, error in zip(batch, errors, strict=True):
            change.error = error
            change.committed = True

    def _commit_batch(self, batch: list[_PortChange]) -> list[OvsdbError | None]:
        """One transaction for the whole batch; if it fails, each change on
        its own, so one bad change fails only its own caller."""
        try:
            commands = [c for change in batch for c in change.commands(self._api)]
            next_cfg = self._commit(commands, applies=any(change.applies for change in batch))
            for change in batch:
                change.next_cfg = next_cfg
            return [None] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [OvsdbError(f"{batch[0].what}: {exc}")]
        errors: list[OvsdbError | None] = []
        for change in batch:
            try:
                change.next_cfg = self._commit(change.commands(self._api), applies=change.applies)
                errors.append(None)
            except Exception as exc:
                errors.append(OvsdbError(f"{change.what}: {exc}"))
        return errors

    def _commit(self, commands: list[Any], *, applies: bool) -> int | None:
        """Commit ``commands`` in one transaction, without waiting for
        ovs-vswitchd; returns the ``next_cfg`` that says it has applied them."""
        txn = _CommitOnly(self._api, self._api.ovsdb_connection, check_error=True, log_errors=False)
        txn.applies = applies
        for command in commands:
            txn.add(command)
        txn.commit()
        return txn.next_cfg

    async def owned_ports(self, bridge: str) -> dict[str, dict[str, str]]:
        """Ports on ``bridge`` carrying our owner tag, with their external_ids."""
        return await self._run(self._owned_ports, bridge)

    def _owned_ports(self, bridge: str) -> dict[str, dict[str, str]]:
        names = set(self._execute("listing ports", self._api.list_ports(bridge)))
        rows = self._execute("reading ports", self._api.db_list("Port", columns=["name", "external_ids"]))
        return {
            r["name"]: dict(r["external_ids"])
            for r in rows
            if r["name"] in names and r["external_ids"].get(OWNER_KEY) == OWNER_VALUE
        }

    async def interface_ofports(self) -> dict[str, int]:
        """OpenFlow port numbers of every interface that has one."""

        def read() -> dict[str, int]:
            rows = self._execute(
                "reading interfaces", self._api.db_list("Interface", columns=["name", "ofport"])
            )
            found = {r["name"]: _scalar(r["ofport"]) for r in rows}
            return {name: port for name, port in found.items() if isinstance(port, int) and port > 0}

        return await self._run(read)

    async def interface_state(self, name: str) -> tuple[int | None, int]:
        """Interface ``name``'s OpenFlow port (None if it has none) and its
        kernel interface index (0 when its device is gone or it is absent)."""
        known = self._interfaces.get(name)
        if known is not None:
            return known

        def read() -> tuple[int | None, int]:
            rows = self._execute(
                "reading interface",
                self._api.db_list("Interface", [name], columns=["ofport", "ifindex"], if_exists=True),
            )
            row = rows[0] if rows else {}
            index = _scalar(row.get("ifindex"))
            return _ofport(row.get("ofport")), index if isinstance(index, int) else 0

        return await self._run(read)

    async def interface_ofport(self, name: str) -> int | None:
        def read() -> int | None:
            rows = self._execute("reading interface", api_list(self._api, name))
            value = _scalar(rows[0].get("ofport")) if rows else None
            return value if isinstance(value, int) and value > 0 else None

        return await self._run(read)

    async def bridge_facts(self, bridge: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            rows = self._execute(
                "reading bridge",
                self._api.db_list("Bridge", [bridge], columns=["fail_mode", "datapath_type"], if_exists=True),
            )
            ovs = self._execute(
                "reading Open_vSwitch", self._api.db_list("Open_vSwitch", columns=["other_config"])
            )
            return {
                "bridge": rows[0] if rows else None,
                "other_config": dict(ovs[0]["other_config"]) if ovs else {},
            }

        return await self._run(read)


def api_list(api: Any, interface: str) -> Any:
    return api.db_list("Interface", [interface], columns=["ofport", "error"], if_exists=True)


def _ofport(value: Any) -> int | None:
    number = _scalar(value)
    return number if isinstance(number, int) and number > 0 else None


def _scalar(value: Any) -> Any:
    # OVSDB optional columns come back as [] when empty, or a one-item list.
    if isinstance(value, list):
        return value[0] if value else None
    return value


__all__ = ["ATTACHMENT_KEY", "OWNER_KEY", "OWNER_VALUE", "ROLE_KEY", "SANDBOX_KEY", "Ovsdb", "OvsdbError"]
