"""One shape for every serving target: deploy a candidate, run the canary, abort it.

The flow calls these; each target supplies them from its own package:

    tasks.local.target    the local front door and vLLM servers on this machine
    tasks.kserve.target   a Kubernetes cluster with KServe

    deployment = deploy(spec, artifact, resolved)      # unchanged, a new candidate, or a resumed one
    record = run_canary(spec, deployment, ...)         # tasks.canary.machine, to Succeeded / RolledBack / Paused
    abort(spec, why, decided_by)                       # the machine rolls back; nothing else does
"""

from __future__ import annotations

from types import ModuleType

from tasks.canary.machine import CanaryRecord, StepRecord
from tasks.spec import PromotionSpec
from tasks.values import Deployment, PublishedArtifact, ResolvedModel


def _module(spec: PromotionSpec) -> ModuleType:
    if spec.target.kind == "kserve":
        from tasks.kserve import target as kserve_target

        return kserve_target
    from tasks.local import target as local_target

    return local_target


def deploy(spec: PromotionSpec, artifact: PublishedArtifact, resolved: ResolvedModel) -> Deployment:
    return _module(spec).deploy(spec, artifact, resolved)


def run_canary(spec: PromotionSpec, deployment: Deployment, on_step=None, on_report=None) -> CanaryRecord:
    return _module(spec).run_canary(spec, deployment, on_step=on_step, on_report=on_report)


def abort(spec: PromotionSpec, why: str, decided_by: str) -> CanaryRecord | None:
    """Roll the unfinished canary back, wherever it stands; None when there is none."""
    return _module(spec).abort(spec, why, decided_by)


def mark_passed(spec: PromotionSpec, stage: str) -> None:
    """Record that a pre-rollout stage passed, so a resumed run does not repeat it."""
    _module(spec).mark_passed(spec, stage)


def current_record(spec: PromotionSpec) -> CanaryRecord | None:
    return _module(spec).current_record(spec)


__all__ = ["CanaryRecord", "StepRecord", "abort", "current_record", "deploy", "mark_passed", "run_canary"]
