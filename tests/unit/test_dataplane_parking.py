"""PortParking's decisions against a recording switch and OVSDB: what it
sends when its descriptions are behind the switch, a channel that fails,
a port the switch no longer lists, a reconnect; the representor set down
while parked and up when taken back, a failure to do so logged."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

import coordinator.dataplane_parking as parking_module
from coordinator.dataplane_parking import PortParking
from coordinator.eswitch.base import EswitchError
from coordinator.ovs.ofchannel import ChannelClosed, Outcome, Outgoing
from coordinator.ovs.ofports import PARKED, PortDesc
from coordinator.ovs.openflow import OpenFlowError
from coordinator.ovs.port_keys import is_parked, parked_ids

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


@dataclass
class Backend:
    """Representors' states as the kernel holds them."""

    up: dict[str, bool] = field(default_factory=lambda: {REP: True})
    fail: bool = False

    def set_representor_up(self, representor: str, up: bool) -> bool:
        if self.fail:
            raise EswitchError(f"representor {representor}: permission denied")
        if representor not in self.up:
            return False
        self.up[representor] = up
        return True


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


def _parking(switch: Switch, ovsdb: Ovsdb, backend: Backend | None = None) -> PortParking:
    return PortParking("br", ovsdb, switch, backend or Backend())  # type: ignore[arg-type]


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


async def test_a_parked_ports_representor_is_down_until_the_port_is_taken_back(switch: Switch) -> None:
    backend = Backend()
    parking = _parking(switch, Ovsdb(), backend)
    await parking.park(REP)
    assert backend.up[REP] is False
    await parking.unpark(REP)
    assert backend.up[REP] is True and switch.port_mods == [(REP, PARKED), (REP, 0)]


async def test_repark_sets_down_a_representor_parked_while_it_stayed_up(switch: Switch) -> None:
    """A port parked by a daemon that left representors up, or set up by hand."""
    backend = Backend()
    switch.ports[REP] = replace(switch.ports[REP], config=PARKED)
    ids = parked_ids(42)
    await _parking(switch, Ovsdb(), backend).repark({REP: ids})
    assert backend.up[REP] is False


async def test_a_representor_that_cannot_be_set_down_is_logged_and_the_port_parked_all_the_same(
    switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    ovsdb = Ovsdb()
    with caplog.at_level(logging.WARNING, logger=parking_module.__name__):
        await _parking(switch, ovsdb, Backend(fail=True)).park(REP)
    assert switch.ports[REP].parked and is_parked(ovsdb.labels[REP])
    assert "not set down" in caplog.text and "permission denied" in caplog.text
