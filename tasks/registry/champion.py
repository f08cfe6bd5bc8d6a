"""Scheduled promotion's decision: does the registry's champion differ from what serves now?

`decide(spec)` asks the registry which version holds the alias (MLflow) or which commit heads
the branch (Hugging Face), reads what serves now (the local state file, or the
llmship's ConfigMap on the cluster), and says whether to promote, with a one-line reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tasks.errors import BadInput, StageFailed
from tasks.registry import hf_hub, mlflow_registry
from tasks.spec import PromotionSpec

class Wanted(BaseModel):
    """What the registry calls the champion now."""

    model_config = ConfigDict(frozen=True)
    registry: Literal["mlflow", "hf"]
    tracks: str  # what the spec follows: models:/tiny@champion, hf://org/name@main
    revision: str  # MLflow version number or HF commit sha
    pinned_source: str  # models:/tiny/3 or hf://org/name@<sha>


class Serving(BaseModel):
    """What serves now, as far as the target records it."""

    model_config = ConfigDict(frozen=True)
    where: str  # the state file or the InferenceService
    registry_version: str | None = None
    source: str | None = None
    artifact_digest: str | None = None


class Decision(BaseModel):
    promote: bool
    reason: str
    wanted: Wanted | None = None
    serving: Serving | None = None
    pinned_spec: dict | None = None  # the spec with its source pinned to the wanted revision


def wanted(spec: PromotionSpec) -> Wanted | None:
    """The registry's current champion for this spec, or None when the spec is pinned."""
    source = spec.model.source
    if source.startswith("models:/"):
        ref = mlflow_registry.parse_models_uri(source)
        if ref.version and ref.version != "latest":
            return None
        mv = mlflow_registry.lookup(source)
        return Wanted(registry="mlflow", tracks=source, revision=str(mv.version), pinned_source=f"models:/{ref.name}/{mv.version}")
    if source.startswith("hf://"):
        repo, rev = hf_hub.split_hf(source)
        if hf_hub.is_commit(rev):
            return None
        branch = rev or "main"
        sha = hf_hub.branch_head(repo, branch)
        return Wanted(registry="hf", tracks=f"hf://{repo}@{branch}", revision=sha, pinned_source=f"hf://{repo}@{sha}")
    return None


def serving_local(spec: PromotionSpec) -> Serving | None:
    from tasks.local.state import read_stable
    from tasks.storage.local import store_root

    rec = read_stable(spec.storage.uri, spec.name)
    if rec is None:
        return None
    return Serving(
        where=f"the local state file {store_root(spec.storage.uri) / 'state' / (spec.name + '.json')}",
        registry_version=rec.registry_version,
        source=rec.source, artifact_digest=rec.artifact_digest,
    )


def serving_kserve(spec: PromotionSpec) -> Serving | None:
    """What the cluster's llmship record says serves (ConfigMap llmship-<name>; older
    InferenceServices carry it in their annotations)."""
    from tasks.kserve.cluster import Cluster
    from tasks.kserve.records import configmap_name, read_serving

    t = spec.target
    rec = read_serving(Cluster.connect(spec, stage="schedule"), spec)
    if rec is None:
        return None
    return Serving(where=f"ConfigMap {configmap_name(spec.name)} in {t.namespace}",
                   registry_version=rec.registry_version, source=rec.source, artifact_digest=rec.artifact_digest)


def serving_now(spec: PromotionSpec) -> Serving | None:
    return serving_kserve(spec) if spec.target.kind == "kserve" else serving_local(spec)


def _serves(w: Wanted, s: Serving) -> bool:
    if w.registry == "mlflow":
        if s.source and s.source.startswith("models:/"):
            # versions of another registered model are not the same model
            name = s.source[len("models:/") :].split("/", 1)[0].split("@", 1)[0]
            if name != mlflow_registry.parse_models_uri(w.pinned_source).name:
                return False
        return s.registry_version == w.revision
    rev = s.registry_version
    if s.source and s.source.startswith("hf://"):
        rev = hf_hub.split_hf(s.source)[1] or rev
    return rev == w.revision


def decide(spec: PromotionSpec) -> Decision:
    w = wanted(spec)
    if w is None:
        return Decision(promote=False, reason=f"{spec.model.source} is pinned, not an alias or a branch: nothing to follow")
    s = serving_now(spec)
    pinned = spec.model_dump(mode="json", exclude_unset=True)
    pinned["model"] = {**pinned.get("model", {}), "source": w.pinned_source}
    if s is None:
        return Decision(
            promote=True, reason=f"nothing serves {spec.name} yet; {w.tracks} is {w.revision}",
            wanted=w, pinned_spec=pinned,
        )
    if _serves(w, s):
        return Decision(
            promote=False, reason=f"{w.tracks} is {w.revision}, which already serves ({s.where})", wanted=w, serving=s,
        )
    return Decision(
        promote=True,
        reason=f"{w.tracks} moved to {w.revision}; {s.where} serves {s.registry_version or s.source or 'an unknown revision'}",
        wanted=w, serving=s, pinned_spec=pinned,
    )
