"""The bench's table, headline ratios and docs page, from a results mapping."""

from __future__ import annotations

from typing import Any

from bench.docs import render_docs
from bench.report import headlines, render_table
from bench.stats import percentile, summarize


def _summary(p50: float) -> dict[str, Any]:
    return {"n": 10, "p50": p50, "p95": p50 * 2, "p99": p50 * 3, "mean": p50, "min": p50, "max": p50 * 3}


RESULTS: dict[str, Any] = {
    "generated_at": "2026-01-01T00:00:00+00:00",
    "duration_s": 12.0,
    "machine": {
        "cpu": "cpu",
        "cores": 2,
        "memory_gib": 24,
        "os": "Debian",
        "kernel": "6",
        "python": "3.11",
        "ovs": "ovs 3.1",
        "ovn": "ovn 23.03",
    },
    "settings": {"reps_by_size": {"10": 10}, "attaches": 20, "clients": 8, "scale": 32, "scale_rules": 32},
    "policy": {
        "rows": [
            {
                "rules": 10,
                "kind": "fresh",
                "daemon_ms": _summary(30),
                "floor_ms": _summary(5),
                "ovn_ms": _summary(60),
            },
            {
                "rules": 10,
                "kind": "change",
                "daemon_ms": _summary(20),
                "floor_ms": _summary(4),
                "ovn_ms": None,
            },
        ],
        "flows": [
            {
                "name": "10 rules",
                "rules": 10,
                "ours": {"policy": 10, "total": 29},
                "ovn": {"policy": 83, "total": 241},
            },
            {
                "name": "20 CIDRs x 10 port ranges",
                "rules": 1,
                "ours": {"policy": 95, "total": 114},
                "ovn": None,
            },
        ],
    },
    "attach": {
        "baseline_ms": _summary(50),
        "wait_initial_ms": _summary(90),
        "throughput": {"clients": 8, "attaches": 200, "seconds": 10.0, "per_second": 20.0},
        "health_during_storm_ms": _summary(7),
    },
    "scale": {
        "attachments": 32,
        "rules": 32,
        "setup_s": 1.0,
        "daemon_start_s": 1.0,
        "rss_mb": 70.4,
        "total_flows": 1700,
        "reconcile_s": 1.25,
        "reprogram_s": 2.5,
        "reprogram_floor_s": 2.0,
        "stale_connections": 3200,
        "stale_cut_s": 0.055,
        "stale_flushed_s": 0.086,
        "stale_floor_s": 0.044,
    },
}


def test_table_has_the_ratio_columns_and_divides_p50s() -> None:
    table = render_table(RESULTS)
    header = table.splitlines()[0]
    assert "ours/floor" in header and "ours/OVN" in header
    fresh = next(line for line in table.splitlines() if "fresh" in line)
    assert "6.00x" in fresh  # 30 / 5
    assert "0.50x" in fresh  # 30 / 60
    change = next(line for line in table.splitlines() if "1-rule change" in line)
    assert "5.00x" in change and change.count("—") >= 2  # no OVN sample: no OVN ratio
    assert "70 MB" in table and "1.25 s" in table and "20.0 /s" in table
    reprogram = next(line for line in table.splitlines() if "re-program after vswitchd restart" in line)
    assert "2.50 s" in reprogram and "2.00 s" in reprogram and "1.25x" in reprogram  # ours / raw add-flows
    stale = next(line for line in table.splitlines() if "all cut + STALE" in line)
    assert "3200 conns" in stale and "55 ms" in stale and "44 ms" in stale and "1.25x" in stale


def test_headlines_are_the_same_ratios() -> None:
    h = headlines(RESULTS)
    assert h["fresh_10_vs_floor"] == 6.0
    assert h["fresh_10_vs_ovn"] == 0.5
    assert h["change_10_vs_ovn"] is None
    assert h["flows_10_rules_ours_vs_ovn"] == round(10 / 83, 3)


def test_docs_page_holds_the_table_and_the_machine() -> None:
    page = render_docs(RESULTS)
    assert render_table(RESULTS) in page
    assert "ovn 23.03" in page and "## How to run" in page


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    s = summarize([0.001 * i for i in range(1, 101)])
    assert (round(s.p50), round(s.p95), round(s.p99), s.n) == (50, 95, 99, 100)


def test_a_failed_case_is_a_row_saying_so() -> None:
    table = render_table({**RESULTS, "attach": {"error": "BenchError: the daemon did not answer"}})
    failed = next(line for line in table.splitlines() if line.startswith("| attach"))
    assert "FAILED" in failed and "did not answer" in failed
    assert "attach BASELINE" not in table


def test_health_under_the_attach_storm_is_a_row() -> None:
    table = render_table(RESULTS)
    row = next(line for line in table.splitlines() if "Health during the attach storm" in line)
    assert "7.0" in row  # its percentiles
    older = {
        **RESULTS,
        "attach": {k: v for k, v in RESULTS["attach"].items() if k != "health_during_storm_ms"},
    }
    assert "Health during" not in render_table(older)
