"""coordinator.offload_status: cached dumps, per-attachment and total counts,
their proto form and the metrics gauges, against the captured and written
``dpctl/dump-flows -m`` samples of test_offload_parse."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.api import convert
from coordinator.eswitch.base import DeviceKind
from coordinator.health import HealthReport
from coordinator.metrics import Metrics
from coordinator.offload_status import OffloadMonitor, OffloadView
from coordinator.store.records import PoolStats
from tests.unit.test_offload_parse import KERNEL_TC_M, USERSPACE_M

FAKE_APPCTL = """\
import sys
from pathlib import Path
here = Path(sys.argv[0]).parent
calls = here / "calls"
calls.write_text(calls.read_text() + " ".join(sys.argv[1:]) + "\\n" if calls.exists() else " ".join(sys.argv[1:]) + "\\n")
fail = here / "fail"
if fail.exists():
    sys.stderr.write(fail.read_text())
    sys.exit(2)
sys.stdout.write((here / "dump").read_text())
"""


class FakeAppctl:
    """ovs-appctl answering a fixed dump (or failing), counting its calls."""

    def __init__(self, tmp: Path, dump: str) -> None:
        self.dir = tmp / "appctl"
        self.dir.mkdir()
        (self.dir / "appctl.py").write_text(FAKE_APPCTL)
        (self.dir / "dump").write_text(dump)

    @property
    def executable(self) -> tuple[str, str]:
        return (sys.executable, str(self.dir / "appctl.py"))

    @property
    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def fail(self, message: str) -> None:
        (self.dir / "fail").write_text(message)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def monitor(fake: FakeAppctl, clock: Clock, datapath_type: str | None, ttl: float = 5.0) -> OffloadMonitor:
    return OffloadMonitor(
        lambda: "/run/ovs/ovs-vswitchd.ctl",
        datapath_type=datapath_type,
        ttl_s=ttl,
        executable=fake.executable,
        monotonic=clock,
    )


async def test_kernel_tc_counts_total_and_per_representor(tmp_path: Path) -> None:
    fake, clock = FakeAppctl(tmp_path, KERNEL_TC_M), Clock()
    mon = monitor(fake, clock, "system")
    total = await mon.total()
    assert total.state is OffloadView.AVAILABLE
    assert (total.counts.offloaded, total.counts.partial, total.counts.not_offloaded) == (3, 0, 2)
    assert total.detail == "3 of 5 datapath flows offloaded"
    vf0 = await mon.for_ports(["pf0vf0"])
    # Its own egress flows (in_port) and the flows delivering to it (output).
    assert (vf0.counts.offloaded, vf0.counts.not_offloaded) == (3, 2)
    vf1 = await mon.for_ports(["pf0vf1"])
    assert (vf1.counts.offloaded, vf1.counts.not_offloaded) == (0, 1)
    nothing = await mon.for_ports(["pf0vf7", ""])
    assert nothing.counts.total == 0 and nothing.state is OffloadView.AVAILABLE
    assert fake.calls == ["-t /run/ovs/ovs-vswitchd.ctl dpctl/dump-flows -m --names"]


async def test_userspace_datapath_is_unavailable_not_an_error(tmp_path: Path) -> None:
    fake, clock = FakeAppctl(tmp_path, USERSPACE_M), Clock()
    total = await monitor(fake, clock, "netdev").total()
    assert total.state is OffloadView.UNAVAILABLE
    assert (total.counts.offloaded, total.counts.not_offloaded) == (0, 8)
    assert "datapath_type=netdev does not offload" in total.detail


async def test_one_dump_per_ttl_and_failures_are_cached_too(tmp_path: Path) -> None:
    fake, clock = FakeAppctl(tmp_path, KERNEL_TC_M), Clock()
    mon = monitor(fake, clock, "system", ttl=5.0)
    await mon.total()
    await mon.for_ports(["pf0vf0"])
    clock.now += 4.9
    await mon.total()
    assert len(fake.calls) == 1 and mon.dumps == 1
    clock.now += 0.2
    fake.fail("2023-01-01T00:00:00Z|ovs-appctl|WARN|cannot connect to /run/ovs/ovs-vswitchd.ctl")
    failed = await mon.total()
    assert failed.state is OffloadView.UNKNOWN and failed.counts.total == 0
    assert "cannot read datapath flows" in failed.detail
    assert (await mon.for_ports(["pf0vf0"])).state is OffloadView.UNKNOWN
    assert len(fake.calls) == 2


async def test_metrics_gauges(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    fake, clock = FakeAppctl(tmp_path, KERNEL_TC_M), Clock()
    await monitor(fake, clock, "system").update_metrics(metrics)

    def gauge(flag: str) -> float | None:
        return metrics.registry.get_sample_value("bluefield_coordinator_datapath_flows", {"offloaded": flag})

    assert (gauge("true"), gauge("false")) == (3, 2)
    (tmp_path / "down").mkdir()
    failing = FakeAppctl(tmp_path / "down", "")
    failing.fail("down")
    await monitor(failing, clock, "system").update_metrics(metrics)
    assert (gauge("true"), gauge("false")) == (3, 2)  # a failed dump keeps the last values


@pytest.mark.parametrize(
    ("dump", "datapath", "state"),
    [
        (KERNEL_TC_M, "system", pb.OFFLOAD_STATE_AVAILABLE),
        (USERSPACE_M, "netdev", pb.OFFLOAD_STATE_UNAVAILABLE),
    ],
)
async def test_proto_fields(tmp_path: Path, dump: str, datapath: str, state: int) -> None:
    mon = monitor(FakeAppctl(tmp_path, dump), Clock(), datapath)
    summary = await mon.total()
    response = convert.health_to_pb(
        HealthReport(()), [PoolStats(DeviceKind.VF, 2, 1)], "switchdev", "1.0", offload=summary
    )
    assert response.offload.state == state
    assert response.offload.offloaded == summary.counts.offloaded
    assert response.offload.not_offloaded == summary.counts.not_offloaded
    assert response.offload.detail == summary.detail
    # Without a monitor nothing is claimed.
    bare = convert.health_to_pb(HealthReport(()), [], "emulated", "1.0")
    assert not bare.HasField("offload")
