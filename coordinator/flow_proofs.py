"""Proofs that an attachment's flows were verified on the switch, kept in
the store so that a restart need not compile what it can show unchanged.

A verified sync shows that, for one attachment's inputs (its OpenFlow
port, MAC and slot, its scope, the pipeline and this daemon's own code),
the switch held exactly the flows compiled from them. The flows are kept
as the ``FlowsDigest`` of how the switch spells them, the inputs as a
fingerprint. Compiling is a function of those inputs alone, so the pair
stays true: whenever the inputs are the same again and the cookie's flows
read from the switch hash to the same digest, the cookie holds its intent,
compiled or not. A restart at which every attachment is so compiles
nothing; any other compiles and compares everything as before. A proof
can be out of date, never wrong: one of other inputs or other flows does
not match, and the daemon's code is in the fingerprint, so an upgrade
compiles again once.

Where a reconcile left one of an attachment's places (table, priority,
match) to a later cookie that claims it too, the proof also names that
cookie and the digest it had: it holds only while that one still holds
exactly the same flows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from coordinator.flows.compiler import PortFacts
from coordinator.flows.pipeline import Pipeline
from coordinator.ovs.ofwire import NOTHING_HELD, FlowsDigest
from coordinator.policy.scope import Rule, Scope
from coordinator.sequences import ByIdentity

INPUTS_SIZE = 16
_DIGEST = struct.Struct("!I16s")  # count, the hash of the sorted marks
_WINNER = struct.Struct("!QI16s")  # cookie, its count and hash
_VERSION = 1  # of the encoding below
MAX_WINNERS = 64  # cookies one attachment's proof may name

# Rules are interned by validation, so a policy change meets mostly the
# rules of the one before: each rule's text is worked out once.
RULES_KEPT = 8192
SCOPES_KEPT = 256


class ProofError(ValueError):
    """A stored proof that does not hold together (treated as none)."""


@dataclass(frozen=True)
class FlowProof:
    inputs: bytes  # ``ProofInputs.of`` the attachment
    held: FlowsDigest  # what its cookie held, verified
    winners: tuple[tuple[int, FlowsDigest], ...] = ()  # (cookie, what it held) taking its places

    def holds(self, inputs: bytes, digests: Mapping[int, FlowsDigest], cookie: int) -> bool:
        """Whether ``cookie`` still holds its intent: the same inputs, what
        the switch holds now (``digests``, every cookie's) as verified,
        and each winner as it was."""
        return (
            inputs == self.inputs
            and _held(digests, cookie) == self.held
            and all(_held(digests, c) == d for c, d in self.winners)
        )

    def encode(self) -> bytes:
        parts = [bytes([_VERSION]), self.inputs, _pack(self.held), bytes([len(self.winners)])]
        parts += [_WINNER.pack(c, d.count, d.total.to_bytes(16, "big")) for c, d in self.winners]
        return b"".join(parts)

    @staticmethod
    def decode(data: bytes) -> FlowProof:
        """Raises ProofError naming what is wrong."""
        head = 1 + INPUTS_SIZE + _DIGEST.size + 1
        if len(data) < head or data[0] != _VERSION:
            raise ProofError(f"proof: {len(data)} bytes of version {data[:1].hex() or 'none'}")
        count = data[head - 1]
        if count > MAX_WINNERS or len(data) != head + count * _WINNER.size:
            raise ProofError(f"proof: {len(data)} bytes for {count} winners")
        held_count, total = _DIGEST.unpack_from(data, 1 + INPUTS_SIZE)
        winners = []
        for at in range(head, len(data), _WINNER.size):
            cookie, n, sum_ = _WINNER.unpack_from(data, at)
            winners.append((cookie, FlowsDigest(n, int.from_bytes(sum_, "big"))))
        return FlowProof(
            bytes(data[1 : 1 + INPUTS_SIZE]),
            FlowsDigest(held_count, int.from_bytes(total, "big")),
            tuple(winners),
        )


def _held(digests: Mapping[int, FlowsDigest], cookie: int) -> FlowsDigest:
    return digests.get(cookie, NOTHING_HELD)


def _pack(digest: FlowsDigest) -> bytes:
    return _DIGEST.pack(digest.count, digest.total.to_bytes(16, "big"))


class ProofInputs:
    """The fingerprint of what an attachment's flows are compiled from."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._base: bytes | None = None  # worked out when first asked
        self._rules: ByIdentity[Rule, bytes] = ByIdentity(RULES_KEPT)
        self._scopes: ByIdentity[Scope, bytes] = ByIdentity(SCOPES_KEPT)

    def of(self, port: PortFacts, scope: Scope) -> bytes:
        if self._base is None:
            text = CODE_FINGERPRINT + _pipeline_text(self._pipeline)
            self._base = hashlib.blake2b(text, digest_size=16).digest()
        port_text = repr(port).encode()  # every field, one added later included
        [scope_digest] = self._scopes.each([scope], self._scope)
        return hashlib.blake2b(self._base + scope_digest + port_text, digest_size=INPUTS_SIZE).digest()

    def _scope(self, scope: Scope) -> bytes:
        fields = dataclasses.replace(scope, egress=(), ingress=())
        parts = [repr(fields).encode(), b"egress", *self._rules.each(scope.egress, _rule), b"ingress"]
        parts += self._rules.each(scope.ingress, _rule)
        return hashlib.blake2b(b"".join(parts), digest_size=16).digest()


def _rule(rule: Rule) -> bytes:
    return hashlib.blake2b(repr(rule).encode(), digest_size=16).digest()


def _pipeline_text(pipeline: Pipeline) -> bytes:
    # Sets spelled sorted: their order differs from process to process.
    tables = [
        (t.name, t.number, sorted(t.match_fields), sorted(t.actions), sorted(t.next_tables),
         t.priority_ranges, t.miss)
        for t in pipeline.tables
    ]  # fmt: skip
    return repr((tables, sorted(pipeline.priorities.items()))).encode()


def code_fingerprint() -> bytes:
    """Every file of this daemon's package and the OpenFlow codec's version:
    what the compile and the encoding are besides their inputs."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{metadata.version('os-ken')} {sys.version}".encode())
    package = Path(__file__).parent
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(package)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.digest()


# Worked out when the daemon starts (this module is imported with the
# dataplane), not at its first proof: files replaced under a running
# daemon (an upgrade in place) must not vouch for the code it runs.
CODE_FINGERPRINT = code_fingerprint()
