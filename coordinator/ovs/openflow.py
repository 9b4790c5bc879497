"""OpenFlow through ovs-ofctl: bundles, per-cookie dumps, diffs.

ovs-ofctl parses and normalises flows exactly as the switch does, so the
canonical form of the flows we want comes from ``ovs-ofctl diff-flows``
rather than from re-implementing OVS's flow syntax here; what is installed
comes canonical from the switch's dump. Every change goes in one bundle:
atomic, all or nothing.

Each ovs-ofctl run is a process spawn and, for the switch, a connection:
the cost of a policy apply is mostly how many of them sit on its path
(docs/BENCHMARKS.md). Hence ``--no-names`` everywhere (otherwise every
run first asks the switch for its port names, over a second connection;
our flows name ports by number only), and ``sync`` reads the switch and
canonicalises the intent side by side and compares in-process.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.ovs.process import OvsCommandError, run_command

OPENFLOW_VERSION = "OpenFlow13"
_METER_RE = re.compile(r"^meter=(\d+)\b", re.MULTILINE)


class OpenFlowError(OvsCommandError):
    """ovs-ofctl failed, or the switch's flows differ from the intent after an apply."""


@dataclass(frozen=True)
class FlowDiff:
    removed: tuple[str, ...]  # canonical flows to delete
    added: tuple[str, ...]  # canonical flows to add

    @property
    def empty(self) -> bool:
        return not self.removed and not self.added


@dataclass(frozen=True)
class SyncResult:
    added: int
    removed: int
    total: int


