"""Every attachment's flows brought to their intent at a reconverge, and
the proofs of it kept (see ``flow_proofs``).

When every attachment's stored proof holds (its inputs are those of its
last verified sync, and the switch holds what that sync left, as the
dump's digests show) nothing is compiled and nothing sent. Otherwise each
attachment's flows are compiled when asked and compared with the flows
read, and the ones that differ synced a range of slots at a time
(``ofsweep``); then every attachment has a new proof.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

from coordinator.attachment_identity import cookie_for_slot
from coordinator.dataplane_port import AttachmentFlows
from coordinator.dataplane_probes import ReadFlows
from coordinator.flow_proofs import MAX_WINNERS, FlowProof, ProofError, ProofInputs
from coordinator.flows.compiler import PortFacts
from coordinator.flows.model import Flow
from coordinator.ovs.ofsweep import sync_in_ranges
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.ofwire import NOTHING_HELD, FlowsDigest
from coordinator.ovs.openflow import SyncResult
from coordinator.policy.scope import Scope

log = logging.getLogger(__name__)

# Where a proof goes: the slot and the encoded proof.
ProofSink = Callable[[int, bytes], None]


class Intended(Mapping[int, Sequence[Flow]]):
    """Every attachment's flows by cookie, compiled whenever asked and not
    kept: a whole switch of them held at once (tens of thousands of flows)
    would stay in the daemon's memory as the allocator's high water mark."""

    def __init__(
        self, compile_flows: Callable[[AttachmentFlows], list[Flow]], by_cookie: Mapping[int, AttachmentFlows]
    ) -> None:
        self._compile = compile_flows
        self._by_cookie = by_cookie

    def __getitem__(self, cookie: int) -> list[Flow]:
        return self._compile(self._by_cookie[cookie])

    def __contains__(self, cookie: object) -> bool:
        return cookie in self._by_cookie  # not compiled to find out

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_cookie)

    def __len__(self) -> int:
        return len(self._by_cookie)


class Prover:
    """Where one attachment's proofs go and what goes in them."""

    def __init__(self, inputs: ProofInputs) -> None:
        self.inputs = inputs
        self.sink: ProofSink = lambda slot, proof: None

    def proven(
        self, port: PortFacts, scope: Scope, held: FlowsDigest | None, fingerprint: bytes = b""
    ) -> None:
        """``held``: what the cookie held at the sync just verified (None:
        nothing to prove); ``fingerprint``: ``inputs.of(port, scope)`` if
        already worked out (an apply works it out while the switch reads back)."""
        if held is not None:
            fingerprint = fingerprint or self.inputs.of(port, scope)
            self.sink(port.slot, FlowProof(fingerprint, held).encode())


def port_of(attachment: AttachmentFlows) -> PortFacts:
    return PortFacts(ofport=attachment.ofport, mac=attachment.record.mac, slot=attachment.record.slot)


async def converge_flows(
    switch: ChannelSwitch,
    compile_flows: Callable[[AttachmentFlows], list[Flow]],
    prover: Prover,
    attachments: Sequence[AttachmentFlows],
    held: ReadFlows,
    proofs: Mapping[int, bytes],
) -> tuple[dict[int, SyncResult], dict[int, int]]:
    """Make every attachment's cookie hold exactly its intent, ``held``
    being what the switch held when read; returns the changes by cookie
    and how many flows each cookie holds now, and hands ``prover`` every
    attachment's new proof. Raises OpenFlowError."""
    by_cookie = {cookie_for_slot(a.record.slot): a for a in attachments}
    fingerprints = {c: prover.inputs.of(port_of(a), a.scope) for c, a in by_cookie.items()}
    digests = held.digests
    if by_cookie and _all_proven(by_cookie, fingerprints, digests, proofs):
        return {}, {c: digests.get(c, NOTHING_HELD).count for c in by_cookie}
    lost: dict[int, set[int]] = {}
    flows = held.flows()
    changes, counts = await sync_in_ranges(switch, Intended(compile_flows, by_cookie), flows, lost=lost)
    if not any(f.key.cookie in by_cookie for f in flows):
        # Nothing of theirs was on the switch (ovs-vswitchd restarted): all
        # was sent without working out which cookie wins a place two claim.
        return changes, counts

    def now(cookie: int) -> FlowsDigest | None:
        return switch.verified(cookie) if cookie in changes else digests.get(cookie, NOTHING_HELD)

    for cookie, attachment in by_cookie.items():
        held_now = now(cookie)
        winners = sorted(lost.get(cookie, ()))
        taken = [(w, now(w)) for w in winners]
        if held_now is None or len(taken) > MAX_WINNERS or any(d is None for _, d in taken):
            continue
        proof = FlowProof(fingerprints[cookie], held_now, tuple((w, d) for w, d in taken if d is not None))
        prover.sink(attachment.record.slot, proof.encode())
    return changes, counts


def _all_proven(
    by_cookie: Mapping[int, AttachmentFlows],
    fingerprints: Mapping[int, bytes],
    digests: Mapping[int, FlowsDigest],
    proofs: Mapping[int, bytes],
) -> bool:
    """Whether every attachment's stored proof holds, each cookie that took
    one of its places being one of them (its own proof holding too)."""
    for cookie, attachment in by_cookie.items():
        raw = proofs.get(attachment.record.slot)
        if raw is None:
            return False
        try:
            proof = FlowProof.decode(raw)
        except ProofError as exc:
            log.warning("the flow proof of slot %d is unusable: %s", attachment.record.slot, exc)
            return False
        if not proof.holds(fingerprints[cookie], digests, cookie):
            return False
        if any(winner not in by_cookie for winner, _ in proof.winners):
            return False
    return True
