"""Prefect artifacts from a report, on the session's real Prefect server (tests/conftest.py)."""

from __future__ import annotations

from tasks.loadtest import LoadReport, RequestRecord


def test_publish_prefect_artifacts():
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.loadtest.artifacts import publish_prefect_artifacts

    rep = LoadReport(
        model_id="tiny", base_url="http://127.0.0.1:1", completed=3, failed=1, median_ttft_ms=12.5,
        p99_ttft_ms=30.0, passed=False, violations=["p99 TTFT 30.0 ms > limit 20 ms"], errors={"HTTP 500": 1},
        records=[RequestRecord(start_s=0.1 * i, ttft_ms=10 + i, tpot_ms=2, e2el_ms=30, itl_ms=[2, 2]) for i in range(3)],
    )

    @flow
    def publish():
        return publish_prefect_artifacts(rep, key_prefix="Tiny Model/load_test")

    ids = publish()
    assert set(ids) == {"table", "markdown", "image"}
    md = Artifact.get("tiny-model-load-test-summary")
    assert md is not None and "p99 TTFT 30.0 ms > limit 20 ms" in md.data
    image = Artifact.get("tiny-model-load-test-plot")
    assert image is not None and image.data.startswith("data:image/png;base64,")  # the one copy of the plot
    assert "data:image" not in md.data and f"/artifacts/artifact/{ids['image']}" in md.data  # linked, not inlined
    table = Artifact.get("tiny-model-load-test-latency")
    assert table is not None and "TTFT" in str(table.data)
