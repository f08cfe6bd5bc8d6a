"""`llmship loadtest`: drive an OpenAI-compatible server and judge it against an SLO.

Exit codes: 0 the SLO held, 1 it did not (or the server could not be reached), 2 bad input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tasks.errors import BadInput, LlmshipError


def _fail(err: LlmshipError) -> None:
    typer.echo(err.render(), err=True)
    raise typer.Exit(err.exit_code)


def _load_file(path: Path) -> dict:
    """A YAML/JSON file holding `load:` and `slo:` sections (a promotion spec works too)."""
    import yaml

    if not path.is_file():
        raise BadInput("load_test", str(path), "profile file not found", hint="pass a YAML file with load: and slo:")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise BadInput("load_test", str(path), f"not YAML: {e}", hint="fix the file's syntax") from None
    if not isinstance(data, dict):
        raise BadInput("load_test", str(path), "expected a mapping with load: and slo:", hint="see docs/loadtest.md")
    return data


def _validation_error(obj: str, e) -> BadInput:
    lines = [f"{'.'.join(str(x) for x in err['loc']) or obj}: {err['msg']}" for err in e.errors()]
    return BadInput("load_test", obj, "invalid settings", hint="fix the values below", detail="\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the llmship app."""

    @app.command("loadtest")
    def loadtest(
        url: str = typer.Argument(..., help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000"),
        model: Optional[str] = typer.Option(None, help="served model name (default: the first in /v1/models)"),
        profile_file: Optional[Path] = typer.Option(None, "--profile", help="YAML with load: and slo: sections"),
        endpoint: Optional[str] = typer.Option(None, help="completions | chat"),
        mode: Optional[str] = typer.Option(None, help="concurrency | rate | poisson | sweep"),
        concurrency: Optional[int] = typer.Option(None, help="in-flight requests (a cap in rate modes)"),
        rate: Optional[float] = typer.Option(None, help="requests per second (rate, poisson; sweep: the least required)"),
        burstiness: Optional[float] = typer.Option(None, help="gamma shape for poisson arrivals (1 = Poisson)"),
        num_requests: Optional[int] = typer.Option(None, "--num-requests", "-n", help="bound the run by request count"),
        duration: Optional[float] = typer.Option(None, "--duration", help="bound the run by seconds"),
        warmup: Optional[float] = typer.Option(None, help="seconds at the start left out of the figures"),
        cooldown: Optional[float] = typer.Option(None, help="seconds at the end left out of the figures"),
        input_tokens: Optional[int] = typer.Option(None, help="synthetic prompt length in tokens"),
        output_tokens: Optional[int] = typer.Option(None, help="tokens to generate per request (ignore_eos)"),
        dataset: Optional[str] = typer.Option(None, help="JSONL prompts instead of synthetic ones"),
        seed: Optional[int] = typer.Option(None),
        timeout: Optional[float] = typer.Option(None, help="per-request timeout in seconds"),
        sweep_steps: Optional[int] = typer.Option(None, help="sweep: load levels from synchronous to max"),
        tokenizer: Optional[str] = typer.Option(None, help="local model folder with the tokenizer (exact token counts)"),
        ttft_p99_ms: Optional[float] = typer.Option(None, help="SLO: p99 TTFT limit"),
        tpot_p99_ms: Optional[float] = typer.Option(None, help="SLO: p99 TPOT limit"),
        e2e_p99_ms: Optional[float] = typer.Option(None, help="SLO: p99 end-to-end latency limit"),
        max_error_rate: Optional[float] = typer.Option(None, help="SLO: largest share of failed requests"),
        min_output_tps: Optional[float] = typer.Option(None, help="SLO: least output tokens per second"),
        header: list[str] = typer.Option([], help="extra request header 'Name: value' (repeatable)"),
        out: Optional[Path] = typer.Option(None, help="folder for loadtest.json / .csv / .png"),
        records: bool = typer.Option(True, help="keep per-request records (the JSON's per-request lists, the CSV, "
                                     "the plot's distributions); --no-records for very long runs"),
        progress: bool = typer.Option(True, help="show a progress bar"),
    ) -> None:
        """Load-test a server: TTFT, TPOT, ITL, E2EL, throughput and goodput against an SLO."""
        from pydantic import ValidationError
        from rich.console import Console

        from tasks.loadtest import SLO, LoadProfile, discover_model, run_load_test

        console = Console(stderr=False)
        try:
            base: dict = {}
            slo_base: dict = {}
            if profile_file is not None:
                data = _load_file(profile_file)
                base = dict(data.get("load") or {})
                slo_base = dict(data.get("slo") or {})
            overrides = {
                "endpoint": endpoint, "mode": mode, "concurrency": concurrency, "rate": rate,
                "burstiness": burstiness, "num_requests": num_requests, "duration_s": duration,
                "warmup_s": warmup, "cooldown_s": cooldown, "input_tokens": input_tokens,
                "output_tokens": output_tokens, "dataset": dataset, "seed": seed, "request_timeout_s": timeout,
                "sweep_steps": sweep_steps,
            }
            base.update({k: v for k, v in overrides.items() if v is not None})
            if "num_requests" not in base and "duration_s" not in base:
                base["num_requests"] = 100
            slo_over = {
                "ttft_p99_ms": ttft_p99_ms, "tpot_p99_ms": tpot_p99_ms, "e2e_p99_ms": e2e_p99_ms,
                "max_error_rate": max_error_rate, "min_output_tokens_per_s": min_output_tps,
            }
            slo_base.update({k: v for k, v in slo_over.items() if v is not None})
            try:
                profile = LoadProfile(**base)
            except ValidationError as e:
                raise _validation_error("load profile", e) from None
            try:
                slo = SLO(**slo_base) if slo_base else None
            except ValidationError as e:
                raise _validation_error("slo", e) from None
            headers = {}
            for h in header:
                name, sep, value = h.partition(":")
                if not sep or not name.strip():
                    raise BadInput("load_test", h, "not a header", hint="write --header 'Name: value'")
                headers[name.strip()] = value.strip()
            key = os.environ.get("OPENAI_API_KEY")
            if key and not any(k.lower() == "authorization" for k in headers):
                headers["Authorization"] = f"Bearer {key}"
            if model is None:
                import asyncio

                model = asyncio.run(discover_model(url, headers or None))
            report = run_load_test(url, model, profile, slo, tokenizer, progress, headers=headers or None,
                                   keep_records=records)
        except LlmshipError as err:
            _fail(err)
            return
        _print(console, report)
        if out is not None:
            paths = report.write_all(str(out))
            console.print("wrote " + ", ".join(paths.values()))
        raise typer.Exit(0 if report.passed else 1)


def _print(console, report) -> None:
    from rich.table import Table

    t = Table(title=f"{report.model_id} @ {report.base_url} ({report.mode})")
    t.add_column("metric")
    for c in ("mean", "median", "p90", "p99"):
        t.add_column(c + " ms", justify="right")
    for row in report.summary_rows():
        t.add_row(row["metric"], *(f"{row[c + '_ms']:.2f}" for c in ("mean", "median", "p90", "p99")))
    console.print(t)
    console.print(
        f"{report.completed} completed, {report.failed} failed in {report.duration:.2f} s: "
        f"{report.request_throughput:.2f} req/s, {report.output_throughput:.1f} output tok/s, "
        f"goodput {report.request_goodput:.2f} req/s"
    )
    if report.max_rate_meeting_slo is not None:
        console.print(f"highest rate meeting the SLO: {report.max_rate_meeting_slo:.2f} req/s")
    for reason, n in report.errors.items():
        example = report.error_examples.get(reason)
        console.print(f"[yellow]error[/]: {reason} x{n}" + (f" ({example})" if example else ""))
    if report.passed:
        console.print("[green]SLO passed[/]")
    else:
        for v in report.violations:
            console.print(f"[red]SLO violated[/]: {v}")
