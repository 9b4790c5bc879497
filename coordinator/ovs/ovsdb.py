"""OVSDB through ovsdbapp, behind one worker thread.

ovsdbapp is thread-based and blocking; every call here runs on a single
dedicated thread so the asyncio loop never blocks on the switch and
transactions are never interleaved.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from coordinator.ovs.port_keys import ATTACHMENT_KEY, OWNER_KEY, OWNER_VALUE, ROLE_KEY, SANDBOX_KEY

T = TypeVar("T")


class OvsdbError(RuntimeError):
    pass


class Ovsdb:
    def __init__(self, remote: str, *, timeout: float) -> None:
        self._remote = remote
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovsdb")
        self._api: Any = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- connection ---------------------------------------------------------

    async def connect(self) -> None:
        await self._run(self._connect)

    def _connect(self) -> None:
        try:
            idl = connection.OvsdbIdl.from_server(self._remote, "Open_vSwitch")
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
        return await self._run(self._ensure_port, bridge, name, external_ids)

    def _ensure_port(self, bridge: str, name: str, external_ids: dict[str, str]) -> int:
        api = self._api
        try:
            with api.transaction(check_error=True) as txn:
                txn.add(api.add_port(bridge, name, may_exist=True))
                txn.add(api.db_set("Port", name, ("external_ids", external_ids)))
                txn.add(api.db_set("Interface", name, ("external_ids", external_ids)))
        except Exception as exc:
            raise OvsdbError(f"adding port {name} to {bridge}: {exc}") from exc
        return self._wait_ofport(name)

    def _wait_ofport(self, name: str) -> int:
        # A missing netdev is not an error to OVSDB: the row exists with
        # ofport -1 and the reason in `error`. Report that instead.
        deadline = time.monotonic() + self._timeout
        while True:
            rows = self._execute("reading interface", api_list(self._api, name))
            row = rows[0] if rows else {}
            ofport = _scalar(row.get("ofport"))
            error = _scalar(row.get("error"))
            if isinstance(ofport, int) and ofport > 0:
                return ofport
            if error or time.monotonic() > deadline:
                raise OvsdbError(f"port {name}: no OpenFlow port number ({error or 'timed out'})")
            time.sleep(0.02)

    async def delete_port(self, bridge: str, name: str) -> None:
        await self._run(
            self._execute, f"deleting port {name}", self._api.del_port(name, bridge, if_exists=True)
        )

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
