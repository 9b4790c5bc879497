"""VF representors parked on the bridge between attachments.

A VF outlives its attachment, and so does its representor. Taking the
representor off the bridge at every Detach and putting it back at the next
Attach costs ovs-vswitchd's main thread most of an attach-detach cycle: with
the userspace datapath a port's removal closes its packet socket, and the
kernel waits for an RCU grace period (~11 ms on the bench machine) while
nothing else on that thread - another attachment's flows, conntrack calls,
OVSDB changes - is answered; removals do not batch.

So a Detach parks a VF's port instead, once its flows are gone: its
OpenFlow configuration is set to NO_RECV|NO_FWD|NO_PACKET_IN (nothing it
sends is taken in; nothing is sent out of it, the bridge's ARP and ND
floods included), its representor is set down, and its external_ids say
role=parked (nobody's attachment, and no orphan to reconcile). The next
Attach of that VF takes the port back: ``ensure_port`` rewrites the ids,
``unpark`` sets the representor up and clears the bits before any of the
new attachment's flows exist.

OVS keeps a port's configuration in memory only. After an ovs-vswitchd
restart every port comes back with none, so ``repark`` - which the bridge's
set-up runs before it installs the bridge flows that flood - parks every
port OVSDB marks parked again. That needs the daemon, though, and
`ovs-ctl restart` (a package upgrade) brings the flows back by itself,
floods included, while the daemon may not be looking or not be running at
all. The representor's state is the kernel's, which no restart of OVS
touches: a representor that is down carries nothing to or from its VF,
so a parked VF stays deaf and mute through such a window.

A parked port records the kernel index of the device it was parked on. If
the device is gone or was made anew since (the host changed its VFs), the
port is no longer that representor's: it is removed, by ``repark`` or by
the ``take`` that finds it so, and the next Attach adds a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from coordinator.eswitch.base import DeviceKind, EswitchBackend, EswitchError
from coordinator.ovs.ofchannel import ChannelError, Outcome, Outgoing
from coordinator.ovs.ofports import PARKED, PortDesc, port_descs, set_port_config
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.openflow import OpenFlowError
from coordinator.ovs.ovsdb import Ovsdb
from coordinator.ovs.port_keys import (
    ATTACHMENT_KEY,
    OWNER_KEY,
    OWNER_VALUE,
    PARKED_IFINDEX_KEY,
    ROLE_KEY,
    SANDBOX_KEY,
    is_parked,
    parked_ids,
)
from coordinator.store.records import AttachmentRecord

log = logging.getLogger(__name__)

__all__ = ["PortParking", "attachment_port_ids"]


def attachment_port_ids(record: AttachmentRecord) -> dict[str, str]:
    """The external_ids of ``record``'s port: ours, and whose it is."""
    return {
        OWNER_KEY: OWNER_VALUE,
        ROLE_KEY: "attachment",
        ATTACHMENT_KEY: record.attachment_id,
        SANDBOX_KEY: record.sandbox_id,
    }


