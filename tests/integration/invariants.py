"""The restart-safety invariants, checked against the real store, the real
OVS and the real (emulated) eswitch of a dev environment:

- every stored attachment is BOUND (ATTACHING rolled back, DETACHING finished);
- the store passes ``PRAGMA integrity_check``;
- lease generations never decrease;
- the bridge's ports with our owner tag are exactly the uplink, the
  BOUND attachments' representors and parked VF representors, and every
  parked one is inert on the switch (NO_RECV and NO_FWD set);
- the flows with our cookie prefix are exactly the bridge's and the BOUND
  attachments', and each attachment has exactly the flows its stored policy
  compiles to (compared by ``ovs-ofctl diff-flows``);
- no eswitch function is prepared without an attachment claiming it;
- no meter exists but those of BOUND attachments.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from coordinator.attachment_identity import BRIDGE_COOKIE, COOKIE_OWNER, COOKIE_OWNER_MASK, cookie_for_slot
from coordinator.config import load_config
from coordinator.dev import env
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.eswitch.emulated import EmulatedEswitch
from coordinator.flows.classes import load_network_classes
from coordinator.flows.compiler import PortFacts, attachment_flows
from coordinator.flows.pipeline import load_pipeline
from coordinator.flows.render import render_flows
from coordinator.ovs.ovsdb import OWNER_KEY, OWNER_VALUE
from coordinator.ovs.port_keys import is_parked
from coordinator.policy.codec import scope_from_stored

BOUND = "BOUND"


@dataclass(frozen=True)
class Row:
    attachment_id: str
    sandbox_id: str
    state: str
    slot: int
    ofport: int
    mac: str
    representor: str
    network_class: str
    device_id: str


def _db(dev: env.Endpoint) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{Path(dev.config).parent / 'state.db'}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    return db


def rows(dev: env.Endpoint) -> list[Row]:
    db = _db(dev)
    try:
        found = db.execute(
            """SELECT a.*, COALESCE(NULLIF(a.representor, ''), d.representor) AS rep
               FROM attachments a JOIN devices d ON d.device_id = a.device_id"""
        ).fetchall()
        return [
            Row(r["attachment_id"], r["sandbox_id"], r["state"], r["slot"], r["ofport"], r["mac"], r["rep"],
                r["network_class"], r["device_id"])
            for r in found
        ]  # fmt: skip
    finally:
        db.close()


def fences(dev: env.Endpoint) -> dict[str, int]:
    db = _db(dev)
    try:
        return {r[0]: r[1] for r in db.execute("SELECT attachment_id, generation FROM lease_fences")}
    finally:
        db.close()


def _stored_policy(dev: env.Endpoint, sandbox_id: str) -> object:
    """The stored value of the sandbox's policy (bytes, or text as earlier versions wrote), None if none."""
    db = _db(dev)
    try:
        row = db.execute("SELECT scope FROM sandbox_policies WHERE sandbox_id = ?", (sandbox_id,)).fetchone()
        return row[0] if row else None
    finally:
        db.close()


def _integrity(dev: env.Endpoint) -> str:
    db = _db(dev)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def ovs_of(dev: env.Endpoint) -> OvsInstance:
    return OvsInstance(Path(dev.ovs_rundir), dev.ovs_netns)


def last_event_seq(dev: env.Endpoint) -> int:
    db = _db(dev)
    try:
        return int(db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0)
    finally:
        db.close()


def flow_match(flow: str) -> str:
    """A dumped flow without cookie and actions (for ``del-flows --strict``)."""
    match, _, _ = flow.partition(" actions=")
    return " ".join(part for part in match.split(" ") if not part.startswith("cookie="))


def owned_ports(dev: env.Endpoint, *, parked: bool = False) -> set[str]:
    """Our ports (``parked``: only the parked ones)."""
    return ports_of(ovs_of(dev), parked=parked)


def ports_of(ovs: OvsInstance, *, parked: bool = False) -> set[str]:
    """The ports with our owner tag (``parked``: only the parked ones)."""
    out = ovs.vsctl("--format=json", "--columns=name,external_ids", "list", "Port")
    table = json.loads(out)
    names = set()
    for name, ids in table["data"]:
        mapping = dict(ids[1]) if ids[0] == "map" else {}
        if mapping.get(OWNER_KEY) == OWNER_VALUE and (not parked or is_parked(mapping)):
            names.add(name)
    return names


