"""A restart that its flow proofs show unchanged, on a private OVS.

Each verified sync leaves a proof in the store: the fingerprint of what
the attachment's flows were compiled from and the digest of what the
switch then held. A restart whose every attachment still has both
compiles nothing; anything else that differs - a flow changed behind the
daemon's back, a stored policy changed while it was down, a proof that
does not read, the cookie that had taken one of an attachment's places
gone - sends it down the whole compare, and what it repairs is proven
again for the next restart."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator import dataplane
from coordinator.attachment_identity import cookie_for_slot
from coordinator.daemon import Adapters, build
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.store.db import Store
from tests.integration.stack import Uplink, build_stack
from tests.integration.test_restart_reconcile import (
    BRIDGE,
    _attached_with,
    _claims,
    _clean_up,
    _holds_exactly,
    _rule_flow,
    _scope,
    _stop,
)

pytestmark = pytest.mark.ovs

ATTACHMENTS = 4


@contextlib.contextmanager
def _counting_compiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many attachments' flows the dataplane compiles meanwhile."""
    compiled = [0]
    real = dataplane.attachment_flows

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        compiled[0] += 1
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(dataplane, "attachment_flows", counted)
        yield compiled


@contextlib.contextmanager
def _store_while_down(path: str) -> Iterator[Store]:
    store = Store(Path(path))
    try:
        yield store
    finally:
        store.close()


def _proof_rows(path: str) -> dict[int, bytes]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {int(slot): bytes(proof) for slot, proof in db.execute("SELECT slot, proof FROM flow_proofs")}


async def test_a_restart_with_nothing_changed_compiles_nothing_and_drift_is_still_repaired(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=ATTACHMENTS, sfs=0)
    adapters: Adapters | None = None
    try:
        records = await _attached_with(stack, "proof", [_scope(i) for i in range(ATTACHMENTS)])
        await _stop(stack)
        # Every apply left its proof, written with the apply's own commit.
        assert set(_proof_rows(stack.config.store.path)) == {r.slot for r in records}

        with _counting_compiles(monkeypatch) as compiled:
            adapters = await build(stack.config, stack.backend)  # the restart
        report = adapters.service.last_converge
        assert report is not None and report.corrections == 0 and compiled == [0]
        for i, record in enumerate(records):
            assert await _holds_exactly(adapters, record, _scope(i)), f"attachment {i}"

        # While it is down, one flow of attachment 2 changes its actions
        # (as many flows as before): found, repaired, and proven again.
        await _stop(adapters)
        adapters = None
        ovs.ofctl(
            "mod-flows", "--strict", ovs.mgmt(BRIDGE), _rule_flow(stack, records[2], 22) + ",actions=drop"
        )
        with _counting_compiles(monkeypatch) as compiled:
            adapters = await build(stack.config, stack.backend)
        events = [e for e in await adapters.store.events_since(0) if e.reason == "FlowsRepaired"]
        assert [e.attachment_id for e in events] == [records[2].attachment_id]
        assert compiled[0] >= ATTACHMENTS
        assert await _holds_exactly(adapters, records[2], _scope(2))

        await _stop(adapters)
        adapters = None
        with _counting_compiles(monkeypatch) as compiled:
            adapters = await build(stack.config, stack.backend)
        report = adapters.service.last_converge
        assert report is not None and report.corrections == 0 and compiled == [0]
    finally:
        await _clean_up(adapters, stack)


async def test_a_policy_stored_while_down_or_an_unreadable_proof_is_compiled_and_enforced(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=2, sfs=0)
    adapters: Adapters | None = None
    try:
        records = await _attached_with(stack, "inputs", [_scope(i) for i in range(2)])
        await _stop(stack)
        # While it is down, sandbox 0's last good policy becomes another one
        # (the flows on the switch are still the old policy's, as proven).
        changed = _scope(3)
        with _store_while_down(stack.config.store.path) as store:
            store.save_policy("inputs-0", changed)
        adapters = await build(stack.config, stack.backend)
        assert await _holds_exactly(adapters, records[0], changed)
        assert await _holds_exactly(adapters, records[1], _scope(1))

        # A proof that does not read is no proof: everything is compared.
        await _stop(adapters)
        adapters = None
        with contextlib.closing(sqlite3.connect(stack.config.store.path)) as db, db:
            db.execute("UPDATE flow_proofs SET proof = ? WHERE slot = ?", (b"\x01short", records[1].slot))
        ovs.ofctl(
            "mod-flows", "--strict", ovs.mgmt(BRIDGE), _rule_flow(stack, records[0], 22) + ",actions=drop"
        )
        with _counting_compiles(monkeypatch) as compiled:
            adapters = await build(stack.config, stack.backend)
        assert compiled[0] >= 2
        assert await _holds_exactly(adapters, records[0], changed)
        assert len(_proof_rows(stack.config.store.path)[records[1].slot]) > len(b"\x01short")
    finally:
        await _clean_up(adapters, stack)


async def test_a_place_taken_by_a_cookie_that_is_gone_goes_back_to_the_one_that_lost_it(
    tmp_path: Path, ovs: OvsInstance, uplink: Uplink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sandboxes with one address: the drop of ARP claiming it is one
    place, the later cookie's. The other's proof names that cookie; once it
    is gone (its attachment removed from the store while the daemon was
    down, its flows left behind), the place is the other's again."""
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink", vfs=2, sfs=0)
    adapters: Adapters | None = None
    shared = "198.51.100.21"
    try:
        records = await _attached_with(stack, "shared", [_scope(1) for i in range(2)])
        earlier, later = sorted(records, key=lambda r: r.slot)
        await _stop(stack)
        adapters = await build(stack.config, stack.backend)  # settles which cookie holds the place
        assert _claims(ovs, shared) == [cookie_for_slot(later.slot)]
        await _stop(adapters)
        adapters = None
        with _counting_compiles(monkeypatch) as compiled:
            adapters = await build(stack.config, stack.backend)
        assert compiled == [0]  # the earlier one's proof holds while the later one holds its flows
        await _stop(adapters)
        adapters = None

        with _store_while_down(stack.config.store.path) as store:
            store.delete_attachment(later.attachment_id, reason="Test", message="gone while down")
        adapters = await build(stack.config, stack.backend)
        assert _claims(ovs, shared) == [cookie_for_slot(earlier.slot)]
        assert await _holds_exactly(adapters, earlier, _scope(1))
    finally:
        await _clean_up(adapters, stack)
