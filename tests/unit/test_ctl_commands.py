"""`ctl`'s own parsing of what an operator types: the packet of `explain`
and the known-attachments file of `reconcile`; mistakes name the argument."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.cli import build_parser
from coordinator.ctl.commands import UsageError, explain_request, read_known


def _explain(*argv: str) -> pb.ExplainPacketRequest:
    return explain_request(build_parser().parse_args(["ctl", "explain", *argv]))


def test_explain_ports_and_icmp() -> None:
    tcp = _explain(
        "A", "--egress", "tcp", "198.51.100.10", "203.0.113.5", "40000", "443", "--ct-state", "est"
    )
    assert (tcp.direction, tcp.protocol, tcp.src_port, tcp.dst_port, tcp.ct_state) == (
        pb.DIRECTION_EGRESS, policy_pb2.PROTOCOL_TCP, 40000, 443, "est")  # fmt: skip
    udp = _explain("A", "--ingress", "udp", "203.0.113.5", "198.51.100.10", "53")
    assert (udp.direction, udp.src_port, udp.dst_port, udp.ct_state) == (pb.DIRECTION_INGRESS, 0, 53, "new")
    icmp = _explain("A", "--egress", "icmp", "198.51.100.10", "203.0.113.5", "--icmp-type", "8")
    assert (icmp.protocol, icmp.icmp_type, icmp.dst_port) == (policy_pb2.PROTOCOL_ICMP, 8, 0)
    with pytest.raises(UsageError, match="DPORT or SPORT DPORT"):
        _explain("A", "--egress", "tcp", "198.51.100.10", "203.0.113.5")
    with pytest.raises(UsageError, match="no ports"):
        _explain("A", "--egress", "icmp", "198.51.100.10", "203.0.113.5", "80")
    with pytest.raises(UsageError, match=r"0\.\.65535"):
        _explain("A", "--egress", "udp", "198.51.100.10", "203.0.113.5", "70000")


def test_known_attachments_file(tmp_path: Path) -> None:
    path = tmp_path / "known.yaml"
    path.write_text("known:\n  - {attachment_id: a1, lease_generation: 2, sandbox_id: sb-1}\n")
    (known,) = read_known(str(path))
    assert (known.attachment_id, known.lease_generation, known.sandbox_id) == ("a1", 2, "sb-1")
    path.write_text('[{"attachment_id": "a1", "lease_gen": 2}]')
    with pytest.raises(UsageError, match=r"known\[0\].*lease_gen"):
        read_known(str(path))
    path.write_text("attachment_id: a1\n")
    with pytest.raises(UsageError, match="expected a list"):
        read_known(str(path))
    with pytest.raises(UsageError, match="absent"):
        read_known(str(tmp_path / "absent.yaml"))
    path.write_text("")
    assert read_known(str(path)) == []