def inert_ports(ovs: OvsInstance, bridge: str) -> set[str]:
    """The bridge's ports whose OpenFlow config has NO_RECV and NO_FWD, as
    `ovs-ofctl dump-ports-desc` shows them."""
    text = ovs.ofctl("dump-ports-desc", ovs.mgmt(bridge))
    found = set()
    for block in re.split(r"\n(?= \S+\()", text):
        name = re.match(r"\s*\S+\((.+?)\):", block)
        config = re.search(r"config:\s*([^\n]*)", block)
        if name and config and {"NO_RECV", "NO_FWD"} <= set(config.group(1).split()):
            found.add(name.group(1))
    return found


def our_flows(dev: env.Endpoint) -> dict[int, list[str]]:
    ovs = ovs_of(dev)
    out = ovs.ofctl(
        "dump-flows", "--no-stats", ovs.mgmt(dev.bridge), f"cookie={COOKIE_OWNER:#x}/{COOKIE_OWNER_MASK:#x}"
    )
    by_cookie: dict[int, list[str]] = {}
    for line in out.splitlines():
        if "actions=" not in line:
            continue
        cookie = int(line.split("cookie=", 1)[1].split(",", 1)[0], 0)
        by_cookie.setdefault(cookie, []).append(line.strip())
    return by_cookie


def expected_flows(dev: env.Endpoint, row: Row) -> list[str]:
    stored = _stored_policy(dev, row.sandbox_id)
    scope = scope_from_stored(stored) if stored is not None else load_network_classes()[row.network_class]
    pipeline = load_pipeline()
    port = PortFacts(ofport=row.ofport, mac=row.mac, slot=row.slot)
    return render_flows(attachment_flows(pipeline, port, scope), pipeline)


def flows_differ(dev: env.Endpoint, installed: list[str], expected: list[str]) -> str:
    """``ovs-ofctl diff-flows`` of the two; "" when equal."""
    with tempfile.TemporaryDirectory(prefix="bfc-inv-") as tmp:
        a, b = Path(tmp, "installed"), Path(tmp, "expected")
        a.write_text("".join(f"{line}\n" for line in installed))
        b.write_text("".join(f"{line}\n" for line in expected))
        # Exit status 2 = the sources differ; the differences are on stdout.
        result = subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", "diff-flows", str(a), str(b)],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        return "" if result.returncode == 0 else (result.stdout + result.stderr).strip() or "differ"


def prepared_devices(dev: env.Endpoint) -> set[str]:
    backend = EmulatedEswitch(load_config(Path(dev.config)).eswitch.emulated)
    return {p.slot.device_id for p in backend.prepared()}


def check(dev: env.Endpoint, fences_before: dict[str, int]) -> list[Row]:
    """Assert every invariant; returns the stored attachments."""
    found = rows(dev)
    assert all(r.state == BOUND for r in found), [(r.attachment_id, r.state) for r in found]
    assert _integrity(dev) == "ok"
    after = fences(dev)
    for attachment_id, generation in fences_before.items():
        assert after.get(attachment_id, 0) >= generation, f"generation of {attachment_id} went backwards"
    config = load_config(Path(dev.config))
    parked = owned_ports(dev, parked=True)
    assert owned_ports(dev) - parked == {config.ovs.uplink} | {r.representor for r in found}
    assert parked <= inert_ports(ovs_of(dev), dev.bridge), "a parked port is not inert"
    assert not parked & {r.representor for r in found}
    flows = our_flows(dev)
    assert set(flows) == {BRIDGE_COOKIE} | {cookie_for_slot(r.slot) for r in found}
    for row in found:
        diff = flows_differ(dev, flows[cookie_for_slot(row.slot)], expected_flows(dev, row))
        assert diff == "", f"flows of {row.attachment_id} differ from its stored policy:\n{diff}"
    assert prepared_devices(dev) <= {r.device_id for r in found}
    assert meters(dev) <= {r.slot for r in found}  # meters are numbered like slots
    return found


def meters(dev: env.Endpoint) -> set[int]:
    ovs = ovs_of(dev)
    out = ovs.ofctl("dump-meters", ovs.mgmt(dev.bridge))
    return {int(line.split()[0].split("=")[1]) for line in out.splitlines() if line.startswith("meter=")}
