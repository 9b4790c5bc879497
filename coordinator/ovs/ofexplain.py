"""Why the switch's flows differ from the intent, in ovs-ofctl's words.

Only ever run when a read-back over the OpenFlow channel did not match:
the comparison itself is in byte form, but an operator reads text, and
``ovs-ofctl diff-flows`` already spells both sides the way ``dump-flows``
does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence, Set
from pathlib import Path

from coordinator.flows.model import Flow
from coordinator.flows.pipeline import Pipeline
from coordinator.flows.render import render_flows
from coordinator.ovs.ofmessages import ALL_COOKIES, U64, cookie_mask
from coordinator.ovs.ofwire import FlowKey, InstalledFlow
from coordinator.ovs.openflow import OPENFLOW_VERSION, OpenFlowError
from coordinator.ovs.process import run_command

__all__ = ["explain_difference", "verify_read_back"]

# A few lines are enough to say what is wrong; the rest is in the logs of
# a second look.
_SHOWN_LINES = 6


async def verify_read_back(
    desired: Mapping[int, Sequence[Flow]],
    wanted: Set[FlowKey],
    after: Sequence[InstalledFlow],
    cookie: int,
    mask: int,
    pipeline: Pipeline,
    target: str,
    timeout: float,
) -> None:
    """Raise OpenFlowError, explained, unless the flows of ``desired``'s
    cookies in ``after`` (read back by ``cookie``/``mask``) are ``wanted``."""
    got = {f.key for f in after if f.key.cookie in desired}
    if got == wanted:
        return
    mask_text = "-1" if mask == ALL_COOKIES else f"{cookie_mask(mask):#x}"
    text = render_flows([f for flows in desired.values() for f in flows], pipeline)
    explained = await explain_difference(
        target, f"cookie={cookie & U64:#x}/{mask_text}", set(desired), text, timeout=timeout
    )
    scope = f"{cookie:#x}" if mask == ALL_COOKIES else f"{cookie:#x}/{cookie_mask(mask):#x}"
    raise OpenFlowError(
        f"flows of cookie {scope} differ from intent after apply: "
        f"{len(got - wanted)} unexpected, {len(wanted - got)} missing{explained}"
    )


async def explain_difference(
    target: str, cookie_match: str, cookies: Set[int], intent: Sequence[str], *, timeout: float
) -> str:
    """The text diff of the flows of ``cookies`` on ``target`` (within
    ``cookie_match``) against the ``intent`` lines, a few lines of it."""
    with tempfile.TemporaryDirectory(prefix="bfc-of-") as tmp:
        intent_file = Path(tmp, "intent")
        intent_file.write_text("".join(f"{line}\n" for line in intent))
        try:
            dumped = await _ofctl(timeout, "dump-flows", "--no-stats", target, cookie_match)
            mine = [
                line.strip()
                for line in dumped.splitlines()
                if "actions=" in line and _cookie_of(line) in cookies
            ]
            installed = Path(tmp, "installed")
            installed.write_text("".join(f"{line}\n" for line in mine))
            out = await _ofctl(timeout, "diff-flows", str(installed), str(intent_file))
        except OpenFlowError as exc:
            return f" (no text diff: {exc})"
    lines = [line for line in out.splitlines() if line[:1] in "+-"]
    return (": " + "; ".join(lines[:_SHOWN_LINES])) if lines else " (ovs-ofctl sees no difference)"


def _cookie_of(line: str) -> int:
    for word in line.replace(",", " ").split():
        if word.startswith("cookie="):
            return int(word[7:], 0)
    return 0


async def _ofctl(timeout: float, *args: str) -> str:
    # diff-flows exits 2 when the flows differ.
    result = await run_command(
        ["ovs-ofctl", "-O", OPENFLOW_VERSION, "--no-names", *args],
        timeout=timeout, label=f"ovs-ofctl {args[0]}", ok_codes=(0, 2), error=OpenFlowError,
    )  # fmt: skip
    return result.stdout
