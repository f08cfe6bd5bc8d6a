"""The GPU build subflow end to end on CPU: model from S3 (moto), preflight, a TensorRT-LLM
engine build through the stand-in tools, publish back to S3 with the manifest last."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import boto3
import pytest

from tasks.errors import BadInput
from tests.build.fakes.fake_tool import install

pytestmark = pytest.mark.servers


def test_build_engine_flow_s3_to_s3(tiny_model, tmp_path, s3_endpoint, aws_env, monkeypatch):
    from flows.build_engine import build_engine_flow

    trtllm_build, examples = install(tmp_path / "bin", tmp_path / "examples")
    monkeypatch.setenv("LLMSHIP_TRTLLM_EXAMPLES", str(examples))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:" + __import__("os").environ["PATH"])
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="flow")
    for f in Path(tiny_model).iterdir():
        if f.is_file():
            s3.upload_file(str(f), "flow", f"models/tiny/{f.name}")
    spec = {"name": "tiny-trt", "model": {"source": "s3://flow/models/tiny"},
            "engine": {"kind": "tensorrt-llm", "trtllm_version": "1.2.0",
                       "args": {"max_model_len": 512, "max_num_seqs": 4, "dtype": "float16"}},
            "target": {"kind": "kserve", "gpu": {"memory_gib": 24, "count": 1}},
            "storage": {"uri": "s3://flow/store", "s3_endpoint_url": s3_endpoint}}
    out = build_engine_flow(spec=spec, model_uri="s3://flow/models/tiny", revision="r1",
                            work_dir=str(tmp_path / "work"))
    assert out.plan.verdict == "fits"
    assert out.trtllm.path == "engine" and out.trtllm.engine_files == ["rank0.engine"]
    assert out.artifact.uri.startswith("s3://flow/store/artifacts/tiny-trt/")
    prefix = out.artifact.uri[len("s3://flow/"):]
    keys = {o["Key"][len(prefix) + 1:] for o in s3.list_objects_v2(Bucket="flow", Prefix=prefix)["Contents"]}
    assert {"config.json", "rank0.engine", "tokenizer/tokenizer.json", "trtllm-serve-command.json",
            "manifest.json"} <= keys
    manifest = json.loads(s3.get_object(Bucket="flow", Key=f"{prefix}/manifest.json")["Body"].read())
    assert manifest["lineage"]["engine"] == "tensorrt-llm" and manifest["lineage"]["revision"] == "r1"


def test_build_engine_flow_fails_preflight_before_any_build(tiny_model, tmp_path):
    from flows.build_engine import build_engine_flow

    spec = {"name": "too-big", "model": {"source": f"file://{tiny_model}"},
            "engine": {"kind": "tensorrt-llm", "args": {"max_model_len": 2048, "max_num_seqs": 16}},
            "target": {"kind": "kserve", "gpu": {"memory_gib": 0.5, "count": 1}},
            "storage": {"uri": str(tmp_path / "store")}}
    with pytest.raises(BadInput) as err:
        build_engine_flow(spec=spec, model_uri=str(tiny_model), work_dir=str(tmp_path / "w"))
    assert err.value.stage == "preflight"
    assert not (tmp_path / "w" / "trtllm").exists()
