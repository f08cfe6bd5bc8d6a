"""The local canary's verdict: the candidate's own SLO, then regression against stable."""

from __future__ import annotations

from tasks.canary.local import compare
from tasks.loadtest import LoadReport


def report(ttft: float, tpot: float, completed: int = 20, violations: list[str] | None = None) -> LoadReport:
    return LoadReport(median_ttft_ms=ttft, median_tpot_ms=tpot, completed=completed, passed=not violations,
                      violations=violations or [])


def test_equal_servers_pass():
    assert compare(report(100, 10), report(100, 10), max_regression=0.2) == []


def test_within_the_allowed_regression_passes():
    assert compare(report(119, 11.9), report(100, 10), max_regression=0.2) == []


def test_regression_beyond_the_limit_fails_with_figures():
    failures = compare(report(150, 10), report(100, 10), max_regression=0.2)
    assert failures == ["median_ttft_ms 150.0 ms is 50% above stable's 100.0 ms (allowed 20%)"]


def test_slo_violations_and_no_completions_fail():
    failures = compare(report(0, 0, completed=0, violations=["error rate 100% > limit 0%"]), report(100, 10), 0.2)
    assert failures == ["error rate 100% > limit 0%", "candidate completed no request"]
