"""The bench table's channel-floor columns: the same changes as one bundle +
barrier over an open OpenFlow channel, and ours divided by it."""

from __future__ import annotations

import copy
from typing import Any

from bench.report import COLUMNS, headlines, render_table
from tests.unit.test_bench_report import RESULTS, _summary


def _with_channel_floor() -> dict[str, Any]:
    results = copy.deepcopy(RESULTS)
    for row, p50 in zip(results["policy"]["rows"], (2.0, 0.8), strict=True):
        row["channel_floor_ms"] = _summary(p50)
    return results


def test_policy_rows_show_the_channel_floor_and_ours_over_it() -> None:
    table = render_table(_with_channel_floor())
    header = table.splitlines()[0]
    assert "channel floor" in header and "ours/channel floor" in header
    fresh = next(line for line in table.splitlines() if "fresh" in line)
    assert "2.0 ms" in fresh and "15.00x" in fresh  # 30 / 2
    change = next(line for line in table.splitlines() if "1-rule change" in line)
    assert "0.8 ms" in change and "25.00x" in change  # 20 / 0.8
    # every row has a cell for every column
    for line in table.splitlines()[2:]:
        assert line.count("|") == len(COLUMNS) + 1, line


def test_results_from_before_the_channel_floor_still_render() -> None:
    fresh = next(line for line in render_table(RESULTS).splitlines() if "fresh" in line)
    assert "6.00x" in fresh  # ours/floor as before
    assert headlines(RESULTS)["fresh_10_vs_channel_floor"] is None
    assert headlines(_with_channel_floor())["change_10_vs_channel_floor"] == 25.0
