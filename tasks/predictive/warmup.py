"""Warm a fresh V2 server with real inferences until its latency settles (the V2 twin of tasks/warmup.py).

The first requests of a fresh MLServer pay for worker start-up, lazy imports and first-touch
pages; rounds of `cfg.batch_size` requests run until the median latency of a round moves by
less than `cfg.settle_tolerance` (same rule and report as the LLM warm-up).
"""

from __future__ import annotations

from tasks.errors import StageFailed
from tasks.loadtest.config import LoadProfile
from tasks.loadtest.v2 import run_v2_load_test
from tasks.spec import WarmUp
from tasks.warmup import WarmUpReport

STAGE = "warm_up"


def warm_up_v2(base_url: str, model: str, cfg: WarmUp, payloads: list[dict] | None = None,
               inputs: list | None = None) -> WarmUpReport:
    profile = LoadProfile(endpoint="v2", mode="concurrency", concurrency=1, num_requests=cfg.batch_size,
                          request_timeout_s=60)
    medians: list[float] = []
    for round_no in range(1, cfg.max_rounds + 1):
        report = run_v2_load_test(base_url, model, profile, payloads=payloads, inputs=inputs)
        if report.completed == 0:
            raise StageFailed(STAGE, base_url, f"no warm-up inference succeeded in round {round_no}", "read the server log",
                              detail="\n".join(f"{k}: {v}" for k, v in {**report.errors, **report.error_examples}.items()))
        medians.append(round(report.median_e2el_ms, 3))
        if round_no >= cfg.min_rounds and len(medians) >= 2:
            prev, cur = medians[-2], medians[-1]
            if prev > 0 and abs(cur - prev) / prev < cfg.settle_tolerance:
                return WarmUpReport(rounds=round_no, settled=True, p50_ms_by_round=medians)
    return WarmUpReport(rounds=cfg.max_rounds, settled=False, p50_ms_by_round=medians)