class PortParking:
    """An attachment's port: taken (added, or a parked one taken back) and
    given back (a VF's parked, an SF's removed)."""

    def __init__(self, bridge: str, ovsdb: Ovsdb, switch: ChannelSwitch, backend: EswitchBackend) -> None:
        self._bridge = bridge
        self._ovsdb = ovsdb
        self._switch = switch
        self._backend = backend
        # Port name -> its description as last read or as last set by us:
        # how a port's hardware address (which a port-mod must name) and
        # whether it is parked are known without a read per call.
        self._descs: dict[str, PortDesc] = {}
        # The channel connection ``_descs`` was read on: a reconnect (an
        # ovs-vswitchd restart renumbers ports, forgets their bits) voids it.
        self._read_on = -1
        # Parked port name -> the index of the device it was parked on.
        self._parked_on: dict[str, int] = {}

    async def _exchange(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        # The channel's own failures (closed, timed out) as the switch's
        # errors, which every caller of the door handles.
        try:
            return await self._switch.channel.exchange(messages)
        except ChannelError as exc:
            raise OpenFlowError(str(exc)) from exc

    def _xid(self) -> int:
        return self._switch.channel.xid()

    async def _read(self) -> dict[str, PortDesc]:
        connection = self._switch.channel.connects
        self._descs = await port_descs(self._exchange, self._xid)
        self._read_on = connection
        return self._descs

    def _known(self) -> dict[str, PortDesc]:
        """The descriptions as last read, if read on this very connection."""
        return self._descs if self._read_on == self._switch.channel.connects else {}

    async def _set(self, name: str, config: int, *, always: bool = False) -> bool:
        """Set ``name``'s parking bits to ``config``'s; False if the bridge
        has no such port. ``always``: sent even if the description says
        they are so already (it may be behind the switch). A refusal on a
        description read earlier (the port came back under another number,
        or with another address) reads the ports again and tries once more."""
        for fresh in (False, True):
            desc = (await self._read() if fresh else self._known()).get(name)
            if desc is None:
                if fresh:
                    return False
                continue
            if desc.config & PARKED == config & PARKED and not always:
                return True
            try:
                await set_port_config(self._exchange, self._xid, desc, config)
            except OpenFlowError:
                if fresh:
                    raise
                continue
            self._descs[name] = PortDesc(desc.number, name, desc.hw_addr, (desc.config & ~PARKED) | config)
            return True
        return False  # pragma: no cover - the second round always returns

    async def take(self, record: AttachmentRecord, representor: str) -> int:
        """Put ``representor`` on the bridge as ``record``'s port, not
        parked; its OpenFlow port number. Raises OvsdbError or OpenFlowError."""
        ids = attachment_port_ids(record)
        parked_on = self._parked_on.pop(representor, None)
        if parked_on is not None:
            # Taken back as it is: its ids replaced (a set would merge the
            # parked ones in) and its bits cleared; nothing for ovs-vswitchd
            # to add, so nothing to wait for.
            ofport, ifindex = await self._ovsdb.interface_state(representor)
            if ofport is not None and ifindex == parked_on:
                await self._ovsdb.relabel_port(representor, ids)
                await self.unpark(representor)
                return ofport
            await self._remove_stale(representor)
        ofport = await self._ovsdb.ensure_port(self._bridge, representor, ids)
        await self.unpark(representor)  # parked bits on a port we did not park (a crash mid-way)
        return ofport

    async def _remove_stale(self, name: str) -> None:
        log.info("parked port's device gone or changed: port removed", extra={"port": name})
        await self._ovsdb.delete_port(self._bridge, name)
        self._descs.pop(name, None)
        self._parked_on.pop(name, None)

    async def give_back(self, record: AttachmentRecord) -> None:
        """After its flows are gone: a VF's port parked, an SF's removed
        (the SF and its representor go next)."""
        if record.device.kind is DeviceKind.VF:
            await self.park(record.device.representor)
        else:
            await self._ovsdb.delete_port(self._bridge, record.device.representor)

    async def park(self, name: str) -> None:
        """Make port ``name`` inert and mark it parked. The port-mod is sent
        whatever the descriptions say (a retried Detach may follow a restart
        they missed). A port the switch does not list (its representor gone)
        cannot be parked and is removed. Raises OpenFlowError or OvsdbError."""
        _, ifindex = await self._ovsdb.interface_state(name)
        if await self._set(name, PARKED, always=True):
            self._representor_up(name, False)
            await self._ovsdb.relabel_port(name, parked_ids(ifindex))
            self._parked_on[name] = ifindex
        else:
            await self._remove_stale(name)

    def _representor_up(self, name: str, up: bool) -> None:
        """The representor of port ``name`` set up or down. An ioctl (a few
        microseconds), so called on the loop. One that cannot be set is
        logged: the port's bits are what parks it while ovs-vswitchd runs,
        the representor's state only what keeps it parked through an OVS
        restart, so neither a Detach nor an Attach fails on it."""
        try:
            found = self._backend.set_representor_up(name, up)
        except EswitchError as exc:
            log.warning("representor not set %s: %s", "up" if up else "down", exc, extra={"port": name})
            return
        if not found and not up:  # setting up, a missing one fails the port's own step
            log.warning("representor not set down: no such netdev", extra={"port": name})

    async def unpark(self, name: str) -> None:
        """Set the representor of port ``name`` up (a parked one is down)
        and clear the port's parking bits if it is parked; a port never
        parked costs no exchange. Raises OpenFlowError."""
        self._representor_up(name, True)
        desc = self._known().get(name)
        if desc is None and name in self._descs:
            desc = (await self._read()).get(name)  # known from an older connection only
        if desc is not None and desc.config & PARKED:
            await self._set(name, 0)

    async def intact(self) -> str | None:
        """None if every port parked here is still inert on the switch;
        else why not, each such port parked again first. An ovs-vswitchd
        restarted with its flows restored (``ovs-ctl restart`` saves and
        restores them) has our base flows back but forgot every port's
        configuration: only this tells."""
        if not self._parked_on:
            return None
        try:
            descs = await self._read()
            lost = [name for name in sorted(self._parked_on) if name in descs and not descs[name].parked]
            for name in lost:  # inert again at once, not after the re-programming it asks for
                await self._set(name, PARKED)
        except OpenFlowError as exc:
            return f"switch unreachable: {exc}"
        if lost:
            return f"parked port {lost[0]} was no longer inert (ovs-vswitchd restarted?)"
        return None

    async def repark(self, ports: Mapping[str, Mapping[str, str]]) -> list[str]:
        """Read every port's configuration, and park again each of
        ``ports`` (ours, with their external_ids) that OVSDB marks parked
        and the switch no longer holds so (it forgets across a restart); a
        parked port whose device is gone or new is removed. Returns the
        names parked again."""
        parked = {name: ids for name, ids in sorted(ports.items()) if is_parked(ids)}
        self._parked_on = {}
        if not parked:  # the usual start of a full switch: no read of every port's description
            return []
        descs = await self._read()
        again = []
        for name, ids in parked.items():
            _, ifindex = await self._ovsdb.interface_state(name)
            if not ifindex or str(ifindex) != ids.get(PARKED_IFINDEX_KEY, ""):
                await self._remove_stale(name)
                continue
            self._parked_on[name] = ifindex
            self._representor_up(name, False)  # also one parked before representors were set down
            desc = descs.get(name)
            if desc is not None and not desc.parked:
                await self._set(name, PARKED)
                again.append(name)
        if again:
            log.info("parked ports parked again", extra={"ports": len(again)})
        return again
