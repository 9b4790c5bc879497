"""The switch's flow monitor on the OpenFlow channel, against a real Open
vSwitch: a change verified from the switch's report of it (no read-back),
with what it leaves equal to a read-back's; and every way the report could
be trusted wrongly - a change behind our back under the cookie, another
cookie's add taking one of its places (from another connection or from
this one, read or gained by a reported change), a stamp of another
connection, a read from before another sync's change, a refused bundle,
a monitor the switch paused - ending in a read-back that repairs the
cookie."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from os_ken.ofproto import ofproto_v1_3 as ofp

from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.flows.compiler import attachment_flows
from coordinator.flows.dry_run import EXAMPLE_PORT
from coordinator.flows.model import Flow, Goto, Meter
from coordinator.flows.pipeline import load_pipeline
from coordinator.flows.render import render_flows
from coordinator.ovs.ofchannel import OpenFlowChannel, Outgoing, Reply
from coordinator.ovs.ofsync import BULK_CHANGES, BundleError, ChannelSwitch, SwitchState
from coordinator.ovs.ofwatch import FlowWatch
from coordinator.ovs.ofwire import FlowKey, FlowsDigest
from coordinator.policy.validate import scope_from_mapping
from tests.golden.regen import GOLDEN

pytestmark = pytest.mark.ovs

PIPELINE = load_pipeline()
COOKIE = EXAMPLE_PORT.cookie


@pytest.fixture
def bridge(ovs: OvsInstance) -> Iterator[str]:
    name = netns.unique_name("bfw-")
    ovs.vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", "fail_mode=secure",
              "protocols=OpenFlow13")  # fmt: skip
    try:
        yield name
    finally:
        ovs.vsctl("--if-exists", "del-br", name)


@pytest_asyncio.fixture
async def switch(ovs: OvsInstance, bridge: str) -> AsyncIterator[ChannelSwitch]:
    channel = OpenFlowChannel(lambda: str(ovs.rundir / f"{bridge}.mgmt"), timeout=5.0, watch_flows=True)
    try:
        yield ChannelSwitch(channel, PIPELINE)
    finally:
        await channel.close()


def _flows(name: str) -> list[Flow]:
    scope = scope_from_mapping(yaml.safe_load((GOLDEN / "policies" / f"{name}.yaml").read_text()))
    return attachment_flows(PIPELINE, EXAMPLE_PORT, scope)


def _sent(switch: ChannelSwitch) -> list[list[Outgoing]]:
    """Every exchange ``switch`` makes from now on."""
    exchanges: list[list[Outgoing]] = []
    exchange = switch._exchange

    async def recorded(messages: Any, lane: int = 0) -> Any:
        exchanges.append(list(messages))
        return await exchange(messages, lane)

    switch._exchange = recorded  # type: ignore[method-assign]
    return exchanges


def _reads(exchanges: list[list[Outgoing]]) -> int:
    return sum(out.reply is Reply.MULTIPART for messages in exchanges for out in messages)


async def _keys(switch: ChannelSwitch, cookie: int = COOKIE) -> set[FlowKey]:
    return {f.key for f in await switch.installed(cookie)}


def _done(state: SwitchState) -> asyncio.Future[SwitchState]:
    read: asyncio.Future[SwitchState] = asyncio.get_running_loop().create_future()
    read.set_result(state)
    return read


def _fed(watch: FlowWatch) -> list[int]:
    """The length of every message handed to ``watch`` from now on."""
    fed: list[int] = []
    feed = watch.feed
    watch.feed = lambda message: (fed.append(len(message)), feed(message))[1]  # type: ignore[method-assign]
    return fed


async def _one_more_flow_is_read_back(switch: ChannelSwitch, web: list[Flow], server: list[Flow]) -> None:
    """A change of ``web`` adding one flow (of ``server``) reads back and ends as intended."""
    more = [*web, next(f for f in server if f not in web)]
    sent = _sent(switch)
    await switch.sync(COOKIE, more, known=switch.known(COOKIE))
    assert _reads(sent) >= 1 and await _keys(switch) == set(switch.encode(more))


async def _watched(switch: ChannelSwitch, flows: list[Flow]) -> None:
    """``flows`` installed and held as the watch's (the first sync reads)."""
    await switch.sync(COOKIE, flows)
    assert switch.channel.watch is not None and switch.channel.watch.stamp is not None


