"""The `ctl` commands: each asks the coordinator through `coordinator.client`
(mTLS, retries of what is safe to repeat) and prints text or ``--json``.

Exit codes: 0 done, 1 the coordinator refused or could not be reached (one
line: the gRPC code and its message), 2 bad usage or connection settings,
130 interrupted. Never a traceback for any of these.
"""

from __future__ import annotations

import argparse
import datetime
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import grpc
import yaml
from google.protobuf import json_format

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.client import CoordinatorClient
from coordinator.ctl import render
from coordinator.ctl.settings import FLAG_NAMES, Connection, SettingsError, resolve
from coordinator.progress import Activity

PROG = "bluefield-coordinator ctl"
MAX_DETAIL_CHARS = 500
MAX_KNOWN_FILE_BYTES = 4 << 20
# Without --follow, `events` prints what the log holds and stops once the
# stream has been quiet this long (the server keeps a stream open forever).
EVENTS_IDLE_S = 1.0
POLL_S = 0.2
PROTOCOLS = {
    "any": policy_pb2.PROTOCOL_ANY,
    "tcp": policy_pb2.PROTOCOL_TCP,
    "udp": policy_pb2.PROTOCOL_UDP,
    "icmp": policy_pb2.PROTOCOL_ICMP,
    "icmpv6": policy_pb2.PROTOCOL_ICMPV6,
}
STATES = {
    "attaching": pb.ATTACHMENT_STATE_ATTACHING,
    "bound": pb.ATTACHMENT_STATE_BOUND,
    "detaching": pb.ATTACHMENT_STATE_DETACHING,
}


class UsageError(ValueError):
    pass


