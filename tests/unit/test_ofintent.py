"""A cookie's desired flows worked out from the last ones equal what
encoding them all gives, whatever came and went."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.flows.compiler import attachment_flows
from coordinator.flows.dry_run import EXAMPLE_PORT
from coordinator.flows.model import Drop, Flow
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs.ofchannel import OpenFlowChannel
from coordinator.ovs.ofintent import CookieIntents
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.policy.validate import scope_from_mapping
from tests.golden.regen import GOLDEN

PIPELINE = load_pipeline()


def _flows(name: str) -> list[Flow]:
    raw = yaml.safe_load((GOLDEN / "policies" / f"{name}.yaml").read_text())
    return attachment_flows(PIPELINE, EXAMPLE_PORT, scope_from_mapping(raw))


WEB, SERVER = _flows("web-client"), _flows("server-with-denies")
# The same place as a flow of WEB with another action: the later one wins.
RIVAL = dataclasses.replace(WEB[-1], actions=(Drop(),))
# Equal flows as other objects (as a compile that remembered nothing makes them).
POOL = [*dict.fromkeys([*WEB, *SERVER, RIVAL]), *(dataclasses.replace(f) for f in WEB[:6])]


def _switch() -> ChannelSwitch:
    return ChannelSwitch(OpenFlowChannel(lambda: str(Path("/nonexistent")), timeout=1.0), PIPELINE)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, len(POOL) - 1), max_size=len(POOL) + 4), min_size=1, max_size=6))
def test_worked_out_from_the_last_is_what_encoding_all_gives(picks: list[list[int]]) -> None:
    switch = _switch()
    intents = CookieIntents(switch.encode, switch.encoder.encode, limit=64)
    for pick in picks:
        desired = [POOL[i] for i in pick]
        assert intents.wanted(7, desired) == switch.encode(desired)


@pytest.mark.parametrize("anew", [False, True], ids=["same objects", "equal flows made anew"])
def test_a_one_flow_change_encodes_only_that_flow(anew: bool) -> None:
    """Also when the unchanged flows come as other, equal objects (as from
    a compile that remembered nothing): they are diffed by value."""
    switch = _switch()
    encoded: list[Flow] = []

    def encode_one(flow: Flow):  # type: ignore[no-untyped-def]
        encoded.append(flow)
        return switch.encoder.encode(flow)

    intents = CookieIntents(switch.encode, encode_one)
    intents.wanted(7, WEB)
    unchanged = [dataclasses.replace(f) for f in WEB[:-1]] if anew else WEB[:-1]
    changed = [*unchanged, RIVAL]
    assert intents.wanted(7, changed) == switch.encode(changed)
    assert sorted(map(repr, encoded)) == sorted(map(repr, [WEB[-1], RIVAL]))