async def test_a_change_is_verified_from_the_switchs_report_and_leaves_what_a_read_back_shows(
    switch: ChannelSwitch,
) -> None:
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    sent = _sent(switch)
    for target in (server, web, server):
        await switch.sync(COOKIE, target, known=switch.known(COOKIE))
    # One exchange a change, the bundle alone: nothing read before or after it.
    assert len(sent) == 3 and _reads(sent) == 0
    held = switch.known(COOKIE)
    assert held is not None and set(held) == set(switch.encode(server))
    # What the reports left is what the switch shows, spelled as it spells it.
    read = await switch.installed(COOKIE)
    assert {f.key for f in read} == set(switch.encode(server))
    assert switch.verified(COOKIE) == FlowsDigest.of(read)


async def test_a_change_behind_our_back_under_the_cookie_is_read_back_and_repaired(
    ovs: OvsInstance, bridge: str, switch: ChannelSwitch
) -> None:
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    # From another connection: a stranger flow under the cookie, and one of
    # its flows the change keeps gone (what the change itself sends would
    # be reported just as sent).
    ovs.ofctl(
        "add-flow", bridge, f"cookie={COOKIE:#x},table=0,priority=2,ip,nw_src=203.0.113.99,actions=drop"
    )
    [kept] = render_flows([next(f for f in web if f in server)], PIPELINE)
    match = kept.split(" actions=")[0].split(",", 1)[1]  # without the cookie
    ovs.ofctl("del-flows", "--strict", bridge, f"{match},cookie={COOKIE:#x}/-1")
    await switch.ping()  # their reports are in before the echo's reply
    sent = _sent(switch)
    await switch.sync(COOKIE, server, known=switch.known(COOKIE))
    assert _reads(sent) >= 1
    assert await _keys(switch) == set(switch.encode(server))
    # Verified again by that read, the next change needs none.
    sent.clear()
    await switch.sync(COOKIE, web, known=switch.known(COOKIE))
    assert _reads(sent) == 0 and await _keys(switch) == set(switch.encode(web))


@pytest.mark.parametrize("taker", ["another connection", "this switch"])
async def test_another_cookies_add_at_a_held_place_is_a_change_of_the_held_cookie(
    ovs: OvsInstance, bridge: str, switch: ChannelSwitch, taker: str
) -> None:
    # An add replaces the flow at its table, priority and match whatever its
    # cookie, and the switch reports only the add: the cookie that lost its
    # flow must read back, or it would believe it still holds it.
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    taken = next(f for f in web if f in server)  # kept by the change below
    other = COOKIE + 1
    if taker == "this switch":
        await switch.add([dataclasses.replace(taken, cookie=other)])
    else:
        [line] = render_flows([dataclasses.replace(taken, cookie=other)], PIPELINE)
        ovs.ofctl("add-flow", bridge, line)
        await switch.ping()  # its report is in before the echo's reply
    assert switch.encode([taken]).keys().isdisjoint(await _keys(switch))
    sent = _sent(switch)
    await switch.sync(COOKIE, server, known=switch.known(COOKIE))
    assert _reads(sent) >= 1
    assert await _keys(switch) == set(switch.encode(server))


async def test_a_place_gained_by_a_reported_change_is_held_like_a_read_one(
    ovs: OvsInstance, bridge: str, switch: ChannelSwitch
) -> None:
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    sent = _sent(switch)
    await switch.sync(COOKIE, server, known=switch.known(COOKIE))
    assert _reads(sent) == 0
    gained = next(f for f in server if f not in web)
    [line] = render_flows([dataclasses.replace(gained, cookie=COOKIE + 1)], PIPELINE)
    ovs.ofctl("add-flow", bridge, line)
    await switch.ping()
    more = [*server, next(f for f in web if f not in server)]
    sent.clear()
    await switch.sync(COOKIE, more, known=switch.known(COOKIE))
    assert _reads(sent) >= 1 and await _keys(switch) == set(switch.encode(more))


