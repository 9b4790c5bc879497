"""PortParking's decisions against a recording switch and OVSDB: what it
sends when its descriptions are behind the switch, a channel that fails,
a port the switch no longer lists, a reconnect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

import coordinator.dataplane_parking as parking_module
from coordinator.dataplane_parking import PortParking
from coordinator.ovs.ofchannel import ChannelClosed, Outcome, Outgoing
from coordinator.ovs.ofports import PARKED, PortDesc
from coordinator.ovs.openflow import OpenFlowError

REP = "pf0vf3"


@dataclass
class Switch:
    """What OVS holds (``ports``), and a channel that can be made to fail."""

    ports: dict[str, PortDesc] = field(
        default_factory=lambda: {REP: PortDesc(7, REP, "02:00:00:00:00:07", 0)}
    )
    port_mods: list[tuple[str, int]] = field(default_factory=list)
    fail: BaseException | None = None
    connects: int = 1
    n: int = 0

    @property
    def channel(self) -> Switch:
        return self

    def xid(self) -> int:
        self.n += 1
        return self.n

    async def exchange(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        if self.fail is not None:
            raise self.fail
        return []


@dataclass
class Ovsdb:
    removed: list[str] = field(default_factory=list)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    async def interface_state(self, name: str) -> tuple[int | None, int]:
        return (7, 42)

    async def relabel_port(self, name: str, ids: dict[str, str]) -> None:
        self.labels[name] = ids

    async def delete_port(self, bridge: str, name: str) -> None:
        self.removed.append(name)


@pytest.fixture
def switch(monkeypatch: pytest.MonkeyPatch) -> Switch:
    sw = Switch()

    async def port_descs(exchange: Any, xid: Any) -> dict[str, PortDesc]:
        await exchange([])
        return dict(sw.ports)

    async def set_port_config(exchange: Any, xid: Any, desc: PortDesc, config: int) -> None:
        await exchange([])
        sw.port_mods.append((desc.name, config))
        sw.ports[desc.name] = replace(desc, config=config & PARKED)

    monkeypatch.setattr(parking_module, "port_descs", port_descs)
    monkeypatch.setattr(parking_module, "set_port_config", set_port_config)
    return sw


def _parking(switch: Switch, ovsdb: Ovsdb) -> PortParking:
    return PortParking("br", ovsdb, switch)  # type: ignore[arg-type]


async def test_park_sends_its_port_mod_even_when_the_descriptions_say_parked(switch: Switch) -> None:
    parking = _parking(switch, Ovsdb())
    await parking.park(REP)
    switch.ports[REP] = replace(switch.ports[REP], config=0)  # the switch forgot, unseen
    await parking.park(REP)  # e.g. a Detach retried after its relabel failed
    assert switch.port_mods == [(REP, PARKED), (REP, PARKED)] and switch.ports[REP].parked


async def test_a_failing_channel_is_the_switchs_error_and_the_watch_hears_of_it(switch: Switch) -> None:
    parking = _parking(switch, Ovsdb())
    await parking.park(REP)
    switch.fail = ChannelClosed("ovs-vswitchd went away")
    assert (await parking.intact() or "").startswith("switch unreachable")
    with pytest.raises(OpenFlowError, match="went away"):
        await parking.park(REP)


async def test_a_port_the_switch_no_longer_lists_is_removed_not_left_as_its_attachments(
    switch: Switch,
) -> None:
    ovsdb = Ovsdb()
    del switch.ports[REP]
    await _parking(switch, ovsdb).park(REP)
    assert ovsdb.removed == [REP] and REP not in ovsdb.labels


async def test_after_a_reconnect_unpark_reads_the_switch_again(switch: Switch) -> None:
    parking = _parking(switch, Ovsdb())
    await parking.park(REP)
    switch.connects += 1  # ovs-vswitchd restarted: the port lost its bits
    switch.ports[REP] = PortDesc(9, REP, "02:00:00:00:00:07", 0)
    await parking.unpark(REP)
    assert switch.port_mods == [(REP, PARKED)]  # nothing to clear: no port-mod to a stale number
