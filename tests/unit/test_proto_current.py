"""The committed generated code must be what proto/generate.py produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(out)], check=True)
    committed = ROOT / "coordinator" / "_proto"
    fresh = {p.relative_to(out): p.read_text() for p in out.rglob("*") if p.is_file()}
    current = {
        p.relative_to(committed): p.read_text()
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(current), "generated file set changed: run `make proto`"
    stale = [str(name) for name in fresh if fresh[name] != current[name]]
    assert not stale, f"stale generated code (run `make proto`): {stale}"
