"""PNG plots of load-test reports (matplotlib, Agg backend: no display needed).

- `plot_report(report, path)`: one report's TTFT / TPOT / ITL / E2EL distributions from its
  per-request records (and, for a sweep, throughput against latency). A report without
  records still gets its percentiles drawn, never an empty panel.
- `plot_canary(steps, path)`: a canary's steps, stable and candidate side by side at each
  step, one panel per latency figure.

Pure functions over `LoadReport`s: nothing here knows Prefect or a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .report import LoadReport

PANELS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
STABLE_COLOR, CANDIDATE_COLOR, BAR_COLOR, MARK_COLOR = "#4878a8", "#e08030", "#4878a8", "#c03030"
# A violin's density estimate costs O(samples); beyond this many values a fixed-seed sample draws the same shape.
KDE_SAMPLES = 20_000


def latency_values(report: "LoadReport", metric: str) -> np.ndarray:
    """One latency figure (ttft, tpot, itl, e2el) of every completed request, in ms; ITL pooled.

    Empty when the report kept no per-request records.
    """
    recs = [r for r in (report.records or []) if r.error is None]
    if metric == "itl":
        vals = [x for r in recs for x in r.itl_ms]
    else:
        vals = [v for v in (getattr(r, f"{metric}_ms") for r in recs) if v is not None]
    return np.asarray(vals, dtype=float)


def _agg():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure


def report_figure(report: "LoadReport") -> "Figure":
    """The figure `plot_report` saves (tests look at its axes)."""
    Figure = _agg()
    has_sweep = bool(report.sweep)
    nrows = 3 if has_sweep else 2
    fig = Figure(figsize=(11, 3.6 * nrows), layout="constrained")
    verdict = "passed" if report.passed else "FAILED"
    n = report.completed
    fig.suptitle(
        f"{report.label or report.model_id} @ {report.base_url} - {report.mode}, {n} requests, "
        f"{report.request_throughput:.1f} req/s, SLO {verdict}"
    )
    for k, (m, label) in enumerate(PANELS):
        ax = fig.add_subplot(nrows, 2, k + 1)
        vals = latency_values(report, m)
        if vals.size:
            hi = float(np.percentile(vals, 99.5))
            above = int((vals > hi).sum())
            ax.hist(vals[vals <= hi] if hi > vals.min() else vals, bins=60, color=BAR_COLOR)
            if above:
                label += f"; {above} above {hi:.1f} ms not drawn"
            ax.set_ylabel("requests" if m != "itl" else "token gaps")
        else:  # no records: the percentiles the report carries, so the panel still says something
            stats = [("mean", "mean"), ("p50", "p50"), ("p90", "p90"), ("p95", "p95"), ("p99", "p99")]
            ys = [getattr(report, f"{s}_{m}_ms") for s, _ in stats]
            ax.barh([lbl for _, lbl in stats], ys, color=BAR_COLOR)
            ax.invert_yaxis()
            ax.text(0.98, 0.05, "percentiles only (no per-request records)", ha="right", transform=ax.transAxes,
                    fontsize=8, color="grey")
        for stat, style in (("median", "-"), ("p99", "--")):
            v = getattr(report, f"{stat}_{m}_ms")
            ax.axvline(v, color=MARK_COLOR, linestyle=style, label=f"{stat} {v:.2f} ms")
        ax.set_xlabel(label.replace(";", " (ms);", 1) if ";" in label else f"{label} (ms)")
        ax.legend(fontsize=8, loc="best")
    if has_sweep:
        _sweep_panels(fig, report, nrows)
    return fig


def _sweep_panels(fig, report: "LoadReport", nrows: int) -> None:
    pts = sorted(report.sweep or [], key=lambda p: p.request_throughput)
    x = [p.request_throughput for p in pts]
    ax = fig.add_subplot(nrows, 2, 5)
    ax.plot(x, [p.median_ttft_ms for p in pts], "o-", label="median TTFT")
    ax.plot(x, [p.p99_ttft_ms for p in pts], "o--", label="p99 TTFT")
    ax.plot(x, [p.p99_e2el_ms for p in pts], "s:", label="p99 E2EL")
    for p in pts:
        if not p.passed:
            ax.plot([p.request_throughput], [p.p99_ttft_ms], "x", color=MARK_COLOR, markersize=10)
    ax.set_xlabel("request throughput (req/s)")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(nrows, 2, 6)
    ax.plot(x, [p.median_tpot_ms for p in pts], "o-", label="median TPOT")
    ax.plot(x, [p.p99_tpot_ms for p in pts], "o--", label="p99 TPOT")
    if report.max_rate_meeting_slo is not None:
        ax.axvline(report.max_rate_meeting_slo, color="#30a030", label="highest rate in SLO")
    ax.set_xlabel("request throughput (req/s)")
    ax.set_ylabel("TPOT (ms)")
    ax.legend(fontsize=8)


def plot_report(report: "LoadReport", path: str) -> str:
    """Write the report's latency distributions as a PNG; returns the path."""
    report_figure(report).savefig(path, dpi=90)
    return path


