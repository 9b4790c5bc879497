"""The `ctl` subcommand's arguments. Imports only argparse: the commands
(and grpc) load when `ctl` runs, so the other subcommands start fast."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

CONNECTION_HELP = """connection (flag, else --workdir, else environment, else client config file):
  --target, --ca, --cert, --key, --server-name, --timeout
  BLUEFIELD_COORDINATOR_TARGET, _CA, _CERT, _KEY, _SERVER_NAME, _TIMEOUT
  --client-config F, BLUEFIELD_COORDINATOR_CLIENT_CONFIG or ~/.config/bluefield-coordinator/client.toml"""


def _common() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the subcommand is not reset by the
    # subcommand's own copy of it.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--target", default=argparse.SUPPRESS, help="HOST:PORT of the coordinator")
    group.add_argument("--ca", default=argparse.SUPPRESS, help="CA certificate that signed the coordinator's")
    group.add_argument("--cert", default=argparse.SUPPRESS, help="client certificate (PEM)")
    group.add_argument("--key", default=argparse.SUPPRESS, help="client private key (PEM)")
    group.add_argument(
        "--server-name", default=argparse.SUPPRESS, help="name expected in the coordinator's certificate"
    )
    group.add_argument("--timeout", dest="timeout_s", default=argparse.SUPPRESS, help="seconds per call")
    group.add_argument(
        "--workdir", type=Path, default=argparse.SUPPRESS, help="a `dev up` DIR: its endpoint.json, as admin"
    )
    group.add_argument("--client-config", type=Path, default=argparse.SUPPRESS, help="client config (TOML)")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON output (one line per event)"
    )
    return common


def _run(args: argparse.Namespace) -> int:
    # gRPC's core logs a failed TLS handshake on stderr; ctl reports the
    # call's error itself, in one line. Must be set before grpc loads.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from coordinator.ctl.commands import run

    return run(args)


def add_ctl_parser(sub: Any) -> None:
    """Adds `ctl` to the top-level subparsers ``sub``."""
    common = _common()
    ctl = sub.add_parser(
        "ctl",
        parents=[common],
        help="the admin's CLI: status, attachments, events, explain, detach, reconcile",
        description=CONNECTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = ctl.add_subparsers(dest="ctl_command", required=True)

    cmds.add_parser("status", parents=[common], help="health checks, pools, stream, offload, attachments")

    ls = cmds.add_parser("list", parents=[common], help="attachments as a table")
    ls.add_argument("--sandbox", default="", help="only this sandbox id")
    ls.add_argument("--host-instance", default="", help="only this host instance id")
    ls.add_argument("--state", choices=["attaching", "bound", "detaching"], default="")

    get = cmds.add_parser("get", parents=[common], help="one attachment in full")
    get.add_argument("attachment_id", metavar="ID")

    events = cmds.add_parser("events", parents=[common], help="the event log (and new events with --follow)")
    events.add_argument("--since", type=int, default=0, metavar="SEQ", help="after this seq (0: oldest kept)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")

    explain = cmds.add_parser(
        "explain", parents=[common], help="the policy's verdict for a packet, and the trace"
    )
    explain.add_argument("attachment_id", metavar="ID")
    direction = explain.add_mutually_exclusive_group(required=True)
    direction.add_argument("--egress", dest="direction", action="store_const", const="egress")
    direction.add_argument("--ingress", dest="direction", action="store_const", const="ingress")
    explain.add_argument("protocol", metavar="PROTO", choices=["tcp", "udp", "icmp", "icmpv6", "any"])
    explain.add_argument("src", metavar="SRC")
    explain.add_argument("dst", metavar="DST")
    explain.add_argument("ports", metavar="[SPORT] DPORT", type=int, nargs="*")
    explain.add_argument("--ct-state", default="new", choices=["new", "est", "rel", "inv"])
    explain.add_argument("--icmp-type", type=int, default=0)
    explain.add_argument("--icmp-code", type=int, default=0)

    detach = cmds.add_parser("detach", parents=[common], help="detach, fenced by the lease generation")
    detach.add_argument("attachment_id", metavar="ID")
    detach.add_argument("--generation", type=int, required=True, help="the attachment's lease_generation")
    detach.add_argument("--host-instance", default="")

    rec = cmds.add_parser(
        "reconcile", parents=[common], help="a host's Reconcile from a file of known attachments"
    )
    rec.add_argument("--host-instance", required=True)
    rec.add_argument("--authoritative", action="store_true", help="also release what the host does not know")
    rec.add_argument(
        "file",
        metavar="FILE",
        help="YAML/JSON list of {attachment_id, lease_generation, sandbox_id}; - = stdin",
    )

    ctl.set_defaults(func=_run)
