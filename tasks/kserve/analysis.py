"""PromQL against the Prometheus HTTP API: the spec's own canary gates, and the queries the
KServe observer reads its windows with (tasks.kserve.observe).

Queries select pods by name, which is how Kubernetes service discovery labels them (`pod`),
so they work the same on Knative revisions and Standard deployments. The built-in rules
(SLO, error rate, goodput, regression against stable) are the judge's (tasks.canary.judge).
"""

from __future__ import annotations

import math

import httpx
from pydantic import BaseModel

from tasks.errors import StageFailed

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


def fill(query: str, values: dict[str, str]) -> str:
    """Replace {namespace}, {model}, {candidate_pods}, {stable_pods}, {window}; PromQL braces stay."""
    for key, val in values.items():
        query = query.replace("{" + key + "}", val)
    return query


def _data(prom_url: str, promql: str, timeout_s: float = 10.0) -> dict:
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
    return body["data"]


def query_vector(prom_url: str, promql: str, timeout_s: float = 10.0) -> list[dict]:
    """The samples of an instant vector query (each with `metric` labels and `value`)."""
    data = _data(prom_url, promql, timeout_s)
    return data["result"] if data["resultType"] == "vector" else []


def query(prom_url: str, promql: str, timeout_s: float = 10.0) -> float | None:
    """The value of an instant query: the first sample of a vector, or a scalar; None when empty or NaN."""
    data = _data(prom_url, promql, timeout_s)
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
        if val is None:
            ok = not g.no_data_fails
            results.append(GateResult(step=step, name=g.name, query=q, value=None, limit=limit, ok=ok,
                                      reason="no data" + ("" if ok else " (counts as failed)")))
            continue
        bad = (g.max is not None and val > g.max) or (g.min is not None and val < g.min)
        results.append(GateResult(step=step, name=g.name, query=q, value=val, limit=limit, ok=not bad,
                                  reason=f"{val:.4g} {'breaks' if bad else 'within'} {limit}"))
    return results
