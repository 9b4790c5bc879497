"""docs/BENCHMARKS.md, regenerated from a results file by every `make bench`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.report import render_table

HOW_TO_RUN = """\
## How to run

    make bench                      # as root on a fresh Debian 12 / Ubuntu box

It installs what is missing (Open vSwitch, OVN 23.03 from the OS packages,
the virtualenv), starts everything privately - its own Open vSwitch
instances, each in a network namespace of its own, its own OVN databases,
northd and ovn-controller on unix sockets in a temp dir, its own daemon,
reference gateway and dev certificates - and removes all of it afterwards,
also when a case fails. It takes about nine minutes on two cores, prints the
table below, writes `bench/results/latest.json` and rewrites this page.

    .venv/bin/python -m bench --quick            # a smoke run (about a minute)
    .venv/bin/python -m bench --cases policy     # only cases 1-4
    .venv/bin/python -m bench --no-ovn           # without the OVN comparison
    .venv/bin/python -m bench --render bench/results/latest.json --no-docs   # re-print a saved run
    .venv/bin/python -m bench.profile            # where the time of one policy apply goes
    .venv/bin/python -m bench.storage            # validating and storing a policy, without a switch
    .venv/bin/python -m bench.profile_attach     # where the time of one Attach (and Detach) goes
    .venv/bin/python -m bench.profile_reconcile  # where a no-drift restart reconcile's time goes

The bench measures the control path; the only packets it sends are the
scale case's TCP SYNs from the uplink namespace into the attachments'
conntrack zones (documentation addresses), so the stale deny-all has
connections to revoke.
"""

MEANING = """\
## What the numbers mean

Every ratio divides two p50s measured in the same run; the contenders take
turns within every repetition, so whatever slows the machine slows all of
them. Below 1.00x the daemon is faster. OVN's round (four processes'
work, ~15-350 ms) leaves the caches cold for whatever runs right after
it, so it goes before a different one of the others in turn (the daemon,
the `ovs-ofctl` floor, the channel floor's untimed half): none of them is
always the one after it. Until 2026-12-02 the daemon always was, while
the channel floor always came right after its own untimed half: in two
interleaved pairs of runs of one code the daemon's one-rule change took
4.6 and 4.4 ms at 100 rules in that order against 4.1 and 3.5 ms in
turn, 9.1 and 10.4 against 8.0 and 7.3 ms at 1,000. The daemon's p50 of
only its runs right after OVN, the cold case, is under the table.

- **ours** - `AttachmentService.apply_policy`, the path a gateway event
  takes: compile the NetworkScope, diff against what the attachment's
  last verified sync left (or, when that is not known, its flows read by
  cookie), send only the differences as one atomic OpenFlow bundle, read
  the cookie back and compare with the intent (a difference starts over
  from a fresh read), record the result in the store (one commit).
  Between the timed one-rule changes the floors change the daemon's flows
  behind its back; the daemon then takes the old policy back itself,
  untimed, so that each timed change starts from what it last verified,
  as it does where nothing else writes its cookies.
  p50 / p95 / p99 over the repetitions (nearest rank: with fewer than 100
  repetitions p99 is the slowest one).
- **floor** - `ovs-ofctl --bundle add-flows` (fresh) or `ovs-ofctl bundle`
  (one-rule change: the same delete/add lines the daemon sends) of the
  very same flows from a file written beforehand: no compile, no diff, no
  read-back: what the daemon's `ovs-ofctl` path could at best cost;
  **ours/floor** is what the daemon's safety costs on top.
- **channel floor** - the very same changes (strict deletes of the flows
  that go, adds of the new ones, or all adds when fresh) encoded
  beforehand and sent as one ONF bundle + barrier over an OpenFlow
  channel opened before the clock starts (`coordinator/ovs/ofchannel.py`):
  no process, no connection, no compile, no read-back. Nothing that
  changes flows atomically can be cheaper from outside ovs-vswitchd;
  **ours/channel floor** is the headline ratio.
- **OVN** - Debian's OVN 23.03 with one logical switch port bound on a
  private OVS (userspace datapath), the same policy as ACLs
  (`from-lport`/`to-lport`, `allow-related`, default `drop`), timed as
  `ovn-nbctl --wait=hv` which returns once ovn-controller has the flows on
  its bridge. **ours/OVN** below 1 means the daemon gets a verified policy
  onto the switch faster than OVN gets an unverified one there.
- **fresh** starts from none of the policy's flows (attachment cookie
  deleted; ACLs deleted); **1-rule change** alters one rule of an
  installed policy of that size (half the rules egress, half ingress, each
  one CIDR and one TCP port).
- **flows ours / flows OVN** - OpenFlow flows the policy's rules add over
  the same port with no rules (default deny both ways). OVN's count is
  every flow on `br-int` (lines with `actions=`, OpenFlow 1.5), so it
  includes what enabling ACLs at all costs (the conntrack stages).
  The cross-product row is one rule with 20 CIDRs x 10 port ranges: the
  daemon's conjunctive match makes that N + M + 1 flows instead of N x M.
- **attach** - the Attach RPC over mTLS against the daemon as its own
  process (`dev up --gateway`, emulated eswitch: a VF is a veth pair, a
  pool of 16), each followed by an untimed Detach. BASELINE enforces the
  network class before answering; WAIT_INITIAL fetches the sandbox's
  10-rule policy from the reference gateway and enforces it before
  answering. Throughput: 8 clients on their own channels, each attaching
  and detaching in a loop; attaches per second of wall time, detaches
  included. *Health during the attach storm*: an admin asks Health in a
  loop on its own channel while those 8 clients run (p50 / p95 / p99): how
  long other RPCs wait behind the attaches' store commits and OVS calls.
  (The emulated eswitch checks each VF with its own `ip link
  show` when Attach refreshes health, so a pool of hundreds would mostly
  measure that emulation cost.)
