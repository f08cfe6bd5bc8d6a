"""What each server did over a canary window on KServe, read from Prometheus.

The same figures the local target reads from each server's /metrics (tasks.canary.figures),
here as `increase()` over the window for the pods of each side, selected by name the way
Kubernetes service discovery labels them (`namespace`, `pod`). The spec's own PromQL gates
are evaluated over the same window and judged with the rest.
"""

from __future__ import annotations

import time

from tasks.canary.figures import E2E, HTTP_REQUESTS, LATENCIES, OUTPUT_TOKENS, Histogram, ServerWindow
from tasks.canary.judge import Check
from tasks.canary.machine import Observation
from tasks.kserve import analysis
from tasks.spec import PromotionSpec


def _vector(prom: str, promql: str) -> list[dict]:
    return analysis.query_vector(prom, promql)


def _scalar(prom: str, promql: str) -> float:
    v = analysis.query(prom, promql)
    return v or 0.0


def window_of(prom: str, namespace: str, pods: str, seconds: float) -> ServerWindow:
    """One side's figures over the last `seconds` (pods: a regex on pod names)."""
    sel = f'namespace="{namespace}",pod=~"{pods}"'
    w = f"{max(2, round(seconds))}s"
    latency: dict[str, Histogram] = {}
    for key, name in LATENCIES.items():
        rows = _vector(prom, f"sum by (le) (increase({name}_bucket{{{sel}}}[{w}]))")
        buckets = sorted((float(r["metric"]["le"]), float(r["value"][1])) for r in rows if "le" in r["metric"])
        if not buckets:
            continue
        latency[key] = Histogram(buckets=buckets, sum=_scalar(prom, f"sum(increase({name}_sum{{{sel}}}[{w}]))"),
                                 count=_scalar(prom, f"sum(increase({name}_count{{{sel}}}[{w}]))"))
    e2e = latency.get("e2e")
    requests = e2e.count if e2e else _scalar(prom, f"sum(increase({E2E}_count{{{sel}}}[{w}]))")
    # vLLM's HTTP instrumentation groups status codes as 2xx / 4xx / 5xx
    return ServerWindow(
        seconds=seconds, latency=latency, requests=requests,
        http_requests=_scalar(prom, f"sum(increase({HTTP_REQUESTS}{{{sel}}}[{w}]))"),
        errors=_scalar(prom, f'sum(increase({HTTP_REQUESTS}{{{sel},status="5xx"}}[{w}]))'),
        output_tokens=_scalar(prom, f"sum(increase({OUTPUT_TOKENS}{{{sel}}}[{w}]))"))


def gate_checks(spec: PromotionSpec, namespace: str, candidate_pods: str, stable_pods: str | None,
                seconds: float, percent: int) -> list[Check]:
    """The spec's own PromQL gates, over this window."""
    if not spec.canary.gates:
        return []
    gates = [analysis.GateDef(name=g.name, query=g.query, max=g.max, min=g.min, no_data_fails=g.no_data_fails)
             for g in spec.canary.gates]
    values = {"namespace": namespace, "model": spec.served_name, "window": f"{max(2, round(seconds))}s",
              "candidate_pods": candidate_pods, "stable_pods": stable_pods or "^$"}
    return [Check(name=r.name, ok=r.ok, value=r.value, limit=r.limit, reason=r.reason)
            for r in analysis.evaluate(spec.target.prometheus_url, gates, values, percent)]


class PrometheusObserver:
    """Waits out a window of real traffic (or drives the spec's load at a URL), then reads Prometheus."""

    def __init__(self, spec: PromotionSpec, namespace: str, candidate_pods: str, stable_pods: str | None,
                 load_url: str | None = None, sleep=time.sleep, on_report=None):
        self.spec = spec
        self.namespace = namespace
        self.candidate_pods = candidate_pods
        self.stable_pods = stable_pods
        self.load_url = load_url  # target.canary_load_test: the URL the synthetic load goes to
        self.sleep = sleep
        self.on_report = on_report
        self.candidate_seen = not candidate_pods

    def wait_until_scraped(self, timeout_s: float) -> float:
        """Seconds spent waiting for Prometheus's first sample of the candidate's pods.

        increase() has nothing from before a series' first scrape, so a window that opens on a
        pod Prometheus has not scraped yet undercounts it (its traffic share, its requests).
        """
        sel = f'namespace="{self.namespace}",pod=~"{self.candidate_pods}"'
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if analysis.query(self.spec.target.prometheus_url, f"count({E2E}_count{{{sel}}})"):
                self.candidate_seen = True
                break
            self.sleep(0.5)
        return time.monotonic() - started

    def observe(self, percent: int, seconds: float) -> Observation:
        spec = self.spec
        waited = 0.0 if self.candidate_seen else self.wait_until_scraped(timeout_s=seconds)
        started = time.monotonic()
        note = "real traffic only"
        if self.load_url:
            from tasks.loadtest import run_load_test

            profile = spec.load.model_copy(update={"duration_s": seconds, "num_requests": None})
            report = run_load_test(self.load_url, spec.served_name, profile, None, None, keep_records=True)
            note = f"synthetic load at {self.load_url}: {report.completed} requests"
            if self.on_report:  # blue-green loads the candidate alone; a split mixes both sides in one report
                self.on_report(percent, "candidate" if self.stable_pods is None or percent == 0 else "synthetic", report)
        left = seconds - (time.monotonic() - started)
        if left > 0:
            self.sleep(left)
        took = time.monotonic() - started
        prom = spec.target.prometheus_url
        cand = window_of(prom, self.namespace, self.candidate_pods, took)
        stable = window_of(prom, self.namespace, self.stable_pods, took) if self.stable_pods else None
        share = None
        if stable is not None and (cand.requests + stable.requests) > 0:
            share = 100 * cand.requests / (cand.requests + stable.requests)
        extra = gate_checks(spec, self.namespace, self.candidate_pods, self.stable_pods, took, percent)
        if waited >= 1:
            note += f"; the window opened {waited:.0f} s late, once Prometheus had scraped the candidate"
        return Observation(candidate=cand, stable=stable, extra=extra, traffic_share=share, note=note)
