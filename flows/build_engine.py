"""The GPU build subflow: preflight, quantize, TensorRT-LLM build and publish, on a GPU worker.

Deployed to the `gpu-build` Kubernetes work pool (infra/workpools/gpu-build-job-template.json),
it takes the model from where the CPU side left it (s3://, pvc:// or a folder the worker
mounts), so only small values cross between the pools. Locally it runs as a plain subflow.

    prefect work-pool create gpu-build --type kubernetes \\
        --base-job-template infra/workpools/gpu-build-job-template.json
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.preflight import MemoryPlan
from tasks.preflight.prefect import preflight_task
from tasks.quantize import QuantizedModel, quantize
from tasks.spec import PromotionSpec
from tasks.storage.manifest import Lineage, hash_tree
from tasks.storage.publish import publish_folder
from tasks.trtllm import TrtllmArtifact, build_engine, quantizes_in_build
from tasks.values import PublishedArtifact


class BuildOutcome(BaseModel):
    plan: MemoryPlan
    quantized: QuantizedModel | None = None
    trtllm: TrtllmArtifact | None = None
    artifact: PublishedArtifact


def fetch_model(model_uri: str, spec: PromotionSpec, work: Path) -> Path:
    """The model folder on this worker: downloaded from s3://, mapped from pvc://, or as given."""
    if model_uri.startswith("s3://"):
        from tasks.storage.s3 import download_s3_prefix

        return download_s3_prefix(model_uri, work / "model", endpoint_url=spec.storage.s3_endpoint_url)
    if model_uri.startswith("pvc://"):
        from tasks.storage.pvc import pvc_path

        return pvc_path(model_uri, spec.storage.pvc_mount_root)
    return Path(model_uri.removeprefix("file://"))


@task(name="fetch-model", cache_policy=NO_CACHE)
def fetch_model_task(model_uri: str, spec: PromotionSpec, work: Path) -> Path:
    return fetch_model(model_uri, spec, work)


@task(name="quantize", cache_policy=NO_CACHE)
def quantize_on_gpu(model_dir: Path, spec: PromotionSpec, out: Path) -> QuantizedModel:
    return quantize(str(model_dir), spec.quantization, str(out), backend=spec.quant_backend, device="auto")


@task(name="build", cache_policy=NO_CACHE)
def trtllm_task(model_dir: Path, spec: PromotionSpec, work: Path, quantized_dir: str | None) -> TrtllmArtifact:
    return build_engine(str(model_dir), spec, str(work), quantized_dir=quantized_dir)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(folder: Path, spec: PromotionSpec, lineage: Lineage) -> PublishedArtifact:
    return publish_folder(folder, spec, lineage)


@flow(name="build-engine", flow_run_name="build {spec[name]}", persist_result=True)
def build_engine_flow(spec: dict, model_uri: str, source: str = "", revision: str = "",
                      work_dir: str | None = None) -> BuildOutcome:
    """Plan, quantize, build (TensorRT-LLM) and publish one model for one spec on this worker."""
    the_spec = PromotionSpec.model_validate(spec)
    work = Path(work_dir or os.environ.get("LLMSHIP_WORK_DIR") or tempfile.mkdtemp(prefix="llmship-build-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = fetch_model_task(model_uri, the_spec, work)
    model_digest, _ = hash_tree(model_dir)
    plan = preflight_task(str(model_dir), the_spec)

    q = the_spec.quantization
    quantized = None
    if q.method != "none" and not quantizes_in_build(the_spec):
        quantized = quantize_on_gpu(model_dir, the_spec, work / "quantized")

    trt = None
    serve_dir = Path(quantized.path) if quantized else model_dir
    if the_spec.engine.kind == "tensorrt-llm":
        trt = trtllm_task(model_dir, the_spec, work / "trtllm", quantized.path if quantized else None)
        serve_dir = Path(trt.serve_dir)

    lineage = Lineage(source=source or model_uri, revision=revision or model_digest, model_digest=model_digest,
                      quantization="none" if q.method == "none" else f"{q.method}/{the_spec.quant_backend}",
                      engine=the_spec.engine.kind)
    artifact = publish_task(serve_dir, the_spec, lineage)
    return BuildOutcome(plan=plan, quantized=quantized, trtllm=trt, artifact=artifact)
