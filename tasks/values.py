"""The small typed values that pass between stages.

Stages take and return these (paths, URIs, digests, reports), never live clients, so each
one pickles into a Prefect result and a cached stage can be replayed without side effects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResolvedModel(_Value):
    """A model reference pinned to an immutable revision."""

    source: str  # as the spec gave it
    kind: Literal["hf", "file", "s3", "mlflow"]
    location: str  # repo id, absolute path, s3 url
    revision: str  # HF commit sha, content digest of a folder, S3 ETag set digest, MLflow version
    registry_version: str | None = None  # MLflow model version, when it came through the registry
    resolved_from: str | None = None  # e.g. models:/name@champion


class LocalModel(_Value):
    """A model folder on this worker, with the digest of its content."""

    path: str
    digest: str  # sha256 over (relative path, sha256) of every file
    resolved: ResolvedModel


class StageSkipped(_Value):
    """A stage the spec does not need; shown in the summary, never silent."""

    stage: str
    reason: str


class PublishedArtifact(_Value):
    """Where a servable artifact lives, with the manifest that describes it."""

    uri: str  # local folder path, pvc://claim/path or s3://bucket/prefix
    local_path: str | None  # a folder on this machine holding the same files, when there is one
    digest: str  # the artifact's content digest (same as the manifest's)
    manifest_uri: str


class Endpoint(_Value):
    """A running model server that speaks the OpenAI API."""

    name: str  # served model name
    base_url: str  # http://host:port
    artifact_digest: str
    pid: int | None = None  # local servers only
    log_path: str | None = None
    revision: str | None = None  # KServe revision, when known


class StageRecord(BaseModel):
    """One line of the promotion summary."""

    stage: str
    state: str  # Completed, Cached, Skipped, Failed
    seconds: float
    note: str = ""


class PromotionResult(BaseModel):
    name: str
    outcome: Literal["promoted", "rolled_back", "failed", "unchanged"]
    reason: str = ""
    artifact_digest: str | None = None
    endpoint: str | None = None
    revision: str | None = None  # serving revision digest (tasks.revision)
    revision_inputs: dict = Field(default_factory=dict)
    stages: list[StageRecord] = Field(default_factory=list)


class Deployment(_Value):
    """A candidate on its target, or the news that this serving revision already serves."""

    target: Literal["local", "kserve"]
    name: str
    served_name: str
    revision: str  # the candidate's serving revision digest (tasks.revision)
    revision_inputs: dict
    unchanged: bool = False
    stable_revision: str | None = None
    served_url: str  # what clients call: the front door, the InferenceService URL
    candidate_url: str | None = None  # the candidate alone, for warm-up and the load test; None: not reachable from here
    candidate_unreachable: str = ""  # why candidate_url is None
    tokenizer: str | None = None
    resumed: bool = False
    passed: tuple[str, ...] = ()  # pre-rollout stages (warm_up, load_test) a crashed run had passed
    notes: tuple[str, ...] = ()
