"""Publish a load-test report as Prefect artifacts: a table, a markdown summary, the plot.

Kept apart from the engine so the engine never imports Prefect; call this from a Prefect
task or flow (an active run context), e.g. the load_test task wrapper.
"""

from __future__ import annotations

import base64
import os
import re
import tempfile

from .report import LoadReport


def _key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, numbers and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "load-test"


def publish_prefect_artifacts(report: LoadReport, key_prefix: str = "load-test", image_url: str | None = None) -> dict:
    """Create the artifacts; returns their ids by kind. `image_url` overrides the inline PNG (e.g. an S3 link)."""
    from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

    prefix = _key(key_prefix)
    verdict = "passed" if report.passed else "failed"
    ids = {}
    ids["table"] = create_table_artifact(
        table=report.summary_rows(),
        key=f"{prefix}-latency",
        description=f"{report.model_id}: latency in ms ({report.completed} requests, SLO {verdict})",
        _sync=True,
    )
    if report.sweep:
        ids["sweep_table"] = create_table_artifact(
            table=[p.model_dump(exclude={"violations"}) for p in report.sweep],
            key=f"{prefix}-sweep",
            description=f"{report.model_id}: load levels of the sweep",
            _sync=True,
        )
    png = None
    if image_url is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = report.write_png(os.path.join(tmp, "loadtest.png"))
            with open(path, "rb") as f:
                png = base64.b64encode(f.read()).decode()
        image_url = f"data:image/png;base64,{png}"
    md = report.markdown()
    if png is not None:
        md += f"\n\n![latency distributions]({image_url})\n"
    ids["markdown"] = create_markdown_artifact(
        markdown=md, key=f"{prefix}-summary", description=f"load test {verdict}", _sync=True
    )
    ids["image"] = create_image_artifact(
        image_url=image_url, key=f"{prefix}-plot", description="latency distributions", _sync=True
    )
    return ids
