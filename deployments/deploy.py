"""Register llmship's deployments: create the work pools, then `prefect deploy` the prefect.yaml.

`prefect deploy` is the one that reads prefect.yaml (deployments, schedules, triggers), so the
result is the same as running it by hand; this adds the work pools it expects and skips a
deployment whose flow file is not in this checkout, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.errors import BadInput, StageFailed

STAGE = "deploy"
REPO_ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = Path(__file__).resolve().parent / "prefect.yaml"


def load_project(path: Path = PREFECT_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def deployment(name: str, project: dict | None = None) -> dict:
    for d in (project or load_project())["deployments"]:
        if d["name"] == name:
            return d
    raise BadInput(STAGE, name, "no such deployment in deployments/prefect.yaml", "see `llmship deploy --list`")


def deployment_triggers(name: str, project: dict | None = None) -> list:
    """The triggers prefect.yaml gives a deployment, as Prefect's own trigger objects."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return [DeploymentEventTrigger.model_validate(t) for t in deployment(name, project).get("triggers", [])]


@dataclass
class PoolResult:
    name: str
    type: str
    created: bool
    note: str = ""


def ensure_work_pools(project: dict | None = None) -> list[PoolResult]:
    """Create each pool in definitions.llmship_work_pools that does not exist yet; never overwrite one."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    out = []
    pools = (project or load_project()).get("definitions", {}).get("llmship_work_pools", [])
    with get_client(sync_client=True) as client:
        for p in pools:
            try:
                client.read_work_pool(p["name"])
                out.append(PoolResult(p["name"], p["type"], False, "exists; left as it is"))
                continue
            except ObjectNotFound:
                pass
            template_path = REPO_ROOT / p.get("base_job_template", "")
            kwargs = {"name": p["name"], "type": p["type"]}
            note = "default job template"
            if p.get("base_job_template") and template_path.is_file():
                kwargs["base_job_template"] = json.loads(template_path.read_text())
                note = f"job template {p['base_job_template']}"
            try:
                client.create_work_pool(WorkPoolCreate(**kwargs))
            except Exception as err:
                out.append(PoolResult(p["name"], p["type"], False, f"could not create: {type(err).__name__}: {err}"))
                continue
            out.append(PoolResult(p["name"], p["type"], True, note))
    return out


def deployable(project: dict | None = None) -> tuple[list[str], list[str]]:
    """(names whose flow file exists here, 'name: why not' for the others)."""
    ok, skipped = [], []
    for d in (project or load_project())["deployments"]:
        path = d["entrypoint"].split(":", 1)[0]
        if (REPO_ROOT / path).is_file():
            ok.append(d["name"])
        else:
            skipped.append(f"{d['name']}: {path} is not in this checkout")
    return ok, skipped


def run_prefect_deploy(names: list[str], timeout_s: float = 600) -> str:
    """`prefect deploy --name ... --prefect-file deployments/prefect.yaml` from the repo root."""
    if not names:
        raise BadInput(STAGE, "deployments/prefect.yaml", "nothing to deploy", "check the entrypoints exist")
    cmd = [sys.executable, "-m", "prefect", "deploy", "--no-prompt", "--prefect-file", str(PREFECT_FILE)]
    for n in names:
        cmd += ["--name", n]
    env = {**os.environ, "PREFECT_CLI_PROMPT": "false"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise StageFailed(
            STAGE, "prefect deploy", f"exited {proc.returncode}", "read the output below; check PREFECT_API_URL",
            detail=output[-4000:],
        )
    return output
