"""The store's commits never stall the event loop: with every COMMIT made
slow (an fsync that takes half a second), an Attach storm keeps the loop
turning, calls that need no store are answered at once, and Health answers
throughout."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from tests.integration.api_served import Served

pytestmark = pytest.mark.ovs

BRIDGE = "br-storethr"
SLOW_COMMIT_S = 0.5
# Far below one slow commit, far above a busy machine's scheduling noise.
PROMPT_S = 0.25
TICK_S = 0.02
STORM = 5  # more than the pool (3 devices): some are refused after a read


def _slow_commits(statement: str) -> None:
    # Runs on whichever thread executes the statement, like a slow fsync.
    if statement.strip().upper() == "COMMIT":
        time.sleep(SLOW_COMMIT_S)


async def test_slow_commits_do_not_stall_the_loop_or_other_calls(served: Served) -> None:
    host, stranger = served.callers["host"], served.callers["stranger"]
    lags: list[float] = []
    refused_s: list[float] = []
    health: list[tuple[grpc.StatusCode, float]] = []
    storming = True

    async def loop_lag() -> None:
        while storming:
            start = time.monotonic()
            await asyncio.sleep(TICK_S)
            lags.append(time.monotonic() - start - TICK_S)

    async def refused_calls() -> None:
        # Authorization is decided before any store access: these need no disk.
        while storming:
            start = time.monotonic()
            code, _ = await stranger.message("Health", pb.HealthRequest())
            refused_s.append(time.monotonic() - start)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            await asyncio.sleep(TICK_S)

    async def health_calls() -> None:
        while storming:
            start = time.monotonic()
            code, _ = await host.message("Health", pb.HealthRequest(), timeout=30.0)
            health.append((code, time.monotonic() - start))

    async def attach(n: int) -> grpc.StatusCode:
        request = pb.AttachRequest(
            sandbox_id=f"storm-{n}",
            host_instance_id="hi-1",
            request_id=f"req-storm-{n}",
            initial_policy=pb.INITIAL_POLICY_BASELINE,
        )
        code, _ = await host.message("Attach", request, timeout=60.0)
        return code

    served.stack.store._db.set_trace_callback(_slow_commits)
    try:
        probes = [asyncio.ensure_future(p()) for p in (loop_lag, refused_calls, health_calls)]
        codes = await asyncio.gather(*(attach(n) for n in range(STORM)))
        storming = False
        await asyncio.gather(*probes)
    finally:
        served.stack.store._db.set_trace_callback(None)

    assert sorted(codes, key=lambda c: c.value[0]) == [grpc.StatusCode.OK] * 3 + [
        grpc.StatusCode.RESOURCE_EXHAUSTED
    ] * (STORM - 3)
    assert len(served.stack.store.list_attachments()) == 3
    assert lags and max(lags) < PROMPT_S, f"the loop stalled {max(lags):.3f}s"
    assert refused_s and max(refused_s) < PROMPT_S, f"a refused call took {max(refused_s):.3f}s"
    assert health and all(code == grpc.StatusCode.OK for code, _ in health), health
