"""The one runner of ovs-ofctl / ovs-appctl: deadline, bounded output, one error type."""

from __future__ import annotations

import pytest

from coordinator.ovs.conntrack import ConntrackError
from coordinator.ovs.openflow import OpenFlowError
from coordinator.ovs.process import MAX_STDERR_BYTES, OvsCommandError, run_command
from coordinator.ovs.trace import TraceError


async def test_output_and_allowed_exit_codes() -> None:
    result = await run_command(["sh", "-c", "echo out; echo err >&2; exit 2"], timeout=5, ok_codes=(0, 2))
    assert (result.returncode, result.stdout, result.stderr) == (2, "out\n", "err")


async def test_a_failure_names_the_command_and_exit_code_with_bounded_stderr() -> None:
    script = f"head -c {MAX_STDERR_BYTES * 4} /dev/zero | tr '\\0' x >&2; exit 3"
    with pytest.raises(OvsCommandError) as info:
        await run_command(["sh", "-c", script], timeout=5, label="ovs-appctl dpctl/x")
    assert str(info.value).startswith("ovs-appctl dpctl/x failed (exit code 3): xxx")
    assert info.value.returncode == 3 and len(info.value.stderr) == MAX_STDERR_BYTES
    assert info.value.argv[0] == "sh"


async def test_too_much_output_and_timeouts_stop_the_command() -> None:
    with pytest.raises(OvsCommandError, match="output larger than 1000 bytes"):
        await run_command(["sh", "-c", "head -c 5000 /dev/zero"], timeout=5, max_output=1000)
    with pytest.raises(OvsCommandError, match=r"exec sleep 30' timed out after 0\.2s") as info:
        await run_command(["sh", "-c", "exec sleep 30"], timeout=0.2)
    assert info.value.returncode is None
    with pytest.raises(OvsCommandError, match="cannot run"):
        await run_command(["/nonexistent/ovs-ofctl"], timeout=5)


@pytest.mark.parametrize("error", [OpenFlowError, TraceError, ConntrackError])
async def test_callers_catch_their_own_subclass(error: type[OvsCommandError]) -> None:
    with pytest.raises(error):
        await run_command(["false"], timeout=5, error=error)
