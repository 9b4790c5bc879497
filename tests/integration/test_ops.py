"""The shipped Grafana dashboard and Prometheus alerting rules (`ops/`):
`promtool check rules` and `promtool test rules` pass, every dashboard query
is valid PromQL, and every metric (and label) they name is one a running
daemon serves on /metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from coordinator.dev import env
from tests.conftest import require_ovs

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "ops/prometheus/bluefield-coordinator.rules.yml"
RULES_TEST = REPO / "tests/ops/rules_test.yml"
DASHBOARD = REPO / "ops/grafana/bluefield-coordinator.json"
# A selector: metric name, optionally followed by {label matchers}.
SELECTOR = re.compile(r"\b(bluefield_coordinator_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
# Names Prometheus derives from a family: what a query may use.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is not None:
        return tool
    msg = "test needs `promtool` (Debian/Ubuntu package: prometheus; `make system-deps` installs it)"
    if _in_ci():
        pytest.fail(msg + " -- CI=true, so this is an error, not a skip", pytrace=False)
    pytest.skip(msg)


def dashboard_exprs() -> list[str]:
    model = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in model["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in model["templating"]["list"] if "definition" in v]
    return exprs


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def referenced(exprs: list[str]) -> dict[str, set[str]]:
    """Metric name → the label names queries match on it."""
    names: dict[str, set[str]] = {}
    for expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            names.setdefault(name, set()).update(MATCHER.findall(matchers))
    return names


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_checks_and_tests_the_alerting_rules() -> None:
    tool = promtool()
    checked = run(tool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = run(tool, "test", "rules", str(RULES_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    tool = promtool()
    # Dashboard queries as recording rules, so promtool parses each one;
    # Grafana's variables replaced as Grafana would.
    exprs = [e.replace("$instance", ".*") for e in dashboard_exprs() if not e.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = run(tool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_has_the_panels_an_operator_needs() -> None:
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert {"Attachments by state", "Pool: free devices", "Policy-apply latency", "Stale and degraded policies",
            "Gateway stream", "RPC rate by method", "RPC errors by code", "Offload ratio",
            "Daemon RSS"} <= titles  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """Every sample name the daemon's /metrics offers → its label names
    (empty for families that have no sample yet)."""
    require_ovs()
    workdir = tmp_path_factory.mktemp("ops")
    try:
        endpoint = env.dev_up(workdir, vfs=1, sfs=1, gateway=True)
        with urllib.request.urlopen(f"http://{endpoint.metrics}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        env.dev_down(workdir)
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES[family.type]:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    yield names


@pytest.mark.ovs
@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_named_is_served_by_a_running_daemon(served: dict[str, set[str]], source: str) -> None:
    wanted = referenced(dashboard_exprs() if source == "dashboard" else rule_exprs())
    assert wanted, f"the {source} names no metric"
    missing = sorted(set(wanted) - set(served))
    assert not missing, f"the {source} names metrics the daemon does not serve: {missing}"
    for name, labels in wanted.items():
        if served[name]:  # labels are known once the family has a sample
            assert labels <= served[name] | {"instance", "job"}, (name, labels - served[name])
