"""`llmship render`: every Kubernetes manifest for a kserve spec, admitted, without a cluster.

Registered on the main app by flows.cli. Exit codes: 0 written, 2 bad input (spec, storage
URI, or a manifest the KServe / Kubernetes schemas reject).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tasks.errors import LlmshipError


def write_manifests(objs: list[dict], out: Path) -> list[Path]:
    """One YAML file per object, numbered in apply order, plus all.yaml with every object."""
    from tasks.kserve.render import to_yaml

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, obj in enumerate(objs):
        p = out / f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        p.write_text(to_yaml([obj]))
        paths.append(p)
    (out / "all.yaml").write_text(to_yaml(objs))
    return paths


def register(app: typer.Typer) -> None:
    """Add this area's commands to the llmship app."""

    @app.command()
    def render(
        spec: Path = typer.Argument(..., help="promotion spec YAML with target.kind: kserve"),
        out: Path = typer.Option(..., "--out", help="folder for the manifests"),
        storage_uri: Optional[str] = typer.Option(
            None, help="s3:// or pvc:// the predictor loads; default target.storage_uri, else storage.uri"),
        artifact_digest: str = typer.Option("unpublished", help="recorded in llmship.io/artifact-digest"),
        registry_version: Optional[str] = typer.Option(None, help="recorded in llmship.io/registry-version"),
    ) -> None:
        """Write the ServingRuntime, InferenceService (or LLMInferenceService), KEDA, PrometheusRule, Grafana and RBAC manifests."""
        from tasks.kserve import render_manifests
        from tasks.monitoring import dashboards_in
        from tasks.spec import load_spec

        try:
            s = load_spec(spec)
            uri = storage_uri or getattr(s.target, "storage_uri", None) or s.storage.uri
            objs = render_manifests(s, uri, artifact_digest, registry_version)
        except LlmshipError as err:
            typer.echo(err.render(), err=True)
            raise typer.Exit(err.exit_code)
        paths = write_manifests(objs, out)
        for fname, dash in dashboards_in(objs).items():  # the Grafana dashboard also as JSON, for an import
            paths.append(out / f"grafana-dashboard-{fname}")
            paths[-1].write_text(json.dumps(dash, indent=2) + "\n")
        for p in paths:
            typer.echo(str(p))
        typer.echo(f"{len(objs)} manifests admitted against the KServe CRD and Kubernetes schemas -> {out}")
