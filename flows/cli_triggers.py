"""`llmship` commands for the triggers area: `llmship webhook serve` and `llmship deploy`."""

from __future__ import annotations

import typer

from tasks.errors import LlmshipError


def _fail(err: LlmshipError) -> None:
    typer.echo(err.render(), err=True)
    raise typer.Exit(err.exit_code)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the llmship app."""
    webhook = typer.Typer(help="The model-registry webhook receiver.", no_args_is_help=True)

    @webhook.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 in a container)"),
        port: int = typer.Option(8787, help="port to listen on"),
        specs: str = typer.Option(None, help="folder of promotion specs to follow [env LLMSHIP_WEBHOOK_SPECS]"),
        db: str = typer.Option(None, help="SQLite delivery log [env LLMSHIP_WEBHOOK_DB; default .llmship/webhook/deliveries.sqlite]"),
        mlflow_secret_block: str = typer.Option(None, help="Prefect Secret block with the MLflow webhook secret"),
        hf_secret_block: str = typer.Option(None, help="Prefect Secret block with the Hugging Face webhook secret"),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Receive MLflow and Hugging Face webhooks and turn them into Prefect events.

        Secrets: LLMSHIP_MLFLOW_WEBHOOK_SECRET / LLMSHIP_HF_WEBHOOK_SECRET, or Prefect Secret
        blocks. Events go to PREFECT_API_URL.
        """
        from deployments.webhook import WebhookConfig
        from deployments.webhook import serve as run

        try:
            cfg = WebhookConfig.from_env(specs, db, mlflow_secret_block, hf_secret_block)
        except LlmshipError as err:
            _fail(err)
        run(cfg, host=host, port=port, log_level=log_level)

    app.add_typer(webhook, name="webhook")

    @app.command("deploy")
    def deploy(
        name: list[str] = typer.Option(None, "--name", "-n", help="only these deployments (repeatable)"),
        list_only: bool = typer.Option(False, "--list", help="list the deployments in prefect.yaml and exit"),
    ) -> None:
        """Register llmship's Prefect deployments (deployments/prefect.yaml), work pools first."""
        from deployments import deploy as d

        project = d.load_project()
        if list_only:
            for dep in project["deployments"]:
                typer.echo(f"{dep['name']:14} {dep['entrypoint']:48} pool {dep['work_pool']['name']}")
            return
        try:
            for p in d.ensure_work_pools(project):
                typer.echo(f"work pool {p.name} ({p.type}): {'created, ' if p.created else ''}{p.note}")
            ready, skipped = d.deployable(project)
            for line in skipped:
                typer.echo(f"skipped {line}")
            wanted = [n for n in ready if not name or n in name]
            for n in name or []:
                if n not in ready:
                    d.deployment(n, project)  # unknown name: exits 2 with a clear message
            output = d.run_prefect_deploy(wanted)
        except LlmshipError as err:
            _fail(err)
        typer.echo(output.rstrip())
        typer.echo(f"deployed: {', '.join(wanted)}")
