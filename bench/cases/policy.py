"""Cases 1-4: policy apply, side by side with the floor and with OVN.

For each size, every repetition measures the three contenders back to
back on the same machine state, so drift (caches, CPU frequency, other
load) hits all three alike:

- daemon: ``service.apply_policy`` - compile, dump, diff, one bundle,
  dump, compare, store - exactly what a gateway event runs;
- floor: ``ovs-ofctl --bundle add-flows`` (fresh) or ``ovs-ofctl bundle``
  (the one-rule change) of the very same flows from a prepared file: no
  compile, no diff, no verify;
- channel floor: the very same changes as one ONF bundle + barrier over an
  already-open OpenFlow channel (``coordinator.ovs.ofchannel``), encoded
  beforehand: what the switch itself needs, without a process or a
  connection per call;
- OVN: ``ovn-nbctl --wait=hv`` adding the same policy as ACLs (fresh) or
  swapping the one changed ACL, returning once ovn-controller has put the
  flows on its bridge.

"Fresh" starts from no policy flows at all (the attachment's cookie
deleted, the switch's ACLs deleted); "change" alters one rule of an
installed N-rule policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon_stack import DaemonStack, daemon_stack
from bench.ovn import Acl, Ovn
from bench.policies import (
    GUEST_MAC,
    GUEST_V4,
    cross_product_scope,
    empty_scope,
    n_rule_scope,
    ovn_acls,
)
from bench.procs import BenchError, timed_run
from bench.stats import Summary, summarize
from coordinator.attachment_identity import cookie_for_slot
from coordinator.dev import netns
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.flows.model import Flow
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs.ofchannel import OpenFlowChannel
from coordinator.ovs.ofsync import ChannelSwitch
from coordinator.ovs.ofwire import as_installed, delete_strict
from coordinator.ovs.openflow import OPENFLOW_VERSION
from coordinator.policy.scope import Scope
from coordinator.store.records import AttachmentRecord, PolicyState

SANDBOX = "bench-policy"
# --no-names: without it ovs-ofctl first asks the switch for its port names
# (another connection, ~10 ms here); the floor is the fastest raw install.
FLOOR_OFCTL = ("ovs-ofctl", "-O", OPENFLOW_VERSION, "--no-names")
BRIDGE = "br-bench"


@dataclass(frozen=True)
class PolicyRow:
    rules: int
    kind: str  # "fresh" or "change"
    daemon: Summary
    floor: Summary
    channel_floor: Summary
    ovn: Summary | None
    daemon_after_ovn: Summary | None = None  # the daemon's runs right after OVN's round


@dataclass(frozen=True)
class FlowCount:
    """Flows of one policy: ``policy`` is what its rules add to the same
    sandbox with no rules; ``total`` is everything the contender installed
    for the port (ours: the attachment's cookie; OVN: all of br-int)."""

    policy: int
    total: int


@dataclass(frozen=True)
class FlowRow:
    name: str
    rules: int
    ours: FlowCount
    ovn: FlowCount | None


@dataclass(frozen=True)
class PolicyResults:
    rows: list[PolicyRow]
    flows: list[FlowRow]

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [
                {
                    "rules": r.rules,
                    "kind": r.kind,
                    "daemon_ms": r.daemon.to_json(),
                    "floor_ms": r.floor.to_json(),
                    "channel_floor_ms": r.channel_floor.to_json(),
                    "ovn_ms": r.ovn.to_json() if r.ovn else None,
                    "daemon_after_ovn_ms": r.daemon_after_ovn.to_json() if r.daemon_after_ovn else None,
                }
                for r in self.rows
            ],
            "flows": [dataclasses.asdict(f) for f in self.flows],
        }


