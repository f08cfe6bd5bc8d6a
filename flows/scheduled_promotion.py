"""scheduled_promotion: on a cron, promote whatever the registry now calls the champion.

Asks the registry which version holds the alias (MLflow) or which commit heads the branch
(Hugging Face), compares it with what serves now (the local state file or the
InferenceService's annotations), and promotes only when they differ; otherwise it does
nothing and logs one line saying why. The promotion runs the spec with its source pinned to
the exact version, through the `promote` deployment (promote_deployment) or in-process.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.errors import BadInput, StageFailed
from tasks.registry.champion import Decision, decide
from tasks.spec import load_spec, parse_spec


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry a registry or cluster hiccup; a bad spec or missing setting fails at once."""
    try:
        state.result()
    except BadInput:
        return False
    except Exception:
        return True
    return False


# never cached: the registry and the target change between runs
@task(name="decide", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_bad_input, cache_policy=NO_CACHE)
def decide_task(spec) -> Decision:
    return decide(spec)


@flow(name="scheduled-promotion")
def scheduled_promotion(
    spec_path: str | None = None,
    spec: dict | None = None,
    promote_deployment: str | None = None,
) -> Decision:
    """Promote the registry's champion for a spec if it is not what serves now.

    promote_deployment: a deployment to run the promotion ("promote_model/promote"); when
    unset, promote_model runs in this process as a subflow.
    """
    the_spec = load_spec(spec_path) if spec_path else parse_spec(spec, "inline spec")
    log = get_run_logger()
    decision = decide_task(the_spec)
    if not decision.promote:
        log.info("no promotion for %s: %s", the_spec.name, decision.reason)
        return decision
    log.info("promoting %s: %s", the_spec.name, decision.reason)
    from prefect.runtime import flow_run

    trigger = {"kind": "schedule", "schedule_run": str(flow_run.id) if flow_run.id else None, "decision": decision.reason,
               "revision": decision.wanted.revision if decision.wanted else None}
    if promote_deployment:
        from prefect.deployments import run_deployment

        run = run_deployment(promote_deployment, parameters={"spec": decision.pinned_spec, "trigger": trigger},
                             timeout=None, poll_interval=2)
        if not (run.state and run.state.is_completed()):
            raise StageFailed(
                "schedule", f"flow run {run.name}", f"the promotion ended {run.state.name if run.state else 'without a state'}",
                f"see the run's logs: prefect flow-run logs {run.id}",
            )
        log.info("promotion run %s completed", run.name)
    else:
        from flows.promote import promote_model

        promote_model(spec=decision.pinned_spec, trigger=trigger)
    return decision
