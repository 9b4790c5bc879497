"""Metrics: values after real store operations, scraped over real HTTP(S),
and a real gRPC server's calls counted by the interceptor."""

from __future__ import annotations

import asyncio
import platform
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from coordinator import __version__
from coordinator import metrics as metrics_module
from coordinator.api.rpc_metrics import RpcMetricsInterceptor
from coordinator.certs import DevPki, init_dev_pki
from coordinator.eswitch.base import DeviceKind, EswitchDevice, HealthFact
from coordinator.health import HealthReport
from coordinator.metrics import (
    Metrics,
    MetricsServer,
    MetricsServerError,
    parse_listen,
    start_metrics_server,
)
from coordinator.store.db import Store
from coordinator.store.records import NewAttachment, PolicyState

P = "bluefield_coordinator"


def _get(url: str, *, method: str = "GET", context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(url: str, **kwargs: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint as {(name, sorted labels): value}."""
    status, content_type, body = await asyncio.to_thread(_get, url, **kwargs)
    assert status == 200, body
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    s.sync_devices(
        [EswitchDevice(DeviceKind.VF, 0, 0, i, f"pf0vf{i}") for i in range(3)]
        + [EswitchDevice(DeviceKind.SF, 0, 0, 1000, "en0pf0sf1000")]
    )
    yield s
    s.close()


@pytest.fixture
async def server(store: Store) -> AsyncIterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics(CollectorRegistry())
    metrics.add_refresher(lambda: metrics.update_attachments(store.list_attachments()))
    metrics.add_refresher(lambda: metrics.update_pools(store.pool_stats()))
    srv = await start_metrics_server("127.0.0.1:0", metrics.registry, before_scrape=metrics.refresh)
    yield metrics, srv
    await srv.close()


def _attach(store: Store, n: int, kind: DeviceKind) -> str:
    new = NewAttachment(f"att-{n}", "host-a", f"req-{n}", f"sb-{n}", "hi-1", kind, "dpu-ovs-isolated")
    record = store.create_attachment(
        new, mac_for=lambda s: f"02:00:00:00:00:{s.number % 256:02x}", max_attachments=10
    )
    return record.attachment_id


async def test_scrape_reflects_store_after_real_operations(
    store: Store, server: tuple[Metrics, MetricsServer]
) -> None:
    _, srv = server
    before = await scrape(srv.url)
    assert before[(f"{P}_attachments", (("state", "BOUND"),))] == 0
    assert before[(f"{P}_pool_free_devices", (("kind", "vf"),))] == 3
    assert before[(f"{P}_build_info", (("python", _python()), ("version", __version__)))] == 1

    bound = _attach(store, 1, DeviceKind.VF)
    store.mark_bound(bound, ofport=5, policy_state=PolicyState.BASELINE, policy_version=0)
    stale = _attach(store, 2, DeviceKind.VF)
    store.mark_bound(stale, ofport=6, policy_state=PolicyState.APPLIED, policy_version=3)
    store.set_policy_status(stale, PolicyState.STALE, 3, event=None)
    _attach(store, 3, DeviceKind.SF)  # still ATTACHING

    after = await scrape(srv.url)
    assert after[(f"{P}_attachments", (("state", "BOUND"),))] == 2
    assert after[(f"{P}_attachments", (("state", "ATTACHING"),))] == 1
    assert after[(f"{P}_attachments", (("state", "DETACHING"),))] == 0
    assert after[(f"{P}_stale_policies", ())] == 1
    assert after[(f"{P}_pool_free_devices", (("kind", "vf"),))] == 1
    assert after[(f"{P}_pool_free_devices", (("kind", "sf"),))] == 0
    assert after[(f"{P}_pool_devices", (("kind", "vf"),))] == 3

    assert after[(f"{P}_policies", (("state", "STALE"),))] == 1
    assert after[(f"{P}_policies", (("state", "BASELINE"),))] == 1
    assert after[(f"{P}_policies", (("state", "DEGRADED"),))] == 0

    store.delete_attachment(bound, reason="Detached", message="test")
    again = await scrape(srv.url)
    assert again[(f"{P}_attachments", (("state", "BOUND"),))] == 1
    assert again[(f"{P}_pool_free_devices", (("kind", "vf"),))] == 2


def _python() -> str:
    return platform.python_version()


async def test_pushed_metrics_and_conventional_names(server: tuple[Metrics, MetricsServer]) -> None:
    metrics, srv = server
    with metrics.time_policy_apply():
        pass
    with pytest.raises(RuntimeError), metrics.time_policy_apply():
        raise RuntimeError("bundle failed")
    metrics.flows_installed.set(42)
    metrics.set_datapath_flows(offloaded=30, non_offloaded=3)
    metrics.update_gateway(connected=True, reconnects=2, resyncs=1, last_seq=17)
    # Cumulative counts from the stream client: only the difference is added.
    metrics.update_gateway(connected=False, reconnects=3, resyncs=1, last_seq=18)
    metrics.reconcile_corrections.labels(kind="flows").inc(4)

    samples = await scrape(srv.url)
    assert samples[(f"{P}_policy_apply_duration_seconds_count", (("result", "ok"),))] == 1
    assert samples[(f"{P}_policy_apply_duration_seconds_count", (("result", "error"),))] == 1
    assert samples[(f"{P}_flows_installed", ())] == 42
    assert samples[(f"{P}_datapath_flows", (("offloaded", "true"),))] == 30
    assert samples[(f"{P}_datapath_flows", (("offloaded", "false"),))] == 3
    assert samples[(f"{P}_gateway_stream_connected", ())] == 0
    assert samples[(f"{P}_gateway_stream_reconnects_total", ())] == 3
    assert samples[(f"{P}_gateway_stream_resyncs_total", ())] == 1
    assert samples[(f"{P}_gateway_stream_last_seq", ())] == 18
    assert samples[(f"{P}_reconcile_corrections_total", (("kind", "flows"),))] == 4

    metrics.update_health(
        HealthReport(
            (HealthFact("ovs_reachable", True, "", True), HealthFact("policy_stream", False, "", False))
        )
    )
    samples = await scrape(srv.url)
    assert samples[(f"{P}_health_check_ok", (("check", "ovs_reachable"), ("required", "true")))] == 1
    assert samples[(f"{P}_health_check_ok", (("check", "policy_stream"), ("required", "false")))] == 0
    # The daemon's own memory, for the dashboard's RSS panel.
    assert samples[(f"{P}_process_resident_memory_bytes", ())] > 0

    names = {name for name, _ in samples}
    assert all(name.startswith(f"{P}_") for name in names)
    counters = {n for n in names if n.endswith("_total")}
    assert {f"{P}_gateway_stream_reconnects_total", f"{P}_reconcile_corrections_total"} <= counters


async def test_a_failing_refresher_does_not_break_the_scrape(server: tuple[Metrics, MetricsServer]) -> None:
    metrics, srv = server

    def broken() -> None:
        raise RuntimeError("store gone")

    metrics.add_refresher(broken)
    samples = await scrape(srv.url)
    assert (f"{P}_flows_installed", ()) in samples


async def test_async_refreshers_run_before_each_scrape_with_a_deadline(
    server: tuple[Metrics, MetricsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics, srv = server
    monkeypatch.setattr(metrics_module, "REFRESH_TIMEOUT_S", 0.2)
    dumps = 0

    async def datapath() -> None:  # stands in for an ovs-appctl dpctl/dump-flows count
        nonlocal dumps
        dumps += 1
        await asyncio.sleep(0)
        metrics.set_datapath_flows(offloaded=10 * dumps, non_offloaded=dumps)

    async def hung() -> None:
        await asyncio.Event().wait()

    metrics.add_refresher(datapath)
    metrics.add_refresher(hung)
    first = await scrape(srv.url)
    second = await scrape(srv.url)
    assert first[(f"{P}_datapath_flows", (("offloaded", "true"),))] == 10
    assert second[(f"{P}_datapath_flows", (("offloaded", "true"),))] == 20
    assert second[(f"{P}_datapath_flows", (("offloaded", "false"),))] == 2


async def test_http_details(server: tuple[Metrics, MetricsServer]) -> None:
    _, srv = server
    base = f"http://127.0.0.1:{srv.port}"
    status, _, body = await asyncio.to_thread(_get, base + "/metrics", method="HEAD")
    assert (status, body) == (200, "")
    status, _, _ = await asyncio.to_thread(_get, base + "/nope")
    assert status == 404
    status, _, _ = await asyncio.to_thread(_get, base + "/metrics", method="POST")
    assert status == 405
    status, _, body = await asyncio.to_thread(_get, base + "/")
    assert status == 200 and "/metrics" in body


async def test_close_stops_listening_even_with_an_idle_client() -> None:
    srv = await start_metrics_server("127.0.0.1:0", CollectorRegistry())
    idle = socket.create_connection(("127.0.0.1", srv.port))  # never sends a request
    try:
        await asyncio.wait_for(srv.close(), timeout=2)
    finally:
        idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(tmp_path_factory.mktemp("pki"))


async def test_tls_and_client_certificates(pki: DevPki) -> None:
    metrics = Metrics(CollectorRegistry())
    srv = await start_metrics_server(
        "127.0.0.1:0",
        metrics.registry,
        cert=str(pki.server_cert),
        key=str(pki.server_key),
        client_ca=str(pki.ca_cert),
    )
    try:
        assert srv.url.startswith("https://")
        client = ssl.create_default_context(cafile=str(pki.ca_cert))
        client.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        samples = await scrape(srv.url, context=client)
        assert (f"{P}_build_info", (("python", _python()), ("version", __version__))) in samples

        anonymous = ssl.create_default_context(cafile=str(pki.ca_cert))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(_get, srv.url, context=anonymous)
    finally:
        await srv.close()


async def test_configuration_errors_name_the_problem(tmp_path: Path) -> None:
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    with pytest.raises(MetricsServerError, match=r"metrics\.listen"):
        await start_metrics_server("localhost", CollectorRegistry())
    with pytest.raises(MetricsServerError, match="together"):
        await start_metrics_server("127.0.0.1:0", CollectorRegistry(), cert="/x.pem")
    with pytest.raises(MetricsServerError, match="cannot load"):
        await start_metrics_server(
            "127.0.0.1:0", CollectorRegistry(), cert=str(tmp_path / "a"), key=str(tmp_path / "b")
        )


# -- the interceptor on a real gRPC server ------------------------------------------


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _missing(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such attachment")
    raise AssertionError("unreachable")


async def _crash(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    raise RuntimeError("bug")


async def _stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield str(i).encode()
    if int(request) == 0:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nothing to stream")


async def _forever(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
    while True:
        yield b"tick"
        await asyncio.sleep(0.01)


async def _written(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
    await context.write(b"one")
    await context.write(b"two")


async def _sum(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return str(sum([int(r) async for r in requests])).encode()


@pytest.fixture
async def grpc_target() -> AsyncIterator[tuple[Metrics, grpc.aio.Channel]]:
    metrics = Metrics(CollectorRegistry())
    server = grpc.aio.server(interceptors=[RpcMetricsInterceptor(metrics)])
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
        "Crash": grpc.unary_unary_rpc_method_handler(_crash),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Forever": grpc.unary_stream_rpc_method_handler(_forever),
        "Written": grpc.unary_stream_rpc_method_handler(_written),
        "Sum": grpc.stream_unary_rpc_method_handler(_sum),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield metrics, channel
    await channel.close()
    await server.stop(None)


def _count(metrics: Metrics, method: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        f"{P}_rpcs_total", {"method": f"test.Svc/{method}", "code": code}
    )
    return value or 0.0


async def test_interceptor_counts_method_code_and_latency(
    grpc_target: tuple[Metrics, grpc.aio.Channel],
) -> None:
    metrics, channel = grpc_target
    assert await channel.unary_unary("/test.Svc/Echo")(b"hi") == b"hi"
    assert await channel.unary_unary("/test.Svc/Echo")(b"again") == b"again"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await channel.unary_unary("/test.Svc/Missing")(b"x")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as crash:
        await channel.unary_unary("/test.Svc/Crash")(b"x")
    assert crash.value.code() == grpc.StatusCode.UNKNOWN
    assert [r async for r in channel.unary_stream("/test.Svc/Stream")(b"3")] == [b"0", b"1", b"2"]
    with pytest.raises(grpc.aio.AioRpcError):
        _ = [r async for r in channel.unary_stream("/test.Svc/Stream")(b"0")]
    assert [r async for r in channel.unary_stream("/test.Svc/Written")(b"")] == [b"one", b"two"]

    async def numbers() -> AsyncIterator[bytes]:
        for n in (b"1", b"2", b"3"):
            yield n

    assert await channel.stream_unary("/test.Svc/Sum")(numbers()) == b"6"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await channel.unary_unary("/test.Svc/NoSuchMethod")(b"x")
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

    assert _count(metrics, "Echo", "OK") == 2
    assert _count(metrics, "Missing", "NOT_FOUND") == 1
    assert _count(metrics, "Crash", "UNKNOWN") == 1
    assert _count(metrics, "Stream", "OK") == 1
    assert _count(metrics, "Stream", "FAILED_PRECONDITION") == 1
    assert _count(metrics, "Written", "OK") == 1
    assert _count(metrics, "Sum", "OK") == 1
    # Client-chosen names never become label values.
    assert not any(
        s.labels.get("method", "").endswith("NoSuchMethod")
        for family in metrics.registry.collect()
        for s in family.samples
    )
    latency = metrics.registry.get_sample_value(
        f"{P}_rpc_duration_seconds_count", {"method": "test.Svc/Echo"}
    )
    assert latency == 2


async def test_interceptor_counts_a_stream_the_client_cancelled(
    grpc_target: tuple[Metrics, grpc.aio.Channel],
) -> None:
    metrics, channel = grpc_target
    call = channel.unary_stream("/test.Svc/Forever")(b"")
    assert await call.read() == b"tick"
    call.cancel()
    for _ in range(200):
        if _count(metrics, "Forever", "CANCELLED"):
            break
        await asyncio.sleep(0.01)
    assert _count(metrics, "Forever", "CANCELLED") == 1