class _Contenders:
    """The three ways of getting one policy onto a switch, on prepared inputs."""

    def __init__(
        self, stack: DaemonStack, record: AttachmentRecord, ovn: Ovn | None, tmp: Path, channel: ChannelSwitch
    ) -> None:
        self.stack = stack
        self.record = record
        self.ovn = ovn
        self.tmp = tmp
        self.channel = channel
        self.cookie = cookie_for_slot(record.slot)
        self.version = 1

    @property
    def openflow(self) -> ChannelSwitch:
        """The daemon's own OpenFlow channel, for clearing and counting its flows."""
        return self.stack.adapters.switch

    async def daemon_apply(self, scope: Scope) -> float:
        self.version += 1
        versioned = dataclasses.replace(scope, version=self.version)
        started = time.perf_counter()
        [result] = await self.stack.adapters.service.apply_policy(SANDBOX, versioned)
        elapsed = time.perf_counter() - started
        if result.policy_state is not PolicyState.APPLIED:
            raise BenchError(f"daemon apply ended {result.policy_state.value}, not APPLIED")
        return elapsed

    async def clear_ours(self) -> None:
        await self.openflow.delete(self.cookie)

    def floor_file(self, name: str, lines: Sequence[str]) -> Path:
        path = self.tmp / name
        path.write_text("".join(f"{line}\n" for line in lines))
        return path

    def floor_add(self, path: Path) -> float:
        return timed_run([*FLOOR_OFCTL, "--bundle", "add-flows", self.stack.mgmt, str(path)])

    def floor_bundle(self, path: Path) -> float:
        return timed_run([*FLOOR_OFCTL, "bundle", self.stack.mgmt, str(path)])

    def channel_changes(self, before: Sequence[Flow], after: Sequence[Flow]) -> list[bytes]:
        """The flow-mods that take the switch from ``before`` to ``after``
        (strict deletes of what goes, adds of what comes), encoded once."""
        encode = self.channel.encoder.encode
        gone = [delete_strict(as_installed(encode(f).add)) for f in before if f not in set(after)]
        return gone + [encode(f).add for f in after if f not in set(before)]

    async def channel_floor(self, changes: Sequence[bytes]) -> float:
        bundle = self.channel.prepare_bundle(changes)  # xids assigned outside the clock
        started = time.perf_counter()
        await self.channel.send_bundle(bundle)
        return time.perf_counter() - started

    async def ours_flows(self) -> int:
        return len(await self.openflow.dump(self.cookie))


def _delta_bundle(cookie: int, before: Sequence[str], after: Sequence[str]) -> list[str]:
    """What the daemon would send to go from ``before`` to ``after``: a bundle
    of only the differing flows (deletes by strict match within the cookie)."""
    gone = [f for f in before if f not in set(after)]
    new = [f for f in after if f not in set(before)]
    lines = []
    for flow in gone:
        match = flow.partition(" actions=")[0]
        match = ",".join(p for p in match.split(",") if not p.startswith("cookie="))
        lines.append(f"flow delete_strict {match} cookie={cookie:#x}/-1")
    return lines + [f"flow add {f}" for f in new]


def _one_acl_change(before: Sequence[Acl], after: Sequence[Acl]) -> tuple[Acl, Acl]:
    old = [a for a in before if a not in set(after)]
    new = [a for a in after if a not in set(before)]
    if len(old) != 1 or len(new) != 1:
        raise BenchError(f"expected a one-ACL change, got -{len(old)} +{len(new)}")
    return old[0], new[0]


async def _measure_size(c: _Contenders, rules: int, reps: int) -> list[PolicyRow]:
    scope_a, scope_b = n_rule_scope(rules), n_rule_scope(rules, changed=True)
    flows_a, flows_b = c.stack.rendered(c.record, scope_a), c.stack.rendered(c.record, scope_b)
    fresh_file = c.floor_file(f"fresh-{rules}", flows_a)
    back_file = c.floor_file(f"change-{rules}", _delta_bundle(c.cookie, flows_b, flows_a))
    values_a, values_b = c.stack.flows(c.record, scope_a), c.stack.flows(c.record, scope_b)
    fresh_changes = c.channel_changes((), values_a)
    forth_changes, back_changes = c.channel_changes(values_a, values_b), c.channel_changes(values_b, values_a)
    acls_a, acls_b = ovn_acls(scope_a), ovn_acls(scope_b)
    acl_old, acl_new = _one_acl_change(acls_a, acls_b)

    kinds = ("fd", "ff", "fc", "fo", "cd", "cf", "cc", "co", "fd after OVN", "cd after OVN")
    samples: dict[str, list[float]] = {k: [] for k in kinds}

    def ovn_fresh() -> None:
        if c.ovn is not None:
            c.ovn.clear_acls()
            samples["fo"].append(c.ovn.set_acls(acls_a))

    for i in range(reps):
        # OVN's round (four processes' work on two cores) leaves the caches
        # cold for whatever runs next: it goes before a different one of the
        # others in turn, so that none of them is always the one after it.
        if i % 3 == 0:
            ovn_fresh()
        await c.clear_ours()
        samples["fd"].append(await c.daemon_apply(scope_a))
        if i % 3 == 0 and c.ovn is not None:
            samples["fd after OVN"].append(samples["fd"][-1])
        if i % 3 == 1:
            ovn_fresh()
        await c.clear_ours()
        samples["fc"].append(await c.channel_floor(fresh_changes))
        if i % 3 == 2:
            ovn_fresh()
        await c.clear_ours()
        samples["ff"].append(c.floor_add(fresh_file))
    # The floor left policy A on the switch; the daemon changes it to B, the
    # floor bundle changes it back: both one-rule changes of an N-rule policy.
    # The channel then goes to B untimed and times the floor's very change back.
    await c.daemon_apply(scope_a)  # the daemon's own view: A, as on the switch

    def ovn_change(i: int) -> None:
        if c.ovn is not None:
            old, new = (acl_old, acl_new) if i % 2 == 0 else (acl_new, acl_old)
            samples["co"].append(c.ovn.change_acl(old, new))

    for i in range(reps):
        if i % 3 == 0:
            ovn_change(i)
        samples["cd"].append(await c.daemon_apply(scope_b))
        if i % 3 == 0 and c.ovn is not None:
            samples["cd after OVN"].append(samples["cd"][-1])
        if i % 3 == 1:
            ovn_change(i)
        samples["cf"].append(c.floor_bundle(back_file))
        if i % 3 == 2:
            ovn_change(i)
        await c.channel_floor(forth_changes)
        samples["cc"].append(await c.channel_floor(back_changes))
        # The floors changed the daemon's flows behind its back; it takes
        # policy A back itself (untimed), so that its next change starts, as
        # in production, from what it last verified (its read-back would
        # find the difference and start over from a fresh read otherwise).
        await c.daemon_apply(scope_a)
    if len(await c.openflow.dump(c.cookie)) != len(flows_a):
        raise BenchError(f"{rules} rules: the floor's bundle did not restore the policy's flows")

    def maybe(kind: str) -> Summary | None:
        return summarize(samples[kind]) if samples[kind] else None

    return [
        PolicyRow(rules, "fresh", summarize(samples["fd"]), summarize(samples["ff"]), summarize(samples["fc"]),
                  maybe("fo"), maybe("fd after OVN")),
        PolicyRow(rules, "change", summarize(samples["cd"]), summarize(samples["cf"]), summarize(samples["cc"]),
                  maybe("co"), maybe("cd after OVN")),
    ]  # fmt: skip


