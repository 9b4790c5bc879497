"""`bluefield-coordinator ctl` as an operator runs it: the command line in its
own process against a `dev up --gateway` daemon with two attachments (their
policies from the reference gateway), real mTLS, real exit codes."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator.certs import init_dev_pki, issue_client_cert
from coordinator.client import CoordinatorClient
from coordinator.dev import env
from tests.conftest import require_ovs

pytestmark = pytest.mark.ovs

SANDBOXES = ("sb-1", "sb-2")
ENV_KEYS = ("TARGET", "CA", "CERT", "KEY", "SERVER_NAME", "TIMEOUT", "CLIENT_CONFIG")


def policy_yaml(address: str) -> str:
    return f"""version: 3
addresses: ["{address}"]
egress:
  - {{name: web, action: ACTION_ALLOW, protocol: PROTOCOL_TCP, cidrs: ["203.0.113.0/24"], ports: [{{start: 443}}]}}
"""


@dataclass(frozen=True)
class Setup:
    workdir: Path
    endpoint: env.Endpoint
    attachments: dict[str, pb.Attachment]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require_ovs()
    workdir = tmp_path_factory.mktemp("ctl")
    try:
        endpoint = env.dev_up(workdir, vfs=3, sfs=1, gateway=True)
        attachments = {}
        with CoordinatorClient(endpoint.coordinator, endpoint.host_tls()) as host:
            for i, sandbox in enumerate(SANDBOXES):
                (Path(endpoint.policies_dir) / f"{sandbox}.yaml").write_text(
                    policy_yaml(f"198.51.100.{10 + i}")
                )
                attachments[sandbox] = host.attach(
                    sandbox, "h1", f"r-{sandbox}", device_kind=pb.DEVICE_KIND_VF
                )
        yield Setup(workdir, endpoint, attachments)
    finally:
        env.dev_down(workdir)


def ctl(
    *args: str, extra_env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BLUEFIELD_COORDINATOR_")}
    # No client config of the machine's user may leak in.
    environ["XDG_CONFIG_HOME"] = "/nonexistent"
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "ctl", *args],
        env={**environ, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"bluefield-coordinator ctl: {code}: "), proc.stderr


README = Path(__file__).resolve().parents[2] / "README.md"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CHECK_MARKS = {"ok", "warn", "FAIL"}


def readme_status_block() -> list[str]:
    text = README.read_text()
    after = text[text.index("ctl --workdir DIR status` prints:") :].split("\n")[2:]
    block = []
    for line in after:
        if not line.startswith("    "):
            break
        block.append(line[4:])
    return block


def shape(lines: list[str]) -> list[tuple[int, ...] | tuple[object, ...]]:
    """What must agree between the README and the command: per line its
    indent and label (the check name for check lines; for attachment rows
    the number of columns), not the values of the moment."""
    out: list[tuple[object, ...]] = []
    for line in lines:
        words = line.split()
        indent = len(line) - len(line.lstrip())
        if UUID.match(words[0]):
            out.append((indent, "<attachment row>", len(words)))
        elif words[0] in CHECK_MARKS:
            out.append((indent, "<check>", words[1]))
        else:
            out.append((indent, words[0]))
    return out


def test_status_prints_what_the_readme_describes(setup: Setup) -> None:
    proc = ctl("--workdir", str(setup.workdir), "status")
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    described = readme_status_block()
    assert len(described) > 10
    assert shape(printed) == shape(described), proc.stdout
    assert printed[0].endswith(": healthy (version 0.1.0, backend emulated)")
    rows = [line.split() for line in printed if UUID.match(line.split()[0])]
    assert sorted(row[1] for row in rows) == list(SANDBOXES)
    assert all(row[4:7] == ["BOUND", "v3", "APPLIED"] for row in rows)
    assert "attachments: 2 (2 BOUND; policy 2 APPLIED)" in printed
    assert any(line.startswith("stream: connected;") for line in printed)


def test_list_and_get_show_both_attachments(setup: Setup) -> None:
    w = str(setup.workdir)
    listed = ctl("--workdir", w, "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "SANDBOX", "HOST", "INSTANCE", "GEN", "DEVICE", "STATE", "POLICY", "AGE"]
    assert sorted(row.split()[1] for row in rows) == list(SANDBOXES)
    for row in rows:
        _id, _sandbox, host, gen, kind, rep, state, version, policy, _age = row.split()
        assert (host, gen, kind, state, version, policy) == ("h1", "1", "VF", "BOUND", "v3", "APPLIED")
        assert rep.startswith("pf0vf")
    only = ctl("list", "--sandbox", "sb-2", "--json", "--workdir", w)
    answer = json.loads(only.stdout)
    assert [a["attachment_id"] for a in answer["attachments"]] == [setup.attachments["sb-2"].attachment_id]
    assert answer["attachments"][0]["policy"]["state"] == "POLICY_STATE_APPLIED"

    a = setup.attachments["sb-1"]
    got = ctl("--workdir", w, "get", a.attachment_id)
    assert got.returncode == 0, got.stderr
    fields = dict(line.split(":", 1) for line in got.stdout.splitlines() if not line.startswith(" "))
    assert fields["attachment"].strip() == a.attachment_id
    assert fields["policy"].strip().startswith("v3 APPLIED")
    assert fields["device"].strip().startswith(f"VF {a.device.representor} ")
    assert "offload" in fields


def test_events_prints_the_log_and_stops(setup: Setup) -> None:
    proc = ctl("--workdir", str(setup.workdir), "events", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    seqs = [int(e["seq"]) for e in events]
    assert seqs == sorted(seqs) and seqs
    bound = {e["attachment_id"] for e in events if e["condition"]["type"] == "DpuAttachmentBound"}
    assert bound >= {a.attachment_id for a in setup.attachments.values()}
    # --since skips what was seen; text is one line per event.
    after = ctl("--workdir", str(setup.workdir), "events", "--since", str(seqs[-2]))
    assert after.returncode == 0, after.stderr
    assert [int(line.split()[0]) for line in after.stdout.splitlines()][:1] == [seqs[-1]]


def test_explain_names_the_rule_and_the_switch_agrees(setup: Setup) -> None:
    a = setup.attachments["sb-1"]
    w = str(setup.workdir)
    allowed = ctl("--workdir", w, "explain", a.attachment_id, "--egress", "tcp", "198.51.100.10", "203.0.113.5",
                  "40000", "443")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    lines = allowed.stdout.splitlines()
    assert lines[:3] == ["verdict: allowed by rule 'web' (#0)", "switch agrees: yes", "trace:"]
    assert any("bridge(" in line for line in lines[3:])
    denied = ctl("--workdir", w, "--json", "explain", a.attachment_id, "--egress", "udp", "198.51.100.10",
                 "203.0.113.5", "53")  # fmt: skip
    answer = json.loads(denied.stdout)
    assert (answer["allowed"], answer["rule"], answer["switch_agrees"]) == (False, "default", True)


def test_detach_and_reconcile_as_a_host_from_the_environment(setup: Setup, tmp_path: Path) -> None:
    e = setup.endpoint
    host_env = {"BLUEFIELD_COORDINATOR_TARGET": e.coordinator, "BLUEFIELD_COORDINATOR_CA": e.ca,
                "BLUEFIELD_COORDINATOR_CERT": e.host_cert, "BLUEFIELD_COORDINATOR_KEY": e.host_key}  # fmt: skip
    with CoordinatorClient(e.coordinator, e.host_tls()) as host:
        extra = host.attach("sb-1", "h1", f"r-{uuid.uuid4()}", device_kind=pb.DEVICE_KIND_SF)
    known = tmp_path / "known.yaml"
    known.write_text(
        f"- {{attachment_id: {extra.attachment_id}, lease_generation: 1, sandbox_id: sb-1}}\n"
        "- {attachment_id: not-ours, lease_generation: 1, sandbox_id: sb-9}\n"
    )
    reconciled = ctl("reconcile", "--host-instance", "h1", str(known), "--json", extra_env=host_env)
    assert reconciled.returncode == 0, reconciled.stderr
    answer = json.loads(reconciled.stdout)
    assert [a["attachment_id"] for a in answer["matched"]] == [extra.attachment_id]
    assert [k["attachment_id"] for k in answer["host_only"]] == ["not-ours"]
    # The two module attachments are the host's too, unknown to this file.
    assert {a["attachment_id"] for a in answer["coordinator_only"]} == {
        a.attachment_id for a in setup.attachments.values()
    }
    assert answer["released"] == []

    stale = ctl("detach", extra.attachment_id, "--generation", "7", extra_env=host_env)
    assert_one_line_error(stale, "FAILED_PRECONDITION")
    done = ctl("detach", extra.attachment_id, "--generation", "1", extra_env=host_env)
    assert (done.returncode, done.stdout) == (0, f"detached {extra.attachment_id}\n"), done.stderr
    again = ctl("detach", extra.attachment_id, "--generation", "1", extra_env=host_env)
    assert again.stdout == f"{extra.attachment_id} was already detached\n"


def test_client_config_file_with_paths_relative_to_it(setup: Setup, tmp_path: Path) -> None:
    e = setup.endpoint
    certs = Path(e.ca).parent
    config = certs / "client.toml"
    config.write_text(f'target = "{e.coordinator}"\nca = "ca.pem"\ncert = "admin.pem"\nkey = "admin.key"\n')
    proc = ctl("list", "--json", extra_env={"BLUEFIELD_COORDINATOR_CLIENT_CONFIG": str(config)})
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["attachments"]) == len(SANDBOXES)
    config.write_text('target = "127.0.0.1:1"\nport = 5\n')
    bad = ctl("list", "--client-config", str(config))
    assert bad.returncode == 2
    assert "unknown key 'port'" in bad.stderr and "Traceback" not in bad.stderr


def test_wrong_ca_no_role_and_unknown_attachment_are_one_line_errors(setup: Setup, tmp_path: Path) -> None:
    w = str(setup.workdir)
    other = init_dev_pki(tmp_path / "other-ca")
    # The coordinator's certificate is not signed by this CA: the handshake fails.
    wrong_ca = ctl("--workdir", w, "--ca", str(other.ca_cert), "--timeout", "5", "status")
    assert_one_line_error(wrong_ca, "UNAVAILABLE")
    ca = Path(setup.endpoint.ca)
    cert, key = issue_client_cert(ca, ca.with_name("ca.key"), tmp_path, "stranger",
                                  uri="spiffe://bluefield.local/host/stranger")  # fmt: skip
    no_role = ctl("--workdir", w, "--cert", str(cert), "--key", str(key), "list")
    assert_one_line_error(no_role, "PERMISSION_DENIED")
    unknown = ctl("--workdir", w, "get", str(uuid.uuid4()))
    assert_one_line_error(unknown, "NOT_FOUND")
    missing = ctl("--workdir", w, "--key", str(tmp_path / "absent.key"), "list")
    assert missing.returncode == 2 and "absent.key" in missing.stderr and "Traceback" not in missing.stderr


def with_terminal_stderr(args: list[str], until: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout a pipe) until ``until``
    shows on the terminal, then Ctrl-C: (exit code, stdout, terminal text)."""
    master, slave = pty.openpty()
    environ = {**os.environ, "XDG_CONFIG_HOME": "/nonexistent"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True,
                            env=environ)  # fmt: skip
    os.close(slave)
    seen, deadline = "", time.monotonic() + timeout
    try:
        while until not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += _read_terminal(master, 0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
        while chunk := _read_terminal(master, 0.1):
            seen += chunk
    finally:
        os.close(master)
    assert proc.stdout is not None
    return code, proc.stdout.read(), seen


def _read_terminal(master: int, wait_s: float) -> str:
    if not select.select([master], [], [], wait_s)[0]:
        return ""
    try:
        return os.read(master, 4096).decode(errors="replace")
    except OSError:  # EIO: the process exited, the terminal is gone
        return ""


def test_follow_shows_activity_on_a_terminal_and_ctrl_c_ends_it(setup: Setup) -> None:
    base = [sys.executable, "-m", "coordinator", "ctl", "--workdir", str(setup.workdir), "events", "--follow"]
    code, out, terminal = with_terminal_stderr(base, until="waiting for events after seq")
    assert code == 130, terminal
    assert "Traceback" not in terminal
    # The events went to stdout; the waiting line only to the terminal.
    assert "DpuAttachmentBound" in out and "waiting" not in out
    # --json: the same stream, and nothing drawn on the terminal.
    code, out, terminal = with_terminal_stderr([*base, "--json"], until="never shown", timeout=3)
    assert code == 130
    assert terminal.strip() == "", terminal
    assert all(json.loads(line)["seq"] for line in out.splitlines()) and out


def test_dev_up_shows_its_steps_on_a_terminal_only(setup: Setup) -> None:
    """Run again on the running setup (it restarts only what is down)."""
    argv = [sys.executable, "-m", "coordinator", "dev", "up", "--workdir", str(setup.workdir)]
    code, out, terminal = with_terminal_stderr(argv, until="never shown")
    assert code == 0, terminal
    assert "starting Open vSwitch" in terminal and "coordinator converging" in terminal
    assert json.loads(out)["coordinator"] == setup.endpoint.coordinator
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert piped.stderr == ""