- **scale** - that many attachments with a policy of that many rules
  each, set up through the service in-process (not timed). Every sandbox
  has the same policy, own address 198.51.100.10 included (the
  documentation ranges hold too few addresses for a thousand guests), so
  the ARP anti-spoofing flow for that address is one flow on the bridge,
  held by whichever attachment installed it last: an attachment whose
  read-back finds it under another's cookie ends DEGRADED at setup (about
  a fifth of them at 1,024, four applies running at once) and the
  daemon's first start puts it on its class. The figures are of that
  state. *RSS*: the
  daemon process (`coordinator serve`) started on that state, once it
  answers Health over mTLS. *Flows*: everything on the bridge.
  *Restart reconcile*: a fresh `coordinator.daemon.build(config)` against
  the already-programmed switch (no drift, so nothing changes - checked;
  the daemon's first start, which corrected the setup's DEGRADED ones,
  left every attachment's flow proof, so it compiles nothing).
  The *RSS* is read after that first start, which compiled and compared
  everything.
  *Re-program*: ovs-vswitchd stopped and started (flows gone, ports back
  from OVSDB), then the time until the service has put the bridge and
  every attachment's flows back (checked): the OpenFlow channel notices
  the old connection end and reconnects; one flow-stats read, one bundle
  of every flow, one read-back. Its *floor*: the very flows it installed,
  dumped, ovs-vswitchd restarted once more, and sent as one raw
  `ovs-ofctl --bundle add-flows` (file written beforehand). The two take
  turns three times, and each side's median is reported: a single sample
  of a dozen seconds moves by a tenth from run to run here. Building the
  emulated eswitch (veth pairs) is outside both clocks. The untimed setup is most of the
  case's time (about six minutes for 1,024 here): each Attach waits for
  ovs-vswitchd, whose work per OVSDB change grows with the ports on a
  userspace-datapath bridge - even with every representor port plugged
  in one transaction up front, as the setup does.
  *Stale deny-all*: every attachment's zone is first given up to that
  many connections (TCP SYNs from the uplink that the policy admits; the
  size column says how many conntrack entries there were), then the
  gateway stream is reported down to the daemon's own staleness watch with
  `on_stale = "deny-all"` and a 1 s threshold. *All cut + STALE*: from the
  threshold until every attachment has its deny-all flows installed and
  is recorded STALE (the watch checks every 100 ms, so up to 100 ms of it
  is that interval); its *floor* is the very same bundle (each attachment's
  flows deleted by cookie, its deny-all flows added: about seven OpenFlow
  messages per attachment) sent afterwards as a raw `ovs-ofctl bundle`.
  *Conns flushed*: until conntrack holds none of their connections either.
  Neither depends on the connections, and there is no per-attachment round
  trip: one bundle for all the flows, one store transaction for all the
  states, one control-socket connection for all the zone flushes. What
  grows with the attachments is that bundle; on the userspace datapath
  with a thousand veth ports ovs-vswitchd takes such a bundle slowly (the
  floor shows the switch alone), so at 1,024 attachments the switch's
  share dominates.
"""


WHERE_THE_TIME_GOES = """\
## Where the time goes (policy apply)

`python -m bench.profile [--rules N]` applies one-rule changes of an
N-rule policy through `apply_policy` on a private OVS, times every
subprocess on the path and prints a pyinstrument call profile (the
`bench` extra: `pip install -e '.[bench]'`). Measured on the machine
above, 100 rules:

| subprocess per apply | before | after |
|---|---|---|
| `ovs-ofctl dump-flows` (read, read-back) | 2 x 18.6 ms | 2 x 5.5 ms |
| `ovs-ofctl diff-flows` (diff, verify) | 2 x 7.4 ms | 1 x 5.1 ms, beside the first dump |
| `ovs-ofctl bundle` | 1 x 18.9 ms | 1 x 4.8 ms |
| `ovs-appctl dpctl/dump-conntrack` (revoke) | 1 x 6.0 ms | 1 x 4.2 ms |
| wall time per apply | 87.7 ms (87% in subprocesses) | 27.3 ms (91% in subprocesses) |

**The biggest cost was process spawning, and inside it a lookup nobody
asked for**: every `ovs-ofctl` that talks to the switch first fetched the
switch's port names over a second connection (to parse names in flows
and filters; ours name ports by number) - about 10 of the 14-19 ms of
each call. `coordinator/ovs/openflow.py` now passes `--no-names`, reads
the switch and canonicalises the intent (`diff-flows` against nothing,
no switch involved) side by side, diffs and verifies the read-back
in-process by flow identity (asking `diff-flows` before it ever reports
a mismatch), and treats an apply with nothing to change as verified by
the read it just did. Same semantics: only the differing flows, one
atomic bundle, read back and compared, the same errors. The same bench,
before and after (ours/floor, ours/OVN; the floor uses `--no-names` in
both):

| case | before | after |
|---|---|---|
| fresh, 10 rules | 57.7 ms: 12.3x, 4.33x | 22.8 ms: 4.99x, 1.72x |
| 1-rule change, 10 rules | 63.6 ms: 14.1x, 6.19x | 25.7 ms: 6.12x, 2.49x |
| fresh, 100 rules | 65.9 ms: 11.4x, 2.31x | 30.4 ms: 5.61x, 1.06x |
| 1-rule change, 100 rules | 65.5 ms: 13.9x, 5.38x | 28.0 ms: 6.35x, 2.35x |
| fresh, 1,000 rules | 133 ms: 9.36x, 0.57x | 92.4 ms: 6.53x, 0.40x |
| 1-rule change, 1,000 rules | 131 ms: 24.5x, 3.23x | 85.1 ms: 15.3x, 2.20x |

What is left, and why the daemon stays well above 1.5x of the floor:

- Up to ~100 rules the path is three switch round trips (dump, bundle,
  dump), each its own `ovs-ofctl` process of ~5 ms - the floor is one of
  them - plus the conntrack dump that revokes connections the new policy
  no longer allows (`Dataplane.revoke`, ~4 ms, spent even when the zone
  is empty). Getting near the floor needs a persistent OpenFlow
  connection in-process instead of processes.
- At 1,000 rules Python dominates: compiling and rendering the flows
  (~37 ms), `scope_to_mapping` turning the scope into JSON for the store
  through protobuf (~27 ms), keying ~1,000 flows three times (~6 ms); the
  subprocesses (~47 ms) overlap partly.
- OVN's one-rule change is cheaper because it is incremental end to end
  (ovn-northd and ovn-controller recompute only the changed ACL) and
  unverified; for fresh policies the daemon is as fast at 100 rules and
  2.5x faster at 1,000, with half OVN's flows.

Since then flows and meters go over the persistent OpenFlow channel
(`ovs/ofsync`): no `ovs-ofctl` on any path of the daemon (diagnostics
aside). A one-rule change is one write of the flow-stats request (and the
meter config, for a rate-limited policy) sent before the compile starts,
then one write of the bundle, its barrier and the read-back; the diff and
the comparison are set operations on byte keys hashed once. New flows are
laid out from memoised pieces (each match field and actions tuple encoded
by os-ken once): ~13 us a flow instead of ~100 us, which is what a
re-program of tens of thousands of flows pays. The conntrack dump that
revokes connections went from an `ovs-appctl` process (~5-6 ms) to one
kept control connection (0.3 ms for an empty zone, 0.6 ms for 100
entries; `python -m bench.unixctl_dump`), and a one-rule change
re-validates and re-encodes only the changed rule for the store (see
below). The first full run with all of that took a one-rule change from
24.9 to 7.2 ms at 100 rules and from 88 to 22.5 ms at 1,000, still 17x
and 59x the channel floor; what was left was not the switch but the
store's two commits and, at 1,000 rules, compiling and diffing every
rule's flows again.

Since then (the table above) a one-rule change compiles one rule and
sends its flows from what the daemon last verified:

- `flows/rules` remembers each rule's checked flows per attachment side
  (the rule's index and the attachment's slot and cookie in the key), and
  `flows/compiler` an attachment's other flows by port and scope without
  its rules: unchanged rules hand back the very Flow objects of the last
  compile, whose hashes are worked out once (a 100-rule compile: 0.27 to
  0.10 ms of CPU);
- `ovs/ofintent` works out the cookie's desired flows by key from its
  last ones, encoding only the flows that came and went;
