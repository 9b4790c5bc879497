"""Compiled flows of the example policies match the committed golden files."""

from __future__ import annotations

import pytest

from tests.golden.regen import GOLDEN, expected, policies


@pytest.mark.parametrize("policy", policies(), ids=lambda p: p.stem)
def test_golden_flows(policy: object) -> None:
    from pathlib import Path

    assert isinstance(policy, Path)
    golden = GOLDEN / f"{policy.stem}.flows"
    assert golden.exists(), f"no golden file for {policy.name}: run `make golden`"
    assert expected(policy) == golden.read_text(), (
        f"{golden.name} is stale: run `make golden` and review the diff"
    )


def test_there_are_examples() -> None:
    assert len(policies()) >= 4
