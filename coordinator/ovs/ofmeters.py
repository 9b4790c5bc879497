"""Meters over the OpenFlow channel: reading which exist, setting and
deleting them. A meter cannot ride in a bundle, so each is its own
exchange, made before the flows that use it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from coordinator.ovs.ofchannel import Outcome, Outgoing, Reply
from coordinator.ovs.ofencode import DATAPATH
from coordinator.ovs.ofmessages import MeterBand, meter_mod, parse, serialize
from coordinator.ovs.openflow import OpenFlowError

Exchange = Callable[[Sequence[Outgoing]], Awaitable[list[Outcome]]]

__all__ = ["delete_meter", "meter_config", "meters_of", "set_meter", "set_meters"]


def meter_config(xid: int) -> Outgoing:
    """The request of every meter's configuration."""
    return Outgoing(
        serialize(parser.OFPMeterConfigStatsRequest(DATAPATH, 0, ofp.OFPM_ALL), xid), xid, Reply.MULTIPART
    )


def meters_of(outcome: Outcome) -> set[int]:
    """The meter ids of ``meter_config``'s answer."""
    if outcome.error is not None:
        raise OpenFlowError(f"reading meters: {outcome.error.describe()}")
    try:
        return {int(m.meter_id) for reply in outcome.replies for m in parse(reply).body}
    except Exception as exc:  # os-ken's parser raises whatever a bad reply trips
        raise OpenFlowError(f"reading meters: unreadable reply ({type(exc).__name__})") from exc


async def set_meters(
    exchange: Exchange, xid: Callable[[], int], meters: Mapping[int, MeterBand], existing: set[int]
) -> None:
    """Set ``meters`` in one exchange (MODIFY those in ``existing``, ADD the
    rest). Their own exchange: a refused meter stops an apply before any
    flow changes (in a bundle's write, the bundle would commit anyway)."""
    writes = []
    for meter_id, band in meters.items():
        command = ofp.OFPMC_MODIFY if meter_id in existing else ofp.OFPMC_ADD
        writes.append(Outgoing(meter_mod(command, meter_id, band, x := xid()), x))
    for meter_id, outcome in zip(meters, await exchange(writes), strict=True):
        if outcome.error is not None:
            raise OpenFlowError(f"meter {meter_id}: {outcome.error.describe()}")


async def set_meter(exchange: Exchange, xid: Callable[[], int], meter_id: int, band: MeterBand) -> None:
    """Create or change a drop-band meter (MODIFY when it exists, else ADD)."""
    for command in (ofp.OFPMC_MODIFY, ofp.OFPMC_ADD):
        [outcome] = await exchange([Outgoing(meter_mod(command, meter_id, band, x := xid()), x)])
        if outcome.error is None:
            return
        if not (command == ofp.OFPMC_MODIFY and outcome.error.is_meter(ofp.OFPMMFC_UNKNOWN_METER)):
            raise OpenFlowError(f"meter {meter_id}: {outcome.error.describe()}")


async def delete_meter(exchange: Exchange, xid: Callable[[], int], meter_id: int) -> None:
    """Remove a meter no flow references any more (absent is fine)."""
    [outcome] = await exchange([Outgoing(meter_mod(ofp.OFPMC_DELETE, meter_id, None, x := xid()), x)])
    if outcome.error is not None and not outcome.error.is_meter(ofp.OFPMMFC_UNKNOWN_METER):
        raise OpenFlowError(f"deleting meter {meter_id}: {outcome.error.describe()}")
