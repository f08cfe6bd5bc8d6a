"""`llmship checklist SPEC`: the production checklist, without deploying anything.

Registered on the main app by flows.cli. Exit codes: 0 evaluated (fails are shown; they
stop nothing unless strict), 2 bad input or, with `checks.strict` (or `--strict`), a
failed rule: `[checklist] <rule>: <why>` and what to do.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from tasks.errors import LlmshipError

STYLE = {"pass": "green", "warn": "yellow", "fail": "red", "waived": "cyan"}


def _plan(spec, model_dir: Optional[Path]):
    """The preflight plan when the model folder is at hand (--model-dir, or a file:// source), else None."""
    from tasks.preflight import plan_memory

    if model_dir is None and spec.engine.kind in ("vllm", "tensorrt-llm") and spec.model.source.startswith("file://"):
        local = Path(spec.model.source[len("file://"):])
        model_dir = local if (local / "config.json").is_file() else None
    if model_dir is None or spec.engine.kind not in ("vllm", "tensorrt-llm"):
        return None
    return plan_memory(str(model_dir), spec)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the llmship app."""

    @app.command("checklist")
    def checklist(
        spec_path: Path = typer.Argument(..., metavar="SPEC", help="promotion spec YAML"),
        model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="the model folder, for the memory plan "
                                                 "(default: a file:// source)"),
        strict: bool = typer.Option(False, "--strict", help="exit 2 on a failed rule, as checks.strict does"),
        probe: bool = typer.Option(True, "--probe/--no-probe", help="check the artifact store is reachable"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    ) -> None:
        """Evaluate the production checklist (pass / warn / fail, with what to do) before any GPU time."""
        from rich.console import Console
        from rich.table import Table

        from tasks.checklist import enforce, evaluate_checklist
        from tasks.spec import load_spec

        try:
            spec = load_spec(spec_path)
            if strict:
                spec = spec.model_copy(update={"checks": spec.checks.model_copy(update={"strict": True})})
            report = evaluate_checklist(spec, _plan(spec, model_dir), probe_storage=probe)
        except LlmshipError as err:
            typer.echo(err.render(), err=True)
            raise typer.Exit(err.exit_code)
        if as_json:
            print(report.model_dump_json(indent=2))
        else:
            console = Console(width=None if sys.stdout.isatty() else 200)
            table = Table(title=report.summary())
            for col in ("rule", "section", "status", "why", "what to do"):
                table.add_column(col, overflow="fold")
            for row in report.rows():
                s = row["status"]
                table.add_row(row["rule"], row["section"], f"[{STYLE[s]}]{s}[/]", row["why"], row["what to do"])
            console.print(table)
        try:
            enforce(report, spec)
        except LlmshipError as err:
            typer.echo(err.render(), err=True)
            raise typer.Exit(err.exit_code)
