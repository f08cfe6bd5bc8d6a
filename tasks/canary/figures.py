"""What one server did over one analysis window, from its own histograms and counters.

Both targets measure the same way: vLLM's histograms (TTFT, time per output token,
end-to-end latency) and counters read at the start and the end of a window, as a delta.
On the local target the two reads are two scrapes of the server's /metrics; on KServe
they are Prometheus `increase()` over the window. The judge (tasks.canary.judge) only
ever sees a `ServerWindow`, so every target is judged by the same rules.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field
from prometheus_client.parser import text_string_to_metric_families

# vLLM's names; MLServer's REST histogram of /v2/models/{model_name}/infer stands in for E2E
# (MLServer 1.7 exports it with path and status_code labels: tasks/predictive/server_metrics.py).
TTFT = "vllm:time_to_first_token_seconds"
TPOT = "vllm:request_time_per_output_token_seconds"
E2E = "vllm:e2e_request_latency_seconds"
OUTPUT_TOKENS = "vllm:generation_tokens_total"
HTTP_REQUESTS = "http_requests_total"
LATENCIES = {"ttft": TTFT, "tpot": TPOT, "e2e": E2E}
MLSERVER_DURATION = "rest_server_request_duration_seconds"
MLSERVER_REQUESTS = "rest_server_requests_total"
MLSERVER_INFER = "/v2/models/{model_name}/infer"


class Histogram(BaseModel):
    """Cumulative bucket counts over a window; `le` ascending, the last one +Inf."""

    model_config = ConfigDict(ser_json_inf_nan="strings")  # the +Inf bound survives a JSON record

    buckets: list[tuple[float, float]]
    sum: float = 0.0
    count: float = 0.0

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear inside the bucket that holds rank q*count."""
        total = self.buckets[-1][1] if self.buckets else 0.0
        if total <= 0:
            return None
        rank = q * total
        lower_le, lower_count = 0.0, 0.0
        for le, count in self.buckets:
            if count >= rank:
                if math.isinf(le):  # rank in the +Inf bucket: the highest finite bound, as Prometheus does
                    return lower_le
                if count == lower_count:
                    return le
                return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
            lower_le, lower_count = le, count
        return lower_le

    def fraction_at_most(self, x: float) -> float | None:
        """Share of observations <= x, linear inside a bucket (the inverse of quantile)."""
        total = self.buckets[-1][1] if self.buckets else 0.0
        if total <= 0:
            return None
        lower_le, lower_count = 0.0, 0.0
        for le, count in self.buckets:
            if math.isinf(le):  # above the last finite bound nothing is known: not counted as within
                return lower_count / total
            if x <= le:
                part = (x - lower_le) / (le - lower_le) if le > lower_le else 1.0
                return (lower_count + part * (count - lower_count)) / total
            lower_le, lower_count = le, count
        return lower_count / total

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def minus(self, earlier: "Histogram | None") -> "Histogram":
        if earlier is None:
            return self
        before = dict(earlier.buckets)
        return Histogram(buckets=[(le, max(0.0, c - before.get(le, 0.0))) for le, c in self.buckets],
                         sum=max(0.0, self.sum - earlier.sum), count=max(0.0, self.count - earlier.count))


class Reading(BaseModel):
    """One read of a server's counters: histograms and totals summed over their label sets."""

    histograms: dict[str, Histogram] = Field(default_factory=dict)
    totals: dict[str, float] = Field(default_factory=dict)  # counter name (with _total) -> value
    http_errors: float = 0.0  # 5xx responses counted by the HTTP instrumentation


