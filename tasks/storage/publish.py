"""Publish a model folder to the store the spec names: a local folder, pvc:// or s3://."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tasks.spec import PromotionSpec
from tasks.storage.manifest import Lineage
from tasks.values import LocalModel, PublishedArtifact


def lineage_for(model: LocalModel, spec: PromotionSpec) -> Lineage:
    try:
        ours = version("llmship")
    except PackageNotFoundError:
        ours = "dev"
    q = spec.quantization
    return Lineage(
        source=model.resolved.source,
        revision=model.resolved.revision,
        registry_version=model.resolved.registry_version,
        model_digest=model.digest,
        quantization="none" if q.method == "none" else f"{q.method}/{spec.quant_backend}",
        engine=spec.engine.kind,
        llmship_version=ours,
    )


def publish(model: LocalModel, spec: PromotionSpec) -> PublishedArtifact:
    return publish_folder(model.path, spec, lineage_for(model, spec))


def publish_folder(folder: str | Path, spec: PromotionSpec, lineage: Lineage) -> PublishedArtifact:
    """Publish a folder into the store the spec names, picked by the URI's scheme."""
    uri = spec.storage.uri
    if uri.startswith("s3://"):
        from tasks.storage.s3 import publish_s3

        return publish_s3(str(folder), uri, spec.name, spec.digest(), lineage, endpoint_url=spec.storage.s3_endpoint_url)
    if uri.startswith("pvc://"):
        from tasks.storage.pvc import publish_pvc

        return publish_pvc(str(folder), uri, spec.name, spec.digest(), lineage, mount_root=spec.storage.pvc_mount_root)
    from tasks.storage.local import publish_local

    return publish_local(str(folder), uri, spec.name, spec.digest(), lineage)