- `ovs/ofknown` keeps what each cookie held at its last verified sync,
  per connection of the channel: the diff is made against that, without
  reading the switch first; the read-back is written right behind the
  bundle and compared whole, and a difference (the switch changed behind
  the daemon's back) starts the sync over from a fresh read. A deleted
  cookie is remembered empty, so a fresh policy needs no read either;
- the attachments' states, their events and the policy as the last good
  one are one commit (they were two).

CPU per one-rule change in one process (`time.process_time`, p50 of 200
and 40 applies, before and after in one run on the loaded machine): 4.0
to 2.9 ms at 100 rules, 23.0 to 6.0 ms at 1,000. In that version's full
run a one-rule change took 4.5 ms at 100 rules (0.27x OVN) and 12.0 ms
at 1,000 (0.27x OVN), a fresh policy 6.2 and 27.1 ms. What `bench.profile`
shows left at 1,000 rules: the walk over every rule that finds its
remembered flows and merges them (~40% of an apply), the read-back of
every flow of the attachment (~2,000) and its comparison, and the
store's commit with its fsync; at 100 rules the commit, the two round
trips of the switch (the bundle, then the read-back beside the conntrack
dump that revokes connections) and the loop's own hops. Getting further
needs a compile that patches the merged flows of the changed rules
instead of walking all of them, and a read-back limited to what changed
(which would leave drift elsewhere in the attachment to the reconcile).

Since then the per-flow work left on an apply's path is smaller, and part
of it runs while the switch works (CPU of the loop's thread,
`time.thread_time`, each part alone, before and after in one run):

- `flows/rules` interns the places of the flows it remembers, so the
  merge of every compile hashes and compares them by identity, and looks
  the remembered rules up inline; the memos start over only before a
  compile, never within one (which interning needs). A 1,000-rule
  compile: 1.08 to 0.50 ms; 100 rules: 0.10 to 0.07 ms.
- The read-back's loop over the flow-stats entries: 0.72 to 0.59 ms for
  the 1,027 flows of a 1,000-rule attachment.
- The policy's stored form (a thousand rules' worth is 0.6-0.9 ms) is
  worked out while the switch reads the first attachment's flows back
  (`enforce_and_revoke`'s `meanwhile`), not after them.
- A bundle names a refused change only when one is refused (a label was
  formatted for every flow of every bundle); its adds are built with
  their fixed part packed once, and only its barrier has a future to
  wait on. A fresh 100-rule policy: 2.7 to 1.8 ms.

A one-rule change now looks at that rule alone. `flows/rules` keeps each
attachment side's last walk over its rules and patches it where only a
few rules are not the very same objects at the same place (validation
hands back the remembered Rule of an unchanged rule, so a policy from the
gateway has them; the patched walk is checked against a compile that
remembers nothing); `ovs/ofintent` patches the cookie's intent over the
span where the flows stop being the last ones' objects
(`sequences.changed_span`, references compared in C), diffing by value
only when they are other, equal objects; the stored form finds the rules
encoded last by identity. CPU of the loop's thread per one-rule change
of a 1,000-rule policy, back to back, old and new code taking turns: 6.4
against 5.1 ms (alone: the compile 0.69 to 0.14 ms, the stored form 0.71
to 0.23 ms, the intent 0.30 to 0.17 ms).

In the full run of that work (20:21) a one-rule change took 4.0 ms at
100 rules (0.26x OVN, 9.65x the channel floor) and 8.1 ms at 1,000
(0.19x OVN), a fresh policy 5.3 ms (0.12x) and 22.1 ms (0.06x); the full
run before it (18:35, the same machine) read 4.7, 11.9, 5.9 and 23.3 ms
(0.27x, 0.24x, 0.14x, 0.06x). In the 22:58 run, whose apply path differed
only by the flow proofs (below), 3.4 ms (0.27x, 9.63x), 8.0 ms (0.19x),
4.7 ms (0.13x) and 18.4 ms (0.07x); OVN was faster in it too (its
one-rule change at 100 rules 12.8 against 15.1 ms): the ratios are the
figures to read. What a 1,000-rule change still spends
per flow is the read-back: ovs-vswitchd's dump of the cookie's ~1,000
flows and the loop over them (~1 ms), the one check that the cookie
holds exactly the intent.

The same applies made one right after another in one process take about
half as long: an apply that
follows other work on the machine (here the floors' `ovs-ofctl`
processes and OVN's; in production, whatever ran since the last policy
change) runs on cold caches. Measured at 100 rules, 20 one-rule changes
each, CPU per apply: 1.6-1.9 ms back to back, 3.1-3.4 ms each after an
`ovs-ofctl bundle`, 3.7 ms each after a 10 ms sleep. What is left on the
path is a few hundred microseconds each: the commit (its fsync is 0.26
ms on this disk), the two hops to the store's threads (the BOUND
attachments read, the results written), the bundle and the read-back
with the conntrack dump beside it, and the read-back's walk over the
attachment's flows; the channel floor is one of those round trips.

Since the 22:58 run, a timeline of one apply (the moment each step
starts and ends, p50 over 55-195 one-rule changes back to back in one
process, ms from the call) shows where the rest goes, and two of its
steps are shorter:

- **The read-back's comparison** (`ovs/ofknown`). The switch lists a
  cookie's flows in the same order from one read to the next, and the
  flow-stats reader hands back the very objects of the flows it read
  before, so everything a one-rule change touched lies in the span where
  the read-back stops being the objects the last verified read listed
  (`sequences.changed_span`, references compared in C). The flows
  outside it are that state's own, none of the deleted ones; the span's
  flows are checked to be wanted and none twice, and the count; the known
  flows and the digest's sorted marks are patched instead of rebuilt.
  At 1,000 rules, from the end of the read-back's parse to the commit:
  0.97 to 0.30-0.39 ms. A read-back that lists a flow twice is now
  refused by the whole comparison too.
- **The first read** (the sandbox's BOUND attachments) runs on the loop
  with a read-only connection of its own that never waits for a lock: 0.29
  to 0.15 ms.

What is left at 1,000 rules (p50 of the timeline, ms from the call):
the read 0.15, the compile 0.44, the intent 0.33, the diff and the
bundle's layout 0.26, the bundle's round trip 0.4; then ovs-vswitchd
dumps the cookie's 1,027 flows (1.3-1.6 ms after the bundle's barrier;
the fingerprint, the stored form and the conntrack dump's request fall
inside it), the reader goes over them (1.0-1.1 ms: a slice, a lookup and
an append a flow, near what Python does per item), the comparison and
the proof 0.3, and the commit 1.2-1.3 (its fsync 0.6-0.7 of it, and a
hop to the store's thread and back 0.2). At 100 rules the same steps take
2.6-2.7 ms in all, of which the commit 0.84 and the two switch round
trips 0.66. The channel floor is the bundle's round trip alone, so
three times it (about 1.2 ms) is less than the commit and the two round
trips that verify and record an apply.

In the 01:50 run (with OVN's round now going before each of the
others in turn; the ovs-ofctl floors and OVN were slower than in the
22:58 run, its 1,000-rule change 39.5 against 41.4 ms but its 100-rule
one 15.8 against 12.8): a one-rule change 3.4 ms at 100 rules (0.21x
OVN, 8.17x the channel floor) and 6.4 ms at 1,000 (0.16x), a fresh
policy 5.2 ms (0.12x) and 19.8 ms (0.06x); right after OVN's round the
one-rule changes took 4.1 and 8.2 ms.

Since then the conntrack dump that revokes connections is asked as soon
as the bundle answers. A unixctl call on a kept connection writes its
request in its caller's own step (before, the exchange ran in a task of
its own, so the request went out only after whatever the caller did
next), and the proof's fingerprint and the stored form are worked out
while ovs-vswitchd answers. A timeline of 150 one-rule changes at 100
rules, the two codes taking turns: 1.95, 1.76, 1.99 against 1.83, 2.09,
2.27 ms (the revoke now ends with the read-back instead of ~0.2 ms after
it). At 1,000 rules seven such pairs stay within their scatter (4.96-8.09
against 5.29-7.71 ms): there the dump is asked while ovs-vswitchd still
lists the flows, as before.

In the 03:56 run: a one-rule change 3.1 ms at 100 rules (0.21x OVN,
7.56x the channel floor) and 6.9 ms at 1,000 (0.18x), a fresh policy 4.9
ms (0.12x) and 18.5 ms (0.07x); right after OVN's round the one-rule
changes took 3.8 and 7.3 ms.

Two steps more since then:

- **The store's WAL is written over, not appended to.** SQLite starts its
  WAL over only once a checkpoint has copied all of it, by itself at
  1,000 pages (4 MB), so a daemon's first 4 MB of writes after every start
  appended, and an append's fsync also makes the file's new size durable
  (SQLite alone on this disk: ~0.33-0.42 against ~0.15-0.22 ms a commit).
  The store's writer now checkpoints after 16 commits as soon as nothing
  is queued. A timeline of 150 one-rule changes at 100 rules, three
  interleaved pairs: the commit's fsync 0.25, 0.35, 0.26 against 0.38,
  0.38, 0.40 ms, the whole apply 1.58, 1.88, 1.97 against 1.74, 2.08,
  2.18 ms. A 1,000-rule change's commit (ten pages of policy) gains
  nothing measurable: the device's flush of the pages is most of it.
- **A patched intent's places are patched in place**, not copied (they
  are the last intent's alone; the wanted mapping, which went to the
  last sync, still is): the intent of a one-rule change at 1,000 rules
  0.15, 0.22, 0.25 against 0.28, 0.35, 0.35 ms.

