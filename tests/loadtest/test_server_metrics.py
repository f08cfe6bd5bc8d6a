"""vLLM's own figures from its /metrics text: totals over label sets, means and increases between scrapes."""

from __future__ import annotations

import pytest

from tasks.loadtest.server_metrics import TPOT, TTFT, increase, mean_ms, parse_totals, scrape

METRICS = """\
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.005",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.02
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 0.01
# HELP vllm:request_time_per_output_token_seconds Histogram of time_per_output_token_seconds per request.
# TYPE vllm:request_time_per_output_token_seconds histogram
vllm:request_time_per_output_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:request_time_per_output_token_seconds_sum{engine="0",model_name="m"} 0.008
# HELP vllm:prompt_tokens_cached_total Prompt tokens served from the prefix cache.
# TYPE vllm:prompt_tokens_cached_total counter
vllm:prompt_tokens_cached_total{engine="0",model_name="m"} 64.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
# TYPE http_requests_total counter
http_requests_total{handler="none",method="POST",status="2xx"} 9.0
"""


def test_totals_add_label_sets_and_keep_only_vllm_sums_counts_and_counters():
    totals = parse_totals(METRICS)
    assert totals[TTFT + "_count"] == 5.0 and totals[TTFT + "_sum"] == pytest.approx(0.03)
    assert totals["vllm:prompt_tokens_cached_total"] == 64.0
    assert not any(k.startswith("http_") or "running" in k or "_bucket" in k for k in totals)


def test_means_and_increases_between_two_scrapes():
    before = parse_totals(METRICS)
    after = {**before, TTFT + "_count": 11.0, TTFT + "_sum": 0.06, "vllm:prompt_tokens_cached_total": 96.0}
    assert mean_ms(before, after, TTFT) == pytest.approx(5.0)
    assert mean_ms(before, after, TPOT) is None  # no new observations: no figure rather than a stale one
    assert increase(before, after, "vllm:prompt_tokens_cached_total") == 32.0


def test_a_server_without_metrics_gives_nothing():
    assert scrape("http://127.0.0.1:9") == {}