class Output:
    """Where a command writes: text lines, or one JSON value per line."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self._stream = stream if stream is not None else sys.stdout

    def emit(self, lines: list[str], value: object) -> None:
        text = render.json_line(value) if self.as_json else "\n".join(lines)
        if text:
            self._stream.write(text + "\n")
        self._stream.flush()


def run(args: argparse.Namespace) -> int:
    """The entry point `cli.py` dispatches `ctl` to."""
    out = Output(bool(getattr(args, "json", False)))
    try:
        connection = _connection(args)
        command = COMMANDS[args.ctl_command]
        with CoordinatorClient(
            connection.target,
            connection.tls,
            timeout=connection.timeout_s,
            server_name=connection.server_name,
        ) as client:
            return command(client, args, out, connection)
    except grpc.RpcError as exc:
        return _fail(f"{_code_name(exc)}: {_one_line(exc)}", 1)
    except (SettingsError, UsageError) as exc:
        return _fail(str(exc), 2)
    except BrokenPipeError:
        # The reader left (`ctl events | head`): not an error. Point stdout
        # at /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # Certificate files that are missing or unreadable.
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), 2)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _code_name(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name if code is not None else "UNKNOWN"


def _one_line(exc: grpc.RpcError) -> str:
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    text = " ".join(details.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "…"


def _connection(args: argparse.Namespace) -> Connection:
    flags = {field: getattr(args, field, None) for field in FLAG_NAMES}
    return resolve(
        flags, workdir=getattr(args, "workdir", None), client_config=getattr(args, "client_config", None)
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# -- commands -------------------------------------------------------------------------

Command = Callable[[CoordinatorClient, argparse.Namespace, Output, Connection], int]


def cmd_status(client: CoordinatorClient, args: argparse.Namespace, out: Output, conn: Connection) -> int:
    health = client.health()
    attachments = sorted(client.list(), key=lambda a: (a.sandbox_id, a.attachment_id))
    out.emit(
        render.status_lines(conn.target, health, attachments, _now()),
        {
            "target": conn.target,
            "health": render.to_json(health),
            "attachments": [render.to_json(a) for a in attachments],
        },
    )
    return 0


def cmd_list(client: CoordinatorClient, args: argparse.Namespace, out: Output, conn: Connection) -> int:
    state = STATES[args.state] if args.state else pb.ATTACHMENT_STATE_UNSPECIFIED
    attachments = client.list(sandbox_id=args.sandbox, host_instance_id=args.host_instance, state=state)
    attachments = sorted(attachments, key=lambda a: (a.sandbox_id, a.attachment_id))
    out.emit(
        render.list_lines(attachments, _now()), {"attachments": [render.to_json(a) for a in attachments]}
    )
    return 0


def cmd_get(client: CoordinatorClient, args: argparse.Namespace, out: Output, conn: Connection) -> int:
    attachment = client.get(args.attachment_id)
    out.emit(render.attachment_lines(attachment, _now()), render.to_json(attachment))
    return 0


def cmd_events(client: CoordinatorClient, args: argparse.Namespace, out: Output, conn: Connection) -> int:
    if args.since < 0:
        raise UsageError("--since: must be 0 or more")
    seen = [args.since]  # the last seq printed, for the waiting line
    with Activity(quiet=out.as_json or not args.follow) as activity:
        stream = _events(client, args.since, follow=args.follow, on_idle=activity.update, seq=lambda: seen[0])
        for event in stream:
            activity.clear()
            out.emit([render.event_line(event)], render.to_json(event))
            seen[0] = event.seq
    return 0


def cmd_explain(client: CoordinatorClient, args: argparse.Namespace, out: Output, conn: Connection) -> int:
    answer = client.explain(explain_request(args))
    out.emit(render.explain_lines(answer), render.to_json(answer))
    return 0


def cmd_detach(client: CoordinatorClient, args: argparse.Namespace, out: Output, conn: Connection) -> int:
    if args.generation < 1:
        raise UsageError("--generation: must be 1 or more (the attachment's lease_generation)")
    detached = client.detach(args.attachment_id, args.generation, host_instance_id=args.host_instance)
    text = f"detached {args.attachment_id}" if detached else f"{args.attachment_id} was already detached"
    out.emit([text], {"attachment_id": args.attachment_id, "detached": detached})
    return 0


def cmd_reconcile(client: CoordinatorClient, args: argparse.Namespace, out: Output, conn: Connection) -> int:
    known = read_known(args.file)
    mode = pb.RECONCILE_MODE_AUTHORITATIVE if args.authoritative else pb.RECONCILE_MODE_ADVISORY
    answer = client.reconcile(args.host_instance, mode, known)
    out.emit(render.reconcile_lines(answer), render.to_json(answer))
    return 0


COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "list": cmd_list,
    "get": cmd_get,
    "events": cmd_events,
    "explain": cmd_explain,
    "detach": cmd_detach,
    "reconcile": cmd_reconcile,
}


# -- helpers --------------------------------------------------------------------------


def _events(
    client: CoordinatorClient,
    since: int,
    *,
    follow: bool,
    on_idle: Callable[[str], None],
    seq: Callable[[], int],
) -> Iterator[pb.AttachmentEvent]:
    """The event stream read on a thread, so the wait can end: without
    ``follow`` after ``EVENTS_IDLE_S`` of quiet, with it on Ctrl-C (the
    channel is closed on the way out, which cancels the stream)."""
    items: queue.Queue[object] = queue.Queue()
    done = object()

    def pump() -> None:
        try:
            for event in client.watch(since):
                items.put(event)
        except grpc.RpcError as exc:
            items.put(exc)
        items.put(done)

    threading.Thread(target=pump, name="ctl-events", daemon=True).start()
    quiet_since = time.monotonic()
    while True:
        try:
            item = items.get(timeout=POLL_S)
        except queue.Empty:
            if not follow and time.monotonic() - quiet_since >= EVENTS_IDLE_S:
                return
            on_idle(f"waiting for events after seq {seq()} (Ctrl-C stops)")
            continue
        if item is done:
            return
        if isinstance(item, grpc.RpcError):
            raise item
        quiet_since = time.monotonic()
        yield cast(pb.AttachmentEvent, item)


def explain_request(args: argparse.Namespace) -> pb.ExplainPacketRequest:
    protocol = PROTOCOLS[args.protocol]
    ports: list[int] = args.ports
    has_ports = protocol in (policy_pb2.PROTOCOL_TCP, policy_pb2.PROTOCOL_UDP)
    if has_ports and len(ports) not in (1, 2):
        raise UsageError(f"explain {args.protocol}: give DPORT or SPORT DPORT")
    if not has_ports and ports:
        raise UsageError(f"explain {args.protocol}: no ports (use --icmp-type/--icmp-code for ICMP)")
    if any(not 0 <= p <= 65535 for p in ports):
        raise UsageError("explain: ports must be 0..65535")
    src_port, dst_port = (ports[0], ports[1]) if len(ports) == 2 else (0, ports[0] if ports else 0)
    return pb.ExplainPacketRequest(
        attachment_id=args.attachment_id,
        direction=pb.DIRECTION_EGRESS if args.direction == "egress" else pb.DIRECTION_INGRESS,
        protocol=protocol,
        src_ip=args.src,
        dst_ip=args.dst,
        src_port=src_port,
        dst_port=dst_port,
        icmp_type=args.icmp_type,
        icmp_code=args.icmp_code,
        ct_state=args.ct_state,
    )


def read_known(path: str) -> list[pb.KnownAttachment]:
    """What the host restored, from a YAML/JSON file (``-``: stdin): a list
    of ``{attachment_id, lease_generation, sandbox_id}``, or ``{known: [...]}``."""
    try:
        text = sys.stdin.read(MAX_KNOWN_FILE_BYTES + 1) if path == "-" else _read_bounded(Path(path))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if len(text) > MAX_KNOWN_FILE_BYTES:
        raise UsageError(f"{path}: larger than {MAX_KNOWN_FILE_BYTES} bytes")
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not YAML/JSON: {' '.join(str(exc).split())[:200]}") from None
    if isinstance(data, dict) and set(data) == {"known"}:
        data = data["known"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of known attachments or {{known: [...]}}")
    known = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise UsageError(f"{path}: known[{i}]: not an object")
        try:
            known.append(json_format.ParseDict(item, pb.KnownAttachment()))
        except json_format.ParseError as exc:
            raise UsageError(f"{path}: known[{i}]: {' '.join(str(exc).split())[:200]}") from None
    return known


def _read_bounded(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(MAX_KNOWN_FILE_BYTES + 1).decode("utf-8", errors="replace")
