"""`llmship history NAME`: the release records of a served name, newest first.

Registered on the main app by flows.cli. Exit codes: 0 listed, 2 no records (or bad input).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tasks.errors import LlmshipError


def register(app: typer.Typer) -> None:
    @app.command()
    def history(
        name: str = typer.Argument(..., help="the served name (the spec's name)"),
        spec: Path = typer.Option(None, help="read the store from this spec"),
        store: str = typer.Option(None, help="the store: a folder, pvc://claim/path or s3://bucket/prefix"),
        as_json: bool = typer.Option(False, "--json", help="print the records as JSON, for tools"),
    ) -> None:
        """Print the release records of NAME: what made each release and who decided."""
        from tasks.release import read_releases

        try:
            endpoint, mount = None, "/mnt/pvc"
            if spec:
                from tasks.spec import load_spec

                s = load_spec(spec)
                store_uri, endpoint, mount = store or s.storage.uri, s.storage.s3_endpoint_url, s.storage.pvc_mount_root
            else:
                store_uri = store or os.environ.get("LLMSHIP_STORE", "./.llmship/store")
            releases = read_releases(store_uri, name, endpoint, mount)
        except LlmshipError as err:
            typer.echo(err.render(), err=True)
            raise typer.Exit(err.exit_code)
        if as_json:
            print(json.dumps([r.model_dump(mode="json") for r in releases], indent=1))
            return
        table = Table(title=f"releases of {name}, newest first")
        for col in ("started", "outcome", "decided by", "serving revision", "artifact", "source", "trigger", "steps"):
            table.add_column(col)
        for r in releases:
            steps = r.canary.get("steps") or []
            table.add_row(r.started_at, r.outcome, r.decided_by or "-", (r.serving_revision.get("digest") or "-")[:12],
                          (r.artifact.get("digest") or "-")[:12],
                          f"{r.source.get('source', '-')} @ {(r.source.get('revision') or '-')[:12]}",
                          r.trigger.get("kind", "-"),
                          " ".join(f"{s['percent']}%:{s['verdict']}" for s in steps) or "-")
        Console(width=None if sys.stdout.isatty() else 200).print(table)
