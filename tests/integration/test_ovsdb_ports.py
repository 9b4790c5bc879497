"""Port additions and removals asked for together share one OVSDB
transaction, and one bad request among them fails only its own caller; a
change is answered once ovs-vswitchd has applied it, and the next one is
committed meanwhile, not after. A change of labels only gives ovs-vswitchd
nothing to apply."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import pytest

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.ovs.ovsdb import Ovsdb, OvsdbError

pytestmark = pytest.mark.ovs

PORTS = 3
T = TypeVar("T")


@pytest.fixture
async def ovsdb(ovs_session: OvsInstance) -> AsyncIterator[tuple[Ovsdb, str, list[str]]]:
    bridge = netns.unique_name("br-od")
    names = [netns.unique_name("od") for _ in range(PORTS)]
    for name in names:
        netns.run_in_netns(ovs_session.netns, ["ip", "link", "add", name, "type", "veth"])
    db = Ovsdb(ovs_session.db_remote, timeout=10)
    try:
        await db.connect()
        await db.ensure_bridge(bridge, "netdev")
        yield db, bridge, names
    finally:
        await db.close()
        ovs_session.vsctl("--if-exists", "del-br", bridge)
        for name in names:
            netns.run_in_netns(ovs_session.netns, ["ip", "link", "del", name], check=False)


async def _while_worker_busy(db: Ovsdb, *calls: Awaitable[T]) -> list[T | BaseException]:
    """Ask for ``calls`` while the OVSDB worker is busy with something else,
    as when they arrive during another caller's commit."""
    busy = threading.Event()
    blocker = asyncio.ensure_future(db._run(busy.wait))
    asking = asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0.05)
    busy.set()
    await blocker
    return await asking


