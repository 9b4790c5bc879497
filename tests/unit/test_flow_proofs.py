"""Flow proofs on bytes, without a switch: the digest of a dump equals the
digest of the same flows parsed, whatever their order and counters; a
proof reads back as written, and one that does not hold together is
refused; the fingerprint of the inputs moves with every input (and not
with the process); proofs carried to the store go with its next commit."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from coordinator.flow_proofs import MAX_WINNERS, FlowProof, ProofError, ProofInputs
from coordinator.flows.compiler import PortFacts, attachment_flows
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs.ofencode import encode_flow_add
from coordinator.ovs.ofwire import (
    NOTHING_HELD,
    FlowsDigest,
    FlowStatsReader,
    InstalledFlow,
    WireError,
    digests_by_cookie,
)
from coordinator.policy.scope import Scope
from coordinator.policy.validate import scope_from_mapping
from coordinator.store.db import Store
from coordinator.store.schema import MIGRATIONS
from coordinator.store.worker import AsyncStore

PIPELINE = load_pipeline()
PORT = PortFacts(ofport=5, mac="02:00:00:00:00:05", slot=5)
OTHER = PortFacts(ofport=6, mac="02:00:00:00:00:06", slot=6)


def _scope(port: int = 443, version: int = 1) -> Scope:
    return scope_from_mapping({
        "version": version, "addresses": ["198.51.100.5"],
        "egress": [{"name": "web", "action": "ACTION_ALLOW", "protocol": "PROTOCOL_TCP",
                    "cidrs": ["203.0.113.0/24"], "ports": [{"start": port}]}],
    })  # fmt: skip


def _entries(port: PortFacts, scope: Scope, packets: int) -> list[bytes]:
    """The attachment's flows as flow-stats entries (``packets`` as counters)."""
    out = []
    for flow in attachment_flows(PIPELINE, port, scope):
        add = encode_flow_add(flow, PIPELINE)
        rest = add[48:]  # after the header and the flow-mod's fixed part
        table, priority = add[8 + 16], struct.unpack_from("!H", add, 8 + 22)[0]  # ofp_flow_mod
        cookie = struct.unpack_from("!Q", add, 8)[0]
        fixed = struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, 48 + len(rest), table, packets, packets,
                            priority, 0, 0, 0, cookie, packets, packets * 60)  # fmt: skip
        out.append(fixed + rest)
    return out


def test_a_dumps_digests_are_those_of_its_flows_parsed_whatever_the_order_and_counters() -> None:
    mine, theirs = _entries(PORT, _scope(), 1), _entries(OTHER, _scope(), 1)
    digests = digests_by_cookie([b"".join(mine[:3]), b"".join(theirs + mine[3:])])
    assert set(digests) == {PORT.cookie, OTHER.cookie}
    parsed = FlowStatsReader().read(b"".join(mine))
    assert digests[PORT.cookie] == FlowsDigest.of(parsed) and digests[PORT.cookie].count == len(mine)
    # Other counters, another order, read with the memo: the same digest.
    again = FlowStatsReader().read(b"".join(reversed(_entries(PORT, _scope(), 900))))
    assert FlowsDigest.of(again) == digests[PORT.cookie]
    # One flow of another rule: another digest, with as many flows.
    changed = digests_by_cookie([b"".join(_entries(PORT, _scope(port=8443), 1))])[PORT.cookie]
    assert changed.count == len(mine) and changed != digests[PORT.cookie]
    assert digests_by_cookie([]) == {} and FlowsDigest.of([]) == NOTHING_HELD
    with pytest.raises(WireError):
        digests_by_cookie([mine[0][:-1]])  # an entry cut short


def test_flows_chosen_so_their_marks_add_up_alike_still_digest_apart() -> None:
    """A policy's author chooses its flows; marks that sum alike (here 1 + 4
    and 2 + 3) must not make two sets of flows look the same."""

    def held(*marks: int) -> FlowsDigest:
        return FlowsDigest.of(InstalledFlow(None, b"", m.to_bytes(16, "big")) for m in marks)  # type: ignore[arg-type]

    assert held(1, 4) != held(2, 3)
    assert held(1, 4) == held(4, 1)  # whatever the order the switch lists them in


