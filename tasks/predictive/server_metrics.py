"""MLServer's own view of a load run: its /metrics (own port) read before and after.

Names as MLServer 1.7.1 exports them (read off a real server here):
- `rest_server_request_duration_seconds` (histogram; labels method, path, status_code): the REST
  server's time per request, path `/v2/models/{model_name}/infer` for inferences;
- `model_infer_request_duration` (summary; labels model, version): the model's own predict time;
- `model_infer_request_success_total` / `model_infer_request_failure_total` (counters per model).
Client-side latency includes everything between MLServer and the client's socket; these say
what the server itself spent, so a regression judge can compare servers on them (as the local
LLM canary does with vLLM's /metrics).
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

INFER_PATH = "/v2/models/{model_name}/infer"
REST_DURATION = "rest_server_request_duration_seconds"
MODEL_DURATION = "model_infer_request_duration"


def parse_mlserver(metrics_text: str, model: str | None = None) -> dict[str, float]:
    """Totals: rest infer duration sum/count (HTTP 200), model predict sum/count, success/failure counts."""
    out = {"rest_sum": 0.0, "rest_count": 0.0, "model_sum": 0.0, "model_count": 0.0, "success": 0.0, "failure": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            lab = s.labels
            if s.name.startswith(REST_DURATION) and lab.get("path") == INFER_PATH and lab.get("status_code") == "200":
                if s.name.endswith("_sum"):
                    out["rest_sum"] += s.value
                elif s.name.endswith("_count"):
                    out["rest_count"] += s.value
            if model is not None and lab.get("model") not in (None, model):
                continue
            if s.name == MODEL_DURATION + "_sum":
                out["model_sum"] += s.value
            elif s.name == MODEL_DURATION + "_count":
                out["model_count"] += s.value
            elif s.name == "model_infer_request_success_total":
                out["success"] += s.value
            elif s.name == "model_infer_request_failure_total":
                out["failure"] += s.value
    return out


def scrape_mlserver(metrics_url: str, model: str | None = None, timeout_s: float = 10.0) -> dict[str, float]:
    """parse_mlserver of the server's metrics page (MLServerEndpoint.metrics_url); empty when unreachable."""
    try:
        r = httpx.get(metrics_url, timeout=timeout_s)
        r.raise_for_status()
    except httpx.HTTPError:
        return {}
    return parse_mlserver(r.text, model)


def mean_ms(before: dict[str, float], after: dict[str, float], which: str = "rest") -> float | None:
    """Mean server-side duration (rest: the REST request; model: predict) between two scrapes, in ms."""
    n = after.get(f"{which}_count", 0.0) - before.get(f"{which}_count", 0.0)
    if n <= 0:
        return None
    return 1000 * (after.get(f"{which}_sum", 0.0) - before.get(f"{which}_sum", 0.0)) / n
