"""The persistent OpenFlow channel and the verified apply on it, against a
real Open vSwitch: the encoder against ovs-ofctl on every golden flow file,
echo probes over an idle connection, reconnecting after an ovs-vswitchd
restart, a refused bundle leaving the old flows, a closed connection failing
what waits on it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from coordinator.attachment_identity import COOKIE_OWNER
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.flows.compiler import BridgeFacts, attachment_flows, bridge_flows
from coordinator.flows.dry_run import EXAMPLE_PORT
from coordinator.flows.model import Flow, Goto, Meter
from coordinator.flows.pipeline import load_pipeline
from coordinator.flows.render import render_flows
from coordinator.ovs.ofchannel import OpenFlowChannel
from coordinator.ovs.ofexplain import explain_difference
from coordinator.ovs.ofsync import BundleError, ChannelSwitch, MeterBand
from coordinator.ovs.ofwire import FlowKey
from coordinator.ovs.openflow import SyncResult
from coordinator.policy.validate import scope_from_mapping
from tests.golden.regen import GOLDEN, policies
from tests.integration.invariants import flow_match

pytestmark = pytest.mark.ovs

PIPELINE = load_pipeline()
COOKIE = EXAMPLE_PORT.cookie


def _bridge(ovs: OvsInstance, prefix: str, protocols: str = "OpenFlow13,OpenFlow15") -> str:
    name = netns.unique_name(prefix)
    ovs.vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", "fail_mode=secure",
              f"protocols={protocols}")  # fmt: skip
    return name


BridgeFactory = Callable[..., str]


@pytest.fixture
def bridges(ovs: OvsInstance) -> Iterator[BridgeFactory]:
    made: list[str] = []

    def make(prefix: str = "boc-", protocols: str = "OpenFlow13,OpenFlow15") -> str:
        made.append(_bridge(ovs, prefix, protocols))
        return made[-1]

    yield make
    for name in made:
        ovs.vsctl("--if-exists", "del-br", name)


@pytest_asyncio.fixture
async def channels() -> AsyncIterator[list[OpenFlowChannel]]:
    opened: list[OpenFlowChannel] = []
    yield opened
    for channel in opened:
        await channel.close()


def _switch(
    ovs: OvsInstance, bridge: str, opened: list[OpenFlowChannel], timeout: float = 5.0
) -> ChannelSwitch:
    channel = OpenFlowChannel(lambda: str(ovs.rundir / f"{bridge}.mgmt"), timeout=timeout)
    opened.append(channel)
    return ChannelSwitch(channel, PIPELINE)


def _policy_flows(policy: Path) -> list[Flow]:
    return attachment_flows(PIPELINE, EXAMPLE_PORT, scope_from_mapping(yaml.safe_load(policy.read_text())))


def _two_policies() -> tuple[list[Flow], list[Flow]]:
    """The flows of two golden policies on one attachment: a change of one into the other."""
    web, server = (
        _policy_flows(GOLDEN / "policies" / f"{n}.yaml") for n in ("web-client", "server-with-denies")
    )
    return web, server


# A flow policed by a meter the bridge does not have: the switch refuses that
# one add, so a bundle holding it (every other change with it) fails.
UNMETERED = Flow("classify", 3020, (("in_port", "9"), ("dl_type", "0x0800")),
                 (Meter(999), Goto("egress_spoof")), COOKIE)  # fmt: skip


def _dump_text(ovs: OvsInstance, bridge: str) -> list[str]:
    out = ovs.ofctl("dump-flows", "--no-stats", "--no-names", bridge)
    return sorted(line.strip() for line in out.splitlines() if "actions=" in line)


async def _keys(switch: ChannelSwitch) -> set[FlowKey]:
    return {f.key for f in await switch.installed(0, 0)}


@pytest.mark.parametrize("policy", policies(), ids=lambda p: p.stem)
async def test_encoder_installs_what_ovs_ofctl_installs_from_the_golden_file(
    policy: Path, ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    flows = _policy_flows(policy)
    golden = (GOLDEN / f"{policy.stem}.flows").read_text()
    # The Flow values are the ones the golden file was rendered from.
    assert render_flows(flows, PIPELINE) == [line for line in golden.splitlines() if not line.startswith("#")]
    by_ofctl, by_channel = bridges("bog-"), bridges("boc-")
    ovs.ofctl("add-flows", by_ofctl, str(GOLDEN / f"{policy.stem}.flows"))
    switch = _switch(ovs, by_channel, channels)
    result = await switch.sync(COOKIE, flows)  # verified: raises on any read-back difference
    assert (result.added, result.removed, result.total) == (len(flows), 0, len(flows))
    assert _dump_text(ovs, by_channel) == _dump_text(ovs, by_ofctl)
    assert await _keys(switch) == await _keys(_switch(ovs, by_ofctl, channels))


async def test_bridge_flows_and_a_metered_flow_encode_as_ovs_ofctl_sends_them(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    # Flood, output, ct_clear and a meter instruction: none of them is in the golden files.
    flows = bridge_flows(PIPELINE, BridgeFacts(uplink_ofport=1))
    metered = Flow("classify", 3020, (("in_port", "2"), ("vlan_tci", "0x0000/0x1000"), ("dl_type", "0x0800")),
                   (Meter(7), Goto("egress_spoof")), COOKIE)  # fmt: skip
    by_ofctl, by_channel = bridges("bog-"), bridges("boc-")
    ovs.ofctl("add-meter", by_ofctl, "meter=7,kbps,burst,band=type=drop,rate=1000,burst_size=100")
    ovs.ofctl("add-flows", by_ofctl, "-", input="\n".join(render_flows([*flows, metered], PIPELINE)) + "\n")
    switch = _switch(ovs, by_channel, channels)
    await switch.sync_many({COOKIE_OWNER: flows, COOKIE: [metered]}, COOKIE_OWNER, 0xFFFF << 48,
                           meters={7: MeterBand(1000, 100)})  # fmt: skip
    assert _dump_text(ovs, by_channel) == _dump_text(ovs, by_ofctl)
    assert await switch.meters() == {7}
    # MODIFY of the existing meter, in the same write as a (now empty) bundle.
    await switch.sync(COOKIE, [metered], meters={7: MeterBand(2000, 200)})
    assert "rate=2000" in ovs.ofctl("dump-meters", by_channel)
    await switch.delete(COOKIE)
    await switch.delete_meter(7)
    await switch.delete_meter(7)  # absent is fine
    assert await switch.meters() == set()


async def test_sync_sends_only_the_differences_and_leaves_other_cookies(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    web, server = _two_policies()
    bridge = bridges()
    switch = _switch(ovs, bridge, channels)
    other = dataclasses.replace(web[0], cookie=COOKIE + 1, priority=web[0].priority + 1)
    await switch.sync(COOKIE + 1, [other])
    first = await switch.sync(COOKIE, web)
    assert (first.added, first.removed) == (len(web), 0)
    seen: list[int] = []

    async def beside() -> None:  # runs once the bundle is in
        seen.append(len(await switch.installed(COOKIE)))

    change = await switch.sync(COOKIE, server, beside_readback=beside)
    assert seen == [len(server)]
    common = len(set(web) & set(server))
    assert (change.added, change.removed) == (len(server) - common, len(web) - common)
    again = await switch.sync(COOKIE, server)
    assert (again.added, again.removed) == (0, 0)
    assert len(await switch.installed(COOKIE + 1)) == 1  # another cookie's flow is left alone
    await switch.replace_many({COOKIE: web, COOKIE + 1: []})
    assert {f.key for f in await switch.installed(COOKIE)} == set(switch.encode(web))
    assert await switch.installed(COOKIE + 1) == []


async def _web_installed(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> tuple[ChannelSwitch, str, list[Flow], list[Flow]]:
    """A new bridge holding the web policy: its switch, its name, and both policies' flows."""
    web, server = _two_policies()
    bridge = bridges()
    switch = _switch(ovs, bridge, channels)
    await switch.sync(COOKIE, web)
    return switch, bridge, web, server


