"""What the dataplane reads from the switch without changing it: whether it
still holds our state (base flows, port numbers), what it holds of ours
for a reconcile (ports, flows, prepared functions), the OVS and eswitch
health probes, and packet traces for ExplainPacket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence

from coordinator.attachment_identity import BRIDGE_COOKIE, COOKIE_OWNER, COOKIE_OWNER_MASK
from coordinator.config import OvsConfig
from coordinator.dataplane_port import SwitchTrace, WorldFacts
from coordinator.errors import Unavailable
from coordinator.eswitch.base import EswitchBackend, EswitchError, HealthFact
from coordinator.flows.trace import TraceParseError, TracePorts, parse_dpif_show, parse_trace, trace_request
from coordinator.health import ovs_checks
from coordinator.ovs.control import bridge_mgmt
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.ofwire import FlowsDigest, InstalledFlow
from coordinator.ovs.openflow import OpenFlowError
from coordinator.ovs.ovsdb import Ovsdb, OvsdbError
from coordinator.ovs.trace import TraceError, dpif_show, trace
from coordinator.ovs.unixctl import UnixctlClient
from coordinator.policy.packet import Packet
from coordinator.store.records import AttachmentRecord


class ReadFlows:
    """``HeldFlows`` as this dataplane reads them: the flows of our cookies
    as the switch sent them, parsed only when first asked for (a reconcile
    that its proofs show unchanged never asks), and each cookie's digest
    of them."""

    def __init__(
        self,
        bodies: list[bytes],
        digests: dict[int, FlowsDigest],
        parse: Callable[[Sequence[bytes]], list[InstalledFlow]],
    ) -> None:
        self._bodies = bodies
        self._parse = parse
        self._flows: list[InstalledFlow] | None = None
        self.digests = digests

    def __len__(self) -> int:
        return sum(d.count for d in self.digests.values())

    def flows(self) -> list[InstalledFlow]:
        if self._flows is None:
            self._flows = self._parse(self._bodies)
            self._bodies = []
        return self._flows


# Flow-stats bodies and every cookie's digest of them (``ChannelSwitch.dump_digests``).
FlowDump = tuple[list[bytes], dict[int, FlowsDigest]]


class SwitchProbes:
    def __init__(
        self,
        cfg: OvsConfig,
        backend: EswitchBackend,
        ovsdb: Ovsdb,
        switch: ChannelSwitch,
        control: UnixctlClient,
    ) -> None:
        self._cfg = cfg
        self._control = control  # ovs-vswitchd's control socket, shared with the dataplane
        self._backend = backend
        self._ovsdb = ovsdb
        self._switch = switch
        self._early: asyncio.Future[tuple[FlowDump, int]] | None = None  # ``read_early``

    async def switch_intact(
        self, base_flows: int, ports_in_use: Mapping[str, int], uplink_ofport: int | None
    ) -> str | None:
        """None if the bridge exists with its ``base_flows`` and our ports keep
        their numbers; else why not."""
        try:
            installed = await self._switch.installed(BRIDGE_COOKIE)
            facts = await self._ovsdb.bridge_facts(self._cfg.bridge)
        except (OpenFlowError, OvsdbError) as exc:
            return f"switch unreachable: {exc}"
        if facts.get("bridge") is None:
            return f"bridge {self._cfg.bridge} missing"
        if len(installed) != base_flows:
            return f"bridge holds {len(installed)} of its {base_flows} base flows (ovs-vswitchd restarted?)"
        try:
            numbers = await self._ovsdb.interface_ofports()
        except OvsdbError as exc:
            return f"switch unreachable: {exc}"
        in_use = dict(ports_in_use)
        if self._cfg.uplink and uplink_ofport is not None:
            in_use[self._cfg.uplink] = uplink_ofport
        return port_moved(in_use, numbers)

    async def switch_health(self) -> list[HealthFact]:
        try:
            facts = await self._ovsdb.bridge_facts(self._cfg.bridge)
            error = ""
        except OvsdbError as exc:
            facts, error = None, str(exc)
        hw_required = self._backend.name == "switchdev"
        checks = ovs_checks(facts, error, self._cfg.bridge, hw_offload_required=hw_required)
        try:
            await self._switch.ping()
            checks.append(HealthFact("openflow_reachable", True, "bridge answers OpenFlow", required=True))
        except OpenFlowError as exc:
            checks.append(HealthFact("openflow_reachable", False, str(exc), required=True))
        return checks

    async def eswitch_health(self) -> list[HealthFact]:
        return await asyncio.to_thread(self._backend.health)

    async def trace(self, record: AttachmentRecord, packet: Packet, uplink_ofport: int | None) -> SwitchTrace:
        """``packet`` traced through the live switch, from or to the
        attachment. Raises Unavailable when the switch cannot trace it."""
        ports = TracePorts(
            attachment_ofport=record.ofport, attachment_mac=record.mac, uplink_ofport=uplink_ofport or 0
        )
        request = trace_request(packet, ports)
        cfg = self._cfg
        try:
            text = await trace(self._control, cfg.bridge, request.flow, request.ct_next)
            odp = parse_dpif_show(await dpif_show(self._control), cfg.bridge)
            switch = parse_trace(text, request.expected_ofport, odp)
        except (TraceError, TraceParseError) as exc:
            raise Unavailable(f"tracing through the switch: {exc}") from exc
        return SwitchTrace(text=text, allowed=switch.allowed)

    def read_early(self) -> None:
        """Start the read of every flow of ours that the next ``facts``
        takes, before OVSDB is even connected: at a start the switch works
        through a dump of tens of thousands of flows meanwhile. Nothing else
        changes flows before that ``facts`` but the bridge's own ones: if
        those change in between (the bridge was new, or ovs-vswitchd lost
        them), ``drop_early``, and ``facts`` reads again. Not when the
        bridge has no management socket yet (a first start): the channel
        would wait for one, and hold up the bridge's own first flows. Nor
        is it used when the channel reconnected since (ovs-vswitchd restarted)."""
        if not os.path.exists(bridge_mgmt(self._cfg.rundir, self._cfg.bridge)):
            return
        self._early = asyncio.ensure_future(self._dump_on_connection())

    async def _dump_on_connection(self) -> tuple[FlowDump, int]:
        dump = await self._switch.dump_digests(COOKIE_OWNER, COOKIE_OWNER_MASK)
        return dump, self._switch.channel.connects

    def drop_early(self) -> None:
        early, self._early = self._early, None
        if early is not None:
            early.cancel()
            early.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _dump(self) -> FlowDump:
        early, self._early = self._early, None
        if early is not None:
            try:
                dump, connection = await early
                if connection == self._switch.channel.connects:
                    return dump
            except OpenFlowError:
                pass  # e.g. the bridge was not there yet: read now
        return await self._switch.dump_digests(COOKIE_OWNER, COOKIE_OWNER_MASK)

    async def facts(self, bridge: str) -> WorldFacts:
        """Our ports, how many flows each of our cookies holds (and the flows,
        for ``converge_flows``), and the prepared functions."""
        # Side by side: the switch works through the flow dump (tens of
        # thousands at a thousand attachments) while OVSDB and the eswitch answer.
        ports, read, ofports, prepared = await asyncio.gather(
            self._ovsdb.owned_ports(bridge),
            self._dump(),
            self._ovsdb.interface_ofports(),
            asyncio.to_thread(self._backend.prepared),
            return_exceptions=True,
        )
        for outcome in (ports, read, ofports, prepared):
            if isinstance(outcome, OvsdbError | OpenFlowError | EswitchError):
                raise Unavailable(f"reading what the switch holds: {outcome}") from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(ports, dict) and isinstance(read, tuple)
        assert isinstance(ofports, dict) and isinstance(prepared, list)
        bodies, digests = read
        counts = {cookie: digest.count for cookie, digest in digests.items()}
        return WorldFacts(
            ports, counts, ofports, tuple(prepared), ReadFlows(bodies, digests, self._switch.parse)
        )


def port_moved(in_use: Mapping[str, int], numbers: Mapping[str, int]) -> str | None:
    """OpenFlow port numbers are not fixed: after an ovs-vswitchd restart a
    port can come back under another one (a port added while it was down may
    have taken the old number first). Our flows name ports by number, so a
    port that moved needs its flows re-programmed."""
    for name, number in sorted(in_use.items()):
        now = numbers.get(name)
        if now != number:
            return f"port {name} is now OpenFlow port {now or 'none'}, its flows use {number}"
    return None
