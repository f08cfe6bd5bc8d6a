"""vLLM's own view of a load run: its /metrics read before and after, summed over label sets.

Client-side figures include everything between the engine and the client's socket; these
are what the engine itself recorded, so a difference between the two says where time went.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

TTFT = "vllm:time_to_first_token_seconds"
TPOT = "vllm:request_time_per_output_token_seconds"


def parse_totals(metrics_text: str) -> dict[str, float]:
    """Each `vllm:` histogram's _sum and _count and each counter's _total, added over its label sets."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if not family.name.startswith("vllm:"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count", "_total")):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def scrape(base_url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """parse_totals of a server's /metrics; empty when the server does not serve them."""
    try:
        r = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout_s)
        r.raise_for_status()
    except httpx.HTTPError:
        return {}
    return parse_totals(r.text)


def mean_ms(before: dict[str, float], after: dict[str, float], histogram: str) -> float | None:
    """Mean of a seconds histogram over the observations made between two scrapes, in ms; None if none."""
    n = after.get(histogram + "_count", 0.0) - before.get(histogram + "_count", 0.0)
    if n <= 0:
        return None
    return 1000 * (after.get(histogram + "_sum", 0.0) - before.get(histogram + "_sum", 0.0)) / n


def increase(before: dict[str, float], after: dict[str, float], counter: str) -> float:
    """How much a counter (its `_total` sample name) grew between two scrapes."""
    return after.get(counter, 0.0) - before.get(counter, 0.0)
