"""The stream client against scripted gateways (seq gaps, duplicates,
epochs) and the reference gateway (slow consumers), over real mTLS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator._proto.bluefield.gateway.v1 import policy_pb2 as gw
from coordinator._proto.bluefield.gateway.v1 import policy_pb2_grpc as gw_grpc
from coordinator.certs import DevPki, init_dev_pki
from coordinator.client import TlsFiles
from coordinator.gateway.client import PolicyStreamClient
from coordinator.gateway.reference import ReferenceGateway, Subscriber

Script = Callable[[int, list[str]], list[gw.PolicyEvent]]


def event(seq: int, sandbox: str, version: int, epoch: str = "e1") -> gw.PolicyEvent:
    scope = gw.NetworkScope(version=version)
    return gw.PolicyEvent(
        seq=seq, type=gw.EVENT_TYPE_DELTA, sandbox_id=sandbox, gateway_epoch=epoch,
        projection=gw.PolicyProjection(sandbox_id=sandbox, network=scope),
    )  # fmt: skip


class ScriptedGateway(gw_grpc.PolicyGatewayServicer):
    """Session N (from 0) sends script(N, registered sandboxes), then holds."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sessions = 0
        self.registrations: list[list[str]] = []

    async def WatchSandboxPolicies(
        self, request_iterator: AsyncIterator[gw.WatchRequest], context: Any
    ) -> Any:
        session = self.sessions
        self.sessions += 1
        first = await request_iterator.__anext__()
        registered = list(first.register.sandbox_ids)
        self.registrations.append(registered)
        for message in self.script(session, registered):
            yield message
        await asyncio.sleep(3600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(tmp_path_factory.mktemp("pki"))


def _server_credentials(pki: DevPki) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(pki.gateway_key.read_bytes(), pki.gateway_cert.read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )


@contextlib.asynccontextmanager
async def scripted(pki: DevPki, script: Script) -> AsyncIterator[tuple[ScriptedGateway, str]]:
    servicer = ScriptedGateway(script)
    server = grpc.aio.server()
    gw_grpc.add_PolicyGatewayServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_secure_port("127.0.0.1:0", _server_credentials(pki))
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def _client(pki: DevPki, target: str, received: list[gw.PolicyEvent], **kwargs: Any) -> PolicyStreamClient:
    async def on_event(e: gw.PolicyEvent) -> None:
        received.append(e)

    tls = TlsFiles(pki.ca_cert, pki.coordinator_cert, pki.coordinator_key)
    return PolicyStreamClient(target, tls, on_event, backoff_base_s=0.01, backoff_cap_s=0.05, **kwargs)


@contextlib.asynccontextmanager
async def running(client: PolicyStreamClient) -> AsyncIterator[None]:
    """The client's stream runs during the body; stopped (within 5 s) after it."""
    task = asyncio.ensure_future(client.run())
    try:
        yield
    finally:
        client.stop()
        await asyncio.wait_for(task, 5)


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_duplicates_are_dropped_and_a_gap_forces_a_resync(pki: DevPki) -> None:
    def script(session: int, registered: list[str]) -> list[gw.PolicyEvent]:
        if session == 0:  # 1, 2, 2 (duplicate), 4 (gap)
            return [event(1, "sb-a", 1), event(2, "sb-a", 2), event(2, "sb-a", 2), event(4, "sb-a", 4)]
        return [event(1, "sb-a", 5)]  # the resync's INITIAL-equivalent

    received: list[gw.PolicyEvent] = []
    async with scripted(pki, script) as (gateway, target):
        client = _client(pki, target, received)
        client.register(["sb-a"])
        async with running(client):
            await _until(lambda: len(received) == 3)
            assert [(e.seq, e.projection.network.version) for e in received] == [(1, 1), (2, 2), (1, 5)]
            assert client.status.resyncs == 1 and client.status.connected
            assert gateway.registrations == [["sb-a"], ["sb-a"]]


async def test_a_seq_regression_or_new_epoch_resyncs(pki: DevPki) -> None:
    def script(session: int, registered: list[str]) -> list[gw.PolicyEvent]:
        if session == 0:
            return [event(1, "sb-a", 1), event(2, "sb-a", 2), event(1, "sb-a", 9)]  # regression
        return [event(1, "sb-a", 3, epoch="e2")]  # a restarted gateway

    received: list[gw.PolicyEvent] = []
    async with scripted(pki, script) as (_, target):
        client = _client(pki, target, received)
        client.register(["sb-a"])
        async with running(client):
            await _until(lambda: len(received) == 3)
            assert [e.projection.network.version for e in received] == [1, 2, 3]
            assert client.status.epoch == "e2" and client.status.resyncs == 2


def test_the_reference_gateway_disconnects_a_consumer_whose_queue_is_full(tmp_path: Path) -> None:
    async def run() -> None:
        for i in range(3):
            (tmp_path / f"sb-{i}.yaml").write_text("version: 1\n")
        gateway = ReferenceGateway(tmp_path, {"id": ["*"]}, queue_size=3)
        sub = Subscriber("id", asyncio.Queue(maxsize=3))
        gateway._subscribers.add(sub)
        gateway._register(sub, ["sb-0", "sb-1"])  # two INITIALs and SYNC_COMPLETE
        assert sub.closing is None and sub.queue.qsize() == 3
        gateway._register(sub, ["sb-2"])  # a third event does not fit
        assert sub.closing is not None and sub.closing[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sub.queue.get_nowait() is None  # the backlog is dropped; the stream ends now

    asyncio.run(run())


async def test_after_a_slow_consumer_disconnect_the_client_resyncs(pki: DevPki) -> None:
    class Impatient(ScriptedGateway):
        async def WatchSandboxPolicies(
            self, request_iterator: AsyncIterator[gw.WatchRequest], context: Any
        ) -> Any:
            session = self.sessions
            self.sessions += 1
            await request_iterator.__anext__()
            if session == 0:
                yield event(1, "sb-a", 1)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "consumer too slow: event queue full")
            yield event(1, "sb-a", 2)
            await asyncio.sleep(3600)

    servicer = Impatient(lambda n, r: [])
    server = grpc.aio.server()
    gw_grpc.add_PolicyGatewayServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_secure_port("127.0.0.1:0", _server_credentials(pki))
    await server.start()
    received: list[gw.PolicyEvent] = []
    client = _client(pki, f"127.0.0.1:{port}", received)
    client.register(["sb-a"])
    async with running(client):
        await _until(lambda: [e.projection.network.version for e in received] == [1, 2])
        assert client.status.reconnects == 1 and client.status.connected
        await server.stop(0)


def test_the_reference_gateway_answers_every_registration_then_marks_the_sync_complete(
    tmp_path: Path,
) -> None:
    async def run(legacy: bool) -> list[tuple[int, int, str]]:
        (tmp_path / "sb-has.yaml").write_text("version: 3\n")
        gateway = ReferenceGateway(tmp_path, {"id": ["*"]}, legacy_resync=legacy)
        sub = Subscriber("id", asyncio.Queue())
        gateway._subscribers.add(sub)
        gateway._register(sub, ["sb-has", "sb-none"])
        gateway._register(sub, ["sb-later"])  # a later registration: answered, no second marker
        out = []
        while not sub.queue.empty():
            e = sub.queue.get_nowait()
            assert e is not None and e.gateway_epoch == gateway.epoch
            out.append((e.seq, e.type, e.sandbox_id))
        return out

    assert asyncio.run(run(legacy=False)) == [
        (1, gw.EVENT_TYPE_INITIAL, "sb-has"),
        (2, gw.EVENT_TYPE_REMOVED, "sb-none"),
        (3, gw.EVENT_TYPE_SYNC_COMPLETE, ""),
        (4, gw.EVENT_TYPE_REMOVED, "sb-later"),
    ]
    assert asyncio.run(run(legacy=True)) == [(1, gw.EVENT_TYPE_INITIAL, "sb-has")]


async def test_every_session_is_a_resync_of_what_it_registered(pki: DevPki) -> None:
    def script(session: int, registered: list[str]) -> list[gw.PolicyEvent]:
        marker = gw.PolicyEvent(seq=len(registered) + 1, type=gw.EVENT_TYPE_SYNC_COMPLETE, gateway_epoch="e1")
        if session == 0:  # the marker is counted: a gap after it ends the session
            return [*(event(i + 1, s, 1) for i, s in enumerate(registered)), marker, event(9, "sb-a", 2)]
        return [*(event(i + 1, s, 3) for i, s in enumerate(registered)), marker]

    received: list[gw.PolicyEvent] = []
    resyncs: list[frozenset[str]] = []

    async def on_resync(ids: frozenset[str]) -> None:
        resyncs.append(ids)

    async with scripted(pki, script) as (_, target):
        client = _client(pki, target, received, on_resync=on_resync)
        client.register(["sb-a", "sb-b"])
        async with running(client):
            await _until(lambda: len(received) == 6)
            assert resyncs == [frozenset({"sb-a", "sb-b"})] * 2
            assert [e.type for e in received].count(gw.EVENT_TYPE_SYNC_COMPLETE) == 2
            assert client.status.resyncs == 1


async def test_events_for_sandboxes_never_registered_reach_nothing(pki: DevPki) -> None:
    """A hostile or broken gateway's events for sandboxes this coordinator
    never asked for are counted in the stream's sequence but handed to no
    one: nothing of them is kept."""

    def script(session: int, registered: list[str]) -> list[gw.PolicyEvent]:
        strays = [event(n, f"sb-stray-{n}", 1) for n in range(1, 1001)]
        return [*strays, event(1001, "sb-a", 7)]

    received: list[gw.PolicyEvent] = []
    async with scripted(pki, script) as (_, target):
        client = _client(pki, target, received)
        client.register(["sb-a"])
        async with running(client):
            await _until(lambda: any(e.sandbox_id == "sb-a" for e in received))
            assert [(e.seq, e.sandbox_id) for e in received] == [(1001, "sb-a")]
            assert client.status.resyncs == 0 and client.status.last_seq == 1001
