"""Results (the JSON written to bench/results/latest.json) -> the table.

Works on the plain JSON mapping so the table printed at the end of a run,
the one in docs/BENCHMARKS.md and one re-rendered later from a saved file
are the same text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NONE = "—"
COLUMNS = (
    "case", "size", "ours", "floor", "ours/floor", "channel floor", "ours/channel floor",
    "OVN", "ours/OVN", "flows ours", "flows OVN",
)  # fmt: skip
# The cells after case, size and ours of a row that only has those three.
_BLANK = len(COLUMNS) - 3


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _pcts(s: Mapping[str, Any]) -> str:
    return f"{_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['p99'])} ms"


def _ratio(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> str:
    if not a or not b or b["p50"] <= 0:
        return NONE
    return f"{a['p50'] / b['p50']:.2f}x"


def _p50(s: Mapping[str, Any] | None) -> str:
    return f"{_ms(s['p50'])} ms" if s else NONE


def _policy_rows(policy: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    flows = {f["rules"]: f for f in policy["flows"] if f["name"].endswith(" rules")}
    for r in policy["rows"]:
        what = "policy apply, fresh" if r["kind"] == "fresh" else "policy apply, 1-rule change"
        f = flows.get(r["rules"]) if r["kind"] == "fresh" else None
        rows.append([
            what, f"{r['rules']} rules", _pcts(r["daemon_ms"]),
            _p50(r["floor_ms"]), _ratio(r["daemon_ms"], r["floor_ms"]),
            # absent from results older than the channel floor
            _p50(r.get("channel_floor_ms")), _ratio(r["daemon_ms"], r.get("channel_floor_ms")),
            _p50(r["ovn_ms"]), _ratio(r["daemon_ms"], r["ovn_ms"]),
            str(f["ours"]["policy"]) if f else NONE,
            str(f["ovn"]["policy"]) if f and f["ovn"] else NONE,
        ])  # fmt: skip
    for f in policy["flows"]:
        if not f["name"].endswith(" rules"):
            ovn = str(f["ovn"]["policy"]) if f["ovn"] else NONE
            rows.append(["flows, cross-product", f["name"], *([NONE] * (_BLANK - 1)),
                         str(f["ours"]["policy"]), ovn])  # fmt: skip
    return rows


def _attach_rows(attach: Mapping[str, Any]) -> list[list[str]]:
    t = attach["throughput"]
    n = attach["baseline_ms"]["n"]
    blank = [NONE] * _BLANK
    rows = [
        ["attach BASELINE, mTLS", f"{n} attaches", _pcts(attach["baseline_ms"]), *blank],
        ["attach WAIT_INITIAL, mTLS", f"{n} attaches", _pcts(attach["wait_initial_ms"]), *blank],
        [f"attach throughput, {t['clients']} clients", f"{t['attaches']} attaches",
         f"{t['per_second']:.1f} /s", *blank],
    ]  # fmt: skip
    health = attach.get("health_during_storm_ms")  # absent from older results
    if health:
        rows.append(["Health during the attach storm", f"{health['n']} calls", _pcts(health), *blank])
    return rows


def _scale_rows(scale: Mapping[str, Any]) -> list[list[str]]:
    size = f"{scale['attachments']} x {scale['rules']} rules"
    blank = [NONE] * _BLANK
    rows = [
        ["scale: daemon RSS", size, f"{scale['rss_mb']:.0f} MB", *blank],
        ["scale: flows on the bridge", size, str(scale["total_flows"]), *blank],
        ["scale: daemon start until Health", size, f"{scale['daemon_start_s']:.2f} s", *blank],
        ["scale: restart reconcile, no drift", size, f"{scale['reconcile_s']:.2f} s", *blank],
    ]
    if "reprogram_floor_s" in scale:  # absent from older results
        floor = scale["reprogram_floor_s"]
        rows.append(["scale: re-program after vswitchd restart", size, f"{scale['reprogram_s']:.2f} s",
                     f"{floor:.2f} s", f"{scale['reprogram_s'] / floor:.2f}x", *blank[:-2]])  # fmt: skip
    else:
        rows.append(
            ["scale: re-program after vswitchd restart", size, f"{scale['reprogram_s']:.2f} s", *blank]
        )
    if "stale_cut_s" in scale:  # results from before the stale case have none
        load = f"{size}, {scale['stale_connections']} conns"
        rows += [
            [
                "scale: stale deny-all, all cut + STALE",
                load,
                f"{scale['stale_cut_s'] * 1000:.0f} ms",
                f"{scale['stale_floor_s'] * 1000:.0f} ms",
                f"{scale['stale_cut_s'] / scale['stale_floor_s']:.2f}x",
                *blank[:-2],
            ],
            [
                "scale: stale deny-all, conns flushed",
                load,
                f"{scale['stale_flushed_s'] * 1000:.0f} ms",
                *blank,
            ],
        ]
    if "stale_replace_floor_s" in scale:  # absent from older results
        replaced = f"{scale['stale_replace_floor_s'] * 1000:.0f} ms"
        rows.append(["scale: stale deny-all flows replacing the cut (raw bundle)", size, replaced, *blank])
    return rows


def table_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for case, render in (("policy", _policy_rows), ("attach", _attach_rows), ("scale", _scale_rows)):
        part = results.get(case)
        if not part:
            continue
        if "error" in part:
            rows.append([case, "FAILED", part["error"][:80], *([NONE] * _BLANK)])
        else:
            rows += render(part)
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def render_table(results: Mapping[str, Any]) -> str:
    return markdown_table(COLUMNS, table_rows(results))


def headlines(results: Mapping[str, Any]) -> dict[str, Any]:
    """The ratios a reader should take away, keyed for the JSON file."""
    out: dict[str, Any] = {}
    policy = results.get("policy")
    if policy and "error" not in policy:
        for r in policy["rows"]:
            key = f"{r['kind']}_{r['rules']}"
            out[f"{key}_vs_floor"] = _num(r["daemon_ms"], r["floor_ms"])
            out[f"{key}_vs_channel_floor"] = _num(r["daemon_ms"], r.get("channel_floor_ms"))
            out[f"{key}_vs_ovn"] = _num(r["daemon_ms"], r["ovn_ms"])
        for f in policy["flows"]:
            if f["ovn"] and f["ovn"]["policy"]:
                key = f["name"].replace(" ", "_")
                out[f"flows_{key}_ours_vs_ovn"] = round(f["ours"]["policy"] / f["ovn"]["policy"], 3)
    return out


def _num(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> float | None:
    if not a or not b or b["p50"] <= 0:
        return None
    return round(float(a["p50"]) / float(b["p50"]), 3)
