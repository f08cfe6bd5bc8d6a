"""PNG plot of a V2 load-test report: latency distribution, latency over the run, throughput (and a sweep)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .v2 import V2Report


def plot_v2_report(report: "V2Report", path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.figure import Figure

    recs = [r for r in (report.records or []) if r.error is None and r.e2el_ms is not None]
    has_sweep = bool(report.sweep)
    nrows = 2 if has_sweep else 1
    fig = Figure(figsize=(14, 3.8 * nrows), layout="constrained")
    verdict = "passed" if report.passed else "FAILED"
    fig.suptitle(f"{report.model_id} @ {report.base_url} (V2) - {report.mode}, "
                 f"{report.request_throughput:.1f} req/s, SLO {verdict}")
    ax = fig.add_subplot(nrows, 3, 1)
    if recs:
        ax.hist([r.e2el_ms for r in recs], bins=60, color="#4878a8")
    else:
        ax.text(0.5, 0.5, "keep records for the distribution", ha="center", transform=ax.transAxes, color="grey")
    for stat, style in (("median", "-"), ("p90", ":"), ("p99", "--")):
        v = getattr(report, f"{stat}_e2el_ms")
        ax.axvline(v, color="#c03030", linestyle=style, label=f"{stat} {v:.2f} ms")
    if report.slo is not None and report.slo.latency_p99_ms is not None:
        ax.axvline(report.slo.latency_p99_ms, color="#30a030", label=f"SLO p99 {report.slo.latency_p99_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)

    ax = fig.add_subplot(nrows, 3, 2)
    if recs:
        ax.plot([r.start_s for r in recs], [r.e2el_ms for r in recs], ".", markersize=2, color="#4878a8")
    ax.set_xlabel("sent at (s from the start)")
    ax.set_ylabel("latency (ms)")

    ax = fig.add_subplot(nrows, 3, 3)
    if recs:
        ends = np.array([r.start_s + r.e2el_ms / 1000 for r in recs])
        width = max(0.05, float(ends.max()) / 40)  # about 40 bins whatever the run's length
        edges = np.arange(0, float(ends.max()) + width, width)
        counts, _ = np.histogram(ends, bins=edges)
        ax.step(edges[:-1], counts / width, where="post", color="#4878a8", label=f"completed per second ({width:.2g} s bins)")
    if report.slo is not None and report.slo.min_requests_per_s is not None:
        ax.axhline(report.slo.min_requests_per_s, color="#30a030", label=f"SLO {report.slo.min_requests_per_s:g} req/s")
    ax.set_xlabel("s from the start")
    ax.set_ylabel("requests / s")
    ax.legend(fontsize=8)

    if has_sweep:
        pts = sorted(report.sweep, key=lambda p: p.request_throughput)
        ax = fig.add_subplot(nrows, 3, 4)
        x = [p.request_throughput for p in pts]
        ax.plot(x, [p.p99_e2el_ms for p in pts], "o--", label="p99 latency")
        for p in pts:
            if not p.passed:
                ax.plot([p.request_throughput], [p.p99_e2el_ms], "x", color="#c03030", markersize=10)
        if report.max_rate_meeting_slo is not None:
            ax.axvline(report.max_rate_meeting_slo, color="#30a030", label="highest rate in SLO")
        ax.set_xlabel("request throughput (req/s)")
        ax.set_ylabel("latency (ms)")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close("all")
