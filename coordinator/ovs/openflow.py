"""OpenFlow through ovs-ofctl: bundles, per-cookie dumps, diffs.

ovs-ofctl parses and normalises flows exactly as the switch does, so the
diff between what is installed and what is wanted is computed by
``ovs-ofctl diff-flows`` rather than by re-implementing OVS's canonical
flow syntax here. Every change goes in one bundle: atomic, all or nothing.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OPENFLOW_VERSION = "OpenFlow13"


class OpenFlowError(RuntimeError):
    pass


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
        proc = await asyncio.create_subprocess_exec(
            "ovs-ofctl",
            "-O",
            OPENFLOW_VERSION,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout)
        except asyncio.TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise OpenFlowError(f"ovs-ofctl {args[0]} timed out after {self._timeout}s") from exc
        code = proc.returncode if proc.returncode is not None else -1
        if code not in ok_codes:
            raise OpenFlowError(f"ovs-ofctl {args[0]} failed ({code}): {err.decode().strip()}")
        return code, out.decode()

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

    async def sync(self, cookie: int, desired: Sequence[str]) -> SyncResult:
        """Make the flows with ``cookie`` exactly ``desired``: one atomic
        bundle of only the differences, then read back and compare."""
        diff = await self.diff(await self.dump(cookie), desired)
        lines = [f"flow delete_strict {_match_of(f)} cookie={cookie:#x}/-1" for f in diff.removed]
        lines += [f"flow add {f}" for f in diff.added]
        await self.bundle(lines)
        leftover = await self.diff(await self.dump(cookie), desired)
        if not leftover.empty:
            raise OpenFlowError(
                f"flows of cookie {cookie:#x} differ from intent after apply: "
                f"{len(leftover.removed)} unexpected, {len(leftover.added)} missing"
            )
        return SyncResult(added=len(diff.added), removed=len(diff.removed), total=len(desired))

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

    async def meter_stats(self, meter_id: int) -> str:
        _, out = await self._ofctl("meter-stats", self._target, f"meter={meter_id}")
        return out

    async def delete(self, cookie: int) -> None:
        await self._ofctl("del-flows", self._target, f"cookie={cookie:#x}/-1")

    async def ping(self) -> None:
        await self._ofctl("show", self._target)


def _match_of(flow: str) -> str:
    """A diff-flows line without its cookie and actions: what delete_strict takes."""
    match, _, _ = flow.partition(" actions=")
    return " ".join(part for part in match.split(" ") if not part.startswith("cookie="))
