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
def preflight_task(model_dir: str, spec: PromotionSpec):
    """Plan, record the table artifact, then fail the run (BadInput) if it does not fit.

    LLMs get the GPU memory plan; predictive models (sklearn, xgboost) their CPU and memory
    requests from the model's size (tasks.preflight.predictive)."""
    from tasks.spec import is_predictive

    if is_predictive(spec):
        from tasks.preflight.predictive import plan_resources

        res = plan_resources(model_dir, spec)
        create_table_artifact(table=[{"field": k, "value": str(v)} for k, v in res.model_dump().items()],
                              key=f"resource-plan-{spec.name}", description=f"Resource plan of {spec.name}")
        return None  # the checklist's memory rules do not apply to a model without a KV cache
    plan = plan_memory(model_dir, spec)
    publish_plan_artifact(plan, key=f"memory-plan-{spec.name}")
    return require_fit(plan, obj=spec.name)
