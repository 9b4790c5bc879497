"""The daemon's modules leave out what its libraries would import around the
parts it uses (coordinator/ovs/lean_imports.py): eventlet, os-ken's other
OpenFlow versions, its packet library and oslo.config. Checked in a fresh
interpreter, since the test process itself may import os-ken first; the
codec must still encode and parse there."""

from __future__ import annotations

import json
import subprocess
import sys

LEFT_OUT = (
    "eventlet",
    "greenlet",
    "dns",
    "oslo_config",
    "stevedore",
    "os_ken.ofproto.ofproto_protocol",
    "os_ken.ofproto.ofproto_v1_0_parser",
    "os_ken.ofproto.ofproto_v1_5_parser",
    "os_ken.lib.packet.tcp",
)

_PROBE = """
import json, sys
import coordinator.daemon
loaded = [name for name in json.loads(sys.argv[1]) if name in sys.modules]

from coordinator.flows.model import Flow, Output
from coordinator.flows.pipeline import load_pipeline
from coordinator.ovs.ofencode import encode_flow_add
from coordinator.ovs.ofmessages import parse
flow = Flow("egress_policy", 1000, (("dl_type", "0x0800"), ("nw_dst", "198.51.100.7")), (Output(3),), 0xBFC0_0000_0000_0001)
message = parse(encode_flow_add(flow, load_pipeline()))
from os_ken.ofproto import ofproto_v1_3_parser as parser
print(json.dumps({"loaded": loaded, "cookie": message.cookie, "packet": parser.packet.Packet.__module__}))
"""


def test_daemon_imports_leave_out_eventlet_and_the_rest_of_os_ken() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(LEFT_OUT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == []
    # The 1.3 codec works, and os-ken's packet module still loads when named.
    assert seen["cookie"] == 0xBFC0_0000_0000_0001
    assert seen["packet"] == "os_ken.lib.packet.packet"