def parse_reading(metrics_text: str) -> Reading:
    """A /metrics page as a Reading (prometheus_client's parser, not a hand-written one)."""
    hist: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    totals: dict[str, float] = {}
    errors = 0.0
    for family in text_string_to_metric_families(metrics_text):
        name = family.name
        if name == MLSERVER_DURATION:  # inferences only, answered ones: a predictive model's end-to-end latency
            name = E2E
        for s in family.samples:
            if family.name == MLSERVER_DURATION and not (s.labels.get("path") == MLSERVER_INFER
                                                         and str(s.labels.get("status_code", "")).startswith("2")):
                continue
            if s.name == MLSERVER_REQUESTS and s.labels.get("path") == MLSERVER_INFER:
                totals[HTTP_REQUESTS] = totals.get(HTTP_REQUESTS, 0.0) + s.value
                if str(s.labels.get("status_code", "")).startswith("5"):
                    errors += s.value
                continue
            if family.type == "histogram" and s.name == family.name + "_bucket":
                le = float(s.labels["le"])
                hist.setdefault(name, {})[le] = hist.get(name, {}).get(le, 0.0) + s.value
            elif family.type == "histogram" and s.name == family.name + "_sum":
                sums[name] = sums.get(name, 0.0) + s.value
            elif family.type == "histogram" and s.name == family.name + "_count":
                counts[name] = counts.get(name, 0.0) + s.value
            elif family.type == "counter" and s.name.endswith("_total"):
                totals[s.name] = totals.get(s.name, 0.0) + s.value
                # vLLM's HTTP instrumentation groups status codes as 2xx / 4xx / 5xx
                if s.name == HTTP_REQUESTS and str(s.labels.get("status", "")).startswith("5"):
                    errors += s.value
    histograms = {name: Histogram(buckets=sorted(b.items()), sum=sums.get(name, 0.0), count=counts.get(name, 0.0))
                  for name, b in hist.items()}
    return Reading(histograms=histograms, totals=totals, http_errors=errors)


class ServerWindow(BaseModel):
    """What one server did between two readings."""

    seconds: float
    latency: dict[str, Histogram] = Field(default_factory=dict)  # LATENCIES keys
    requests: float = 0.0  # finished requests (end-to-end histogram count)
    http_requests: float = 0.0
    errors: float = 0.0
    output_tokens: float = 0.0

    @classmethod
    def between(cls, before: Reading, after: Reading, seconds: float) -> "ServerWindow":
        latency = {}
        for key, name in LATENCIES.items():
            if name in after.histograms:
                latency[key] = after.histograms[name].minus(before.histograms.get(name))
        inc = lambda n: max(0.0, after.totals.get(n, 0.0) - before.totals.get(n, 0.0))  # noqa: E731
        e2e = latency.get("e2e")
        return cls(seconds=seconds, latency=latency, requests=e2e.count if e2e else 0.0,
                   http_requests=inc(HTTP_REQUESTS), errors=max(0.0, after.http_errors - before.http_errors),
                   output_tokens=inc(OUTPUT_TOKENS))

    @property
    def error_rate(self) -> float | None:
        seen = max(self.http_requests, self.requests + self.errors)
        return self.errors / seen if seen > 0 else None

    def quantile_ms(self, key: str, q: float) -> float | None:
        h = self.latency.get(key)
        v = h.quantile(q) if h else None
        return None if v is None else 1000 * v

    def within_ms(self, key: str, limit_ms: float) -> float | None:
        h = self.latency.get(key)
        return h.fraction_at_most(limit_ms / 1000) if h else None

    def figures(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float]:
        """Flat figures for tables and the release record (ms, counts, per-second rates)."""
        out: dict[str, float] = {"requests": self.requests, "errors": self.errors,
                                 "output_tokens": self.output_tokens, "seconds": round(self.seconds, 2)}
        if self.error_rate is not None:
            out["error_rate"] = self.error_rate
        if self.seconds > 0:
            out["request_throughput"] = self.requests / self.seconds
            out["output_throughput"] = self.output_tokens / self.seconds
        for key, h in self.latency.items():
            mean = h.mean()
            if mean is not None:
                out[f"mean_{key}_ms"] = 1000 * mean
            for q in quantiles:
                v = self.quantile_ms(key, q)
                if v is not None:
                    out[f"p{round(q * 100):d}_{key}_ms"] = v
        return {k: round(v, 4) for k, v in out.items()}
