"""Local canary: stable and candidate take the same synthetic load, one after the other.

There is no traffic router on the local target, so each canary step is one analysis
round: the candidate and the stable server each take the spec's load profile for half
the step, alone, in an order that alternates from step to step so drift hits both alike.
They are not loaded at once: two vLLM-CPU servers under load on a small host starve each
other (each binds its worker to the same core; one was seen finishing 4 requests in 8 s
while the other finished 425), which measures the host, not the model.

The candidate must meet the SLOs as its clients see them (the load test's own verdict).
Regression against stable is judged on what each server reports for the round on its
`/metrics` (mean TTFT and time per output token), the signal the KServe gates use too:
on a small host vLLM-CPU sometimes hands a whole stream to the socket at once about
100 ms late while its engine took 5 ms, and which server does it changes from round to
round, so client-side medians would compare the host's moods, not the two models.
Only after every step passes does the stable pointer move (tasks.local.state).
"""

from __future__ import annotations

from pydantic import BaseModel

from tasks.loadtest import SLO, LoadReport, run_load_test, server_metrics
from tasks.spec import PromotionSpec
from tasks.values import Endpoint

# What a round is judged on, per server: the means of vLLM's own histograms.
SERVER_HISTOGRAMS = {"ttft_ms": server_metrics.TTFT, "tpot_ms": server_metrics.TPOT}


class StepResult(BaseModel):
    percent: int
    failures: list[str]
    candidate: dict[str, float]
    stable: dict[str, float]


class CanaryOutcome(BaseModel):
    promoted: bool
    reason: str
    steps: list[StepResult]


class Round(BaseModel):
    """One server's share of a step: the client's report and the server's own means over it."""

    report: LoadReport
    server: dict[str, float]  # SERVER_HISTOGRAMS keys; absent when the server has no such metric


_CLIENT_FIGURES = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "output_throughput", "completed", "failed")


def _figures(r: Round) -> dict[str, float]:
    figures = {k: float(getattr(r.report, k)) for k in _CLIENT_FIGURES}
    figures.update({f"server_mean_{k}": v for k, v in r.server.items()})
    return figures


def steps_table(outcome: CanaryOutcome) -> list[dict[str, object]]:
    """One row per step and server, for the canary's Prefect table artifact."""
    rows: list[dict[str, object]] = []
    for step in outcome.steps:
        for role, figures in (("candidate", step.candidate), ("stable", step.stable)):
            verdict = "" if role == "stable" else ("; ".join(step.failures) or "passed")
            rows.append({"step %": step.percent, "server": role, **{k: round(v, 2) for k, v in figures.items()},
                         "verdict": verdict})
    return rows


def compare(candidate: Round, stable: Round, max_regression: float, floor_ms: float = 0.0) -> list[str]:
    """Checks the candidate fails: its own SLO verdict, then regression against stable."""
    failures = list(candidate.report.violations)
    if candidate.report.completed == 0:
        failures.append("candidate completed no request")
    for key in SERVER_HISTOGRAMS:
        if key in candidate.server and key in stable.server:
            label, cand, base = f"server mean {key}", candidate.server[key], stable.server[key]
        else:  # no server metrics: what the clients saw
            label = f"client median_{key}"
            cand, base = getattr(candidate.report, f"median_{key}"), getattr(stable.report, f"median_{key}")
        if base > 0 and cand > base * (1 + max_regression) and cand - base > floor_ms:
            failures.append(
                f"{label} {cand:.1f} ms is {100 * (cand / base - 1):.0f}% above stable's {base:.1f} ms "
                f"(allowed {100 * max_regression:.0f}%" + (f" or {floor_ms:g} ms" if floor_ms else "") + ")"
            )
    return failures


def run_local_canary(spec: PromotionSpec, stable: Endpoint, candidate: Endpoint, tokenizer: str | None = None) -> CanaryOutcome:
    profile = spec.load.model_copy(update={"duration_s": spec.canary.step_duration_s / 2, "num_requests": None})
    steps: list[StepResult] = []
    failed_checks = 0

    def measure(ep: Endpoint, slo: SLO | None) -> Round:
        before = server_metrics.scrape(ep.base_url)
        report = run_load_test(ep.base_url, ep.name, profile, slo, tokenizer)
        after = server_metrics.scrape(ep.base_url)
        means = {key: server_metrics.mean_ms(before, after, name) for key, name in SERVER_HISTOGRAMS.items()}
        return Round(report=report, server={key: v for key, v in means.items() if v is not None})

    for i, percent in enumerate(spec.canary.steps):
        if i % 2 == 0:
            cand, base = measure(candidate, spec.slo), measure(stable, None)
        else:
            base, cand = measure(stable, None), measure(candidate, spec.slo)
        failures = compare(cand, base, spec.canary.max_regression, spec.canary.regression_floor_ms)
        steps.append(StepResult(percent=percent, failures=failures, candidate=_figures(cand), stable=_figures(base)))
        failed_checks += len(failures)
        if failed_checks > spec.canary.failure_limit:
            return CanaryOutcome(promoted=False, steps=steps,
                                 reason=f"step {percent}%: " + "; ".join(failures))
    return CanaryOutcome(promoted=True, reason=f"{len(steps)} step(s) passed", steps=steps)
