"""The KServe target: render, admit, apply, watch, canary and roll back.

Plain functions over small typed values; flows/promote.py calls them for target.kind kserve:

    manifests = render_manifests(spec, storage_uri, artifact_digest)
    rollout = deploy_candidate(spec, storage_uri, artifact_digest, registry_version=None)
    outcome = run_canary(spec, rollout)      # raises RolledBack after rolling back
    rollback(spec, rollout)                  # idempotent: stable at 100%, candidate gone
"""

from __future__ import annotations

from tasks.kserve.admission import admission_errors, admit
from tasks.kserve.analysis import GateResult
from tasks.kserve.render import render_all
from tasks.kserve.rollout import CanaryOutcome, KServeRollout, deploy_candidate, rollback, run_canary
from tasks.spec import PromotionSpec

__all__ = [
    "CanaryOutcome", "GateResult", "KServeRollout", "admission_errors", "admit", "deploy_candidate",
    "render_manifests", "rollback", "run_canary",
]


def render_manifests(
    spec: PromotionSpec, storage_uri: str, artifact_digest: str, registry_version: str | None = None
) -> list[dict]:
    """Every manifest for the spec, admitted against the KServe CRD and Kubernetes schemas."""
    objs = render_all(spec, storage_uri, artifact_digest, registry_version)
    admit(objs)
    return objs
