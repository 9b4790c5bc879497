"""A bundle staged on one connection and committed in its turn
(``ovs.oflanes``), against a recording stand-in for the channel: what is
written and when. Ranges committed in order over several connections of a
real switch: tests/integration/test_restart_reconcile.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from coordinator.flows.model import Drop, Flow
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs.ofchannel import OpenFlowChannel, Outcome, Outgoing
from coordinator.ovs.ofencode import encode_flow_add
from coordinator.ovs.oflanes import bundle_then_read
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.ofwire import bundle_ctrl_type, bundle_id_of

PIPELINE = load_pipeline()
FLOWS = [
    Flow("egress_policy", 1000 + i, (("in_port", "3"),), (Drop(),), 0xBFC0_0000_0000_0003) for i in range(3)
]


class _Recorded:
    """Each exchange's messages as written; every outcome empty (no error)."""

    def __init__(self) -> None:
        self.written: list[list[bytes]] = []

    async def exchange(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        self.written.append([m.message for m in messages])
        await asyncio.sleep(0)
        return [Outcome() for _ in messages]


def _bundle() -> list[Outgoing]:
    switch = ChannelSwitch(OpenFlowChannel(lambda: "/nonexistent", timeout=0.1), PIPELINE)
    return switch.prepare_bundle([encode_flow_add(f, PIPELINE) for f in FLOWS])


def _read() -> Outgoing:
    return Outgoing(b"read", 99)


def test_a_bundle_is_staged_at_once_and_committed_with_its_read_in_one_exchange_once_its_turn_comes() -> None:
    bundle = _bundle()
    recorded = _Recorded()

    async def go() -> None:
        turn = asyncio.Event()
        sending = asyncio.ensure_future(
            bundle_then_read(recorded.exchange, bundle, _read(), turn.wait, iter(range(500, 600)).__next__)
        )
        for _ in range(5):
            await asyncio.sleep(0)
        # Open and adds out, the commit held back.
        assert recorded.written == [[m.message for m in bundle[:-1]]]
        turn.set()
        sent, readback = await sending
        assert len(await sent) == len(bundle)
        await readback
        # The read in the commit's own exchange: answered before the commit counts as done.
        assert recorded.written[1:] == [[bundle[-1].message, b"read"]]

    asyncio.run(go())


def test_a_bundle_whose_turn_fails_is_discarded_never_committed() -> None:
    bundle = _bundle()
    recorded = _Recorded()

    async def refused() -> None:
        raise RuntimeError("the bundle before was refused")

    async def go() -> None:
        with pytest.raises(RuntimeError, match="before was refused"):
            await bundle_then_read(
                recorded.exchange, bundle, _read(), refused, iter(range(500, 600)).__next__
            )

    asyncio.run(go())
    staged, [discard] = recorded.written
    assert staged == [m.message for m in bundle[:-1]]
    assert bundle_ctrl_type(discard) == 6  # ONF_BCT_DISCARD_REQUEST
    assert bundle_id_of(discard) == bundle_id_of(bundle[0].message)
    assert all(bundle[-1].message not in written for written in recorded.written)


def test_without_a_turn_the_bundle_and_its_read_go_out_together() -> None:
    bundle = _bundle()
    recorded = _Recorded()

    async def go() -> None:
        sent, readback = await bundle_then_read(
            recorded.exchange, bundle, _read(), None, iter(range(500, 600)).__next__
        )
        await sent
        await readback

    asyncio.run(go())
    assert recorded.written == [[m.message for m in bundle], [b"read"]]
