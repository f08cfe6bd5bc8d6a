"""Prefect side of preflight: the memory plan as a table artifact, and a task wrapper."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from tasks.preflight.plan import MemoryPlan, plan_memory, require_fit
from tasks.spec import PromotionSpec


def publish_plan_artifact(plan: MemoryPlan, key: str | None = None) -> None:
    """Attach the plan to the current flow run as a table artifact (key: DNS-ish, lowercase)."""
    create_table_artifact(
        table=plan.rows(),
        key=key,
        description=f"Memory plan: {plan.verdict} ({plan.reason})",
    )


@task(name="preflight", task_run_name="preflight {spec.name}")
def preflight_task(model_dir: str, spec: PromotionSpec) -> MemoryPlan:
    """Plan, record the table artifact, then fail the run (BadInput) if it does not fit."""
    plan = plan_memory(model_dir, spec)
    publish_plan_artifact(plan, key=f"memory-plan-{spec.name}")
    return require_fit(plan, obj=spec.name)
