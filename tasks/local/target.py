"""The local target behind tasks.targets: vLLM servers on this machine, one front door per name."""

from __future__ import annotations

from tasks.canary.machine import CanaryRecord
from tasks.errors import StageFailed
from tasks.local.deploy import deploy_local, load_record, revision_for, save_record
from tasks.local.router import abort_record, machine_for
from tasks.spec import PromotionSpec
from tasks.values import Deployment, PublishedArtifact, ResolvedModel


def deploy(spec: PromotionSpec, artifact: PublishedArtifact, resolved: ResolvedModel) -> Deployment:
    return deploy_local(spec, artifact, resolved, revision_for(spec, artifact))


def run_canary(spec: PromotionSpec, deployment: Deployment, on_step=None, on_report=None) -> CanaryRecord:
    record = load_record(spec)
    if record is None or record.candidate_revision != deployment.revision:
        raise StageFailed("canary", spec.name, f"the canary record of revision {deployment.revision[:12]} is gone",
                          "another llmship changed this name's state meanwhile; re-run the promotion")
    return machine_for(spec, record, deployment.tokenizer, on_step=on_step, on_report=on_report).run()


def abort(spec: PromotionSpec, why: str, decided_by: str) -> CanaryRecord | None:
    record = load_record(spec)
    if record is None or record.done:
        return None
    return abort_record(spec, record, why, decided_by)


def mark_passed(spec: PromotionSpec, stage: str) -> None:
    record = load_record(spec)
    if record is not None and not record.done:
        record.pre_rollout[stage] = "passed"
        save_record(spec, record)


def current_record(spec: PromotionSpec) -> CanaryRecord | None:
    return load_record(spec)