async def test_a_stamp_vouches_only_for_the_connection_that_gave_it(
    ovs: OvsInstance, bridge: str, switch: ChannelSwitch
) -> None:
    # A read answered on one connection, the flows wiped while it is down,
    # then used on the next connection: its stamp must not vouch there.
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    state = await switch.read(COOKIE)
    await switch.channel.close()
    ovs.ofctl("del-flows", bridge, f"cookie={COOKIE:#x}/-1")
    await switch.channel.connect()
    await switch.ping()
    await switch.sync(COOKIE, web, read=_done(state))  # nothing to change, by that read
    await _one_more_flow_is_read_back(switch, web, server)


async def test_a_read_from_before_another_syncs_reported_change_vouches_for_nothing(
    switch: ChannelSwitch,
) -> None:
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    known = switch.known(COOKIE)
    early = await switch.read(COOKIE)  # one sync's read of the cookie
    await switch.sync(COOKIE, server, known=known)  # another sync of it, verified from the report
    await switch.sync(COOKIE, web, read=_done(early))  # the first goes on: nothing to change, by its read
    await _one_more_flow_is_read_back(switch, web, server)


async def test_a_refused_bundle_ends_the_collecting_and_the_next_change_is_read_back(
    switch: ChannelSwitch,
) -> None:
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    # A policed flow whose meter the bridge lacks: the switch refuses the bundle.
    unmetered = Flow("classify", 3020, (("in_port", "9"), ("dl_type", "0x0800")), (Meter(999),), COOKIE)
    with pytest.raises(BundleError):
        await switch.sync(COOKIE, [*server, unmetered], known=switch.known(COOKIE))
    watch = switch.channel.watch
    assert watch is not None and COOKIE not in watch._collecting  # nothing left collecting
    sent = _sent(switch)
    await switch.sync(COOKIE, server, known=switch.known(COOKIE))
    assert await _keys(switch) == set(switch.encode(server))
    sent.clear()
    await switch.sync(COOKIE, web, known=switch.known(COOKIE))  # by then verified again
    assert _reads(sent) == 0 and await _keys(switch) == set(switch.encode(web))


async def test_a_monitor_the_switch_pauses_trusts_nothing_from_before_the_pause(
    ovs: OvsInstance, bridge: str, switch: ChannelSwitch, tmp_path: Path
) -> None:
    # ovs-vswitchd pauses a monitor whose updates back up past its limit:
    # the reader held up while another connection adds 20,000 flows.
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    conn = switch.channel._conn
    assert conn is not None
    gate = asyncio.Event()
    read_message = conn.read_message

    async def held_up() -> bytes:
        await gate.wait()
        return await read_message()

    conn.read_message = held_up  # type: ignore[method-assign]
    await asyncio.sleep(0.05)  # the reader is waiting at the gate
    many = tmp_path / "many.flows"
    many.write_text("".join(
        f"cookie=0x77,table=0,priority=1,tcp,nw_src=198.51.100.1,tp_dst={port},actions=drop\n"
        for port in range(1, 20_001)
    ))  # fmt: skip
    notices: list[int] = []
    watch = switch.channel.watch
    assert watch is not None
    notice = watch.notice
    watch.notice = lambda kind: (notices.append(kind), notice(kind))[1]  # type: ignore[method-assign]
    await asyncio.to_thread(ovs.ofctl, "add-flows", bridge, str(many))
    gate.set()
    for _ in range(100):
        await switch.ping()
        if ofp.ONFT_FLOW_MONITOR_RESUMED in notices:
            break
        await asyncio.sleep(0.05)
    assert notices[:1] == [ofp.ONFT_FLOW_MONITOR_PAUSED] and ofp.ONFT_FLOW_MONITOR_RESUMED in notices
    sent = _sent(switch)
    await switch.sync(COOKIE, server, known=switch.known(COOKIE))
    assert _reads(sent) >= 1 and await _keys(switch) == set(switch.encode(server))


