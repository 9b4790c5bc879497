from __future__ import annotations

import itertools

from coordinator.leases import DetachDecision, decide_detach, next_generation


def test_every_combination_of_requested_fence_and_attached() -> None:
    for requested, fence, attached in itertools.product(range(0, 5), [None, 1, 2, 3], [True, False]):
        decision = decide_detach(requested, fence, attached)
        if fence is None:
            expected = DetachDecision.NOT_FOUND
        elif requested < fence:
            expected = DetachDecision.STALE
        elif requested > fence:
            expected = DetachDecision.NEVER_ISSUED
        else:
            expected = DetachDecision.PROCEED if attached else DetachDecision.ALREADY_DETACHED
        assert decision is expected, (requested, fence, attached)


def test_only_the_current_generation_may_detach() -> None:
    assert decide_detach(3, 3, True) is DetachDecision.PROCEED
    assert decide_detach(2, 3, True) is DetachDecision.STALE
    assert decide_detach(2, 3, False) is DetachDecision.STALE
    assert decide_detach(3, 3, False) is DetachDecision.ALREADY_DETACHED


def test_generations_only_grow() -> None:
    assert next_generation(None) == 1
    previous = 0
    fence = None
    for _ in range(10):
        fence = next_generation(fence)
        assert fence > previous
        previous = fence
