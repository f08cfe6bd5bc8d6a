"""The KServe target: render, admit, apply, watch, and the canary's routers on a cluster.

Plain functions over small typed values; tasks.targets calls tasks.kserve.target for
target.kind kserve, and `llmship render` calls render_manifests:

    manifests = render_manifests(spec, storage_uri, artifact_digest)
"""

from __future__ import annotations

from tasks.kserve.admission import admission_errors, admit
from tasks.kserve.render import render_all
from tasks.spec import PromotionSpec

__all__ = ["admission_errors", "admit", "render_manifests"]


def render_manifests(
    spec: PromotionSpec, storage_uri: str, artifact_digest: str, registry_version: str | None = None
) -> list[dict]:
    """Every manifest for the spec, admitted against the KServe CRD and Kubernetes schemas."""
    objs = render_all(spec, storage_uri, artifact_digest, registry_version)
    admit(objs)
    return objs
