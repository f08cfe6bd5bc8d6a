"""Local canary: stable and candidate take the same synthetic load at the same time.

There is no traffic router on the local target, so each canary step is one analysis
round in which both servers see an identical load (and the same CPU contention). The
candidate must meet the SLOs and stay within the allowed regression of stable's medians.
Only after every step passes does the stable pointer move (tasks.local.state).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from tasks.loadtest import LoadReport, arun_load_test
from tasks.spec import PromotionSpec
from tasks.values import Endpoint


class StepResult(BaseModel):
    percent: int
    failures: list[str]
    candidate: dict[str, float]
    stable: dict[str, float]


class CanaryOutcome(BaseModel):
    promoted: bool
    reason: str
    steps: list[StepResult]


_FIGURES = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "output_throughput", "completed", "failed")


def _figures(r: LoadReport) -> dict[str, float]:
    return {k: float(getattr(r, k)) for k in _FIGURES}


def compare(candidate: LoadReport, stable: LoadReport, max_regression: float) -> list[str]:
    """Checks the candidate fails: its own SLO verdict, then regression against stable's medians."""
    failures = list(candidate.violations)
    if candidate.completed == 0:
        failures.append("candidate completed no request")
    for metric in ("median_ttft_ms", "median_tpot_ms"):
        cand, base = getattr(candidate, metric), getattr(stable, metric)
        if base > 0 and cand > base * (1 + max_regression):
            failures.append(
                f"{metric} {cand:.1f} ms is {100 * (cand / base - 1):.0f}% above stable's {base:.1f} ms "
                f"(allowed {100 * max_regression:.0f}%)"
            )
    return failures


def run_local_canary(spec: PromotionSpec, stable: Endpoint, candidate: Endpoint, tokenizer: str | None = None) -> CanaryOutcome:
    profile = spec.load.model_copy(update={"duration_s": spec.canary.step_duration_s, "num_requests": None})
    steps: list[StepResult] = []
    failed_checks = 0

    async def one_round() -> tuple[LoadReport, LoadReport]:
        return await asyncio.gather(
            arun_load_test(candidate.base_url, candidate.name, profile, spec.slo, tokenizer),
            arun_load_test(stable.base_url, stable.name, profile, None, tokenizer),
        )

    for percent in spec.canary.steps:
        cand_report, stable_report = asyncio.run(one_round())
        failures = compare(cand_report, stable_report, spec.canary.max_regression)
        steps.append(StepResult(percent=percent, failures=failures,
                                candidate=_figures(cand_report), stable=_figures(stable_report)))
        failed_checks += len(failures)
        if failed_checks > spec.canary.failure_limit:
            return CanaryOutcome(promoted=False, steps=steps,
                                 reason=f"step {percent}%: " + "; ".join(failures))
    return CanaryOutcome(promoted=True, reason=f"{len(steps)} step(s) passed", steps=steps)