def test_a_proof_reads_back_as_written_and_one_that_does_not_hold_together_is_refused() -> None:
    proof = FlowProof(
        bytes(range(16)), FlowsDigest(58, 2**128 - 1), ((0xBFC0_0000_0000_0007, FlowsDigest(3, 9)),)
    )
    assert FlowProof.decode(proof.encode()) == proof
    assert FlowProof.decode(FlowProof(b"\x00" * 16, NOTHING_HELD).encode()).winners == ()
    encoded = proof.encode()
    for broken in (b"", encoded[:-1], encoded + b"\x00", b"\x02" + encoded[1:]):
        with pytest.raises(ProofError, match="proof: "):
            FlowProof.decode(broken)
    too_many = bytearray(FlowProof(b"\x00" * 16, NOTHING_HELD).encode())
    too_many[-1] = MAX_WINNERS + 1
    with pytest.raises(ProofError, match="winners"):
        FlowProof.decode(bytes(too_many) + b"\x00" * 28 * (MAX_WINNERS + 1))


def test_a_proof_holds_only_with_the_same_inputs_flows_and_winners() -> None:
    winner = 0xBFC0_0000_0000_0009
    proof = FlowProof(b"i" * 16, FlowsDigest(2, 5), ((winner, FlowsDigest(1, 1)),))
    now = {PORT.cookie: FlowsDigest(2, 5), winner: FlowsDigest(1, 1)}
    assert proof.holds(b"i" * 16, now, PORT.cookie)
    assert not proof.holds(b"j" * 16, now, PORT.cookie)
    assert not proof.holds(b"i" * 16, {**now, PORT.cookie: FlowsDigest(2, 6)}, PORT.cookie)
    assert not proof.holds(b"i" * 16, {**now, winner: FlowsDigest(1, 2)}, PORT.cookie)
    assert not proof.holds(
        b"i" * 16, {PORT.cookie: FlowsDigest(2, 5)}, PORT.cookie
    )  # the winner holds nothing


def test_the_fingerprint_moves_with_every_input_and_not_with_the_process() -> None:
    inputs = ProofInputs(PIPELINE)
    scope = _scope()
    first = inputs.of(PORT, scope)
    assert inputs.of(PORT, _scope()) == first  # equal, other objects
    others = [
        inputs.of(dataclasses.replace(PORT, ofport=7), scope),
        inputs.of(dataclasses.replace(PORT, mac="02:00:00:00:00:07"), scope),
        inputs.of(dataclasses.replace(PORT, slot=7), scope),
        inputs.of(PORT, _scope(version=2)),
        inputs.of(PORT, _scope(port=8443)),
        inputs.of(PORT, dataclasses.replace(scope, allow_dhcp=True)),
        inputs.of(PORT, dataclasses.replace(scope, ingress=scope.egress)),
    ]
    assert len({first, *others}) == len(others) + 1
    # Another process (its string hashes salted otherwise): the same fingerprint.
    code = (
        "from tests.unit.test_flow_proofs import PIPELINE, PORT, _scope\n"
        "from coordinator.flow_proofs import ProofInputs\n"
        "print(ProofInputs(PIPELINE).of(PORT, _scope()).hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == first.hex()


def test_files_replaced_under_a_running_daemon_do_not_change_its_fingerprint() -> None:
    """An upgrade in place replaces the package's files while the old code
    runs: proofs it makes afterwards must still name the old code."""
    code = (
        "import pathlib\n"
        "from tests.unit.test_flow_proofs import PIPELINE, PORT, _scope\n"
        "from coordinator.flow_proofs import ProofInputs\n"
        "if REPLACED:\n"
        "    pathlib.Path.read_bytes = lambda self: b'the next version'\n"
        "print(ProofInputs(PIPELINE).of(PORT, _scope()).hex())"
    )
    prints = [
        subprocess.run(
            [sys.executable, "-c", f"REPLACED = {replaced}\n" + code],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for replaced in (False, True)
    ]
    assert prints[0] == prints[1] and len(prints[0]) == 32


def test_proofs_carried_go_with_the_next_commit_and_at_close(tmp_path: Path) -> None:
    async def run() -> None:
        store = AsyncStore(Store(tmp_path / "store.db"))
        store.carry_flow_proof(5, b"first")
        store.carry_flow_proof(5, b"second")  # the newer one of a slot replaces it
        assert await store.flow_proofs() == {}  # not written until a commit
        await store.save_policy("sb-1", _scope())
        assert await store.flow_proofs() == {5: b"second"}
        store.carry_flow_proof(6, b"at close")
        await store.close()

    asyncio.run(run())
    reopened = Store(tmp_path / "store.db")
    assert reopened.flow_proofs() == {5: b"second", 6: b"at close"}
    assert reopened.schema_version == len(MIGRATIONS)
    reopened.close()
