"""Prefect wrappers over the plain stage functions.

Expensive stages (download, quantize, build, publish) are cached on the content of their
inputs with persisted results, so a re-run with the same inputs finishes them as "Cached"
without doing the work again. A cached result whose files are gone is not trusted: see
output_exists, which the flow checks before using one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import download as download_mod
from tasks.preflight.prefect import preflight_task  # noqa: F401  (the flow imports every stage from here)
from tasks.spec import PromotionSpec
from tasks.storage.local import store_root
from tasks.values import LocalModel, PublishedArtifact, ResolvedModel

CACHE_FOR = timedelta(days=30)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def output_exists(value: object, spec: PromotionSpec | None = None) -> bool:
    """Whether the files a stage's cached result points at are still there.

    A published artifact is checked against its manifest wherever it lives (local store, PVC,
    S3): every listed file present with its size (tasks.storage.check; one listing on S3). The S3
    endpoint is the spec's storage.s3_endpoint_url: pass the spec, or it is read from the running
    flow's `spec_path`/`spec` parameter (promote_model's and build_engine_flow's).
    """
    if isinstance(value, LocalModel):
        return Path(value.path).is_dir()
    if isinstance(value, PublishedArtifact):
        from tasks.storage.check import artifact_is_whole

        if spec is None and value.local_path is None:
            from prefect.context import FlowRunContext

            from tasks.spec import load_spec, parse_spec

            params = getattr(FlowRunContext.get(), "parameters", None) or {}
            try:
                if isinstance(params.get("spec"), PromotionSpec):
                    spec = params["spec"]
                elif isinstance(params.get("spec"), dict):
                    spec = parse_spec(params["spec"], "flow parameter spec")
                elif params.get("spec_path"):
                    spec = load_spec(params["spec_path"])
            except Exception:
                spec = None  # then boto3's own endpoint (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or AWS)
        return artifact_is_whole(value, spec.storage.s3_endpoint_url if spec is not None else None)
    return True


# -- resolve: cheap, never cached (a branch may move) -------------------------------------
@task(name="resolve", cache_policy=NO_CACHE)
def resolve_task(spec: PromotionSpec) -> ResolvedModel:
    return download_mod.resolve_source(spec.model.source, spec.storage.s3_endpoint_url)


# -- download ------------------------------------------------------------------------------
def _download_key(context, parameters) -> str:
    r: ResolvedModel = parameters["resolved"]
    return _key("download", r.kind, r.location, r.revision)


@task(name="download", cache_key_fn=_download_key, persist_result=True, cache_expiration=CACHE_FOR)
def download_task(resolved: ResolvedModel, spec: PromotionSpec) -> LocalModel:
    return download_mod.download(resolved, s3_endpoint_url=spec.storage.s3_endpoint_url)


# -- publish -------------------------------------------------------------------------------
def _publish_key(context, parameters) -> str:
    model: LocalModel = parameters["model"]
    spec: PromotionSpec = parameters["spec"]
    storage = spec.storage.model_dump()
    if "://" not in spec.storage.uri:
        storage["uri"] = str(store_root(spec.storage.uri))  # ./store means a different place per cwd
    # The artifact is named by its content; the spec digest in its manifest is the first publisher's.
    return _key("publish", model.digest, spec.name, storage)


@task(name="publish", cache_key_fn=_publish_key, persist_result=True, cache_expiration=CACHE_FOR)
def publish_task(model: LocalModel, spec: PromotionSpec) -> PublishedArtifact:
    from tasks.storage.publish import publish

    return publish(model, spec)



# -- quantize and build: each writes into a folder named by the content of its inputs ----
def _output_dir(kind: str, model: LocalModel, settings: object) -> Path:
    return download_mod.default_cache_dir() / kind / _key(kind, model.digest, settings)[:16]


def quantized_dir(model: LocalModel, spec: PromotionSpec) -> Path:
    return _output_dir("quantized", model, [spec.quantization.model_dump(), spec.quant_backend])


def engine_dir(model: LocalModel, spec: PromotionSpec) -> Path:
    # The engine path may quantize inside its checkpoint step, so quantization is an input too.
    return _output_dir("engines", model, [spec.engine.model_dump(), spec.quantization.model_dump()])


def _keyed_by(output_dir: Callable[[LocalModel, PromotionSpec], Path]) -> Callable:
    def cache_key(context, parameters) -> str:
        return _key(str(output_dir(parameters["model"], parameters["spec"])))

    return cache_key


@task(name="quantize", cache_key_fn=_keyed_by(quantized_dir), persist_result=True, cache_expiration=CACHE_FOR)
def quantize_task(model: LocalModel, spec: PromotionSpec) -> LocalModel:
    from tasks.quantize import quantize
    from tasks.quantize.prefect import publish_gate_artifact
    from tasks.storage.manifest import hash_tree

    out = quantized_dir(model, spec)
    if out.exists():
        shutil.rmtree(out)  # a result Prefect no longer remembers, or a half-written one: redo it
    result = quantize(model.path, spec.quantization, str(out), backend=spec.quant_backend)
    publish_gate_artifact(result, spec.name)
    digest, _ = hash_tree(result.path)
    return LocalModel(path=result.path, digest=digest, resolved=model.resolved)


@task(name="build", cache_key_fn=_keyed_by(engine_dir), persist_result=True, cache_expiration=CACHE_FOR)
def build_task(model: LocalModel, spec: PromotionSpec) -> LocalModel:
    from tasks.storage.manifest import hash_tree
    from tasks.trtllm import build_for_spec

    out = build_for_spec(model.path, spec, str(engine_dir(model, spec)))
    digest, _ = hash_tree(out)
    return LocalModel(path=str(out), digest=digest, resolved=model.resolved)


# -- the production checklist: before any GPU time --------------------------------------
@task(name="checklist", cache_policy=NO_CACHE)
def checklist_task(spec: PromotionSpec, plan):
    from tasks.checklist import enforce, evaluate_checklist, publish_checklist_artifact

    report = evaluate_checklist(spec, plan)
    publish_checklist_artifact(report)
    return enforce(report, spec)  # under checks.strict a failed rule is bad input: exit 2, nothing deployed


# -- deploy, warm up, load test, canary: never cached (they act on live servers) ---------
@task(name="deploy", cache_policy=NO_CACHE)
def deploy_task(spec: PromotionSpec, artifact: PublishedArtifact, resolved: ResolvedModel):
    from tasks import targets

    return targets.deploy(spec, artifact, resolved)


@task(name="warm_up", cache_policy=NO_CACHE)
def warm_up_task(base_url: str, model_name: str, spec: PromotionSpec, tokenizer: str | None):
    from tasks.spec import is_predictive

    if is_predictive(spec):
        from tasks.predictive.warmup import warm_up_v2

        return warm_up_v2(base_url, model_name, spec.warmup)
    from tasks.warmup import warm_up

    return warm_up(base_url, model_name, spec.warmup, tokenizer)


@task(name="load_test", cache_policy=NO_CACHE)
def load_test_task(base_url: str, model_name: str, spec: PromotionSpec, tokenizer: str | None):
    from tasks.loadtest import run_load_test
    from tasks.loadtest.artifacts import publish_prefect_artifacts

    report = run_load_test(base_url, model_name, spec.load, spec.slo, tokenizer)
    publish_prefect_artifacts(report, key_prefix=f"{spec.name}-load-test")
    return report


@task(name="quality", cache_policy=NO_CACHE)
def quality_task(candidate_url: str, spec: PromotionSpec, stable_url: str | None):
    """A predictive model's accuracy on labelled held-out data, through the real server (and stable's)."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.predictive.quality import evaluate_quality

    q = spec.engine.predictive.quality
    stable = None
    if stable_url and q.max_accuracy_drop is not None:
        stable = evaluate_quality(stable_url, spec.served_name, q.labelled_data, None, batch_size=q.batch_size,
                                  output=q.output).accuracy
    report = evaluate_quality(candidate_url, spec.served_name, q.labelled_data, q.min_accuracy, batch_size=q.batch_size,
                              output=q.output, stable_accuracy=stable, max_accuracy_drop=q.max_accuracy_drop)
    create_markdown_artifact(markdown=report.markdown(), key=f"{spec.name}-quality",
                             description=f"quality gate of {spec.name}: {'passed' if report.passed else 'failed'}")
    return report


@task(name="canary", cache_policy=NO_CACHE)
def canary_task(spec: PromotionSpec, deployment):
    from tasks import targets
    from tasks.canary.artifacts import CanaryArtifacts

    published = CanaryArtifacts(spec)
    try:
        return targets.run_canary(spec, deployment, on_step=published.step, on_report=published.report)
    finally:
        published.publish()