class OpenFlowSwitch:
    def __init__(self, target: str, *, timeout: float) -> None:
        self._target = target  # unix:RUNDIR/BRIDGE.mgmt
        self._timeout = timeout

    async def _ofctl(self, *args: str, ok_codes: Sequence[int] = (0,)) -> tuple[int, str]:
        result = await run_command(
            ["ovs-ofctl", "-O", OPENFLOW_VERSION, "--no-names", *args],
            timeout=self._timeout,
            label=f"ovs-ofctl {args[0]}",
            ok_codes=ok_codes,
            error=OpenFlowError,
        )
        return result.returncode, result.stdout

    async def dump(self, cookie: int, mask: int = -1) -> list[str]:
        """Installed flows whose cookie matches, without statistics."""
        mask_text = "-1" if mask == -1 else f"{mask:#x}"
        _, out = await self._ofctl(
            "dump-flows", "--no-stats", self._target, f"cookie={cookie:#x}/{mask_text}"
        )
        return [line.strip() for line in out.splitlines() if line.strip() and "actions=" in line]

    async def diff(self, installed: Sequence[str], desired: Sequence[str]) -> FlowDiff:
        with tempfile.TemporaryDirectory(prefix="bfc-of-") as tmp:
            a, b = Path(tmp, "installed"), Path(tmp, "desired")
            a.write_text("".join(f"{line}\n" for line in installed))
            b.write_text("".join(f"{line}\n" for line in desired))
            # diff-flows exits 2 when the sources differ.
            _, out = await self._ofctl("diff-flows", str(a), str(b), ok_codes=(0, 2))
        removed = tuple(line[1:] for line in out.splitlines() if line.startswith("-"))
        added = tuple(line[1:] for line in out.splitlines() if line.startswith("+"))
        return FlowDiff(removed=removed, added=added)

    async def bundle(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        with tempfile.TemporaryDirectory(prefix="bfc-of-") as tmp:
            path = Path(tmp, "bundle")
            path.write_text("".join(f"{line}\n" for line in lines))
            await self._ofctl("bundle", self._target, str(path))

    async def canonical(self, flows: Sequence[str]) -> list[str]:
        """``flows`` as ovs-ofctl prints them once parsed (no switch involved)."""
        return list((await self.diff((), flows)).added)

    async def sync(
        self,
        cookie: int,
        desired: Sequence[str],
        *,
        installed: Awaitable[list[str]] | None = None,
        beside_readback: Callable[[], Awaitable[object]] | None = None,
    ) -> SyncResult:
        """Make the flows with ``cookie`` exactly ``desired``: one atomic
        bundle of only the differences, then read back and compare.
        ``installed``: the dump of the cookie, already started by the caller
        (it overlaps with compiling ``desired``); ``beside_readback`` runs
        once the bundle is in, alongside the read-back."""
        changes = await self.sync_many(
            {cookie: desired}, cookie, -1, installed=installed, beside_readback=beside_readback
        )
        change = changes.get(cookie, SyncResult(0, 0, 0))
        return SyncResult(added=change.added, removed=change.removed, total=len(desired))

    async def sync_many(
        self,
        desired: Mapping[int, Sequence[str]],
        cookie: int,
        mask: int,
        *,
        installed: Awaitable[list[str]] | None = None,
        beside_readback: Callable[[], Awaitable[object]] | None = None,
    ) -> dict[int, SyncResult]:
        """Make every cookie of ``desired`` hold exactly its flows, in one
        atomic bundle of only the differences, then read back and compare.
        ``cookie``/``mask`` select what to read; installed flows of cookies
        not in ``desired`` are left alone. Returns the changes by cookie."""
        # Independent, so side by side: the switch's flows and the intent's
        # canonical form. The comparison is then a set difference by flow
        # identity (table, priority and match; cookie and actions must agree).
        wanted_flows = [f for flows in desired.values() for f in flows]
        current, wanted = await asyncio.gather(
            installed if installed is not None else self.dump(cookie, mask), self.canonical(wanted_flows)
        )
        want = {_flow_key(f): f for f in wanted}
        dumped = {_dumped(key): key for key in want}
        have = {k: f for k, f in ((_key_of_dumped(f, dumped), f) for f in current) if k.cookie in desired}
        removed = [key for key in have if key not in want]
        added = [key for key in want if key not in have]
        lines = [f"flow delete_strict table={k.table} {k.match} cookie={k.cookie:#x}/-1" for k in removed]
        lines += [f"flow add {want[k]}" for k in added]
        if lines:
            await self.bundle(lines)
            if beside_readback is not None:
                after, _ = await asyncio.gather(self.dump(cookie, mask), beside_readback())
            else:
                after = await self.dump(cookie, mask)
            keys = {k for k in (_key_of_dumped(f, dumped) for f in after) if k.cookie in desired}
            if keys != want.keys():
                # Only ovs-ofctl decides that two spellings differ: ask it
                # before calling the apply failed.
                mine = [f for f in after if _key_of_dumped(f, dumped).cookie in desired]
                leftover = await self.diff(mine, wanted_flows)
                if not leftover.empty:
                    raise OpenFlowError(
                        f"flows of cookie {cookie:#x}{'' if mask == -1 else f'/{mask:#x}'} differ from intent after apply: "
                        f"{len(leftover.removed)} unexpected, {len(leftover.added)} missing"
                    )
        # With nothing to change, the dump just read is the read-back.
        changes: dict[int, SyncResult] = {}
        for key, sign in [*((k, -1) for k in removed), *((k, 1) for k in added)]:
            old = changes.get(key.cookie, SyncResult(0, 0, len(desired.get(key.cookie, ()))))
            changes[key.cookie] = SyncResult(old.added + (sign > 0), old.removed + (sign < 0), old.total)
        return changes

    async def replace_many(self, desired: Mapping[int, Sequence[str]]) -> None:
        """Make every cookie of ``desired`` hold exactly its flows in one
        atomic bundle, without reading the switch first: each cookie's flows
        are deleted and the new ones added in the same transaction, so no
        packet sees the cookie half-changed. For a change of many cookies at
        once where speed matters more than a minimal diff (deny-all on every
        attachment); read back with ``sync_many`` afterwards to verify."""
        lines = []
        for cookie, flows in desired.items():
            lines.append(f"flow delete cookie={cookie:#x}/-1")
            lines += [f"flow add {flow}" for flow in flows]
        await self.bundle(lines)

    async def set_meter(self, meter_id: int, kbps: int, burst_kb: int) -> None:
        """Create or change a drop-band meter. Meters cannot ride in a flow
        bundle, so callers set them before the bundle that references them."""
        spec = f"meter={meter_id},kbps,burst,band=type=drop,rate={kbps},burst_size={burst_kb}"
        code, _ = await self._ofctl("mod-meter", self._target, spec, ok_codes=(0, 1))
        if code != 0:
            await self._ofctl("add-meter", self._target, spec)

    async def delete_meter(self, meter_id: int) -> None:
        """Remove a meter no flow references any more (absent is fine)."""
        await self._ofctl("del-meter", self._target, f"meter={meter_id}")

    async def meters(self) -> set[int]:
        """The ids of the meters the bridge has."""
        _, out = await self._ofctl("dump-meters", self._target)
        return {int(m.group(1)) for m in _METER_RE.finditer(out)}

    async def meter_stats(self, meter_id: int) -> str:
        _, out = await self._ofctl("meter-stats", self._target, f"meter={meter_id}")
        return out

    async def delete(self, cookie: int) -> None:
        await self._ofctl("del-flows", self._target, f"cookie={cookie:#x}/-1")

    async def match_fragments_as_parsed(self) -> None:
        """Fragment handling ``nx-match``: a first fragment is looked up
        with its L4 ports (the default, ``normal``, zeroes the ports of every
        fragment, so no port rule could ever allow one); later fragments have
        none. Switch state, not a flow: set again whenever the bridge is
        (re)programmed."""
        await self._ofctl("set-frags", self._target, "nx-match")

    async def ping(self) -> None:
        await self._ofctl("show", self._target)


@dataclass(frozen=True)
class FlowKey:
    """One canonical flow, whichever way ovs-ofctl printed it."""

    cookie: int
    table: int
    match: str  # "priority=N,FIELD=VALUE,..." as ovs-ofctl prints it
    actions: str


def _flow_key(flow: str) -> FlowKey:
    """Read a flow as ``dump-flows --no-stats`` prints it ("cookie=0x1,
    table=3, priority=5,ip actions=drop") or as ``diff-flows`` does
    ("table=3 priority=5,ip cookie=0x1 actions=drop"). Both print the match
    and the actions with the same code; only cookie and table move."""
    head, _, actions = flow.partition(" actions=")
    cookie, table, rest = 0, 0, []
    # Words are space-separated; the match is one word of its own commas.
    for word in head.split():
        token = word.rstrip(",")
        if token.startswith("cookie="):
            cookie = int(token[7:], 0)
        elif token.startswith("table="):
            table = int(token[6:])
        else:
            rest.append(token)
    return FlowKey(cookie, table, ",".join(rest), actions)


def _dumped(key: FlowKey) -> str:
    """How ``dump-flows --no-stats`` spells the flow (table 0 goes unsaid)."""
    table = f" table={key.table}," if key.table else ""
    return f"cookie={key.cookie:#x},{table} {key.match} actions={key.actions}"


def _key_of_dumped(flow: str, expected: dict[str, FlowKey]) -> FlowKey:
    # Most dumped flows are spelled exactly as predicted from the intent:
    # look them up instead of parsing each (a thousand-rule policy reads
    # back thousands of flows). Anything else is parsed.
    return expected.get(flow) or _flow_key(flow)
