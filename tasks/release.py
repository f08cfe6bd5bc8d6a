"""The release record: one `release.json` per promotion, whatever its outcome.

It says what made this release and who decided: the trigger, the registry version and
source revision, the quantization recipe (with the calibration set's hash and the quality
gate's figures), the artifact and its manifest, the runtime and engine arguments, the
serving revision, the load test, every canary step's figures and verdicts, and the outcome.

Records are written into the spec's store, beside its state:

    <store>/releases/<name>/<started>-<revision[:12]>.json     (a folder, pvc:// or s3://)

`llmship history NAME` lists them newest first.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.errors import BadInput
from tasks.spec import PromotionSpec

STAGE = "history"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Release(BaseModel):
    name: str
    target: str
    started_at: str = Field(default_factory=now_iso)
    finished_at: str | None = None
    outcome: str = "failed"  # promoted, unchanged, rolled_back, failed
    decided_by: str = ""  # the judge, a health check, a stage that failed, the load test
    reason: str = ""
    trigger: dict = Field(default_factory=dict)
    source: dict = Field(default_factory=dict)  # as given, resolved revision, registry version
    quantization: dict = Field(default_factory=dict)
    artifact: dict = Field(default_factory=dict)  # digest, uri, manifest
    runtime: dict = Field(default_factory=dict)  # image or engine version, engine args
    serving_revision: dict = Field(default_factory=dict)  # digest and inputs
    load_test: dict = Field(default_factory=dict)
    quality: dict = Field(default_factory=dict)  # predictive models: accuracy on labelled held-out data
    canary: dict = Field(default_factory=dict)  # phase, plan, steps with figures and verdicts
    stages: list[dict] = Field(default_factory=list)
    spec_digest: str = ""

    def file_name(self) -> str:
        stamp = self.started_at.replace(":", "").replace("-", "").replace("+0000", "Z")
        rev = (self.serving_revision.get("digest") or "none")[:12]
        return f"{stamp}-{rev}.json"


def calibration_hash(spec: PromotionSpec) -> str | None:
    """sha256 over the calibration and held-out samples the quantize stage used."""
    if spec.quantization.method == "none":
        return None
    from tasks.quantize.stage import calibration_texts

    calib, held, _ = calibration_texts(spec.quantization)
    h = hashlib.sha256()
    for part in calib + ["\0held-out\0"] + held:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def quantization_facts(spec: PromotionSpec, model_path: str | None) -> dict:
    q = spec.quantization
    out: dict = {"method": q.method, "backend": spec.quant_backend, "w_bit": q.w_bit, "group_size": q.group_size,
                 "zero_point": q.zero_point, "max_perplexity_increase": q.max_perplexity_increase}
    if q.method == "none":
        return out
    out["calibration_source"] = q.calibration.file or "built-in samples"
    out["calibration_sha256"] = calibration_hash(spec)
    gate = Path(model_path or "") / "llmship_quantize.json"
    if model_path and gate.is_file():  # the quantize stage's own record travels with the folder
        g = json.loads(gate.read_text())
        out["gate"] = {k: g.get(k) for k in ("ppl_before", "ppl_after", "ppl_increase", "max_perplexity_increase",
                                             "format", "calib_samples_used", "after_measured_on", "versions")}
    return out


def canary_facts(record) -> dict:
    if record is None:
        return {}
    steps = []
    for s in record.steps:
        steps.append({"step": s.index + 1, "percent": s.percent, "window": s.attempt + 1, "verdict": s.verdict.value,
                      "reason": s.reason, "traffic_share": s.traffic_share, "candidate": s.candidate, "stable": s.stable,
                      "checks": [c.model_dump() for c in s.checks]})
    return {"phase": record.phase.value, "plan": record.plan, "failed_checks": record.failed_checks,
            "failure_limit": record.failure_limit, "decided_by": record.decided_by, "reason": record.reason,
            "router": record.handle.get("router") or "local front door", "steps": steps,
            "transitions": [t.model_dump(mode="json") for t in record.transitions]}


# -- where records live ------------------------------------------------------------------


def _prefix(name: str) -> str:
    return f"releases/{name}"


def write_release(spec: PromotionSpec, release: Release) -> str:
    """Write the record into the spec's store; returns where."""
    text = release.model_dump_json(indent=2) + "\n"
    uri = spec.storage.uri
    rel = f"{_prefix(spec.name)}/{release.file_name()}"
    if uri.startswith("s3://"):
        from tasks.storage.s3 import client, parse_s3_url

        bucket, prefix = parse_s3_url(uri)
        key = f"{prefix}/{rel}" if prefix else rel
        client(spec.storage.s3_endpoint_url).put_object(Bucket=bucket, Key=key, Body=text.encode(),
                                                        ContentType="application/json")
        return f"s3://{bucket}/{key}"
    path = _folder(spec) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return str(path)


def _folder(spec: PromotionSpec) -> Path:
    uri = spec.storage.uri
    if uri.startswith("pvc://"):
        from tasks.storage.pvc import pvc_path

        return pvc_path(uri, spec.storage.pvc_mount_root)
    from tasks.storage.local import store_root

    return store_root(uri)


def read_releases(store_uri: str, name: str, s3_endpoint_url: str | None = None, pvc_mount_root: str = "/mnt/pvc"
                  ) -> list[Release]:
    """Every release record of a name, newest first; BadInput when the store has none."""
    texts: list[str] = []
    if store_uri.startswith("s3://"):
        from tasks.storage.s3 import client, parse_s3_url

        bucket, prefix = parse_s3_url(store_uri)
        s3 = client(s3_endpoint_url)
        base = f"{prefix}/{_prefix(name)}/" if prefix else f"{_prefix(name)}/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents") or []:
                if obj["Key"].endswith(".json"):
                    texts.append(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode())
    else:
        if store_uri.startswith("pvc://"):
            from tasks.storage.pvc import pvc_path

            root = pvc_path(store_uri, pvc_mount_root)
        else:
            from tasks.storage.local import store_root

            root = store_root(store_uri)
        folder = root / _prefix(name)
        texts = [p.read_text() for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    if not texts:
        raise BadInput(STAGE, name, f"no release records for {name!r} in {store_uri}",
                       "check the name (`llmship status` lists what serves) and the store (--store or --spec)")
    records = [Release.model_validate_json(t) for t in texts]
    return sorted(records, key=lambda r: r.started_at, reverse=True)
