"""OVSDB through ovsdbapp, behind one worker thread.

ovsdbapp is thread-based and blocking; every call here runs on a single
dedicated thread so the asyncio loop never blocks on the switch and
transactions are never interleaved. ovsdbapp commits one transaction at a
time and waits for the server's reply before the next, so port additions
and removals asked for while one is committing are merged into the next
transaction (taken by the worker when it gets to them): concurrent
attaches share one round trip instead of queueing behind each other. Waiting for a new port's OpenFlow number happens on the
loop (woken by the IDL's change notifications), never on the worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    "Interface": ("name", "type", "ofport", "error", "external_ids"),
}

# Re-read a port's OpenFlow number at least this often while waiting, in
# case a change notification was missed (e.g. across a reconnect).
OFPORT_RECHECK_S = 0.1


class OvsdbError(RuntimeError):
    pass


class _WatchingIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """The IDL that tells the loop when a watched Interface row changes.
    ``notify`` runs on ovsdbapp's connection thread; it only schedules a
    wake-up, the loop reads the row itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_interface_change: Callable[[str], None] | None = None

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        callback = self.on_interface_change
        if callback is not None and row._table.name == "Interface":
            callback(str(row.name))


@dataclass
class _PortChange:
    """One port addition or removal waiting for the next transaction."""

    what: str  # for errors: "adding port X to BR"
    commands: Callable[[Any], list[Any]]  # the ovsdbapp commands, built from the API
    added: str = ""  # an interface whose OpenFlow number is read right after the commit
    interface: tuple[int | None, str] | None = None  # what that read found (number, error)
    committed: bool = False
    error: OvsdbError | None = None


class Ovsdb:
    def __init__(self, remote: str, *, timeout: float) -> None:
        self._remote = remote
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovsdb")
        self._api: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Interface name -> the events of those waiting for its row to change.
        self._watched: dict[str, set[asyncio.Event]] = {}
        # Port changes not yet taken by the worker: appended on the loop,
        # taken on the worker thread.
        self._pending: list[_PortChange] = []
        self._pending_lock = threading.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- connection ---------------------------------------------------------

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._run(self._connect)

    def _connect(self) -> None:
        try:
            helper = idlutils.get_schema_helper(self._remote, "Open_vSwitch")
            for table, columns in REPLICATED_COLUMNS.items():
                helper.register_columns(table, list(columns))
            idl = _WatchingIdl(self._remote, helper)
            idl.on_interface_change = self._interface_changed
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
            change = _PortChange(f"adding port {name} to {bridge}", commands, added=name)
            await self._change_ports(change)
            return await self._wait_ofport(name, changed, change.interface)

    async def _wait_ofport(
        self, name: str, changed: asyncio.Event, first: tuple[int | None, str] | None
    ) -> int:
        # A missing netdev is not an error to OVSDB: the row exists with
        # ofport -1 and the reason in `error`. Report that instead.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            changed.clear()
            # Usually the number is there when the commit returns (read on
            # the worker right after it): no further round trip.
            ofport, error = first if first is not None else await self._run(self._read_interface, name)
            first = None
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
        ofport, error = _scalar(row.get("ofport")), _scalar(row.get("error"))
        return (ofport if isinstance(ofport, int) and ofport > 0 else None), str(error or "")

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

    def _interface_changed(self, name: str) -> None:
        # On ovsdbapp's connection thread: only a membership test here (the
        # loop owns the dict), the wake-up itself runs on the loop.
        if name in self._watched and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake, name)

    def _wake(self, name: str) -> None:
        for changed in self._watched.get(name, ()):
            changed.set()

    async def delete_port(self, bridge: str, name: str) -> None:
        await self._change_ports(
            _PortChange(f"deleting port {name}", lambda api: [api.del_port(name, bridge, if_exists=True)])
        )

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
            self._commit([c for change in batch for c in change.commands(self._api)])
            errors: list[OvsdbError | None] = [None] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [OvsdbError(f"{batch[0].what}: {exc}")]
            errors = []
            for change in batch:
                try:
                    self._commit(change.commands(self._api))
                    errors.append(None)
                except Exception as exc:
                    errors.append(OvsdbError(f"{change.what}: {exc}"))
        for change, error in zip(batch, errors, strict=True):
            if change.added and error is None:
                with contextlib.suppress(OvsdbError):  # the caller reads it again
                    change.interface = self._read_interface(change.added)
        return errors

    def _commit(self, commands: list[Any]) -> None:
        with self._api.transaction(check_error=True) as txn:
            for command in commands:
                txn.add(command)

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


def _scalar(value: Any) -> Any:
    # OVSDB optional columns come back as [] when empty, or a one-item list.
    if isinstance(value, list):
        return value[0] if value else None
    return value


__all__ = ["ATTACHMENT_KEY", "OWNER_KEY", "OWNER_VALUE", "ROLE_KEY", "SANDBOX_KEY", "Ovsdb", "OvsdbError"]