# ------------------------------------------------------------------------------ canary
@dataclass
class CanaryPlotStep:
    """One canary step for the plot: its traffic percent (or a label) and both servers' load tests.

    `passed` colours the step's label (green / red) when the caller knows the verdict.
    """

    stable: "LoadReport | None"
    candidate: "LoadReport | None"
    percent: float | None = None
    label: str | None = None
    passed: bool | None = None

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        return f"{self.percent:g}%" if self.percent is not None else "step"


def _as_step(s: Any) -> CanaryPlotStep:
    if isinstance(s, CanaryPlotStep):
        return s
    get = s.get if isinstance(s, Mapping) else (lambda k, d=None: getattr(s, k, d))
    return CanaryPlotStep(stable=get("stable"), candidate=get("candidate"), percent=get("percent"),
                          label=get("label"), passed=get("passed"))


def _sample(vals: np.ndarray) -> np.ndarray:
    if vals.size <= KDE_SAMPLES:
        return vals
    return np.random.default_rng(0).choice(vals, KDE_SAMPLES, replace=False)


def canary_figure(steps: Iterable[Any]) -> "Figure":
    """The figure `plot_canary` saves: per latency figure, each step's stable and candidate distributions."""
    Figure = _agg()
    from matplotlib.patches import Patch

    steps = [_as_step(s) for s in steps]
    fig = Figure(figsize=(max(11, 1.6 * len(steps) + 4), 8), layout="constrained")
    fig.suptitle("canary: stable (left) and candidate (right) at each step")
    width = 0.38
    for k, (m, label) in enumerate(PANELS):
        ax = fig.add_subplot(2, 2, k + 1)
        for i, step in enumerate(steps):
            for offset, rep, color in ((-0.2, step.stable, STABLE_COLOR), (0.2, step.candidate, CANDIDATE_COLOR)):
                if rep is None:
                    continue
                x = i + offset
                vals = latency_values(rep, m)
                if vals.size >= 2 and np.ptp(vals) > 0:
                    parts = ax.violinplot([_sample(vals)], positions=[x], widths=width, showextrema=False)
                    for body in parts["bodies"]:
                        body.set_facecolor(color)
                        body.set_edgecolor(color)
                        body.set_alpha(0.55)
                elif vals.size:
                    ax.plot([x] * vals.size, vals, "o", color=color, markersize=3)
                # median and p99 from the report itself (the figures the gates judged)
                med, p99 = getattr(rep, f"median_{m}_ms"), getattr(rep, f"p99_{m}_ms")
                ax.hlines([med], x - width / 2, x + width / 2, colors="black", linewidth=1.5)
                ax.hlines([p99], x - width / 2, x + width / 2, colors=MARK_COLOR, linestyles="--", linewidth=1.2)
        ax.set_xticks(range(len(steps)), [s.title for s in steps])
        for tick, step in zip(ax.get_xticklabels(), steps):
            if step.passed is not None:
                tick.set_color("#208020" if step.passed else MARK_COLOR)
        ax.set_xlim(-0.6, len(steps) - 0.4)
        ax.set_ylabel(f"{label} (ms)")
        ax.set_xlabel("traffic step")
        if k == 0:
            ax.legend(handles=[Patch(color=STABLE_COLOR, alpha=0.55, label="stable"),
                               Patch(color=CANDIDATE_COLOR, alpha=0.55, label="candidate"),
                               Patch(color="black", label="median"), Patch(color=MARK_COLOR, label="p99")],
                      fontsize=8, loc="upper left")
    return fig


def plot_canary(steps: Iterable[Any], path: str) -> str:
    """Write a canary's per-step distributions, stable and candidate side by side, as a PNG; returns the path.

    `steps`: `CanaryPlotStep`s, or any objects / mappings with `stable` and `candidate`
    (`LoadReport` or None) and `percent` and/or `label` (and optionally `passed`).
    """
    canary_figure(steps).savefig(path, dpi=90)
    return path