async def test_bulk_work_cancels_the_monitor_and_a_cookies_next_change_asks_for_it_again(
    switch: ChannelSwitch,
) -> None:
    # A bulk change's every flow would come back as an update (and past
    # ovs-vswitchd's backlog limit, a pause and all of it again): the
    # monitor is cancelled for it.
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    watch = switch.channel.watch
    assert watch is not None
    fed = _fed(watch)
    port = dataclasses.replace(EXAMPLE_PORT, ofport=3, slot=2, mac="02:00:5e:00:53:02")
    other = attachment_flows(PIPELINE, port, scope_from_mapping({}))
    await switch.replace_many({COOKIE: server, port.cookie: other})
    await switch.ping()
    assert not watch.armed and sum(fed) == 0
    assert await _keys(switch) == set(switch.encode(server))
    # The next change of one cookie asks for it again; that change reads
    # back (nothing was watched meanwhile), and the one after it does not.
    sent = _sent(switch)
    await switch.sync(COOKIE, web, known=switch.known(COOKIE))
    assert watch.armed and _reads(sent) >= 1
    sent.clear()
    await switch.sync(COOKIE, server, known=switch.known(COOKIE))
    assert _reads(sent) == 0 and await _keys(switch) == set(switch.encode(server))
    assert watch.stamp is not None and sum(fed) > 0


async def test_a_large_change_of_one_cookie_is_bulk_work_too(switch: ChannelSwitch) -> None:
    web = _flows("web-client")
    await _watched(switch, web)
    watch = switch.channel.watch
    assert watch is not None
    fed = _fed(watch)
    many = [
        Flow("classify", 3020, (("in_port", "9"), ("dl_type", "0x0800"), ("nw_src", f"203.0.113.{n}")),
             (Goto("egress_spoof"),), COOKIE)
        for n in range(1, BULK_CHANGES + 2)
    ]  # fmt: skip
    sent = _sent(switch)
    await switch.sync(COOKIE, [*web, *many], known=switch.known(COOKIE))
    await switch.ping()
    assert not watch.armed and sum(fed) == 0 and _reads(sent) == 1  # read back, unreported
    assert await _keys(switch) == set(switch.encode([*web, *many]))
    await switch.sync(COOKIE, [*web, *many[:-1]], known=switch.known(COOKIE))  # small: asks again
    sent.clear()
    await switch.sync(COOKIE, [*web, *many[:-2]], known=switch.known(COOKIE))
    assert watch.armed and _reads(sent) == 0 and sum(fed) > 0
    assert await _keys(switch) == set(switch.encode([*web, *many[:-2]]))


async def test_a_reply_to_a_monitor_request_cancelled_before_it_came_vouches_for_nothing(
    ovs: OvsInstance, bridge: str, switch: ChannelSwitch
) -> None:
    web, server = _flows("web-client"), _flows("server-with-denies")
    await _watched(switch, web)
    watch = switch.channel.watch
    assert watch is not None
    # Asked for again, then cancelled by bulk work before the switch answered:
    switch.channel.unwatch()
    switch.channel.rewatch()
    switch.channel.unwatch()
    await switch.ping()  # the request's reply is in by now
    assert watch.stamp is None  # a reply now shows the switch while nothing is watched
    # Unreported, with no monitor: another connection's change of the cookie.
    ovs.ofctl(
        "add-flow", bridge, f"cookie={COOKIE:#x},table=0,priority=2,ip,nw_src=203.0.113.99,actions=drop"
    )
    await switch.sync(COOKIE, server, known=switch.known(COOKIE))
    assert await _keys(switch) == set(switch.encode(server))
