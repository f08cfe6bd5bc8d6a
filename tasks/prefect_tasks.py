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


def output_exists(value: object) -> bool:
    """Whether the files a stage's result points at are still there (remote ones are trusted)."""
    if isinstance(value, LocalModel):
        return Path(value.path).is_dir()
    if isinstance(value, PublishedArtifact):
        return value.local_path is None or Path(value.manifest_uri).is_file()
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


# -- deploy, warm up, load test, canary: never cached (they act on live servers) ---------
@task(name="deploy", cache_policy=NO_CACHE)
def deploy_task(spec: PromotionSpec, artifact: PublishedArtifact, resolved: ResolvedModel):
    from tasks.local.deploy import deploy_local

    return deploy_local(spec, artifact, resolved)


@task(name="warm_up", cache_policy=NO_CACHE)
def warm_up_task(base_url: str, model_name: str, spec: PromotionSpec, tokenizer: str | None):
    from tasks.warmup import warm_up

    return warm_up(base_url, model_name, spec.warmup, tokenizer)


@task(name="load_test", cache_policy=NO_CACHE)
def load_test_task(base_url: str, model_name: str, spec: PromotionSpec, tokenizer: str | None):
    from tasks.loadtest import run_load_test
    from tasks.loadtest.artifacts import publish_prefect_artifacts

    report = run_load_test(base_url, model_name, spec.load, spec.slo, tokenizer)
    publish_prefect_artifacts(report, key_prefix=f"{spec.name}-load-test")
    return report


@task(name="canary", cache_policy=NO_CACHE)
def local_canary_task(spec: PromotionSpec, stable, candidate, tokenizer: str | None):
    from prefect.artifacts import create_table_artifact

    from tasks.canary.local import run_local_canary, steps_table

    outcome = run_local_canary(spec, stable, candidate, tokenizer)
    create_table_artifact(table=steps_table(outcome), key=f"{spec.name}-canary",
                          description=f"canary of {spec.name}: {outcome.reason}")
    return outcome


# -- the KServe target's deploy and canary (tasks.kserve) ----------------------------------
@task(name="deploy", cache_policy=NO_CACHE)
def kserve_deploy_task(spec, storage_uri: str, digest: str, registry_version: str | None):
    from tasks.kserve import deploy_candidate

    return deploy_candidate(spec, storage_uri, digest, registry_version)


@task(name="canary", cache_policy=NO_CACHE)
def kserve_canary_task(spec, rollout):
    from tasks.kserve import run_canary

    return run_canary(spec, rollout)
