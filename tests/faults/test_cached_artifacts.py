"""A cached publish is trusted only while its artifact is whole: on S3, on a PVC and in the local store.

Each case publishes through the real Prefect task (the session's Prefect server, persisted
results), damages the artifact from the outside, runs the same stage again the way the promote
flow does (flows.promote.Stages) and checks the store from the outside.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
from prefect import flow

from tasks.storage.manifest import hash_tree
from tasks.values import LocalModel, PublishedArtifact, ResolvedModel

pytestmark = [pytest.mark.faults, pytest.mark.servers]


@flow(name="faults-publish")
def publish_flow(model: LocalModel, spec: dict) -> tuple[PublishedArtifact, str]:
    """The promote flow's publish step alone: Stages.run re-runs a cached result whose files are gone."""
    from flows.promote import Stages
    from tasks.prefect_tasks import publish_task
    from tasks.spec import parse_spec

    the_spec = parse_spec(spec)
    stages = Stages(the_spec)
    artifact = stages.run("publish", publish_task, model, the_spec)
    return artifact, stages.records[-1].state


def _model(folder: Path) -> LocalModel:
    digest, _ = hash_tree(folder)
    return LocalModel(path=str(folder), digest=digest,
                      resolved=ResolvedModel(source=f"file://{folder}", kind="file", location=str(folder), revision=digest))


def _spec(name: str, storage: dict) -> dict:
    return {"name": name, "model": {"source": "file:///unused"}, "target": {"kind": "kserve"}, "storage": storage}


@pytest.fixture
def s3_store(s3_endpoint, aws_env):
    bucket = f"faults-cache-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    return s3, bucket, {"uri": f"s3://{bucket}/store", "s3_endpoint_url": s3_endpoint}


def _keys(s3, bucket: str, prefix: str) -> dict[str, int]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        out.update({o["Key"][len(prefix) + 1:]: o["Size"] for o in page.get("Contents", [])})
    return out


@pytest.mark.parametrize("damage", ["delete-weights", "delete-manifest", "truncate-weights"])
def test_s3_artifact_missing_an_object_is_published_again(tiny_model, s3_store, damage):
    s3, bucket, storage = s3_store
    name = f"cache-{damage}"
    model = _model(tiny_model)
    first, state = publish_flow(model, _spec(name, storage))
    assert state == "Completed"
    prefix = first.uri[len(f"s3://{bucket}/"):]
    whole = _keys(s3, bucket, prefix)
    assert {"model.safetensors", "manifest.json", "config.json"} <= set(whole)

    again, state = publish_flow(model, _spec(name, storage))
    assert state == "Cached", "an intact artifact comes back from the cache"

    if damage == "delete-weights":
        s3.delete_object(Bucket=bucket, Key=f"{prefix}/model.safetensors")
    elif damage == "delete-manifest":
        s3.delete_object(Bucket=bucket, Key=f"{prefix}/manifest.json")
    else:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/model.safetensors", Body=b"short")
    third, state = publish_flow(model, _spec(name, storage))
    assert state != "Cached", f"{damage}: the cached result was trusted although the artifact is incomplete"
    assert third.uri == first.uri
    assert _keys(s3, bucket, prefix) == whole, "the re-run made the artifact whole again"


@pytest.mark.parametrize("store_kind", ["local", "pvc"])
def test_folder_artifact_missing_a_file_is_published_again(tiny_model, tmp_path, store_kind):
    if store_kind == "pvc":
        (tmp_path / "mnt" / "claim").mkdir(parents=True)
        storage = {"uri": f"pvc://claim/{uuid.uuid4().hex[:8]}", "pvc_mount_root": str(tmp_path / "mnt")}
    else:
        storage = {"uri": str(tmp_path / "store")}
    name = f"cache-{store_kind}"
    model = _model(tiny_model)
    first, state = publish_flow(model, _spec(name, storage))
    folder = Path(first.local_path)
    assert state == "Completed" and (folder / "model.safetensors").is_file()
    _, state = publish_flow(model, _spec(name, storage))
    assert state == "Cached"

    (folder / "model.safetensors").unlink()
    again, state = publish_flow(model, _spec(name, storage))
    assert state != "Cached"
    assert (Path(again.local_path) / "model.safetensors").is_file()
    assert hash_tree(again.local_path)[0] == model.digest


def test_output_exists_against_the_manifest(tiny_model, s3_store, tmp_path):
    """The check itself: existence and size of every listed object, from one listing."""
    from tasks.prefect_tasks import output_exists
    from tasks.spec import parse_spec
    from tasks.storage.publish import publish

    s3, bucket, storage = s3_store
    spec = parse_spec(_spec("exists", storage))
    art = publish(_model(tiny_model), spec)
    assert output_exists(art, spec)
    prefix = art.uri[len(f"s3://{bucket}/"):]
    s3.put_object(Bucket=bucket, Key=f"{prefix}/config.json", Body=b"{}")
    assert not output_exists(art, spec), "a listed object with another size"
    wrong = art.model_copy(update={"digest": "0" * 64})
    assert not output_exists(wrong, spec), "a manifest of another artifact"
    unreachable = parse_spec(_spec("exists", {**storage, "s3_endpoint_url": "http://127.0.0.1:9"}))
    assert not output_exists(art, unreachable), "an unreachable store is not trusted (publish then says why)"