async def _count(c: _Contenders, name: str, rules: int, scope: Scope, base: tuple[int, int]) -> FlowRow:
    await c.daemon_apply(scope)
    ours_total = await c.ours_flows()
    ovn_count = None
    if c.ovn is not None:
        c.ovn.clear_acls()
        c.ovn.set_acls(ovn_acls(scope))
        ovn_total = c.ovn.flows()
        ovn_count = FlowCount(ovn_total - base[1], ovn_total)
    return FlowRow(name, rules, FlowCount(ours_total - base[0], ours_total), ovn_count)


async def _baseline_counts(c: _Contenders) -> tuple[int, int]:
    """Flows of the same sandbox with no rules (default deny both ways)."""
    await c.daemon_apply(empty_scope())
    ours = await c.ours_flows()
    ovn = 0
    if c.ovn is not None:
        c.ovn.clear_acls()
        c.ovn.set_acls(ovn_acls(empty_scope()))
        ovn = c.ovn.flows()
    return ours, ovn


Progress = Callable[[str], None]


async def run_policy_cases(
    workdir: Path, reps_by_size: dict[int, int], *, with_ovn: bool, progress: Progress
) -> PolicyResults:
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        ovs = OvsInstance.start(workdir / "ovs-daemon", netns.unique_name("bpd-"))
        cleanup.callback(ovs.stop)
        ovn = None
        if with_ovn:
            ovn_ovs = OvsInstance.start(workdir / "ovs-ovn", netns.unique_name("bpo-"))
            cleanup.callback(ovn_ovs.stop)
            ovn = Ovn.start(workdir / "ovn", ovn_ovs, GUEST_MAC, GUEST_V4)
            cleanup.callback(ovn.stop)
        async with daemon_stack(workdir / "daemon", ovs, BRIDGE) as stack:
            record = await stack.attach(SANDBOX)
            channel = OpenFlowChannel(lambda: str(ovs.rundir / f"{BRIDGE}.mgmt"), timeout=30)
            await channel.connect()
            try:
                c = _Contenders(stack, record, ovn, workdir, ChannelSwitch(channel, load_pipeline()))
                rows: list[PolicyRow] = []
                for rules, reps in reps_by_size.items():
                    progress(f"policy apply: {rules} rules x {reps} repetitions")
                    rows += await _measure_size(c, rules, reps)
                progress("flow counts per policy")
                base = await _baseline_counts(c)
                flows = [await _count(c, f"{n} rules", n, n_rule_scope(n), base) for n in reps_by_size]
                cross = cross_product_scope()
                flows.append(await _count(c, "20 CIDRs x 10 port ranges", 1, cross, base))
                return PolicyResults(rows, flows)
            finally:
                await channel.close()
    raise AssertionError("unreachable")
