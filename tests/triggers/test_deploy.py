"""`llmship deploy` registers deployments/prefect.yaml on the real Prefect server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.triggers.conftest import REPO, _env

pytestmark = pytest.mark.servers
DEPLOYMENTS = ("promote_model/promote", "scheduled-promotion/champion", "build-engine/build-engine")


def _cleanup(client) -> None:
    # other tests emit promotion events: don't leave real promote runs queued behind them
    for name in DEPLOYMENTS:
        try:
            dep = client.read_deployment_by_name(name)
        except Exception:
            continue
        for a in client.read_resource_related_automations(f"prefect.deployment.{dep.id}"):
            client.delete_automation(a.id)
        client.delete_deployment(dep.id)


def test_llmship_deploy_registers_the_deployments(prefect_api):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            proc = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], cwd=REPO,
                                  env=_env(PREFECT_API_URL=prefect_api), capture_output=True, text=True, timeout=300)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, out
            assert "work pool llmship-process (process)" in out
            assert client.read_work_pool("llmship-process").type == "process"
            promote = client.read_deployment_by_name("promote_model/promote")
            assert promote.work_pool_name == "llmship-process"
            # no pull step in prefect.yaml: the process worker runs the code from where it was deployed
            assert promote.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
            (automation,) = client.read_resource_related_automations(f"prefect.deployment.{promote.id}")
            assert automation.trigger.expect == {"llmship.promotion.requested"}
            params = automation.actions[0].parameters
            assert params["spec"] == "{{ event.payload.spec }}" and params["trigger"]["kind"] == "webhook"
            champion = client.read_deployment_by_name("scheduled-promotion/champion")
            assert champion.parameters["promote_deployment"] == "promote_model/promote"
            (schedule,) = champion.schedules
            assert schedule.schedule.cron == "*/15 * * * *" and schedule.active is False
            assert champion.global_concurrency_limit.limit == 1
            if (REPO / "flows/build_engine.py").exists():
                build = client.read_deployment_by_name("build-engine/build-engine")
                assert build.work_pool_name == "llmship-gpu"
                assert client.read_work_pool("llmship-gpu").type == "kubernetes"
            else:
                assert "skipped build-engine: flows/build_engine.py is not in this checkout" in out
        finally:
            _cleanup(client)
