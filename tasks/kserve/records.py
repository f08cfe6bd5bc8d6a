"""llmship's records on a cluster: one ConfigMap per served name, `llmship-<name>`.

    serving.json   what serves: serving revision and its inputs, artifact, source, registry version
    canary.json    the canary's record (tasks.canary.machine), saved at every transition

A ConfigMap restarts nothing when written; annotations on the InferenceService would (KServe
copies them into the pod template). Writes are guarded by resourceVersion (Cluster.update_configmap).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from tasks.canary.machine import CanaryRecord, now_iso
from tasks.kserve.cluster import ISVC, Cluster
from tasks.kserve.render import ANN_DIGEST, ANN_REGISTRY_VERSION, ANN_SOURCE, labels
from tasks.spec import PromotionSpec

SERVING, CANARY = "serving.json", "canary.json"


class ServingRecord(BaseModel):
    """What serves a name on the cluster, as llmship left it."""

    revision: str | None = None  # None: written by an llmship that did not record revisions
    revision_inputs: dict = Field(default_factory=dict)
    artifact_digest: str | None = None
    storage_uri: str | None = None
    source: str | None = None
    registry_version: str | None = None
    isvc: str = ""  # the InferenceService (or LLMInferenceService) clients call
    kind: str = "InferenceService"
    since: str = Field(default_factory=now_iso)


def configmap_name(name: str) -> str:
    return f"llmship-{name}"


def _read(cluster: Cluster, spec: PromotionSpec, key: str) -> str | None:
    cm = cluster.get_configmap(spec.target.namespace, configmap_name(spec.name))
    return ((cm or {}).get("data") or {}).get(key)


def _write(cluster: Cluster, spec: PromotionSpec, key: str, text: str | None) -> None:
    def change(cm: dict) -> dict:
        data = cm.setdefault("data", {}) or {}
        cm["data"] = data
        if text is None:
            data.pop(key, None)
        else:
            data[key] = text
        return cm

    cluster.update_configmap(spec.target.namespace, configmap_name(spec.name), change, labels=labels(spec))


def read_serving(cluster: Cluster, spec: PromotionSpec) -> ServingRecord | None:
    text = _read(cluster, spec, SERVING)
    if text:
        return ServingRecord.model_validate_json(text)
    # An InferenceService promoted by an older llmship carries what served in its annotations.
    isvc = cluster.get(ISVC, spec.target.namespace, spec.name)
    ann = ((isvc or {}).get("metadata") or {}).get("annotations") or {}
    if ANN_DIGEST in ann:
        return ServingRecord(artifact_digest=ann[ANN_DIGEST], source=ann.get(ANN_SOURCE),
                             registry_version=ann.get(ANN_REGISTRY_VERSION), isvc=spec.name)
    return None


def write_serving(cluster: Cluster, spec: PromotionSpec, record: ServingRecord | None) -> None:
    _write(cluster, spec, SERVING, None if record is None else record.model_dump_json(indent=1))


def read_canary(cluster: Cluster, spec: PromotionSpec) -> CanaryRecord | None:
    text = _read(cluster, spec, CANARY)
    return CanaryRecord.model_validate_json(text) if text else None


def save_canary(cluster: Cluster, spec: PromotionSpec, record: CanaryRecord) -> None:
    _write(cluster, spec, CANARY, record.model_dump_json())


def serving_summary(cm: dict | None) -> dict:
    """serving.json of a ConfigMap as a dict (for the triggers and `llmship status`)."""
    text = ((cm or {}).get("data") or {}).get(SERVING)
    return json.loads(text) if text else {}
