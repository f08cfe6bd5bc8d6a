"""`llmship` commands for the build area: plan, quantize, build-engine. Registered by flows.cli."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tasks.errors import BadInput, LlmshipError

console = Console()


def _fail(err: LlmshipError) -> None:
    typer.echo(err.render(), err=True)
    raise typer.Exit(err.exit_code)


def _model_dir(spec, model_dir: Path | None) -> str:
    if model_dir is not None:
        return str(model_dir)
    if spec.model.source.startswith("file://"):
        return spec.model.source[len("file://") :]
    raise BadInput("plan", spec.model.source, "the model is not a local folder",
                   "download it first and pass --model-dir DIR")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the llmship app."""

    @app.command("plan")
    def plan(
        spec_path: Path = typer.Argument(..., metavar="SPEC", help="promotion spec YAML"),
        model_dir: Path | None = typer.Option(None, "--model-dir", help="the model folder (default: a file:// source)"),
        as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    ) -> None:
        """Print the preflight memory plan (weights + KV cache vs GPU memory); exit 2 if it does not fit."""
        from tasks.preflight import plan_memory, require_fit
        from tasks.spec import load_spec

        try:
            spec = load_spec(spec_path)
            p = plan_memory(_model_dir(spec, model_dir), spec)
        except LlmshipError as err:
            _fail(err)
        if as_json:
            print(p.model_dump_json(indent=2))
        else:
            table = Table(title=f"memory plan: {spec.name}", show_header=False)
            table.add_column("item", style="bold")
            table.add_column("value")
            for row in p.rows():
                table.add_row(row["item"], row["value"])
            console.print(table)
        try:
            require_fit(p, obj=spec.name)
        except LlmshipError as err:
            _fail(err)

    @app.command("quantize")
    def quantize_cmd(
        spec_path: Path = typer.Argument(..., metavar="SPEC", help="promotion spec YAML (its quantization section)"),
        out_dir: Path = typer.Argument(..., help="new folder for the quantized model"),
        model_dir: Path | None = typer.Option(None, "--model-dir", help="the model folder (default: a file:// source)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
    ) -> None:
        """Quantize a model as the spec says and apply the perplexity gate (exit 1 if it fails)."""
        from tasks.quantize import quantize
        from tasks.spec import load_spec

        try:
            spec = load_spec(spec_path)
            r = quantize(_model_dir(spec, model_dir), spec.quantization, str(out_dir), backend=spec.quant_backend,
                         device=device)
        except LlmshipError as err:
            _fail(err)
        console.print(f"{r.backend} {r.method}: {r.format} -> {r.path}")
        console.print(f"held-out perplexity {r.ppl_before:.4f} -> {r.ppl_after:.4f} ({r.ppl_increase:+.2%}, "
                      f"bound +{r.max_perplexity_increase:.2%}); {r.seconds_quantize:.1f} s on {r.device}")

    @app.command("build-engine")
    def build_engine_cmd(
        spec_path: Path = typer.Argument(..., metavar="SPEC", help="promotion spec YAML (engine.kind tensorrt-llm)"),
        work_dir: Path = typer.Argument(..., help="folder for the checkpoint, engines and logs"),
        model_dir: Path | None = typer.Option(None, "--model-dir", help="the HF model folder"),
        quantized_dir: Path | None = typer.Option(None, "--quantized-dir", help="ModelOpt HF export (pytorch path)"),
        print_only: bool = typer.Option(False, "--print", help="print the commands for this spec and stop"),
    ) -> None:
        """Build the TensorRT-LLM engine (1.2 and older) or set up trtllm-serve (PyTorch backend)."""
        from tasks.preflight import read_shape
        from tasks.spec import load_spec
        from tasks.trtllm import build_cmd, build_engine, checkpoint_cmd, choose_path, serve_cmd

        try:
            spec = load_spec(spec_path)
            src = _model_dir(spec, model_dir)
            if print_only:
                path = choose_path(spec.engine.trtllm_version)
                cmds = {"path": path}
                if path == "engine":
                    arch = read_shape(src).architecture
                    cmds["checkpoint"] = checkpoint_cmd(src, str(work_dir / "checkpoint"), spec, arch,
                                                        str(work_dir / "calib"))
                    cmds["build"] = build_cmd(str(work_dir / "checkpoint"), str(work_dir / "engine"), spec)
                cmds["serve"] = serve_cmd("{model}", spec, path)
                print(json.dumps(cmds, indent=2))
                return
            art = build_engine(src, spec, str(work_dir), quantized_dir=str(quantized_dir) if quantized_dir else None)
        except LlmshipError as err:
            _fail(err)
        console.print(f"{art.path} path: {art.serve_dir} ({', '.join(art.engine_files) or 'HF checkpoint'})")
        console.print("serve: " + " ".join(art.serve_command))
