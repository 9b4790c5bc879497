"""Flow values: what the compiler emits and the switch adapter installs.

Actions are a closed set of small frozen types. Keeping the vocabulary closed
is what makes the offload-safety rule enforceable: there is simply no way to
express `controller`, `learn`, `sample`, hash actions or ct ALG helpers here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

Match = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Goto:
    kind: ClassVar[str] = "goto"
    table: str


@dataclass(frozen=True)
class Output:
    kind: ClassVar[str] = "output"
    port: int


@dataclass(frozen=True)
class Flood:
    """All ports but the input port (OpenFlow ALL). The datapath sees plain
    outputs, so it offloads like any output."""

    kind: ClassVar[str] = "flood"


@dataclass(frozen=True)
class Ct:
    """Send through conntrack in ``zone`` and continue in ``table``."""

    kind: ClassVar[str] = "ct"
    zone: int
    table: str


@dataclass(frozen=True)
class CtCommit:
    """Commit the connection in ``zone`` with ``mark`` set in its ct_mark,
    then continue in ``table`` (a recirculation: whatever conntrack hands
    back at this point - fragments its reassembly gave up on, or the rest
    of another datagram that did not fit a batch - is looked at again there
    rather than sharing the committed packet's remaining actions)."""

    kind: ClassVar[str] = "ct_commit"
    zone: int
    table: str
    mark: int


@dataclass(frozen=True)
class CtClear:
    kind: ClassVar[str] = "ct_clear"


@dataclass(frozen=True)
class Conjunction:
    kind: ClassVar[str] = "conjunction"
    conj_id: int
    clause: int
    n_clauses: int


@dataclass(frozen=True)
class Meter:
    """Police through OpenFlow meter ``meter_id`` (drop band); offloads as a
    TC police action."""

    kind: ClassVar[str] = "meter"
    meter_id: int


@dataclass(frozen=True)
class Drop:
    kind: ClassVar[str] = "drop"


FlowAction = Goto | Output | Flood | Ct | CtCommit | CtClear | Conjunction | Meter | Drop


@dataclass(frozen=True)
class Flow:
    """One OpenFlow flow. ``match`` is an ordered tuple of (field, value)
    pairs; prerequisites (dl_type, nw_proto) are spelled out explicitly."""

    table: str
    priority: int
    match: Match
    actions: tuple[FlowAction, ...]
    cookie: int

    def __hash__(self) -> int:
        # Flows key the encoder's memo and the switch diff, thousands to an
        # attachment: the hash of the nested tuples is worked out once.
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.table, self.priority, self.match, self.actions, self.cookie))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, object]:
        # The remembered hash is this process's own (string hashes are salted per process).
        return {key: value for key, value in self.__dict__.items() if key != "_hash"}

    def match_dict(self) -> dict[str, str]:
        return dict(self.match)