def _counting(switch: ChannelSwitch) -> list[int]:
    """The number of messages of every exchange ``switch`` makes from now on."""
    sizes: list[int] = []
    exchange = switch._exchange

    async def counted(messages: Any, lane: int = 0) -> Any:
        sizes.append(len(messages))
        return await exchange(messages, lane)

    switch._exchange = counted  # type: ignore[method-assign]
    return sizes


async def test_a_change_from_the_remembered_state_needs_no_read_and_still_repairs_what_changed_behind_it(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    switch, bridge, web, server = await _web_installed(ovs, bridges, channels)
    known = switch.known(COOKIE)
    assert known is not None and set(known) == set(switch.encode(web))
    sizes = _counting(switch)
    change = await switch.sync(COOKIE, server, known=known)
    assert len(sizes) == 1  # the bundle and its read-back, no read before it
    common = len(set(web) & set(server))
    assert (change.added, change.removed) == (len(server) - common, len(web) - common)
    assert await _keys(switch) == set(switch.encode(server))
    # Behind the switch's back: a stranger flow under the cookie, one of its
    # flows gone. The remembered state no longer holds; the next change
    # finds out by its read-back and starts over from a fresh read.
    ovs.ofctl(
        "add-flow", bridge, f"cookie={COOKIE:#x},table=0,priority=2,ip,nw_src=203.0.113.99,actions=drop"
    )
    gone = next(line for line in _dump_text(ovs, bridge) if "203.0.113.99" not in line)
    ovs.ofctl("del-flows", "--strict", bridge, flow_match(gone) + f",cookie={COOKIE:#x}/-1")
    sizes.clear()
    await switch.sync(COOKIE, web, known=switch.known(COOKIE))
    assert len(sizes) == 3  # from memory, then a fresh read, then the repair
    assert await _keys(switch) == set(switch.encode(web))
    # Nothing to change by memory: read and compared all the same.
    sizes.clear()
    assert await switch.sync(COOKIE, web, known=switch.known(COOKIE)) == SyncResult(0, 0, len(web))
    assert len(sizes) == 1
    # A refused bundle from the remembered state keeps the old flows, and
    # what runs beside the read-back never runs.
    ran: list[int] = []

    async def beside() -> None:
        ran.append(1)

    with pytest.raises(BundleError):
        await switch.sync(COOKIE, [*server, UNMETERED], known=switch.known(COOKIE), beside_readback=beside)
    assert ran == [] and await _keys(switch) == set(switch.encode(web))
    assert switch.known(COOKIE) is None
    # A delete leaves nothing; any other change through the switch forgets the cookie.
    await switch.delete(COOKIE)
    assert switch.known(COOKIE) == {}
    await switch.add(web[:1])
    assert switch.known(COOKIE) is None


async def test_the_same_flow_under_two_cookies_is_held_once_the_later_winning(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    # Two attachments claiming one address compile to one anti-spoofing flow
    # (same table, priority and match) under two cookies: the switch keeps
    # one flow, the later add's.
    bridge = bridges()
    switch = _switch(ovs, bridge, channels)
    claim = Flow("classify", 3010, (("dl_type", "0x0806"), ("nw_src", "198.51.100.10")), (), COOKIE)
    later = dataclasses.replace(claim, cookie=COOKIE + 1)
    changes = await switch.sync_many({COOKIE: [claim], COOKIE + 1: [later]}, COOKIE_OWNER, 0)
    assert changes == {COOKIE + 1: SyncResult(1, 0, 1)}
    assert [f.key.cookie for f in await switch.installed(0, 0)] == [COOKIE + 1]
    assert await switch.sync_many({COOKIE: [claim], COOKIE + 1: [later]}, COOKIE_OWNER, 0) == {}


async def test_a_refused_bundle_keeps_the_old_flows_and_names_the_error(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    switch, bridge, web, server = await _web_installed(ovs, bridges, channels)
    before = _dump_text(ovs, bridge)
    with pytest.raises(BundleError) as refused:
        await switch.sync(COOKIE, [*server, UNMETERED])
    message = str(refused.value)
    assert "OFPMMFC_INVALID_METER" in message and "table 0 priority 3020" in message
    assert "ONF bundle error ONFERR_ET_" in message
    assert _dump_text(ovs, bridge) == before
    assert await switch.sync(COOKIE, web) == SyncResult(0, 0, len(web))


async def test_echo_requests_are_answered_over_a_long_idle(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    # The management socket probes after 60 s; a passive controller socket
    # of the same bridge takes the shortest probe interval OVS allows (5 s)
    # and drops an unanswered connection after twice that.
    bridge = bridges()
    socket = ovs.rundir / f"{bridge}.probe"
    ovs.vsctl("set-controller", bridge, f"punix:{socket}")
    ovs.vsctl("set", "controller", bridge, "inactivity_probe=5000")
    deadline = time.monotonic() + 10
    while not socket.exists():
        assert time.monotonic() < deadline, "the controller socket did not appear"
        await asyncio.sleep(0.05)
    channel = OpenFlowChannel(lambda: str(socket), timeout=5)
    channels.append(channel)
    await channel.connect()
    await asyncio.sleep(11.5)  # idle past the disconnect deadline of an unanswered probe
    assert channel.echoes_answered >= 1
    assert channel.connected
    await channel.echo()
    assert channel.connects == 1  # never dropped, never reconnected


async def test_reconnects_to_the_new_socket_after_an_ovs_vswitchd_restart(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    flows = _policy_flows(GOLDEN / "policies" / "baseline-isolated.yaml")
    bridge = bridges()
    switch = _switch(ovs, bridge, channels, timeout=15.0)
    await switch.sync(COOKIE, flows)
    ovs.stop_vswitchd()
    try:
        deadline = time.monotonic() + 5
        while switch.channel.connected:  # the reader saw EOF
            assert time.monotonic() < deadline, "the channel did not notice ovs-vswitchd going away"
            await asyncio.sleep(0.02)
        # Asked while OVS is down: retried with backoff until the new socket answers.
        waiting = asyncio.ensure_future(switch.installed(COOKIE))
        await asyncio.sleep(0.3)
        assert not waiting.done()
    finally:
        await asyncio.to_thread(ovs.start_vswitchd)
    assert await waiting == []  # a restarted vswitchd holds no flows
    assert switch.channel.connects == 2
    assert switch.known(COOKIE) is None  # what the old connection verified is gone
    result = await switch.sync(COOKIE, flows)
    assert result.added == len(flows)


async def test_a_bridge_without_openflow13_is_refused_with_a_clear_error(
    ovs: OvsInstance, bridges: BridgeFactory, channels: list[OpenFlowChannel]
) -> None:
    bridge = bridges(protocols="OpenFlow15")
    switch = _switch(ovs, bridge, channels, timeout=2.0)
    with pytest.raises(Exception, match=r"does not speak OpenFlow 1\.3"):
        await switch.ping()


# -- a switch that stops answering (no OVS needed) ------------------------------


@contextlib.asynccontextmanager
async def _fake_switch(path: Path, *, close_after_request: bool) -> AsyncIterator[list[bytes]]:
    """Says hello, then either closes on the first request or never answers."""
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(bytes.fromhex("04000008") + b"\0\0\0\1")
        got.append(await reader.readexactly(8))  # our hello
        got.append(await reader.read(1 << 16))  # the request
        if close_after_request:
            writer.close()
        else:
            await asyncio.sleep(30)

    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        yield got
    finally:
        server.close()


async def test_eof_fails_the_pending_request_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "sw.mgmt"
    async with _fake_switch(path, close_after_request=True):
        channel = OpenFlowChannel(lambda: str(path), timeout=20)
        try:
            started = time.monotonic()
            with pytest.raises(Exception, match="closed"):
                await channel.echo()
            assert time.monotonic() - started < 10  # failed on EOF, long before the timeout
        finally:
            await channel.close()


async def test_an_unanswered_request_times_out(tmp_path: Path) -> None:
    path = tmp_path / "sw.mgmt"
    async with _fake_switch(path, close_after_request=False):
        channel = OpenFlowChannel(lambda: str(path), timeout=0.5)
        try:
            with pytest.raises(Exception, match="no answer"):
                await channel.echo()
            assert not channel.connected  # dropped: a new connection starts clean
        finally:
            await channel.close()


async def test_a_request_while_the_switch_is_away_fails_within_the_connect_budget(tmp_path: Path) -> None:
    # No socket at all (ovs-vswitchd stopped): the request retries connecting
    # for its connect budget only, not for the whole request timeout.
    channel = OpenFlowChannel(lambda: str(tmp_path / "absent.mgmt"), timeout=30, connect_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match="cannot open OpenFlow channel"):
            await channel.echo()
        assert time.monotonic() - started < 10  # the 30 s request budget was not waited out
    finally:
        await channel.close()


async def test_a_difference_is_explained_in_ovs_ofctls_words(
    ovs: OvsInstance, bridges: BridgeFactory
) -> None:
    bridge = bridges()
    cookie = COOKIE_OWNER | 7
    ovs.ofctl("add-flow", bridge, f"cookie={cookie:#x},table=0,priority=5,in_port=1,actions=drop")
    ovs.ofctl("add-flow", bridge, "cookie=0x1,table=0,priority=5,in_port=2,actions=drop")  # not ours
    intent = [f"cookie={cookie:#x},table=0,priority=6,in_port=1 actions=drop"]
    said = await explain_difference(
        f"unix:{ovs.rundir / f'{bridge}.mgmt'}", f"cookie={cookie:#x}/-1", {cookie}, intent, timeout=10
    )
    assert said.startswith(": ")
    assert "priority=5" in said and "priority=6" in said
    assert "in_port=2" not in said


async def test_an_unexplainable_difference_says_why(ovs: OvsInstance) -> None:
    said = await explain_difference(
        f"unix:{ovs.rundir / 'no-such-bridge.mgmt'}", "cookie=0x1/-1", {1}, [], timeout=10
    )
    assert said.startswith(" (no text diff: ovs-ofctl dump-flows")
