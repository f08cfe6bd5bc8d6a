"""One judge for every target: the same gates on the same figures, over the same window.

A step is judged on what each server recorded itself during the step's window
(tasks.canary.figures.ServerWindow): vLLM's histograms and counters, read from /metrics on
the local target and from Prometheus on KServe. The rules, each stated once:

- sample: the candidate must finish `canary.min_requests` requests and produce
  `canary.min_output_tokens` tokens in the window; fewer makes the step Inconclusive, never
  a pass (too little traffic says nothing about the candidate);
- error-rate: the candidate's 5xx share of its requests is at most `slo.max_error_rate`;
- ttft-p99 / tpot-p99 / e2e-p99: the candidate's p99 is within the SLO's limit (for a
  predictive model e2e is its request latency and the limit slo.latency_p99_ms);
- goodput: the share of the candidate's requests that meet every per-request SLO limit
  (estimated from the histograms, as the lowest share over the limits set) is no lower
  than stable's by more than `canary.max_regression` (relative);
- regression: for each of `canary.regression_quantiles`, the candidate's TTFT and TPOT (a
  predictive model's request latency) are
  at most stable's times (1 + `canary.max_regression`), or within `canary.regression_floor_ms`
  of it (timer and scheduler noise on small hosts is not a regression);
- extra checks a target brings (KServe's PromQL gates) count like any other.

Stable's figures come from the same window. When stable had too little traffic in it (at
the 100% step it has none), the last window in which it had enough stands in, and the
check says so.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field

from tasks.canary.figures import ServerWindow


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Check(BaseModel):
    name: str
    ok: bool
    value: float | None = None
    limit: str = ""
    reason: str = ""


class StepJudgement(BaseModel):
    verdict: Verdict
    checks: list[Check] = Field(default_factory=list)
    reason: str = ""

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


class JudgeRules(BaseModel):
    """The spec's rules, gathered once (from PromotionSpec: slo and canary)."""

    max_error_rate: float = 0.0
    ttft_p99_ms: float | None = None
    tpot_p99_ms: float | None = None
    e2e_p99_ms: float | None = None
    max_regression: float = 0.2
    regression_floor_ms: float = 0.0
    regression_quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.9])
    regression_on: tuple[str, ...] = ("ttft", "tpot")  # latencies compared with stable
    min_requests: int = 20
    min_output_tokens: int = 0

    @classmethod
    def from_spec(cls, spec) -> "JudgeRules":
        from tasks.spec import is_predictive

        s, c = spec.slo, spec.canary
        rules = cls(max_error_rate=s.max_error_rate, ttft_p99_ms=s.ttft_p99_ms, tpot_p99_ms=s.tpot_p99_ms,
                    e2e_p99_ms=s.e2e_p99_ms, max_regression=c.max_regression, regression_floor_ms=c.regression_floor_ms,
                    regression_quantiles=list(c.regression_quantiles), min_requests=c.min_requests,
                    min_output_tokens=c.min_output_tokens)
        if is_predictive(spec):  # one latency per request, no tokens: the V2 SLO's p99 and a regression on it
            rules = rules.model_copy(update={"e2e_p99_ms": s.latency_p99_ms, "ttft_p99_ms": None, "tpot_p99_ms": None,
                                             "regression_on": ("e2e",), "min_output_tokens": 0})
        return rules

    def slo_limits(self) -> dict[str, float]:
        return {k: v for k, v in (("ttft", self.ttft_p99_ms), ("tpot", self.tpot_p99_ms), ("e2e", self.e2e_p99_ms))
                if v is not None}


def has_enough_traffic(w: ServerWindow | None, rules: JudgeRules) -> bool:
    """A window says something only with `min_requests` requests and `min_output_tokens` tokens."""
    return w is not None and w.requests >= rules.min_requests and w.output_tokens >= rules.min_output_tokens


def goodput_share(w: ServerWindow, rules: JudgeRules) -> float | None:
    """Share of requests within every per-request limit, bounded above by the lowest per-limit share."""
    shares = [w.within_ms(key, limit) for key, limit in rules.slo_limits().items()]
    shares = [s for s in shares if s is not None]
    return min(shares) if shares else None


def judge_step(candidate: ServerWindow, stable: ServerWindow | None, rules: JudgeRules,
               baseline: ServerWindow | None = None, baseline_label: str = "",
               extra: list[Check] | None = None) -> StepJudgement:
    """The verdict on one window. `baseline` is stable's last window with enough traffic."""
    if not has_enough_traffic(candidate, rules):
        return StepJudgement(verdict=Verdict.INCONCLUSIVE, reason=(
            f"the candidate served {candidate.requests:.0f} request(s) and {candidate.output_tokens:.0f} output token(s) "
            f"in {candidate.seconds:.0f} s; a step needs at least {rules.min_requests} and {rules.min_output_tokens}"))
    checks: list[Check] = []

    rate = candidate.error_rate or 0.0
    checks.append(Check(name="error-rate", ok=rate <= rules.max_error_rate, value=rate,
                        limit=f"max {rules.max_error_rate:g}",
                        reason=f"{candidate.errors:.0f} of {max(candidate.http_requests, candidate.requests):.0f} requests failed"))

    for key, limit in rules.slo_limits().items():
        p99 = candidate.quantile_ms(key, 0.99)
        ok = p99 is not None and p99 <= limit
        checks.append(Check(name=f"{key}-p99", ok=ok, value=p99, limit=f"max {limit:g} ms",
                            reason="no data" if p99 is None else f"p99 {p99:.1f} ms"))

    base, label = (stable, "stable, same window") if has_enough_traffic(stable, rules) else (baseline, baseline_label)
    if base is not None and has_enough_traffic(base, rules):
        cand_share, base_share = goodput_share(candidate, rules), goodput_share(base, rules)
        if cand_share is not None and base_share is not None:
            floor = base_share * (1 - rules.max_regression)
            checks.append(Check(name="goodput", ok=cand_share >= floor, value=cand_share, limit=f"min {floor:.3f}",
                                reason=f"{100 * cand_share:.1f}% of requests within the SLO against {100 * base_share:.1f}% "
                                       f"on {label}"))
        for key in rules.regression_on:
            for q in rules.regression_quantiles:
                cand, ref = candidate.quantile_ms(key, q), base.quantile_ms(key, q)
                if cand is None or ref is None:
                    continue
                allowed = ref * (1 + rules.max_regression)
                ok = cand <= allowed or cand - ref <= rules.regression_floor_ms
                slack = f" or +{rules.regression_floor_ms:g} ms" if rules.regression_floor_ms else ""
                checks.append(Check(
                    name=f"{key}-p{round(q * 100)}-vs-stable", ok=ok, value=cand,
                    limit=f"max {allowed:.1f} ms{slack}",
                    reason=f"{cand:.1f} ms against {ref:.1f} ms on {label} ({100 * (cand / ref - 1) if ref else 0:+.0f}%)"))
    else:
        checks.append(Check(name="vs-stable", ok=True, reason="no stable window with enough traffic yet: not compared"))

    checks += extra or []
    failed = [c for c in checks if not c.ok]
    if failed:
        return StepJudgement(verdict=Verdict.FAIL, checks=checks,
                             reason="; ".join(f"{c.name}: {c.reason} (limit {c.limit})" for c in failed))
    return StepJudgement(verdict=Verdict.PASS, checks=checks, reason=f"{len(checks)} check(s) passed")