In the 04:20 run: a one-rule change 3.2 ms at 100 rules (0.21x
OVN, 7.85x the channel floor) and 5.5 ms at 1,000 (0.16x; OVN itself was
faster than in the 03:56 run, 33.6 against 37.4 ms), a fresh policy 4.4
ms (0.12x) and 17.4 ms (0.07x); right after OVN's round the one-rule
changes took 3.9 and 6.8 ms.

Since then a one-cookie change is verified from the switch's own report
of it instead of a read-back (`ovs/ofwatch`). Each connection of the
daemon asks ovs-vswitchd first for an ONF flow monitor of every table,
its own changes reported in full (built by hand: os-ken's encoder leaves
out the `ofp_match` header OVS requires). The update of a bundle's add
comes before the bundle's commit reply, its match and instructions byte
for byte those of the flow's flow-stats entry. So a sync collects its
cookie's updates and, once the barrier answers, takes exactly the
deletes and adds it sent for the verification a read-back gave; every
reply is stamped with the watch's count, and a cookie read (or so
verified) at a count and not changed since, from any connection, needs
no read. An add of another cookie at one of its places counts as a
change of it (ovs-vswitchd reports a replacing add only as the add), and
anything that leaves the report incomplete (a pause, an abbreviated or
unreadable update, a bound reached, a new connection) counts for every
cookie: those syncs read back as before. A timeline at 1,000 rules:
the bundle's barrier at 1.4 ms, the revoke from 1.6 to 2.4 ms, the
commit from 2.5 to 3.7 ms, where the read-back took the switch 1.3-1.6
ms and the reader 1.0-1.1 ms. Back to back in one process, interleaved
with the monitor off: 3.7 and 4.5 against 5.0 and 4.6 ms at 1,000 rules;
at 100 rules the read-back was no longer than the conntrack dump beside
it, and nothing moves.

The report is not free: every other flow change on the bridge comes
back as an update too, about 5 us a change for ovs-vswitchd and the
reader together (measured: bundles of a fresh policy's adds with an idle
monitoring connection beside them, 2.7-3.5 against 1.6-2.3 ms at 100
rules, 21.7 against 16-18 ms at 1,000), and past its backlog limit (128
kB) ovs-vswitchd pauses the monitor and reports again all that changed
meanwhile. The first full run with it (06:09) read the re-program at
1.79x the raw bundle, a fresh policy 6.4 and 24.1 ms. So bulk work (a
sync of many cookies, a replace, the cut of many attachments, a bundle
of more than 128 changes) now cancels the monitor, and the next read or
sync of one cookie asks for it again.

