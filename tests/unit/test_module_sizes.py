"""Modules stay small enough to hold one job: none of ours over 500 lines
(generated protobuf code aside), the service facade under 400."""

from __future__ import annotations

from pathlib import Path

import coordinator

ROOT = Path(coordinator.__file__).parent
MAX_LINES = 500


def test_no_module_is_over_the_limit() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in ROOT.rglob("*.py")
        if "_proto" not in p.parts
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_service_facade_stays_thin() -> None:
    assert len((ROOT / "service" / "facade.py").read_text().splitlines()) < 400