def _count_transactions(db: Ovsdb, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = db._commit

    def counted(commands: list[Any], *, applies: bool) -> int | None:
        sizes.append(len(commands))
        return real(commands, applies=applies)

    monkeypatch.setattr(db, "_commit", counted)
    return sizes


async def test_concurrent_port_changes_share_one_transaction(
    ovsdb: tuple[Ovsdb, str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, bridge, names = ovsdb
    transactions = _count_transactions(db, monkeypatch)
    ofports = await _while_worker_busy(db, *(db.ensure_port(bridge, n, {"test": n}) for n in names))
    assert len(set(ofports)) == PORTS and all(isinstance(p, int) and p > 0 for p in ofports), ofports
    assert len(transactions) == 1
    assert {n: p for n, p in (await db.interface_ofports()).items() if n in names} == dict(
        zip(names, ofports, strict=True)
    )
    await _while_worker_busy(db, *(db.delete_port(bridge, n) for n in names))
    assert len(transactions) == 2
    assert not set(names) & set(await db.interface_ofports())


async def test_a_bad_change_fails_only_its_own_caller(
    ovsdb: tuple[Ovsdb, str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, bridge, names = ovsdb
    missing_bridge = netns.unique_name("br-none")
    transactions = _count_transactions(db, monkeypatch)
    outcomes = await _while_worker_busy(
        db,
        db.ensure_port(bridge, names[0], {}),
        db.ensure_port(missing_bridge, names[1], {}),
        db.ensure_port(bridge, names[2], {}),
    )
    good = [outcomes[0], outcomes[2]]
    assert all(isinstance(p, int) and p > 0 for p in good), outcomes
    assert isinstance(outcomes[1], OvsdbError)
    assert f"adding port {names[1]} to {missing_bridge}" in str(outcomes[1])
    # The merged transaction failed as a whole, then each change went alone.
    assert len(transactions) == 1 + 3
    assert names[1] not in await db.interface_ofports()


@contextlib.contextmanager
def _vswitchd_paused(ovs: OvsInstance) -> Iterator[None]:
    """ovs-vswitchd stopped (it applies nothing meanwhile), resumed after."""
    pid = ovs.vswitchd_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _until_in_database(ovs: OvsInstance, bridge: str, name: str) -> None:
    deadline = time.monotonic() + 5
    while name not in ovs.vsctl("--no-wait", "list-ports", bridge).split():
        assert time.monotonic() < deadline, f"{name} was not committed while ovs-vswitchd applied nothing"
        await asyncio.sleep(0.05)


async def test_a_change_commits_while_vswitchd_still_applies_the_one_before(
    ovsdb: tuple[Ovsdb, str, list[str]], ovs_session: OvsInstance
) -> None:
    db, bridge, names = ovsdb
    with _vswitchd_paused(ovs_session):
        first = asyncio.ensure_future(db.ensure_port(bridge, names[0], {}))
        await _until_in_database(ovs_session, bridge, names[0])
        second = asyncio.ensure_future(db.ensure_port(bridge, names[1], {}))
        await _until_in_database(ovs_session, bridge, names[1])
        await asyncio.sleep(0.2)
        # Neither is answered before ovs-vswitchd has applied it.
        assert not first.done() and not second.done()
    ofports = await asyncio.gather(first, second)
    assert len(set(ofports)) == 2 and all(p > 0 for p in ofports), ofports
    removal = asyncio.ensure_future(db.delete_port(bridge, names[0]))
    with _vswitchd_paused(ovs_session):
        await asyncio.sleep(0.3)
        assert not removal.done()
    await removal
    assert names[0] not in await db.interface_ofports()


async def test_the_replica_takes_updates_without_giving_up_the_interpreter_per_row(
    ovsdb: tuple[Ovsdb, str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ovsdbapp's IDL sleeps for 0 s before each row of an update, a yield
    meant for green threads. Here it only hands the interpreter to the
    event loop and waits to get it back, once per row, while the loop is
    busy with other callers: a port change under load was answered that
    much later. The daemon has no green threads; its replica never sleeps."""
    db, bridge, names = ovsdb
    from ovsdbapp.backend.ovs_idl import connection as ovsdbapp_connection

    real_sleep = time.sleep
    zero_sleeps = []

    def sleep(seconds: float) -> None:
        if seconds == 0:
            zero_sleeps.append(threading.current_thread().name)
        real_sleep(seconds)

    monkeypatch.setattr(ovsdbapp_connection.time, "sleep", sleep)
    await db.ensure_port(bridge, names[0], {"test": "yield"})
    await db.delete_port(bridge, names[0])
    assert zero_sleeps == []


def _next_cfg(ovs: OvsInstance) -> int:
    """The configuration number the database asks ovs-vswitchd to reach:
    each bump makes it run its reconfiguration of the whole switch."""
    return int(ovs.vsctl("--no-wait", "get", "Open_vSwitch", ".", "next_cfg"))


async def test_relabelling_a_port_asks_vswitchd_to_apply_nothing(
    ovsdb: tuple[Ovsdb, str, list[str]], ovs_session: OvsInstance
) -> None:
    """A Detach and an Attach each relabel a parked port. ovs-vswitchd does
    not read external_ids, so a relabel must not bump ``next_cfg``: that
    would make it reconfigure the whole switch, on the thread that also
    answers our OpenFlow channel, and send the replica an update when it
    is done, for every Attach and every Detach."""
    db, bridge, names = ovsdb
    await db.ensure_port(bridge, names[0], {"test": "before"})
    before = _next_cfg(ovs_session)
    for i in range(3):
        await db.relabel_port(names[0], {"test": f"label-{i}"})
    assert _next_cfg(ovs_session) == before
    assert ovs_session.vsctl("--no-wait", "get", "Port", names[0], "external_ids").strip() == (
        "{test=label-2}"
    )
    # A port addition still waits for ovs-vswitchd, also in one transaction with a relabel.
    outcomes = await _while_worker_busy(
        db, db.relabel_port(names[0], {"test": "again"}), db.ensure_port(bridge, names[1], {})
    )
    assert outcomes[0] is None and isinstance(outcomes[1], int) and outcomes[1] > 0, outcomes
    assert _next_cfg(ovs_session) == before + 1
