"""The canary's Prefect artifacts: one table with each step's figures for stable and candidate.

Kept apart from the machine so the machine never imports Prefect; the canary task
collects steps and load reports as they happen and publishes once at the end (also when
the canary is interrupted).
"""

from __future__ import annotations

from tasks.canary.machine import StepRecord

# Figures shown per server and step, in this order; the step record keeps them all.
COLUMNS = ("requests", "errors", "error_rate", "request_throughput", "output_throughput",
           "p50_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p90_tpot_ms", "p99_tpot_ms", "p99_e2e_ms")


def steps_table(steps: list[StepRecord]) -> list[dict[str, object]]:
    """One row per step and server."""
    rows: list[dict[str, object]] = []
    for s in steps:
        for role, figures in (("candidate", s.candidate), ("stable", s.stable)):
            row: dict[str, object] = {"step": s.index + 1, "weight %": s.percent, "window": s.attempt + 1,
                                      "server": role}
            row.update({k: round(figures[k], 3) if k in figures else "" for k in COLUMNS})
            if role == "candidate":
                row["traffic %"] = "" if s.traffic_share is None else round(s.traffic_share, 1)
                row["verdict"] = s.verdict.value + (f": {s.reason}" if s.verdict.value != "pass" else "")
            else:
                row["traffic %"] = "" if s.traffic_share is None else round(100 - s.traffic_share, 1)
                row["verdict"] = ""
            rows.append(row)
    return rows


class CanaryArtifacts:
    """Collects the steps and the load each server took in them, then publishes the table and
    one image with each step's distributions, stable and candidate side by side."""

    def __init__(self, spec):
        self.spec = spec
        self.steps: list[StepRecord] = []
        self.plot_steps: list = []
        self._pending: dict[str, object] = {}  # role -> LoadReport of the step being observed

    def report(self, percent: int | None, role: str, report) -> None:
        self._pending[role] = report

    def step(self, step: StepRecord) -> None:
        self.steps.append(step)
        if self._pending:
            from tasks.loadtest.plot import CanaryPlotStep

            self.plot_steps.append(CanaryPlotStep(
                stable=self._pending.get("stable"), candidate=self._pending.get("candidate"), percent=step.percent,
                label=f"step {step.index + 1} ({step.percent}%)" + (f" window {step.attempt + 1}" if step.attempt else ""),
                passed={"pass": True, "fail": False}.get(step.verdict.value)))
        self._pending = {}

    def publish(self) -> None:
        if not self.steps:
            return
        from prefect.artifacts import create_table_artifact

        last = self.steps[-1]
        create_table_artifact(table=steps_table(self.steps), key=f"{self.spec.name}-canary",
                              description=f"canary of {self.spec.name}: last step {last.index + 1} "
                                          f"({last.percent}%) {last.verdict.value}")
        if self.plot_steps:
            from tasks.loadtest.artifacts import publish_canary_plot

            publish_canary_plot(self.plot_steps, self.spec.name,
                                f"canary of {self.spec.name}: each step's latency, stable and candidate side by side")
