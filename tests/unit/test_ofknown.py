"""A read-back after a small change is compared where it differs from the
last verified one, and says exactly what a whole comparison would."""

from __future__ import annotations

import pytest

from coordinator.ovs.ofknown import KnownFlows, held_from
from coordinator.ovs.ofwire import FlowKey, FlowsDigest, InstalledFlow, spelling_mark

COOKIE = 0xBFC0_0000_0000_0007
CONNECTION = 1


def _flow(n: int, *, instructions: bytes = b"drop") -> InstalledFlow:
    key = FlowKey(COOKIE, 0, 1000 + n, (n.to_bytes(4, "big"),), instructions)
    return InstalledFlow(key, b"", spelling_mark(repr(key).encode()))


def _known(flows: list[InstalledFlow]) -> KnownFlows:
    known = KnownFlows()
    known.remember(COOKIE, CONNECTION, flows)
    return known


def _change(
    before: list[InstalledFlow], wanted: list[InstalledFlow], after: list[InstalledFlow]
) -> tuple[bool, KnownFlows]:
    """``keep_read_back`` of ``after`` for a change from ``before`` to ``wanted``."""
    known = _known(before)
    prior = known.take(COOKIE, CONNECTION)
    assert prior is not None
    intent = {f.key: f for f in wanted}
    removed = [prior.flows[k] for k in set(prior.flows).difference(intent)]
    return known.keep_read_back(COOKIE, CONNECTION, after, intent, prior, removed), known


def test_a_small_change_keeps_what_a_whole_comparison_would() -> None:
    before = [_flow(n) for n in range(200)]
    came = _flow(1000)
    wanted = [*before[:50], *before[51:], came]
    after = [*before[:50], came, *before[51:]]  # the new flow listed where the old one was
    kept, known = _change(before, wanted, after)
    assert kept
    assert known.get(COOKIE, CONNECTION) == {f.key: f for f in after}
    assert known.digest(COOKIE) == FlowsDigest.of(after)
    # And the next change starts from it.
    again = [*after[:10], *after[11:]]
    kept, known = _change(after, again, again)
    assert kept and known.digest(COOKIE) == FlowsDigest.of(again)


def test_only_the_changed_span_is_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    before = [_flow(n) for n in range(1000)]
    came = _flow(5000)
    wanted = [*before[:500], came, *before[501:]]
    known = _known(before)
    prior = known.take(COOKIE, CONNECTION)
    assert prior is not None
    intent = {f.key: f for f in wanted}
    removed = [before[500]]
    hashed = [0]
    real = FlowKey.__hash__

    def counted(key: FlowKey) -> int:
        hashed[0] += 1
        return real(key)

    monkeypatch.setattr(FlowKey, "__hash__", counted)
    assert known.keep_read_back(COOKIE, CONNECTION, wanted, intent, prior, removed)
    assert hashed[0] < 10
    monkeypatch.undo()
    assert known.digest(COOKIE) == FlowsDigest.of(wanted)


@pytest.mark.parametrize(
    "case",
    [
        "removed flow still there",
        "stranger in the span",
        "a flow twice",
        "a flow twice, one missing",
        "one missing",
        "stranger outside",
    ],
)
def test_a_read_back_that_is_not_the_intent_is_refused_and_nothing_kept(case: str) -> None:
    before = [_flow(n) for n in range(100)]
    gone, came, stranger = before[40], _flow(1000), _flow(2000)
    wanted = [*before[:40], *before[41:], came]
    after = {
        # The delete did not take, and the last flow is missing: as many flows.
        "removed flow still there": [*before[:99], came],
        "stranger in the span": [*before[:40], stranger, *before[41:]],
        "a flow twice": [*before[:40], before[10], *before[41:], came],
        "a flow twice, one missing": [*before[:40], before[10], *before[41:]],
        "one missing": [*before[:40], *before[41:]],
        # A flow changed behind our back, away from what the change touched.
        "stranger outside": [stranger, *before[1:40], came, *before[41:]],
    }[case]
    assert gone not in after or case == "removed flow still there"
    kept, known = _change(before, wanted, after)
    assert not kept
    assert known.get(COOKIE, CONNECTION) is None and known.digest(COOKIE) is None


def test_a_large_or_reordered_read_back_is_compared_the_whole_way() -> None:
    before = [_flow(n) for n in range(100)]
    wanted = [*before[1:], _flow(1000)]
    kept, known = _change(before, wanted, list(reversed(wanted)))
    assert kept and known.digest(COOKIE) == FlowsDigest.of(wanted)
    # A state whose order is not known (a flow read twice) is never patched.
    held = held_from(CONNECTION, {f.key: f for f in before}, [*before, before[0]])
    assert held.order is None
