"""PNG plots of a load-test report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import LoadReport


def plot_report(report: "LoadReport", path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    recs = [r for r in (report.records or []) if r.error is None]
    has_sweep = bool(report.sweep)
    nrows = 3 if has_sweep else 2
    fig = Figure(figsize=(11, 3.6 * nrows), layout="constrained")
    verdict = "passed" if report.passed else "FAILED"
    fig.suptitle(
        f"{report.model_id} @ {report.base_url} - {report.mode}, "
        f"{report.request_throughput:.1f} req/s, SLO {verdict}"
    )
    panels = [("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL")]
    for k, (m, label) in enumerate(panels):
        ax = fig.add_subplot(nrows, 2, k + 1)
        if recs:
            if m == "itl":
                vals = [x for r in recs for x in r.itl_ms]
            else:
                vals = [getattr(r, f"{m}_ms") for r in recs if getattr(r, f"{m}_ms") is not None]
            if vals:
                ax.hist(vals, bins=60, color="#4878a8")
        for stat, style in (("median", "-"), ("p99", "--")):
            v = getattr(report, f"{stat}_{m}_ms")
            ax.axvline(v, color="#c03030", linestyle=style, label=f"{stat} {v:.2f} ms")
        if not recs:
            ax.text(0.5, 0.5, "keep records for the distribution", ha="center", transform=ax.transAxes, color="grey")
        ax.set_xlabel(f"{label} (ms)")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    if has_sweep:
        pts = sorted(report.sweep, key=lambda p: p.request_throughput)
        x = [p.request_throughput for p in pts]
        ax = fig.add_subplot(nrows, 2, 5)
        ax.plot(x, [p.median_ttft_ms for p in pts], "o-", label="median TTFT")
        ax.plot(x, [p.p99_ttft_ms for p in pts], "o--", label="p99 TTFT")
        ax.plot(x, [p.p99_e2el_ms for p in pts], "s:", label="p99 E2EL")
        for p in pts:
            if not p.passed:
                ax.plot([p.request_throughput], [p.p99_ttft_ms], "x", color="#c03030", markersize=10)
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
    fig.savefig(path, dpi=90)
    plt.close("all")
