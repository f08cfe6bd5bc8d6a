"""The KServe half of promote_model: deploy -> warm_up -> load_test -> canary on a cluster.

The stages are the same as on the local target; the work is KServe's (tasks/kserve).
Any failure after the candidate exists rolls it back: stable keeps 100% of traffic.
"""

from __future__ import annotations

import httpx

from tasks.prefect_tasks import kserve_canary_task, kserve_deploy_task
from tasks.values import PromotionResult


def _reachable(base_url: str) -> bool:
    # In-cluster service URLs do not resolve outside the cluster: skip, don't fail the candidate.
    try:
        return httpx.get(base_url.rstrip("/") + "/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def promote_on_kserve(spec, stages, resolved, artifact) -> PromotionResult:
    from flows.promote import warm_up_and_load_test  # flows.promote imports this module lazily
    from tasks.kserve import rollback

    rollout = stages.run("deploy", kserve_deploy_task, spec, artifact.uri, artifact.digest, resolved.registry_version)
    for note in rollout.notes:
        stages.note(note)
    if rollout.strategy == "unchanged":
        for stage in ("warm_up", "load_test", "canary"):
            stages.skip(stage, f"unchanged: {artifact.digest[:12]} already serves {rollout.namespace}/{rollout.name}")
        return PromotionResult(name=spec.name, outcome="unchanged", reason="already serving",
                               artifact_digest=artifact.digest, endpoint=rollout.candidate_url)
    try:
        if rollout.candidate_url and _reachable(rollout.candidate_url):
            warm_up_and_load_test(spec, stages, rollout.candidate_url, spec.served_name, None,
                                  f"{rollout.namespace}/{rollout.name}")
        else:
            reason = (f"the candidate URL {rollout.candidate_url or '(none)'} does not answer from this worker; "
                      "the canary's gates judge it on the cluster")
            stages.skip("warm_up", reason)
            stages.skip("load_test", reason)
        outcome = stages.run("canary", kserve_canary_task, spec, rollout)
        stages.note(outcome.note or f"steps passed: {outcome.steps}")
    except BaseException:
        rollback(spec, rollout)  # idempotent; run_canary has usually done it already
        raise
    return PromotionResult(name=spec.name, outcome=outcome.outcome, reason=outcome.note or "candidate serves 100%",
                           artifact_digest=outcome.serving_digest, endpoint=rollout.candidate_url)
