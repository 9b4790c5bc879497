"""Policy on the recording fake switch: apply, a refused apply, degrade,
stale (kept and cut), withdrawal, the gateway's latest, and the policy
fault points."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from coordinator import faults
from coordinator.attachment_identity import cookie_for_slot
from coordinator.faults import FaultInjected
from coordinator.policy.codec import scope_from_stored
from coordinator.policy.packet import IPPROTO_TCP, Direction, Packet
from coordinator.service import DENY_ALL_CLASS, REMOVED_REASON, AttachParams
from coordinator.store import policy_rows
from coordinator.store.records import AttachmentRecord, AttachmentState, PolicyState
from coordinator.store.worker import AsyncStore
from tests.unit.service_harness import ADMIN, CLASSES, HOST, Harness, harness, scope

DENY_ALL = CLASSES[DENY_ALL_CLASS]
ISOLATED = CLASSES["dpu-ovs-isolated"]
STALE_DENIES = {"policy": {"on_stale": "deny-all"}}


def _enforces(h: Harness, record: AttachmentRecord, expected: object) -> bool:
    current = h.current(record)
    return h.switch.flows_of(current) == h.switch.rendered(current, current.ofport, expected)  # type: ignore[arg-type]


async def test_apply_installs_the_policy_records_it_and_stores_it_as_last_good(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        (applied,) = await h.service.apply_policy("sb-1", scope(2))
        assert (applied.policy_state, applied.policy_version) == (PolicyState.APPLIED, 2)
        assert _enforces(h, record, scope(2))
        assert h.store.policy("sb-1") is not None and h.store.policy("sb-1")[0] == 2  # type: ignore[index]
        assert h.observed.applies == [True] and "Applied" in h.reasons("DpuPolicyApplied")


async def test_an_apply_encodes_the_policy_to_keep_once_while_the_switch_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stored form is worked out beside the first attachment's flows
    (the switch reading them back), once for all the sandbox's attachments,
    and is what the store keeps."""
    encoded_after: list[list[str]] = []
    real = policy_rows.scope_to_stored

    def counted(value: object) -> bytes:
        encoded_after.append([what for step, what in h.switch.calls if step == "enforce_and_revoke"])
        return real(value)  # type: ignore[arg-type]

    async with harness(tmp_path) as h:
        first = await h.attach("sb-1")
        second = await h.service.attach(HOST, AttachParams("sb-1", "hi-1", "req-2", None, "", "BASELINE"))
        monkeypatch.setattr(policy_rows, "scope_to_stored", counted)
        await h.service.apply_policy("sb-1", scope(2))
        assert encoded_after == [[first.attachment_id]]
        assert _enforces(h, second, scope(2))
        (value,) = h.store._db.execute(
            "SELECT scope FROM sandbox_policies WHERE sandbox_id = 'sb-1'"
        ).fetchone()
        assert scope_from_stored(value) == scope(2)


