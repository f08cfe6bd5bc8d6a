"""Plots with data: every load test llmship runs keeps what its plot needs, one image per report.

The promotion's load test (the load_test stage, as flows/promote.py runs it) used to keep no
per-request records, so its plot was four empty panels, and the summary inlined the same
image that was also published on its own.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import yaml

from bench.support.fake_openai import FakeConfig, fake_server_process
from tasks.loadtest import LoadReport, RequestRecord
from tasks.loadtest.plot import CanaryPlotStep, canary_figure, latency_values, plot_canary, report_figure
from tasks.spec import parse_spec

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _spec(name: str):
    d = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    d["name"] = name
    return parse_spec(d)


def _texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def _distribution_axes(fig):
    return [ax for ax in fig.axes if ax.get_xlabel().split(" ")[0] in ("TTFT", "TPOT", "ITL", "E2EL")]


@pytest.fixture(scope="module")
def server():
    with fake_server_process(FakeConfig(ttft_s=0.01, itl_s=0.002)) as url:
        yield url


def test_the_promotions_load_test_stage_plots_data_and_publishes_one_image(server):
    """load_test_task (the promotion's stage) on the example spec's load: a plot with data, published once."""
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.prefect_tasks import load_test_task

    spec = _spec("plot-stage")

    @flow
    def promote_like():
        return load_test_task(server, "fake-model", spec, None)

    report = promote_like()
    assert report.records is not None and len(report.records) == spec.load.num_requests
    fig = report_figure(report)
    axes = _distribution_axes(fig)
    assert len(axes) == 4
    assert all(len(ax.patches) > 1 for ax in axes), [len(ax.patches) for ax in axes]  # histogram bars in every panel
    assert "keep records" not in _texts(fig) and "percentiles only" not in _texts(fig)

    summary = Artifact.get("plot-stage-load-test-summary")
    image = Artifact.get("plot-stage-load-test-plot")
    assert image is not None and image.data.startswith("data:image/png;base64,")
    png = base64.b64decode(image.data.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary is not None and "data:image" not in summary.data  # referenced, not inlined a second time
    assert "plot-stage-load-test-plot" in summary.data and "latency distributions" in summary.data.lower()


def test_a_report_without_records_draws_its_percentiles_not_empty_panels():
    rep = LoadReport(model_id="m", base_url="http://x", completed=10, mean_ttft_ms=5, median_ttft_ms=4, p90_ttft_ms=8,
                     p95_ttft_ms=9, p99_ttft_ms=12, median_tpot_ms=1, p99_tpot_ms=2, median_itl_ms=1, p99_itl_ms=2,
                     median_e2el_ms=20, p99_e2el_ms=30)
    fig = report_figure(rep)
    assert all(len(ax.patches) == 5 for ax in _distribution_axes(fig))  # mean, p50, p90, p95, p99 bars
    assert "percentiles only" in _texts(fig)


def _report(seed: int, ttft: float, n: int = 60) -> LoadReport:
    rng = np.random.default_rng(seed)
    recs = [RequestRecord(start_s=i * 0.1, ttft_ms=float(t), tpot_ms=float(rng.normal(2 + seed, 0.1)),
                          e2el_ms=float(t + rng.normal(30, 2)),
                          itl_ms=list(rng.normal(2 + seed, 0.2, 15)), output_tokens=16)
            for i, t in enumerate(rng.normal(ttft, ttft * 0.1, n))]
    ttfts = np.array([r.ttft_ms for r in recs])
    return LoadReport(model_id="m", completed=n, records=recs, median_ttft_ms=float(np.median(ttfts)),
                      p99_ttft_ms=float(np.percentile(ttfts, 99)), median_tpot_ms=2.0 + seed, p99_tpot_ms=2.0 + seed)


def test_plot_canary_puts_stable_and_candidate_side_by_side_at_every_step(tmp_path):
    steps = [CanaryPlotStep(stable=_report(0, 40), candidate=_report(1, 60), percent=p, passed=p < 50) for p in (10, 25, 50)]
    steps.append({"label": "100% (promoted)", "stable": _report(0, 40), "candidate": _report(1, 55)})  # a mapping works too
    fig = canary_figure(steps)
    axes = fig.axes
    assert len(axes) == 4
    for ax in axes:
        violins = [c for c in ax.collections if c.__class__.__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
        assert len(violins) == 2 * len(steps), ax.get_ylabel()  # one distribution per server per step
        assert [t.get_text() for t in ax.get_xticklabels()] == ["10%", "25%", "50%", "100% (promoted)"]
    colors = [t.get_color() for t in axes[0].get_xticklabels()]
    assert colors[0] != colors[2]  # a passed and a failed step read differently
    out = plot_canary(steps, str(tmp_path / "canary.png"))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_canary_copes_with_a_missing_server_and_reports_without_records(tmp_path):
    bare = LoadReport(model_id="m", completed=3, median_ttft_ms=5, p99_ttft_ms=9)
    plot_canary([CanaryPlotStep(stable=None, candidate=_report(1, 50), percent=10),
                 CanaryPlotStep(stable=bare, candidate=bare, percent=100)], str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_latency_values_pool_itl_and_skip_failed_requests():
    rep = LoadReport(records=[RequestRecord(start_s=0, ttft_ms=5, itl_ms=[1, 2]),
                              RequestRecord(start_s=0, error="HTTP 500", itl_ms=[9])])
    assert latency_values(rep, "ttft").tolist() == [5.0] and latency_values(rep, "itl").tolist() == [1.0, 2.0]


def test_engine_keeps_records_by_default(server):
    from tasks.loadtest import LoadProfile, run_load_test

    rep = run_load_test(server, "fake-model", LoadProfile(concurrency=2, num_requests=6, output_tokens=4))
    assert rep.records is not None and len(rep.records) == 6


def test_cli_load_test_keeps_records_for_its_plot(server, tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from flows import cli_loadtest

    app = typer.Typer()
    cli_loadtest.register(app)

    @app.command("noop")
    def _noop() -> None:
        pass

    r = CliRunner().invoke(app, ["loadtest", server, "-n", "10", "--output-tokens", "4", "--out", str(tmp_path),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "loadtest.json").read_text()).get("records")
