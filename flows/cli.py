"""The `llmship` command line. Exit codes: 0 promoted (or unchanged), 1 rolled back or failed, 2 bad input."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from flows import cli_build, cli_checks, cli_history, cli_kserve, cli_loadtest, cli_triggers
from tasks.errors import EXIT_FAILED, LlmshipError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Take a large language model from a registry to production serving, safely.")
# Piped output (CI logs, `| less`) gets wide tables instead of truncated cells.
console = Console(width=None if sys.stdout.isatty() else 200)


class _NoTracebackForKnownErrors(logging.Filter):
    """Prefect logs a failed task with its traceback; for llmship's own errors the rendered
    message (stage, object, what to do) is the whole story, so the traceback is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LlmshipError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_known_errors() -> None:
    known = _NoTracebackForKnownErrors()
    for name in ["prefect", *[n for n in logging.root.manager.loggerDict if n.startswith("prefect")]]:
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(known)


def fail(err: LlmshipError) -> None:
    typer.echo(err.render(), err=True)
    raise typer.Exit(err.exit_code)


@app.command()
def validate(spec: Path = typer.Argument(..., help="promotion spec YAML")) -> None:
    """Check a promotion spec; print every error as field.path: message."""
    from tasks.spec import load_spec

    try:
        s = load_spec(spec)
    except LlmshipError as err:
        typer.echo(f"{spec}: invalid", err=True)
        for line in (err.detail or err.message).splitlines():
            typer.echo(line, err=True)
        raise typer.Exit(err.exit_code)
    console.print(f"{spec}: valid ({s.name}, {s.engine.kind} on {s.target.kind})")


@app.command()
def schema() -> None:
    """Print the promotion spec's JSON schema."""
    from tasks.spec import PromotionSpec

    print(json.dumps(PromotionSpec.model_json_schema(), indent=2))


@app.command("example-model")
def example_model(
    out_dir: Path = typer.Argument(..., help="new folder for the example model"),
    kind: str = typer.Option("llm", help="llm (a tiny Llama), sklearn or xgboost (an iris-like classifier)"),
    worse: bool = typer.Option(False, "--worse", help="sklearn/xgboost: a deliberately less accurate model"),
    slow: bool = typer.Option(False, "--slow", help="sklearn/xgboost: many more trees, slower per request"),
    trees: int = typer.Option(None, help="sklearn/xgboost: number of trees (overrides --slow's)"),
    seed: int = typer.Option(0, help="sklearn/xgboost: data and training seed"),
) -> None:
    """Write an example model made here (nothing from a hub): a tiny random Llama, or a trained classifier."""
    from tasks.errors import BadInput

    try:
        if kind == "llm":
            if worse or slow or trees is not None:
                raise BadInput("example-model", kind, "--worse, --slow and --trees are for --kind sklearn / xgboost",
                               "drop them, or pick --kind sklearn or xgboost")
            from tasks.example_model import write_example_model

            path = write_example_model(out_dir)
            console.print(f"wrote a tiny Llama to {path}")
            return
        if kind not in ("sklearn", "xgboost"):
            raise BadInput("example-model", kind, "unknown --kind", "use llm, sklearn or xgboost")
        from tasks.predictive.example import write_example_predictive

        info = write_example_predictive(out_dir, kind, worse=worse, slow=slow, trees=trees, seed=seed)
    except LlmshipError as err:
        fail(err)
    console.print(f"wrote a {kind} classifier ({info.trees} trees, held-out accuracy {info.accuracy:.3f}) to "
                  f"{info.model_dir}; held-out rows {info.heldout}, V2 requests {info.payloads}", markup=False)


@app.command()
def promote(
    spec: Path = typer.Argument(..., help="promotion spec YAML"),
    json_out: Path = typer.Option(None, help="also write the promotion result (stages, timings) as JSON here"),
) -> None:
    """Run the whole promotion flow for a spec."""
    from flows.promote import promote_model
    from tasks.spec import load_spec

    quiet_known_errors()
    try:
        load_spec(spec)  # bad input exits 2 before Prefect starts
    except LlmshipError as err:
        fail(err)
    try:
        result = promote_model(spec_path=str(spec.resolve()), trigger={"kind": "cli", "user": _user()})
    except LlmshipError as err:
        failed = getattr(err, "promotion", None)
        if json_out and failed is not None:
            json_out.write_text(failed.model_dump_json(indent=2))
        fail(err)
    if json_out:
        json_out.write_text(result.model_dump_json(indent=2))
    table = Table(title=f"{result.name}: {result.outcome}")
    for col in ("stage", "state", "seconds", "decision"):
        table.add_column(col)
    for r in result.stages:
        table.add_row(r.stage, r.state, f"{r.seconds:.1f}", r.note)
    console.print(table)
    console.print(f"{result.outcome}: {result.reason} ({result.endpoint})", markup=False)


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return str(os.getuid())


def _store(spec: Path | None, store: str | None) -> str:
    if store:
        return store
    if spec:
        from tasks.spec import load_spec

        return load_spec(spec).storage.uri
    return os.environ.get("LLMSHIP_STORE", "./.llmship/store")


