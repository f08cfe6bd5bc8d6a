"""The local canary's verdict: the candidate's own SLO, then regression against stable."""

from __future__ import annotations

from tasks.canary.local import CanaryOutcome, Round, StepResult, compare, steps_table
from tasks.loadtest import LoadReport


def round_(ttft: float, tpot: float, completed: int = 20, violations: list[str] | None = None,
           server: bool = True) -> Round:
    report = LoadReport(median_ttft_ms=ttft * 20, median_tpot_ms=tpot * 20, completed=completed,
                        passed=not violations, violations=violations or [])
    return Round(report=report, server={"ttft_ms": ttft, "tpot_ms": tpot} if server else {})


def test_equal_servers_pass():
    assert compare(round_(100, 10), round_(100, 10), max_regression=0.2) == []


def test_within_the_allowed_regression_passes():
    assert compare(round_(119, 11.9), round_(100, 10), max_regression=0.2) == []


def test_regression_beyond_the_limit_fails_on_server_figures():
    failures = compare(round_(150, 10), round_(100, 10), max_regression=0.2)
    assert failures == ["server mean ttft_ms 150.0 ms is 50% above stable's 100.0 ms (allowed 20%)"]


def test_client_medians_judge_when_a_server_has_no_metrics():
    failures = compare(round_(150, 10, server=False), round_(100, 10), max_regression=0.2)
    assert failures == ["client median_ttft_ms 3000.0 ms is 50% above stable's 2000.0 ms (allowed 20%)"]


def test_floor_absorbs_small_absolute_slowdowns_only():
    assert compare(round_(7, 2), round_(4, 1.5), max_regression=0.5, floor_ms=5) == []
    failures = compare(round_(12, 2), round_(4, 1.5), max_regression=0.5, floor_ms=5)
    assert failures == ["server mean ttft_ms 12.0 ms is 200% above stable's 4.0 ms (allowed 50% or 5 ms)"]


def test_slo_violations_and_no_completions_fail():
    failures = compare(round_(0, 0, completed=0, violations=["error rate 100% > limit 0%"]), round_(100, 10), 0.2)
    assert failures == ["error rate 100% > limit 0%", "candidate completed no request"]


def test_steps_table_has_a_row_per_step_and_server_with_the_verdict():
    outcome = CanaryOutcome(promoted=False, reason="r", steps=[
        StepResult(percent=25, failures=[], candidate={"server_mean_ttft_ms": 4.04}, stable={"server_mean_ttft_ms": 4.0}),
        StepResult(percent=100, failures=["too slow"], candidate={"server_mean_ttft_ms": 9.0},
                   stable={"server_mean_ttft_ms": 4.0}),
    ])
    rows = steps_table(outcome)
    assert [(r["step %"], r["server"], r["verdict"]) for r in rows] == [
        (25, "candidate", "passed"), (25, "stable", ""), (100, "candidate", "too slow"), (100, "stable", "")]
    assert rows[0]["server_mean_ttft_ms"] == 4.04
