"""The ovs library parses OVSDB's JSON in C when the distribution has the
parser for this interpreter, and parses it the same."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
from pathlib import Path

from coordinator.ovs import json_parser
from coordinator.ovs.json_parser import C_PARSER, DISTRIBUTION_PACKAGES

UPDATE = {
    "method": "update3",
    "id": None,
    "params": [
        ["monid", "Open_vSwitch"],
        "00000000-0000-0000-0000-000000000000",
        {
            "Interface": {
                "6a1f6c2e-0000-4000-8000-000000000001": {
                    "modify": {"ofport": 7, "name": "pf0vf1", "mtu": 1500, "ratio": 0.25,
                               "external_ids": ["map", [["bfc-owner", "h\u00f6st \u2713"], ["e", ""]]],
                               "error": ["set", []], "up": True, "down": False},
                }
            }
        },
    ],
}  # fmt: skip


def _in_a_fresh_interpreter(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_the_daemon_parses_ovsdb_json_in_c_where_the_distribution_has_the_parser() -> None:
    there = (DISTRIBUTION_PACKAGES / "ovs" / f"_json{importlib.machinery.EXTENSION_SUFFIXES[0]}").is_file()
    parser = _in_a_fresh_interpreter("import coordinator.ovs, ovs.json; print(ovs.json.PARSER)")
    assert parser == (C_PARSER if there else "PYTHON")


def test_both_parsers_read_an_update_alike() -> None:
    text = json.dumps(UPDATE)
    code = (
        "import json, sys, coordinator.ovs, ovs.json\n"
        f"p = ovs.json.Parser(check_trailer=True)\np.feed({text!r}[:37])\np.feed({text!r}[37:])\n"
        "print(ovs.json.PARSER, json.dumps(p.finish(), sort_keys=True))"
    )
    parser, parsed = _in_a_fresh_interpreter(code).split(" ", 1)
    assert json.loads(parsed) == UPDATE
    pure = _in_a_fresh_interpreter(code.replace("coordinator.ovs, ", ""))
    assert pure.split(" ", 1) == ["PYTHON", parsed] and parser in (C_PARSER, "PYTHON")


def test_nothing_changes_without_the_distributions_parser(tmp_path: Path) -> None:
    # The module alone, from its file: importing coordinator.ovs would run
    # the real lookup first.
    probe = (
        "import importlib.util, pathlib\n"
        f"spec = importlib.util.spec_from_file_location('probe', {json_parser.__file__!r})\n"
        "probe = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(probe)\n"
        f"print(probe.use_distribution_parser(pathlib.Path({str(tmp_path)!r})))\n"
        "import ovs.json\nprint(ovs.json.PARSER)"
    )
    assert _in_a_fresh_interpreter(probe).split() == ["False", "PYTHON"]
