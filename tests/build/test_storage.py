"""S3 publish/download against moto's real S3 server, and the PVC store on a folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

from tasks.errors import BadInput, StageFailed
from tasks.storage import s3 as s3store
from tasks.storage.manifest import Lineage, hash_tree
from tasks.storage.pvc import parse_pvc_url, publish_pvc, pvc_path

pytestmark = pytest.mark.servers
LINEAGE = Lineage(source="file:///models/x", revision="abc", model_digest="d" * 64, quantization="awq")


@pytest.fixture
def model_folder(tmp_path) -> Path:
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "sub" / "tokenizer.json").write_text("{}")
    # 12 MiB: three 5 MiB parts with the test's transfer config
    (d / "model.safetensors").write_bytes(os.urandom(12 * 1024 * 1024))
    return d


@pytest.fixture
def bucket(s3_endpoint, aws_env, request) -> str:
    name = "llmship-" + request.node.name.lower().replace("_", "-")[:40]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def calls(monkeypatch, s3_endpoint):
    """Record every S3 operation the store makes (operation, key), in order."""
    seen: list[tuple[str, str]] = []
    real = s3store.client

    def observed(endpoint_url=None):
        c = real(endpoint_url)
        c.meta.events.register("provide-client-params.s3.*",
                               lambda model, params, **kw: seen.append((model.name, params.get("Key", ""))))
        return c

    monkeypatch.setattr(s3store, "client", observed)
    return seen


def small_parts():
    return s3store.transfer_config(threshold_mib=5, chunk_mib=5, concurrency=2)


def test_publish_multipart_manifest_last_and_verify(model_folder, bucket, s3_endpoint, calls):
    art = s3store.publish_s3(str(model_folder), f"s3://{bucket}/store", "tiny", "s" * 64, LINEAGE,
                             endpoint_url=s3_endpoint, config=small_parts())
    digest, files = hash_tree(model_folder)
    assert art.digest == digest
    assert art.uri == f"s3://{bucket}/store/artifacts/tiny/{digest[:16]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = f"store/artifacts/tiny/{digest[:16]}"
    head = s3.head_object(Bucket=bucket, Key=f"{prefix}/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3"), "12 MiB in 5 MiB parts is a 3-part multipart upload"
    assert head["Metadata"]["sha256"] == next(f.sha256 for f in files if f.path == "model.safetensors")
    writes = [(op, key) for op, key in calls if op in ("PutObject", "CreateMultipartUpload", "UploadPart",
                                                        "CompleteMultipartUpload")]
    assert writes[-1] == ("PutObject", f"{prefix}/manifest.json"), "manifest.json is written last"
    assert sum(op == "UploadPart" for op, _ in writes) == 3
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read())
    assert manifest["spec_digest"] == "s" * 64
    assert manifest["lineage"]["quantization"] == "awq"
    assert {f["path"] for f in manifest["files"]} == {"config.json", "sub/tokenizer.json", "model.safetensors"}
    assert s3store.verify_s3(s3, bucket, prefix, s3store.read_manifest_s3(s3, bucket, prefix)) == []


def test_republish_is_a_no_op_and_repairs_tampering(model_folder, bucket, s3_endpoint, calls):
    uri = f"s3://{bucket}/p"
    first = s3store.publish_s3(str(model_folder), uri, "tiny", "s" * 64, LINEAGE, endpoint_url=s3_endpoint,
                               config=small_parts())
    calls.clear()
    again = s3store.publish_s3(str(model_folder), uri, "tiny", "s" * 64, LINEAGE, endpoint_url=s3_endpoint,
                               config=small_parts())
    assert again == first
    assert not [c for c in calls if c[0] in ("PutObject", "CreateMultipartUpload")], "nothing re-uploaded"

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    _, prefix = s3store.parse_s3_url(first.uri)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/config.json", Body=b'{"tampered": true}')
    problems = s3store.verify_s3(s3, bucket, prefix, s3store.read_manifest_s3(s3, bucket, prefix))
    assert problems and "config.json" in problems[0]
    calls.clear()
    s3store.publish_s3(str(model_folder), uri, "tiny", "s" * 64, LINEAGE, endpoint_url=s3_endpoint,
                       config=small_parts())
    ops = [c[0] for c in calls]
    assert ops.index("DeleteObject") < ops.index("PutObject"), "the stale manifest goes first"
    assert s3store.verify_s3(s3, bucket, prefix, s3store.read_manifest_s3(s3, bucket, prefix)) == []


def test_download_round_trip_and_checks(model_folder, bucket, s3_endpoint, tmp_path):
    art = s3store.publish_s3(str(model_folder), f"s3://{bucket}/r", "tiny", "s" * 64, LINEAGE,
                             endpoint_url=s3_endpoint, config=small_parts())
    out = s3store.download_s3_prefix(art.uri, tmp_path / "dl", endpoint_url=s3_endpoint, config=small_parts())
    assert hash_tree(out)[0] == art.digest
    assert (out / "sub" / "tokenizer.json").read_text() == "{}"

    # a plain model prefix (no manifest), as an s3:// model source
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="models/m1/config.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="models/m1/weights.bin", Body=b"123")
    got = s3store.download_s3_prefix(f"s3://{bucket}/models/m1", tmp_path / "m1", endpoint_url=s3_endpoint)
    assert sorted(p.name for p in got.iterdir()) == ["config.json", "weights.bin"]
    rev = s3store.s3_prefix_revision(f"s3://{bucket}/models/m1", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="models/m1/weights.bin", Body=b"124")
    assert s3store.s3_prefix_revision(f"s3://{bucket}/models/m1", endpoint_url=s3_endpoint) != rev

    _, prefix = s3store.parse_s3_url(art.uri)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/config.json", Body=b"changed")
    with pytest.raises(StageFailed, match="do not match the manifest"):
        s3store.download_s3_prefix(art.uri, tmp_path / "dl2", endpoint_url=s3_endpoint)
    with pytest.raises(BadInput, match="no objects"):
        s3store.download_s3_prefix(f"s3://{bucket}/nothing-here", tmp_path / "x", endpoint_url=s3_endpoint)


def test_missing_bucket_is_bad_input(model_folder, s3_endpoint, aws_env):
    with pytest.raises(BadInput) as err:
        s3store.publish_s3(str(model_folder), "s3://no-such-bucket-b5/x", "tiny", "s" * 64, LINEAGE,
                           endpoint_url=s3_endpoint)
    assert err.value.stage == "publish" and "bucket" in err.value.message
    assert err.value.exit_code == 2


def test_bad_urls():
    with pytest.raises(BadInput):
        s3store.parse_s3_url("s3:///nobucket")
    with pytest.raises(BadInput):
        parse_pvc_url("pvc://claim/../etc")
    assert parse_pvc_url("pvc://models/llm/store") == ("models", "llm/store")
    assert pvc_path("pvc://models/a/b", "/mnt/pvc") == Path("/mnt/pvc/models/a/b")


def test_pvc_publish_same_layout_as_local(model_folder, tmp_path):
    root = tmp_path / "mnt"
    (root / "models").mkdir(parents=True)
    art = publish_pvc(str(model_folder), "pvc://models/llmship", "tiny", "s" * 64, LINEAGE, str(root))
    digest = hash_tree(model_folder)[0]
    assert art.uri == f"pvc://models/llmship/artifacts/tiny/{digest[:16]}"
    assert Path(art.local_path) == root / "models" / "llmship" / "artifacts" / "tiny" / digest[:16]
    assert (Path(art.local_path) / "manifest.json").is_file()
    assert hash_tree(art.local_path)[0] == digest
    with pytest.raises(BadInput, match="not mounted"):
        publish_pvc(str(model_folder), "pvc://other/x", "tiny", "s" * 64, LINEAGE, str(root))
