"""Publish load-test reports as Prefect artifacts: a table, a markdown summary, one plot.

Kept apart from the engine so the engine never imports Prefect; call this from a Prefect
task or flow (an active run context), e.g. the load_test task wrapper.

Each report's plot is published once, as an image artifact; the markdown summary links to
it (in the Prefect UI) instead of carrying a second copy of the picture.
"""

from __future__ import annotations

import base64
import os
import re
import tempfile
from typing import Any, Iterable

from .report import LoadReport


def _key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, numbers and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "load-test"


def png_data_url(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def artifact_link(artifact_id: Any, key: str) -> str:
    """Markdown pointing at an artifact: its page in the Prefect UI when the UI's address is known."""
    try:
        from prefect.settings import get_current_settings

        ui = get_current_settings().ui_url
    except Exception:  # no settings (a plain script): name the key only
        ui = None
    if ui and artifact_id:
        return f"[`{key}`]({ui.rstrip('/')}/artifacts/artifact/{artifact_id})"
    return f"`{key}` (image artifact)"


def publish_image(png_path: str | None, key: str, description: str, image_url: str | None = None):
    """One image artifact: the PNG inlined as a data URL, or `image_url` (e.g. an S3 link) when given."""
    from prefect.artifacts import create_image_artifact

    url = image_url or png_data_url(png_path or "")
    return create_image_artifact(image_url=url, key=key, description=description, _sync=True)


def publish_prefect_artifacts(report: LoadReport, key_prefix: str = "load-test", image_url: str | None = None) -> dict:
    """Create the artifacts; returns their ids by kind. `image_url` overrides the inline PNG (e.g. an S3 link)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

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
    plot_key = f"{prefix}-plot"
    what = "latency distributions" if report.records else "latency percentiles (no per-request records kept)"
    if image_url is not None:
        ids["image"] = publish_image(None, plot_key, f"{report.model_id}: {what}", image_url)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            png = report.write_png(os.path.join(tmp, "loadtest.png"))
            ids["image"] = publish_image(png, plot_key, f"{report.model_id}: {what}")
    md = report.markdown() + f"\n\n{what.capitalize()}: the plot is {artifact_link(ids['image'], plot_key)}.\n"
    ids["markdown"] = create_markdown_artifact(
        markdown=md, key=f"{prefix}-summary", description=f"load test {verdict}", _sync=True
    )
    return ids


def publish_canary_plot(steps: Iterable[Any], key_prefix: str, description: str = "") -> Any:
    """`plot_canary` as one image artifact `<key_prefix>-canary-plot`; returns its id."""
    from .plot import plot_canary

    with tempfile.TemporaryDirectory() as tmp:
        png = plot_canary(steps, os.path.join(tmp, "canary.png"))
        return publish_image(png, f"{_key(key_prefix)}-canary-plot",
                             description or "canary: stable and candidate latency distributions per step")