In the 06:33 run: a one-rule change 2.7 ms at 100 rules (0.18x OVN,
5.95x the channel floor) and 4.2 ms at 1,000 (0.12x), a fresh policy
5.4 ms (0.14x) and 18.3 ms (0.07x). In the 07:04 run (a reply to
a cancelled monitor request no longer vouching for anything; the
machine quieter): 2.2 ms at 100 rules (0.18x, 5.51x the channel floor)
and 3.3 ms at 1,000 (0.11x), a fresh policy 4.4 ms (0.14x) and 14.8 ms
(0.07x); right after OVN's round the one-rule changes took 2.9 and 4.2
ms. In the 19:16 run (the policy path unchanged since 07:04, the
machine slower: OVN's one-rule change at 1,000 rules 44.5 against 30.1
ms): 2.6 ms at 100 rules (0.20x, 6.71x the channel floor) and 5.0 ms at
1,000 (0.11x), a fresh policy 5.1 ms (0.14x) and 16.8 ms (0.06x); at
18:50, slower still (OVN 79.3 ms), the 1,000-rule change read 8.2 ms
(0.10x). At 00:15 (the policy path unchanged, the machine quick: OVN
36.3 ms): 2.0 ms at 100 rules (0.17x, 5.71x the channel floor) and 4.2
ms at 1,000 (0.11x), a fresh policy 4.3 ms (0.13x) and 15.3 ms (0.07x).
At 07:05 (unchanged again, the machine at its slowest: the whole run 672
s against 465, OVN 49.5 ms): 3.3 ms at 100 rules (0.19x, 6.53x) and 5.8
ms at 1,000 (0.12x), a fresh policy 5.8 ms (0.14x) and 20.5 ms (0.06x).
At 08:36 (unchanged; OVN 44.8 ms): 2.6 ms at 100 rules (0.18x, 6.42x
the channel floor) and 5.1 ms at 1,000 (0.11x), a fresh policy 5.2 ms
(0.14x) and 15.2 ms (0.06x). At 16:30 the same day (the policy path
unchanged, the machine slow again: OVN 52.5 ms, its fresh 1,000 rules
368 ms against 229): 2.8 ms at 100 rules (0.19x, 5.70x the channel
floor) and 5.6 ms at 1,000 (0.11x), a fresh policy 5.1 ms (0.15x) and
20.5 ms (0.06x). At 19:37 the next day, on another host of the same
size (an Intel Xeon where the runs before had an AMD EPYC), the policy
path unchanged (OVN 29.5 ms, its fresh 1,000 rules 178 ms): 1.8 ms at
100 rules (0.20x, 6.77x the channel floor) and 3.5 ms at 1,000 (0.12x),
a fresh policy 3.8 ms (0.16x) and 11.7 ms (0.07x). In the run above
(20:00, that host, the policy path unchanged: OVN 29.3 ms): 2.0 ms at
100 rules (0.20x, 6.90x the channel floor) and 3.5 ms at 1,000 (0.12x),
a fresh policy 3.9 ms (0.16x) and 12.1 ms (0.07x). The ratios hold
where the milliseconds move with the machine. The channel floor stays out of reach by design: three times
its 0.27-0.5 ms is about what the durable commit and the read-back take
together, before the conntrack revoke that every verified apply makes
beside its bundle. On this machine's disk a commit of the store (WAL,
`synchronous=FULL`) takes 0.36 ms at the median (0.016 ms with
`NORMAL`; an fdatasync alone 0.125 ms), and it cannot start before the
read-back (or the flow monitor's report) has said whether the switch
took the change: what is recorded
as applied must be what the switch holds, also after a crash.
"""


STORAGE = """\
## Validating and storing a policy

`python -m bench.storage [--reps N]` (no root, no switch) times the three
steps of a policy change that are not the switch's: validating the
gateway's NetworkScope message, encoding the Scope for the store, and
decoding a stored row back into a validated Scope; each fresh (nothing
remembered) and as a one-rule change (the previous policy remembered,
rule 0 new each time), beside the canonical-JSON form the store wrote
before. p50 of one run on the machine above while other work shared it
(runs differ by up to 2x); "before" is the code before rules were
remembered (validation of the message; `json.dumps` of the proto3 JSON
mapping; `json_format` parsing it back), where a one-rule change cost what
a fresh policy does:

| rules | step | before | after, fresh | after, 1-rule change |
|---|---|---|---|---|
| 10 | validate | 0.21 ms | 0.37 ms | 0.05 ms |
| 10 | encode | 0.20 ms | 0.09 ms | 0.02 ms |
| 10 | decode | 0.51 ms | 0.20 ms | 0.05 ms |
| 100 | validate | 5.09 ms | 2.08 ms | 0.13 ms |
| 100 | encode | 4.71 ms | 0.74 ms | 0.04 ms |
| 100 | decode | 8.57 ms | 1.98 ms | 0.13 ms |
| 1,000 | validate | 31.5 ms | 32.9 ms | 1.11 ms |
| 1,000 | encode | 42.0 ms | 7.96 ms | 0.25 ms |
| 1,000 | decode | 57.5 ms | 50.2 ms | 1.21 ms |

The store keeps the NetworkScope's protobuf binary encoding, put together
from each rule's encoding, remembered per Rule value (a serialized message
followed by another parses as the two merged, so the bytes are the
library's own); validation remembers each valid rule per encoding, since a
rule's validity and meaning depend on its own fields alone. What a
1,000-rule change still pays is a lookup per rule (serialising each rule
message for its key, about 1 µs) and building the Scope's tuples.
"""


def _machine(results: Mapping[str, Any]) -> str:
    m = results["machine"]
    return (
        f"Run of {results['generated_at']} ({results['duration_s']:.0f} s), "
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, kernel {m['kernel']}, "
        f"Python {m['python']}, {m['ovs']}, {m['ovn']}."
    )


def _after_ovn(results: Mapping[str, Any]) -> str:
    rows = [r for r in results.get("policy", {}).get("rows", []) if r.get("daemon_after_ovn_ms")]
    if not rows:
        return ""
    kinds = {"fresh": "fresh", "change": "1-rule change"}
    parts = [
        f"{kinds.get(r['kind'], r['kind'])}, {r['rules']} rules: {r['daemon_after_ovn_ms']['p50']:.1f} ms"
        for r in rows
    ]
    return "The daemon right after OVN's round (p50, one repetition in three): " + "; ".join(parts) + "."


def _settings(results: Mapping[str, Any]) -> str:
    s = results["settings"]
    reps = ", ".join(f"{n} rules x {r}" for n, r in s["reps_by_size"].items())
    return (
        f"Repetitions: {reps}. Attach: {s['attaches']} per series, {s['clients']} clients. "
        f"Scale: {s['scale']} attachments x {s['scale_rules']} rules."
    )


WHERE_ATTACH_TIME_GOES = """\
## Where the time goes (attach)

`python -m bench.profile_attach [--attaches N] [--clients C]` runs the
attach case (BASELINE, WAIT_INITIAL, then C concurrent clients) against a
daemon started under it that times every step of Attach and Detach
(store calls, SQLite commits, OVSDB, eswitch, OpenFlow and conntrack
calls, every process spawned), reports its CPU time (all threads) from
the first Attach on, and profiles its event loop.

Per attach + detach cycle, on the emulated eswitch:

| work | before | after |
|---|---|---|
| `ip` processes (emulated eswitch) | 6.7, one after another | 3.6, the two of prepare side by side |
| SQLite commits (fsync each) | 5.7 | 5.4 (WAIT_INITIAL: its policy and BOUND in one) |
| OVSDB transactions | one per port change, the ofport polled every 20 ms on the OVSDB thread | concurrent changes in one, the ofport read with the commit or awaited on a change notification |
| health checks of the Attach gate | one per attach that finds the cache expired | one shared by all of them |
| store reads | behind every other caller's commit | on their own connection and thread |
| `ovs-ofctl` / `ovs-appctl` processes | 8.9 / 3.4 | unchanged: the OpenFlow channel and unixctl take them off the path |

With 8 concurrent port additions on a private OVS the OVSDB part takes
~34 ms instead of 73-91 ms; one alone costs what it did (~7 ms), and
removals (~12 ms each, also in one transaction) are the server's own
work. On the loaded 2-core machine the attach case moved within its
noise (BASELINE p50 47 vs 49 ms, WAIT_INITIAL 71 vs 76 ms, 15.5 vs 13.9
attaches/s with 8 clients, one interleaved pair of runs), because the
`ovs-ofctl`/`ovs-appctl` processes were still ~80% of an Attach. With
those gone too (the table above), BASELINE is 17.1 ms, WAIT_INITIAL 19.3
ms and 8 clients reach 36 attaches/s. What is left of an Attach is the
switch's: one OVSDB transaction, the OpenFlow flows, the zone limit beside
the port, two commits, and on the emulated eswitch the two `ip` processes
of prepare.

### Concurrent attaches

With 8 clients an Attach (or Detach) mostly waited: for the store's
thread, whose commits (an fsync each, ~4 ms on this disk) ran one after
another; for the one connection to ovs-vswitchd's control socket, where
every zone-limit call waited for the one before it; for `ip` processes;
and, once a second, for the Attach gate's health check, whose `ip link
show` took 30 ms idle and ~200 ms on the loaded machine. Now (the counts
are per attach + detach cycle, from `bench.profile_attach --attaches 48
--clients 8`, both trees in one run):

| work | before | after |
|---|---|---|
| store writes | one commit (fsync) each, one after another | the writes queued while one commits go in one transaction with one commit (group commit); each answered only once that commit is durable; a failed commit fails every write of its group and keeps none |
| control-socket round trips | 3.4 (zone limit; flush; limit removal) | 2.2: calls asked during an exchange share the next one; flush and limit removal in one |
| Detach after the flows are gone | meter, flush, limit, port, one after another | the port removed while the meter, entries and limit go |
| `ip` processes (emulated eswitch) | 3.4: two in prepare, one in release, the health check's | 1.0 (release): the representor's state and the function's MAC and up state by ioctl on a socket made in the namespace |
| the Attach gate's health check (emulated) | 196 ms each (an `ip` process) | 1.5-2.3 ms |
| store hops of an Attach / a Detach | the stored policy read after the plug / four reads | read while the device is plugged / two |

Under 8 clients the groups stay small (per cycle ~5 commits of one write,
0.35 of two or three, 0.12 of four or more): on this
machine the store's thread is not the bottleneck at these rates, and a
write alone costs what it did; the grouping is what keeps the store from
becoming the serial step at 60 attaches/s (4 commits per cycle x ~4 ms
would fill its thread at ~60/s).

The run also found the switch watch re-programming the whole switch in
the middle of the storm ("port pf0vf1 is now OpenFlow port none"): it read
the BOUND attachments, then the ports, and a Detach removed a port in
between. Every Attach and Detach then failed with UNAVAILABLE until the
re-programming ended. A loss is now confirmed by a second look before it
counts.

The attach case, `.venv/bin/python -m bench --cases attach --no-ovn
--no-docs --attaches 48`, before (the tree this work started from) and
after, two interleaved pairs on the shared 2-core machine while other
work loaded it (load average ~10; absolute times are 3-5 times those of
a quiet run, the ratios are the figures to read):

| p50 | before | after | after/before |
|---|---|---|---|
| attach BASELINE | 92.7 / 79.7 ms | 31.6 / 37.0 ms | 0.40 |
| attach WAIT_INITIAL | 100 / 72.1 ms | 38.1 / 36.6 ms | 0.43 |
| 8 clients | 8.5 / 9.2 attaches/s | 19.4 / 14.1 attaches/s | 1.9 |

Per step (`bench.profile_attach`, same load), the emulated eswitch's
prepare went from 89 to 2.3 ms and the health check of the Attach gate
from 196 to 2.3 ms. What is left of an attach + detach cycle is the
switch's and the store's: OVSDB (1.7 transactions per cycle, each waiting
for ovs-vswitchd to apply it: ~60 ms to the new port's number under this
load, ~55 ms to a removal), the OpenFlow flows (read, bundle, read back:
~22 ms), two control-socket round trips (zone limit; flush and limit
removal), four commits, and in Detach one `ip` process clearing the
released function (~100 ms here, ~5 ms on a quiet machine).
The figures of the last full run are in the table at the top.

### Overlapping the switch's waits

What an attach + detach cycle waited for under 8 clients was mostly
ovs-vswitchd applying OVSDB transactions. ovsdbapp's own Open_vSwitch
transaction holds its connection thread until ovs-vswitchd reports the
change applied (`cur_cfg` reaching the transaction's `next_cfg`), so a
second transaction could not even be sent before the first was applied:
the port changes merged into one transaction, but the transactions went
one after another, each a whole reconfiguration long. Now:

| work | before | after |
|---|---|---|
| an OVSDB port change | committed, then ovs-vswitchd's apply awaited on ovsdbapp's connection thread (nothing else sent meanwhile); a new port's number read on the worker after it | committed alone; its caller awaits the apply on the loop (the `cur_cfg` and the new port's number come with the IDL's change notifications), while the next transaction is committed and ovs-vswitchd applies whatever has been committed when it looks |
| a VF's port and its function (Attach) | function prepared, then its representor put on the bridge | side by side (a VF's representor exists before its function is prepared; no flow lets its traffic in before the policy's); a port refused meanwhile (e.g. a representor the prepare had to make) is added again after it; SFs unchanged |
| a VF's function (Detach) | released after its port was removed | released while its port is removed (its representor stays; an SF's goes with it, so it still waits) |
| the switch watch's second look | any loss confirmed it | only the same one: under the storm the second look could catch another detach's moment, and the whole switch was re-programmed in the middle of it (every Attach and Detach UNAVAILABLE meanwhile) |

Concurrent first-policy flow installs already overlap: the OpenFlow
channel sends each exchange as soon as it is asked for and matches the
replies by xid, so one attachment's bundle does not wait for another's;
merging them into one bundle would save ovs-vswitchd a few messages per
attachment but make one attachment's refused flow fail the others' bundle.

`bench.profile_attach --attaches 48 --clients 8`, the tree before and
after, one after the other on the shared machine (load average 3-4),
per call:

| step | before | after |
|---|---|---|
| Attach (whole) | 49.3 ms | 40.9 ms |
| Detach (whole) | 79.2 ms | 52.0 ms |
| OVSDB transaction on its thread | 16.0 ms | 9.6 ms |
| `ovsdb.ensure_port` / `ovsdb.delete_port` | 27.0 / 36.7 ms | 22.4 / 32.5 ms |
| 8 clients | 21.1 attaches/s | 34.4 attaches/s |

The attach case (`.venv/bin/python -m bench --cases attach --no-ovn
--no-docs --attaches 60`), six interleaved before/after pairs; then
five pairs of 60 sequential BASELINE cycles and a storm of 8 clients x
12 cycles on one daemon, its CPU seconds read from `/proc/PID/stat`
before and after each; means, on the same loaded machine (load average
3-5: single runs scatter by +-20%):

| | before | after | after/before |
|---|---|---|---|
| attach BASELINE p50 (bench case) | 19.5 ms | 20.0 ms | 1.03 |
| attach WAIT_INITIAL p50 (bench case) | 23.6 ms | 23.8 ms | 1.01 |
| 8 clients (bench case) | 24.4 attaches/s | 26.2 attaches/s | 1.07 |
| BASELINE p50, 60 sequential | 21.1 ms | 21.1 ms | 1.00 |
| 8 clients, storm of 96 | 24.7 attaches/s | 27.7 attaches/s | 1.12 |
| daemon CPU per sequential attach + detach | 23.2 ms | 25.7 ms | 1.11 |
| daemon CPU per attach + detach in the storm | 19.9 ms | 20.6 ms | 1.04 |

The gateway answers each new sandbox it has no policy for with a
withdrawal, and that cost every Attach and Detach of the storm a store
commit and two reads of every BOUND attachment; a withdrawal with
nothing to withdraw now reads the sandbox's policy version (no commit)
and a transition of a few sandboxes reads only their attachments.

OVSDB's updates are now parsed by the ovs library's C parser where the
distribution has it (`ovs/json_parser`): two interleaved pairs of the
attach case (`--attaches 100 --no-ovn`), C against pure Python: BASELINE
14.0 / 14.9 against 15.7 / 15.3 ms, 8 clients 37.3 / 39.0 against 35.9 /
33.8 attaches/s. In the 18:35 run BASELINE was 14.1 ms, WAIT_INITIAL 18.3
ms and 8 clients reached 40.2 attaches/s (the full run before the parser:
15.1 ms, 19.4 ms, 34.5/s); in the 20:21 run, with the attach path
unchanged, 15.9 ms, 21.5 ms and 35.1/s, and in the 22:58 run (an Attach
now also carries its flow proof to the store) 13.8 ms, 19.0 ms and
41.0/s: runs on this machine differ by that much. What bounded the storm is the daemon's CPU: ~20 ms per attach +
detach cycle, half of one core, of which (`py-spy record --gil`) ~60% on
the event loop (gRPC with mTLS, the Attach and Detach steps), ~20% on
ovsdbapp's thread parsing OVSDB's JSON in pure Python (the ovs
library from PyPI comes without its C parser, `ovs._json`, which needs
Open vSwitch's own library to build; Debian's `python3-openvswitch` has
it) and ~10% in the store; 60 attaches/s needs under ~10 ms a
cycle. A lone Attach's OVSDB part (~5 ms commit round trip, ~1.5 ms for
ovs-vswitchd to apply it) is a wait that batching cannot take away.

Since the 22:58 run an Attach and a Detach read by key (the attachment,
its fence) on the loop instead of the store's reader thread (about 0.15
ms a read less), and a caller's identity is read from its certificate
once instead of twice a call (~50 us each). In three rounds of the attach
case (`--no-ovn`) of the code before (8a4cdfb), the code with the
reads and the code with both, taking turns: 8 clients 37.4, 42.5, 34.1 against 38.1, 36.1, 41.4
against 39.5, 38.3, 37.2 attaches/s, BASELINE 14.2-16.3 ms against
14.9-17.4 against 15.3-22.0: within the scatter of single runs.

The storm gains what the overlaps save; a cycle alone gains nothing
measurable (its port change was already one transaction) and costs the
daemon a little more CPU, a difference not traced to one step and within
the scatter of single runs. On this machine the daemon's CPU is what
bounds the storm: with other work loading both cores it gets about half
of one, and at ~20 ms a cycle that is ~25-30 cycles a second. 60
attaches/s would need the cycle under ~10 ms of daemon CPU (one core
minus ovs-vswitchd's and the clients' share); a `py-spy record --gil`
sample of the storm before this change puts ~60% of the daemon's
GIL-holding time on the event loop (gRPC with mTLS, the Attach and
Detach steps), ~20% on ovsdbapp's connection thread (the ovs library's
pure-Python JSON reader parsing the IDL's updates) and ~10% on the
store's threads. BASELINE is one attach alone: its ~6 ms of
OVSDB (~5 ms of it the commit round trip through ovsdbapp's threads, ~1.5
ms ovs-vswitchd adding the port) is a wait no batching removes.

ovsdbapp's IDL sleeps 0 s before every row of an update, a yield for
green threads. In the daemon each such sleep handed the interpreter to
the busy event loop and waited to get it back, so under load a port
change's update, and the caller's answer, came late. The replica no
longer sleeps. Storms of 8 clients x 50 and x 100 cycles, the two codes
taking turns: 47.2, 46.6, 42.7 against 43.1, 41.5, 41.1 attaches/s; one
client's cycle 38.3 against 44.1 ms.

What bounded the storm next was ovs-vswitchd removing ports. On a private
OVS, `ovs-vsctl` adds a port in ~10 ms (about 6 of them the process) and
removes one in ~20 ms; 8 additions in one transaction take 12-14 ms, 8
removals 108-146 ms: removals do not batch. `strace` of ovs-vswitchd
shows why: its main thread spends ~11 ms of each removal in the close()
of the port's packet socket (the userspace datapath receives a system
port through an AF_PACKET socket, and the kernel waits for an RCU grace
period when one is released), and answers nothing else meanwhile - no
other attachment's flows, conntrack calls or OVSDB changes.

So a Detach now parks a VF's port instead of removing it
(`coordinator/dataplane_parking.py`): with its flows gone, its OpenFlow
config is set to NO_RECV NO_FWD NO_PACKET_IN (nothing it sends is taken
in; nothing, floods included, is sent out of it) and its ids to
role=parked; the VF's next Attach takes it back (its ids replaced, its
bits cleared) with nothing for ovs-vswitchd to add. Sequential cycles (1
client x 60, the dev stack, the two codes taking turns): 37.7 and 40.8
against 29.3 and 25.0 cycles a second, Attach 11.5-12.7 against
12.7-15.3 ms, Detach 12.8-13.5 against 20.3-24.0 ms.

The storm of 8 clients gains little: 41.5-48.3 against 40.8-45.6
attaches/s over three runs each; 2, 4, 8 and 16 clients reach 40, 45,
45 and 55. What bounds it now is the daemon's interpreter: ~18 ms of CPU
per cycle over all its threads (~8.5 on the event loop, the rest on
ovsdbapp's connection thread, the store's threads and the thread pool),
one GIL among them, held ~80% of the storm's wall time, while no other
resource is half busy (ovs-vswitchd's main thread ~7.5 ms a cycle, the
machine ~1.4 of its 2 cores). 60 attaches/s needs that under ~13 ms a
cycle. In the 03:56 run: BASELINE 12.7 ms, WAIT_INITIAL 18.7 ms, 8
clients 42.4 attaches/s; 04:20: 12.6 ms, 16.2 ms and 46.4/s; 06:33:
11.2, 17.8 and 42.8; 07:04: 10.4, 15.9 and 45.9 (the 8-client storm
reads 38-48 from run to run); 19:16 (a VF's port parked at Detach):
BASELINE 13.7 ms, WAIT_INITIAL 15.0 ms, 8 clients 45.8/s (18:50, the
parking's first commit: 14.8, 18.0 and 47.3).

Part of that CPU was not ours. Relabelling a parked port (its
`external_ids` replaced at Attach and at Detach) went through a
transaction that bumped the switch's `next_cfg`, and ovs-vswitchd answers
every bump with a reconfiguration of the whole switch (`bridge_reconfigure`:
every bridge, port and interface looked at again), although it reads no
`external_ids`. Counted with `ovs-appctl coverage/show` on a private OVS:
20 `ovs-vsctl --no-wait set port ... external_ids` added no
`bridge_reconfigure`, 20 waited ones added 20. A relabel now leaves
`next_cfg` alone and so waits for no ovs-vswitchd; in a storm the
daemon's CPU fell from ~15 to ~12.5 ms a cycle. (Each cycle still costs
about 2.5 reconfigurations, from the emulated eswitch's link changes of
its veth pairs; a real eswitch's representors do not toggle so.) The
first full run after it (00:15): BASELINE 9.3 ms, WAIT_INITIAL 9.7 ms, 8
clients 69.4/s. At 07:05, the machine at its slowest (see above): 14.1
ms, 17.8 ms and 40.4/s. At 08:36: 10.4 ms, 12.4 ms and 63.1/s.

Since then the API listener is the daemon's own front (it accepts TCP
and relays each connection to gRPC on a unix socket, so that silent
sockets cannot hold every slot), and a parked VF's representor is set
down at Detach and up at its next Attach. The front cost about 1 ms per
Attach in quiet pairs against the code before it (8.7/10.0/8.4 against
7.5/7.9/8.8 ms; 8 clients within the noise). The 16:30 run fell in a
slow window of the machine: 12.0 ms, 19.1 ms and 46.5/s. Right before
it, the attach case alone, alternately on this code and on the code
before the representor change: BASELINE 13.2 and 12.2 against 13.6 and
15.8 ms, 8 clients 36.9 and 55.5 against 39.1 and 40.2/s - the window,
not the change. On the Intel host the next day, the attach path
unchanged: 7.3 ms, 9.3 ms and 74.7/s at 18:27, 7.0 ms, 9.2 ms and
74.1/s at 19:37, and in the run above (20:00) 7.5 ms, 9.2 ms and
73.5/s.
"""


SCALE = """\
## Where the time and the memory go (scale)

`python -m bench.profile_reconcile --attachments N` sets up N attachments
once and then times and profiles a no-drift restart reconcile, each in a
fresh process, of this checkout or an earlier one (`serve`: the daemon's
start until Health, and its RSS read as the scale case reads it).

- **Restart reconcile** reads the switch once: the flows `Dataplane.facts`
  read (beside the OVSDB reads and the eswitch's prepared functions) are
  what the reconcile diffs against; when every attachment's cookie still
  holds flows, the read flows are compared with the intent by canonical
  key alone (no flow-mods laid out; now in `ovs/ofsweep`), and
  any difference falls back to the full verified sync. Every stored
  policy comes in one read, each distinct stored value decoded once. The
  emulated eswitch checks and sets up all its representors with one
  `ip -batch`. In that version's full run: start until Health 17.2 to
  6.3 s, the reconcile 6.6 to 5.7 s. What was left, by the profile: computing the
  canonical keys of ~60,000 intended flows (their match fields are the
  attachments' own, so the memoised pieces rarely hit), parsing the flow
  dump, and compiling 1,024 attachments.
- **RSS**: os-ken's OpenFlow 1.3 codec without its package initialisers
  (which loaded every OpenFlow version, its packet library and
  oslo.config) and the ovs library without eventlet (~22 MB); the OVSDB
  IDL replicating only the columns the daemon uses (not Interface
  statistics: ~13 KB a port); the channel's memos bounded to a few
  policies' worth of whole encodings, their pieces longer; slotted
  per-flow values and the reader sharing equal match fields and
  instructions. Measured with the daemon on a no-drift 1024 x 32 state:
  204 to 143 MB (idle, no attachments: 100 to 77 MB); that version's full run, whose
  first start also corrects the setup's DEGRADED attachments and keeps
  the compile memos of this version, reads 162 MB. What was left then was
  the start-up reconcile's peak: Python's allocator gives an arena (1 MB)
  back only once nothing in it lives, and every flow of the switch read,
  every intended flow compiled and keyed (and, with any drift, encoded
  and read back) at once left ~107 arenas holding ~44 MB of live objects.
  The reconcile now compiles each attachment's flows when it compares
  them and lets them go (`ovs/ofsweep`: only the keys stay, the ones
  equal to a key read being the read one, to decide which attachment
  wins a flow two claim), syncs only the attachments that differ, one
  bundle and read-back per range of 128 slots, and starts the reader's
  and encoder's memos of single flows over after it (kept, the last few
  thousand of the switch's hold ~10 MB of arenas). Measured with
  `profile_reconcile`'s `serve` on one 1024 x 32 state (59,405 flows),
  the previous commit and this one taking turns: no drift 165 to 111-114
  MB; eight attachments' flows deleted before the start (it repairs them)
  191 to 114 MB; every attachment's flows gone (all re-installed) 211 to
  116 MB. The traced peak of Python's allocations went from 120 to 82 MiB
  and 54 arenas are left instead of 107; the no-drift reconcile's CPU
  time, median of seven alternating runs each, 5.0 s against 4.8 s (two
  shared cores: +-0.4 s). Of ~113 MB, shared libraries are ~38 MB (grpc,
  cryptography, libpython, libcrypto) and ~42 MB is live; the rest is
  what the peak of the one read of every flow of ours (~22 MB parsed)
  and of the intended keys left.
- **Re-program** after a vswitchd restart sends every flow again, a
  range of 128 slots at a time; each range is now compiled and encoded
  while the range before it is in the switch, and sent once that one is
  verified (`ovs/ofsweep`), so the switch's work and the daemon's overlap
  instead of taking turns. On one 1024 x 32 state (59,405 flows): a range
  of ~7,400 flows takes the switch 2.4-2.9 s from its bundle to its
  verified read-back, and the next range's compile and encode (~0.5 s of
  the loop's CPU) falls inside it; ovs-vswitchd alone takes 16.3 s for
  all the flows as one raw `ovs-ofctl --bundle add-flows` and 17.6-19.1 s
  as eight bundles of the ranges (run after one another on that state,
  read-backs included or not). The re-program itself, on another such
  state, the code before this work and this one taking turns, two
  re-programs each of four daemons: 24.0, 22.6, 18.6, 21.6 s against
  19.7, 17.5, 17.4, 20.2 s, the raw bundle 16.3 s; the daemon's RSS after
  a re-program 113-115 against 117-121 MB (two ranges' flows are held at
  once), after its start 100 MB both. In that version's full run (20:21):
  25.0 s against 16.8 s for the raw bundle, 1.49x (1.65x and 1.40x in the
  two full runs before it, 20.8 / 12.6 s and 24.0 / 17.1 s: the raw
  bundle's own time moves by a third between runs); in the 22:58 run,
  with that code unchanged, 1.22x (below).
- **Flow proofs**: a restart no longer compiles what it can show
  unchanged. Each verified sync leaves a proof in the store
  (`flow_proofs`, written with the store's next commit, the apply's
  own): the fingerprint of what the attachment's flows are compiled from
  (its OpenFlow port, MAC and slot, its scope, the pipeline, every file of
  the daemon's package and os-ken's version) and the digest of what the
  switch then held (the count of the flows and a hash of their 128-bit
  marks in sorted order, a mark per flow as the flow-stats reply spells
  it, counters left out; a sum of the marks, as first built, could be
  made to collide by choosing the flows). A start digests
  its one dump of our flows per cookie without parsing a flow; when every
  attachment's proof holds, and every cookie that took one of its places
  is still one of them holding what it held, nothing is compiled, keyed
  or sent. Anything else - a flow changed behind the daemon's back, a
  policy stored while it was down, another version of the daemon, a
  proof that does not read - takes the whole compare as before, which
  proves every attachment again. The dump starts before OVSDB is
  connected, so ovs-vswitchd works through it while the daemon's replica
  of OVSDB fills. On one held 1024 x 32 state (`profile_reconcile
  --hold`, one session): the no-drift reconcile took 4.9-6.0 s with the
  code before, 1.4-1.6 s with the proofs and 1.0 s with the early dump
  as well; `serve` until Health 1.9 s, RSS 89.6 MB (no flow parsed).
  What is left of that second: OVSDB's initial sync of a thousand ports
  (~0.5 s, ~0.35 s of it the ovs library's Python IDL on ovsdbapp's
  thread), the dump's wait and digests, the bridge and the store's reads.
  A one-rule change pays for its proof a digest of the read-back's marks
  (a sum over 1,027 flows took ~0.06-0.09 ms; the sorted hash that
  replaced it after the 22:58 run, a sort more) and a fingerprint of the scope (each
  rule's text worked out once; 0.4-0.6 ms at 1,000 rules, worked out
  while the switch reads back since the 22:58 run) - within the noise of
  the policy case (ours/floor in one pair of runs at
  100 and 1,000 rules: 0.47x and 0.97x before, 0.41x and 0.83x after).
- **In the 22:58 run** (the code of the proofs and the early dump,
  before the fingerprint moved beside the read-back): the no-drift
  restart reconcile 1.71 s (7.43 s in the full run before), within its
  2 s; the daemon's start until Health 5.87 s and its RSS 110 MB, both
  after a first start that corrected the setup's DEGRADED attachments
  and so compiled and compared everything; the re-program after an
  ovs-vswitchd restart 17.0 s against 14.0 s for the raw bundle, 1.22x.
- **In the 01:50 run**: the no-drift reconcile 2.12 s, the start
  until Health 6.77 s, RSS 113 MB, the re-program 20.8 s against 12.1 s
  for the raw bundle (1.72x; the raw bundle's time and ours move apart
  by a third from run to run, see above). Nothing on those paths changed
  since the 22:58 run but the known flows' order and sorted marks kept
  beside them; on one held 1024 x 32 state the no-drift reconcile of the
  code before this session and of this code, taking turns, each after a
  first reconcile of its own (a change of code is a new fingerprint:
  4.3-4.5 s, compiling and proving everything): 1.015, 1.140, 1.007,
  1.049 s against 1.072, 1.220, 0.994, 0.995 s.
- **In the 03:56 run** (these paths unchanged): the no-drift reconcile
  1.66 s, the start until Health 5.92 s, RSS 112 MB, the re-program 18.4
  s against 17.2 s for the raw bundle (1.07x).
- **In the 04:20 run** (the store's WAL now checkpointed when idle):
  the no-drift reconcile 1.52 s, the start until Health 4.95 s, RSS 110
  MB, the re-program 16.5 s against 13.6 s for the raw bundle (1.22x).
- **In the 07:04 run** (the flow monitor cancelled for the
  re-program's and the reconcile's bulk work): the no-drift reconcile
  1.08 s, the start until Health 5.69 s, RSS 113 MB, the re-program 14.6
  s against 11.4 s for the raw bundle (1.29x); at 06:33, 1.52 s and
  1.38x. With the monitor left on
  (06:09): 22.6 s against 12.6 s (1.79x).
- **In the 19:16 run** (no port is parked in this case, so the
  bridge's set-up reads no port description): the no-drift reconcile
  1.89 s, the start until Health 5.84 s, RSS 112 MB, the re-program 21.7
  s against 14.2 s for the raw bundle (1.53x); at 18:50, before that
  read was skipped, 2.13 s and 1.44x with the raw bundle itself at 18.3
  s: the machine's speed moved that much between runs. At 00:15: 1.50
  s, 5.33 s, 110 MB, the re-program 17.6 s against 12.1 s (1.45x).
- **Since 07:05** the re-program and its raw bundle take turns three
  times and each side's median counts (one sample each before). At
  07:05, the machine at its slowest: the no-drift reconcile 1.65 s, the
  start until Health 6.20 s, RSS 117 MB, the re-program 23.0 s against
  16.3 s (1.41x). At 08:36: 1.76 s, 7.18 s, 113 MB, the re-program
  19.5 s against 15.6 s (1.25x). The run above (16:30, the slow window
  of the policy and attach cases): 1.75 s, 6.33 s, 110 MB, the
  re-program 23.0 s against 16.0 s (1.44x).
- **Ranges side by side** (`ovs/oflanes`). What bounded the re-program
  was not the switch's work but one connection: ovs-vswitchd takes a
  bounded number of messages from each OpenFlow connection per turn of
  its main loop, so one connection fed a bundle of ~60,000 adds over
  hundreds of turns. On one held 1024 x 32 state (59,410 flows) with
  `ovs-ofctl`: all of them as one bundle 8.0-8.6 s, as two bundles at
  once 4.7-5.0 s, as four at once 2.1-2.7 s. The sweep now sends each
  range (32 slots, ~1,900 flows) at once on the next of four connections
  (the daemon's and three without a flow monitor), each bundle staged
  there and committed only once the one before it is, so a place two
  cookies claim still ends with the later one's flow and a bundle whose
  predecessor was refused is discarded, never committed. Before, a range
  went out only once the one before it was verified, over the one
  connection: 8.2-9.8 s on that state. Committing a range before the
  previous one was verified, still over one connection, gained little
  (within the noise: 7.4-9.5 against 8.2-9.6 s): the switch's own
  read-back, not ours, sat between the bundles. On that state, with four
  connections: 16 or 32 slots a range 3.5-3.9 s, 64 slots 4.6 s, 128
  slots 5.3 s (and 146 MB resident after it, against 106-109 MB with 32
  slots); eight connections no faster than four; the raw bundle 5.6-6.7
  s. The run at 18:27 (before the change, on the same Intel host) read the
  re-program 10.27 s against 5.95 s (1.73x), the no-drift reconcile 1.07
  s and RSS 116 MB; the run at 19:37: 4.00 s against 5.63 s (0.71x),
  0.99 s and 113 MB.
- **Commits wait for the read-back before them.** The switch serves its
  connections in turns, so a commit sent on one once the commit before
  it was answered could still be taken before the read-back asked on
  another, which would then show a place the later range took as
  missing. A range's read-back now goes in its commit's own exchange and
  the next range's commit is written once it is answered; a range with
  nothing to send (which had let the range after it commit at once, even
  after a refusal) waits for the one before it too. On the held state:
  3.24-3.46 s against 3.08-3.21 s before, the raw bundle 5.47-5.49 s. In
  the run above (20:00): the re-program 3.79 s against 5.57 s (0.68x),
  the no-drift reconcile 0.90 s, RSS 111 MB.
"""


def render_docs(results: Mapping[str, Any]) -> str:
    parts = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`); do not edit by hand - edit `bench/docs.py`.",
        "",
        HOW_TO_RUN,
        "## Latest run",
        "",
        _machine(results),
        _settings(results),
        "",
        render_table(results),
        "",
        _after_ovn(results),
        "",
        MEANING,
        WHERE_THE_TIME_GOES,
        STORAGE,
        WHERE_ATTACH_TIME_GOES,
        SCALE,
    ]
    return "\n".join(parts).rstrip() + "\n"