@app.command()
def status(
    spec: Path = typer.Option(None, help="read the store from this spec"),
    store: str = typer.Option(None, help="the local store folder (default ./.llmship/store or $LLMSHIP_STORE)"),
) -> None:
    """Show what serves on the local target, and any process a recorded server left behind."""
    from tasks.local.server import describe_processes, is_alive, server_processes, unrecorded_servers
    from tasks.local.state import list_records
    from tasks.storage.local import store_root

    try:
        store_uri = _store(spec, store)
        records = list_records(store_uri)
        strays = unrecorded_servers(store_root(store_uri), {r.log_path for _, r in records if r.log_path})
    except LlmshipError as err:
        fail(err)
    if not records and not strays:
        console.print("nothing serves (no state in the store)")
        return
    table = Table()
    for col in ("name", "role", "serving revision", "artifact", "backend", "slot", "pid", "alive", "processes", "since",
                "source"):
        table.add_column(col)
    left_over = []
    for role, r in records:
        procs = server_processes(r.pid, r.log_path)
        leader = is_alive(r.pid)
        if procs and not leader:
            left_over.append((f"{r.name} ({role}): pid {r.pid} is gone, but {len(procs)} of its processes still run",
                              r.name, procs))
        table.add_row(r.name, role, (r.serving_revision or "-")[:12], r.artifact_digest[:12], r.base_url, r.slot or "-",
                      str(r.pid), "yes" if leader else "NO",
                      f"{len(procs)} LEFT OVER" if procs and not leader else str(len(procs)), r.since, r.source)
    for log_path, procs in strays.items():
        name = Path(log_path).name.rsplit("-", 2)[0]
        left_over.append((f"{name}: a server no state file records (an interrupted promotion started it; log "
                          f"{log_path})", name, procs))
        table.add_row(name, "unrecorded", "-", "-", str(min(p.pid for p in procs)), "-", f"{len(procs)} LEFT OVER", "-", "-")
    console.print(table)
    _front_doors_and_canaries(store_uri, sorted({r.name for _, r in records}))
    for line, name, procs in left_over:
        console.print(line, markup=False)
        for desc in describe_processes(procs):
            console.print(f"  {desc}", markup=False)
        console.print(f"  what to do: `llmship stop {name}` stops them", markup=False)


def _front_doors_and_canaries(store_uri: str, names: list[str]) -> None:
    """Each name's front door (the URL clients call, its backends and weights) and its canary's phase."""
    from tasks.local import frontdoor
    from tasks.local.state import state_file

    for name in sorted(set(names) | set(frontdoor.list_frontdoors(store_uri))):
        door = frontdoor.describe(store_uri, name)
        if door is not None:
            for line in door.lines():
                console.print(line, markup=False)
        canary = state_file(store_uri, name, "canary")
        if canary.is_file():
            rec = json.loads(canary.read_text())
            step = f" at step {rec['step_index'] + 1} of {len(rec['plan'])}" if rec.get("plan") else ""
            console.print(f"{name}: last canary {rec['candidate_revision'][:12]} {rec['phase']}{step}"
                          f" ({rec.get('reason') or 'in progress'})", markup=False)


@app.command()
def stop(
    name: str = typer.Argument(None, help="only this model name"),
    spec: Path = typer.Option(None, help="read the store from this spec"),
    store: str = typer.Option(None, help="the local store folder"),
) -> None:
    """Stop the local servers (stable and any candidate), every process they started, and clear their state."""
    from tasks.local.deploy import stop_all
    from tasks.local.server import server_processes, stop_processes, unrecorded_servers
    from tasks.local.state import list_records
    from tasks.storage.local import store_root

    try:
        store_uri = _store(spec, store)
        records = [(role, r) for role, r in list_records(store_uri) if not name or r.name == name]
        stopped = stop_all(store_uri, name)  # each server's whole session (tasks.local.server.stop_server)
        for role, r in records:  # a process of the server that left its session still carries its marker
            rest = server_processes(r.pid, r.log_path)
            if rest:
                stop_processes(rest)
                stopped.append(f"{len(rest)} leftover process(es) of {r.name} ({role})")
        known = {r.log_path for _, r in list_records(store_uri) if r.log_path}
        for log_path, procs in unrecorded_servers(store_root(store_uri), known).items():
            if name and not Path(log_path).name.startswith(f"{name}-"):
                continue
            stop_processes(procs)
            stopped.append(f"an unrecorded server ({len(procs)} process(es), log {log_path})")
    except LlmshipError as err:
        fail(err)
    for line in stopped:
        console.print(f"stopped {line}", markup=False)
    if not stopped:
        console.print("nothing was running")


for _area in (cli_loadtest, cli_kserve, cli_build, cli_triggers, cli_history, cli_checks):
    _area.register(app)


def main() -> None:
    # Prefect's ephemeral mode (no PREFECT_API_URL) gives its temporary server 20 s to start; on a
    # busy 2-core host its first start with a fresh PREFECT_HOME took 35 s. Set before Prefect reads it.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    try:
        app()
    except LlmshipError as err:  # an area's command that did not catch its own
        typer.echo(err.render(), err=True)
        sys.exit(err.exit_code)
    except Exception as err:  # a bug: say so plainly; promotions have already rolled back by now
        typer.echo(f"[llmship] internal error: {type(err).__name__}: {err}\n  what to do: report it with the "
                   "flow run's logs", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
