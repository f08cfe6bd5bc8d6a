"""Canary analysis gates: PromQL instant queries against the Prometheus HTTP API.

Built-in gates come from the spec's SLO (error rate, TTFT p99, TPOT p99, E2E p99) plus a
TTFT regression check against the stable pods; the spec's own gates are added as given.
Queries select the candidate's pods by name, which is how Kubernetes service discovery
labels them (`pod`), so they work the same on Knative revisions and Standard deployments.
"""

from __future__ import annotations

import math

import httpx
from pydantic import BaseModel

from tasks.errors import StageFailed
from tasks.spec import PromotionSpec

API_PATH = "/api/v1/query"


class GateResult(BaseModel):
    step: int  # traffic percent when checked
    name: str
    query: str
    value: float | None
    limit: str
    ok: bool
    reason: str


class GateDef(BaseModel):
    name: str
    query: str
    max: float | None = None
    min: float | None = None
    no_data_fails: bool = True
    relative_to: str | None = None  # a query on the stable pods; max is then a factor of its value
    floor: float = 0.0  # with relative_to: a candidate within stable + floor passes whatever the factor


def fill(query: str, values: dict[str, str]) -> str:
    """Replace {namespace}, {model}, {candidate_pods}, {stable_pods}, {window}; PromQL braces stay."""
    for key, val in values.items():
        query = query.replace("{" + key + "}", val)
    return query


def _hist_p99(metric: str, pods: str) -> str:
    return ('histogram_quantile(0.99, sum by (le) (rate(' + metric +
            '_bucket{namespace="{namespace}",pod=~"' + pods + '"}[{window}])))')


def builtin_gates(spec: PromotionSpec, has_stable: bool) -> list[GateDef]:
    slo, c = spec.slo, spec.canary
    nd = c.no_data_fails
    # No handler filter: vLLM 0.32 labels every route handler="none" (tests/kserve/data/README.md);
    # /metrics and /health are excluded by vLLM itself.
    sel = 'namespace="{namespace}",pod=~"{candidate_pods}"'
    gates = [GateDef(
        name="error-rate",
        # vLLM's HTTP instrumentation groups codes as 2xx/4xx/5xx; no 5xx series means zero errors.
        query=(f'(sum(rate(http_requests_total{{{sel},status="5xx"}}[{{window}}])) or vector(0))'
               f' / sum(rate(http_requests_total{{{sel}}}[{{window}}]))'),
        max=slo.max_error_rate, no_data_fails=nd)]
    ttft = _hist_p99("vllm:time_to_first_token_seconds", "{candidate_pods}")
    if slo.ttft_p99_ms is not None:
        gates.append(GateDef(name="ttft-p99", query=ttft, max=slo.ttft_p99_ms / 1000, no_data_fails=nd))
    if slo.tpot_p99_ms is not None:
        gates.append(GateDef(name="tpot-p99", query=_hist_p99("vllm:request_time_per_output_token_seconds", "{candidate_pods}"),
                             max=slo.tpot_p99_ms / 1000, no_data_fails=nd))
    if slo.e2e_p99_ms is not None:
        gates.append(GateDef(name="e2e-p99", query=_hist_p99("vllm:e2e_request_latency_seconds", "{candidate_pods}"),
                             max=slo.e2e_p99_ms / 1000, no_data_fails=nd))
    if has_stable:
        gates.append(GateDef(name="ttft-p99-vs-stable", query=ttft, max=1 + c.max_regression,
                             relative_to=_hist_p99("vllm:time_to_first_token_seconds", "{stable_pods}"),
                             floor=c.regression_floor_ms / 1000, no_data_fails=nd))
    for g in c.gates:
        gates.append(GateDef(name=g.name, query=g.query, max=g.max, min=g.min, no_data_fails=g.no_data_fails))
    return gates


def query(prom_url: str, promql: str, timeout_s: float = 10.0) -> float | None:
    """The value of an instant query: the first sample of a vector, or a scalar; None when empty or NaN."""
    try:
        r = httpx.get(prom_url.rstrip("/") + API_PATH, params={"query": promql}, timeout=timeout_s)
    except httpx.HTTPError as err:
        raise StageFailed("canary", prom_url, f"Prometheus is unreachable: {err}",
                          "check target.prometheus_url and that Prometheus is up") from None
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200 or body.get("status") != "success":
        raise StageFailed("canary", prom_url, f"query failed (HTTP {r.status_code}): {body.get('error', r.text[:300])}",
                          "fix the gate's PromQL (placeholders: {namespace} {model} {candidate_pods} {stable_pods} {window})",
                          detail=promql)
    data = body["data"]
    if data["resultType"] == "scalar":
        val = float(data["result"][1])
    elif data["resultType"] == "vector" and data["result"]:
        val = float(data["result"][0]["value"][1])
    else:
        return None
    return None if math.isnan(val) or math.isinf(val) else val


def evaluate(prom_url: str, gates: list[GateDef], values: dict[str, str], step: int) -> list[GateResult]:
    results = []
    for g in gates:
        q = fill(g.query, values)
        val = query(prom_url, q)
        limit = " ".join(x for x in (f"min {g.min}" if g.min is not None else "", f"max {g.max}" if g.max is not None else "") if x)
        if g.relative_to is not None:
            base = query(prom_url, fill(g.relative_to, values))
            if base is None or base == 0:
                results.append(GateResult(step=step, name=g.name, query=q, value=val, limit=limit, ok=True,
                                          reason="no stable data to compare with: skipped"))
                continue
            limit = f"max {g.max:g} x stable ({base:.4g})" + (f" or stable + {g.floor:g}" if g.floor else "")
            within_floor = val is not None and val - base <= g.floor
            val = None if val is None else val / base
        if val is None:
            ok = not g.no_data_fails
            results.append(GateResult(step=step, name=g.name, query=q, value=None, limit=limit, ok=ok,
                                      reason="no data" + ("" if ok else " (counts as failed)")))
            continue
        bad = (g.max is not None and val > g.max) or (g.min is not None and val < g.min)
        if g.relative_to is not None and within_floor:
            bad = False
        results.append(GateResult(step=step, name=g.name, query=q, value=val, limit=limit, ok=not bad,
                                  reason=f"{val:.4g} {'breaks' if bad else 'within'} {limit}"))
    return results