async def test_a_refused_apply_keeps_the_old_flows_and_the_old_last_good_and_degrades(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        await h.service.apply_policy("sb-1", scope(2))
        h.switch.fail("enforce_and_revoke")
        (degraded,) = await h.service.apply_policy("sb-1", scope(3))
        assert (degraded.policy_state, degraded.policy_version) == (PolicyState.DEGRADED, 2)
        assert _enforces(h, record, scope(2)) and h.store.policy("sb-1")[0] == 2  # type: ignore[index]
        assert h.observed.applies == [True, False] and "ApplyFailed" in h.reasons("DpuPolicyDegraded")


@pytest.mark.parametrize(("point", "last_good"), [("policy.flows_applied", 2), ("policy.status_recorded", 3)])
async def test_the_state_and_the_last_good_policy_are_recorded_together(
    tmp_path: Path, point: str, last_good: int
) -> None:
    """Before the record the old policy stays the last good one and the
    attachment says so; after it both name the new one (one commit)."""
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        await h.service.apply_policy("sb-1", scope(2))
        faults.enable(point, "raise")
        with pytest.raises(FaultInjected):
            await h.service.apply_policy("sb-1", scope(3))
        faults.disable_all()
        assert h.store.policy("sb-1")[0] == last_good  # type: ignore[index]
        assert h.current(record).policy_version == last_good
        # The sandbox's lock was let go: the next update goes through.
        assert (await h.service.apply_policy("sb-1", scope(4)))[0].policy_version == 4
        assert len(h.service._locks) == 0


async def test_degrade_keeps_enforcing_the_last_good_policy(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        await h.service.apply_policy("sb-1", scope(2))
        await h.service.degrade("sb-1", "Invalid", "bad policy")
        assert h.current(record).policy_state is PolicyState.DEGRADED and _enforces(h, record, scope(2))


async def test_stale_with_keep_last_known_only_marks(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        await h.service.apply_policy("sb-1", scope(2))
        assert await h.service.mark_stale(deny=False) == 1
        assert h.current(record).policy_state is PolicyState.STALE and _enforces(h, record, scope(2))
        assert "cut_many" not in h.switch.steps()
        assert await h.service.mark_stale(deny=False) == 0  # already stale


async def test_stale_with_deny_all_cuts_records_then_settles_on_deny_all(tmp_path: Path) -> None:
    async with harness(tmp_path, **STALE_DENIES) as h:
        a, b = await h.attach("sb-1"), await h.attach("sb-2")
        await h.service.apply_policy("sb-1", scope(2))
        assert await h.service.mark_stale(deny=True) == 2
        assert _enforces(h, a, DENY_ALL) and _enforces(h, b, DENY_ALL)
        steps = h.switch.steps()
        assert steps.index("cut_many") < steps.index("cut_zones") < steps.index("settle_cut")
        assert steps.count("cut_many") == 1  # both in one bundle
        # The stored policy stays: fresh policy re-opens.
        (fresh,) = await h.service.apply_policy("sb-1", scope(3))
        assert fresh.policy_state is PolicyState.APPLIED and _enforces(h, a, scope(3))


async def test_a_refused_cut_closes_one_by_one(tmp_path: Path) -> None:
    async with harness(tmp_path, **STALE_DENIES) as h:
        a, b = await h.attach("sb-1"), await h.attach("sb-2")
        h.switch.fail("cut_many")
        assert await h.service.mark_stale(deny=True) == 2
        assert _enforces(h, a, DENY_ALL) and _enforces(h, b, DENY_ALL)
        assert "settle_cut" not in h.switch.steps()


async def test_drops_that_do_not_settle_still_close_the_attachment(tmp_path: Path) -> None:
    async with harness(tmp_path, **STALE_DENIES) as h:
        record = await h.attach("sb-1")
        h.switch.fail("settle_cut")
        assert await h.service.mark_stale(deny=True) == 1
        assert h.current(record).policy_state is PolicyState.STALE
        flows = h.switch.tables[cookie_for_slot(record.slot)]
        cut = str(h.switch.pipeline.priority("cut"))
        assert sum(f"priority={cut}," in f for f in flows) == 2


async def test_withdraw_forgets_the_policy_and_denies_all_but_baseline_may_stay(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        with_policy, baseline = await h.attach("sb-1"), await h.attach("sb-2")
        await h.service.apply_policy("sb-1", scope(2))
        turned = await h.service.withdraw(["sb-1", "sb-2"], REMOVED_REASON, "gone", keep_baseline=True)
        assert turned == 1 and h.store.policy("sb-1") is None
        assert h.current(with_policy).policy_state is PolicyState.PENDING and _enforces(
            h, with_policy, DENY_ALL
        )
        assert h.current(baseline).policy_state is PolicyState.BASELINE and _enforces(h, baseline, ISOLATED)
        assert await h.service.withdraw(["sb-2"], "NotInResync", "gone", keep_baseline=False) == 1
        assert _enforces(h, baseline, DENY_ALL)


async def test_a_withdrawal_with_nothing_to_withdraw_writes_nothing_and_reads_only_its_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway answers every new sandbox it has no policy for with a
    withdrawal: on an attach storm that must not cost a commit and a read
    of every attachment each."""
    asked: list[tuple[str, str]] = []
    real_delete, real_list = AsyncStore.delete_policy, AsyncStore.list_attachments
    real_by_key = AsyncStore.attachments_of

    async def delete(self: AsyncStore, sandbox_id: str) -> None:
        asked.append(("delete", sandbox_id))
        await real_delete(self, sandbox_id)

    async def listed(self: AsyncStore, **kw: Any) -> list[AttachmentRecord]:
        asked.append(("list", kw.get("sandbox_id", "")))
        return await real_list(self, **kw)

    async def listed_by_key(
        self: AsyncStore, sandbox_id: str, state: AttachmentState
    ) -> list[AttachmentRecord]:
        asked.append(("list", sandbox_id))
        return await real_by_key(self, sandbox_id, state)

    async with harness(tmp_path) as h:
        for n in range(4):
            await h.attach(f"sb-{n}")  # BASELINE: no policy yet
        monkeypatch.setattr(AsyncStore, "delete_policy", delete)
        monkeypatch.setattr(AsyncStore, "list_attachments", listed)
        monkeypatch.setattr(AsyncStore, "attachments_of", listed_by_key)
        assert await h.service.withdraw(["sb-1"], REMOVED_REASON, "gone", keep_baseline=True) == 0
        assert asked and set(asked) == {("list", "sb-1")}
        await h.service.apply_policy("sb-2", scope(2))
        asked.clear()
        assert await h.service.withdraw(["sb-2"], REMOVED_REASON, "gone", keep_baseline=True) == 1
        assert ("delete", "sb-2") in asked and h.store.policy("sb-2") is None


async def test_apply_latest_follows_the_gateway_book(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        h.service.book.offer("sb-1", scope(6))
        await h.service.apply_latest("sb-1")
        assert h.current(record).policy_version == 6 and _enforces(h, record, scope(6))
        h.service.book.offer("sb-1", None)  # REMOVED
        await h.service.apply_latest("sb-1")
        assert h.current(record).policy_state is PolicyState.PENDING and _enforces(h, record, DENY_ALL)
        assert REMOVED_REASON in h.reasons("DpuPolicyApplied")


async def test_a_withdrawn_attachment_stays_denied_across_reconverge_until_fresh_policy(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        await h.service.apply_policy("sb-1", scope(2))
        await h.service.withdraw(["sb-1"], REMOVED_REASON, "gone", keep_baseline=True)
        h.switch.restart()
        await h.service.reconverge("ovs-restart")
        assert _enforces(h, record, DENY_ALL) and h.current(record).policy_state is PolicyState.PENDING
        explained = await h.service.explain(ADMIN, record.attachment_id, _packet())
        assert not explained.verdict.allowed and explained.switch_agrees


async def test_the_gateways_latest_is_installed_and_adopted_by_reconverge(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        record = await h.attach("sb-1")
        await h.service.apply_policy("sb-1", scope(2))
        h.service.book.offer("sb-1", scope(3))  # its apply failed, say
        await h.service.reconverge("ovs-restart")
        assert h.current(record).policy_version == 3 and _enforces(h, record, scope(3))
        assert h.store.policy("sb-1")[0] == 3  # type: ignore[index]


def _packet() -> Packet:
    return Packet(
        Direction.EGRESS, IPPROTO_TCP, ip_address("198.51.100.10"), ip_address("203.0.113.5"), 40000, 443
    )
