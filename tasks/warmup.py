"""Warm a fresh server with real completions until its latency settles.

A cold engine pays for compilation, cache allocation and first-touch pages on its first
requests; measuring those would fail a good model. Rounds run until the median end-to-end
latency of a round moves by less than the tolerance.
"""

from __future__ import annotations

from pydantic import BaseModel

from tasks.errors import StageFailed
from tasks.loadtest import run_load_test
from tasks.loadtest.config import LoadProfile
from tasks.spec import WarmUp

STAGE = "warm_up"


class WarmUpReport(BaseModel):
    rounds: int
    settled: bool
    p50_ms_by_round: list[float]


def warm_up(base_url: str, model: str, cfg: WarmUp, tokenizer: str | None = None) -> WarmUpReport:
    profile = LoadProfile(
        mode="concurrency", concurrency=1, num_requests=cfg.batch_size,
        input_tokens=cfg.prompt_tokens, output_tokens=cfg.output_tokens, request_timeout_s=120,
    )
    medians: list[float] = []
    for round_no in range(1, cfg.max_rounds + 1):
        report = run_load_test(base_url, model, profile, tokenizer=tokenizer)
        if report.completed == 0:
            raise StageFailed(STAGE, base_url, f"no warm-up request succeeded in round {round_no}",
                              "read the server log", detail="\n".join(f"{k}: {v}" for k, v in report.errors.items()))
        medians.append(round(report.median_e2el_ms, 2))
        if round_no >= cfg.min_rounds and len(medians) >= 2:
            prev, cur = medians[-2], medians[-1]
            if prev > 0 and abs(cur - prev) / prev < cfg.settle_tolerance:
                return WarmUpReport(rounds=round_no, settled=True, p50_ms_by_round=medians)
    return WarmUpReport(rounds=cfg.max_rounds, settled=False, p50_ms_by_round=medians)
