"""Case 5: Attach over mTLS against the daemon as its own process.

Latency: sequential attach -> detach cycles, timing only the Attach RPC
(BASELINE: the network class is enforced before it answers; WAIT_INITIAL:
the gateway's policy is fetched and enforced before it answers).
Throughput: 8 clients, each on its own channel, each attaching and
detaching in a loop; attaches per second of wall time (the detaches
included: the pool is small, as a DPU's is). Meanwhile an admin asks
Health in a loop on its own channel: its latency under the storm says how
much the attaches (store commits with fsync, OVS round trips) hold up other
RPCs.

The pool holds 16 VFs: the emulated eswitch checks every VF with its own
`ip link show` whenever Attach refreshes health (at most once a second),
so a pool of hundreds would mostly measure that emulation cost.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.devstack import attach, dev_stack, write_policy
from bench.policies import n_rule_mapping
from bench.stats import Summary, summarize
from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.client import CoordinatorClient
from coordinator.dev import env

WAIT_POLICY_RULES = 10
GATEWAY_POLL_S = 0.5  # the reference gateway rescans its directory every 0.2 s
POOL_VFS = 16


@dataclass(frozen=True)
class AttachResults:
    baseline: Summary
    wait_initial: Summary
    clients: int
    attaches: int
    throughput_s: float  # wall time of the concurrent run
    health_during_storm: Summary

    @property
    def per_second(self) -> float:
        return self.attaches / self.throughput_s

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline_ms": self.baseline.to_json(),
            "wait_initial_ms": self.wait_initial.to_json(),
            "wait_initial_policy_rules": WAIT_POLICY_RULES,
            "throughput": {
                "clients": self.clients,
                "attaches": self.attaches,
                "seconds": round(self.throughput_s, 3),
                "per_second": round(self.per_second, 1),
                "pool_vfs": max(POOL_VFS, self.clients),
            },
            "health_during_storm_ms": self.health_during_storm.to_json(),
        }


def _latency(endpoint: env.Endpoint, prefix: str, count: int, initial: int) -> Summary:
    samples = []
    with CoordinatorClient(endpoint.coordinator, endpoint.host_tls()) as client:
        for i in range(count):
            started = time.perf_counter()
            att = attach(client, f"{prefix}-{i}", initial)
            samples.append(time.perf_counter() - started)
            client.detach(att.attachment_id, att.lease_generation)
    return summarize(samples)


def _throughput(endpoint: env.Endpoint, clients: int, per_client: int) -> tuple[float, Summary]:
    """Wall time of the storm, and the latency of Health asked during it."""
    start = threading.Barrier(clients + 2)
    errors: list[BaseException] = []
    storm_over = threading.Event()
    health_s: list[float] = []

    def prober() -> None:
        with CoordinatorClient(endpoint.coordinator, endpoint.admin_tls()) as admin:
            admin.health()
            start.wait()
            while not storm_over.is_set():
                asked = time.perf_counter()
                admin.health()
                health_s.append(time.perf_counter() - asked)
                time.sleep(0.01)

    def worker(index: int) -> None:
        with CoordinatorClient(endpoint.coordinator, endpoint.host_tls()) as client:
            client.health()  # the channel is up before the clock starts
            start.wait()
            try:
                for i in range(per_client):
                    att = attach(client, f"tp-{index}-{i}", pb.INITIAL_POLICY_BASELINE)
                    client.detach(att.attachment_id, att.lease_generation)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    probe = threading.Thread(target=prober)
    for thread in [*threads, probe]:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    storm_over.set()
    probe.join()
    if errors:
        raise errors[0]
    return elapsed, summarize(health_s)


def run_attach_case(workdir: Path, count: int, clients: int, progress: Any) -> AttachResults:
    per_client = max(1, count // clients)
    with dev_stack(workdir, vfs=max(POOL_VFS, clients)) as endpoint:
        for i in range(count):
            write_policy(endpoint, f"wait-{i}", n_rule_mapping(WAIT_POLICY_RULES))
        time.sleep(GATEWAY_POLL_S)
        progress(f"attach latency: {count} x BASELINE")
        baseline = _latency(endpoint, "base", count, pb.INITIAL_POLICY_BASELINE)
        progress(f"attach latency: {count} x WAIT_INITIAL")
        wait_initial = _latency(endpoint, "wait", count, pb.INITIAL_POLICY_WAIT_INITIAL)
        progress(f"attach throughput: {clients} clients x {per_client}")
        seconds, health = _throughput(endpoint, clients, per_client)
    return AttachResults(baseline, wait_initial, clients, per_client * clients, seconds, health)
