"""The spec's predictive kinds: defaults, and the combinations it refuses with a message that says why."""

from __future__ import annotations

import pytest

from tasks.errors import BadInput
from tasks.predictive import skip_reason
from tasks.spec import is_predictive, parse_spec


def spec(**sections) -> dict:
    base = {"name": "iris", "model": {"source": "file:///models/iris"}, "engine": {"kind": "sklearn"}}
    for k, v in sections.items():
        base[k] = v
    return base


def errors(data: dict) -> str:
    with pytest.raises(BadInput) as e:
        parse_spec(data)
    return e.value.detail


def test_sklearn_defaults():
    s = parse_spec(spec())
    assert is_predictive(s) and s.engine.kind == "sklearn"
    p = s.engine.predictive
    assert p.protocol_version == "v2" and p.runtime is None and p.model_file is None
    assert p.max_batch_size == 1 and p.max_batch_time_s == 0 and p.parallel_workers == 1 and p.quality is None
    assert skip_reason(s, "quantize").startswith("engine.kind sklearn: predictive models are served as published")
    assert "no engine build" in skip_reason(s, "build") and skip_reason(s, "deploy") is None


def test_llm_kinds_unchanged():
    s = parse_spec({"name": "llm", "model": {"source": "file:///m"}})
    assert s.engine.kind == "vllm" and s.engine.predictive is None and not is_predictive(s)
    assert skip_reason(s, "quantize") is None


def test_full_predictive_section():
    s = parse_spec(spec(engine={"kind": "xgboost", "predictive": {
        "model_file": "model.ubj", "max_batch_size": 16, "max_batch_time_s": 0.01, "parallel_workers": 2,
        "quality": {"labelled_data": "/d/heldout.jsonl", "min_accuracy": 0.9, "batch_size": 8}}},
        load={"endpoint": "v2", "num_requests": 10, "rows_per_request": 4},
        slo={"latency_p99_ms": 20, "min_requests_per_s": 50}))
    assert s.engine.predictive.quality.min_accuracy == 0.9
    assert s.load.rows_per_request == 4 and s.slo.latency_p99_ms == 20


@pytest.mark.parametrize("engine, sections, message", [
    ({"kind": "sklearn"}, {"quantization": {"method": "awq"}}, "quantization is for LLM weights"),
    ({"kind": "sklearn", "args": {"max_model_len": 512}}, {}, "engine.args are LLM engine arguments"),
    ({"kind": "xgboost", "trtllm_version": "1.2.0"}, {}, "trtllm_version is for tensorrt-llm"),
    ({"kind": "vllm", "predictive": {}}, {}, "engine.predictive is for sklearn / xgboost / triton"),
    ({"kind": "sklearn"}, {"target": {"kind": "local", "gpu": {"memory_gib": 80}}},
     "MLServer, which uses no GPU"),
    ({"kind": "xgboost"}, {"target": {"kind": "kserve", "gpu": {"count": 1}}}, "kserve-mlserver serves xgboost models on CPU"),
    ({"kind": "sklearn", "predictive": {"runtime": "xgbserver"}}, {}, "runtime xgbserver does not load sklearn"),
    ({"kind": "triton", "predictive": {"runtime": "mlserver"}}, {}, "runtime mlserver does not load triton"),
    ({"kind": "triton"}, {}, "engine.kind triton runs on target kserve"),
    ({"kind": "sklearn", "predictive": {"runtime": "sklearnserver"}}, {}, "is a KServe runtime; the local target runs MLServer"),
    ({"kind": "sklearn", "predictive": {"protocol_version": "v1"}}, {}, "protocol_version v1 is not supported"),
    ({"kind": "sklearn", "predictive": {"max_batch_size": 8}}, {}, "adaptive batching needs both"),
    ({"kind": "sklearn", "predictive": {"max_batch_time_s": 0.01}}, {}, "max_batch_size is 1"),
    ({"kind": "sklearn", "predictive": {"model_file": "model.json"}}, {}, "is not a sklearn model file"),
    ({"kind": "sklearn", "predictive": {"model_file": "sub/model.joblib"}}, {}, "no folders"),
    ({"kind": "sklearn", "predictive": {"runtime": "sklearnserver", "model_file": "iris.joblib"}},
     {"target": {"kind": "kserve"}}, "kserve-sklearnserver only finds model.joblib"),
    ({"kind": "sklearn", "predictive": {"runtime": "sklearnserver", "max_batch_size": 4, "max_batch_time_s": 0.01}},
     {"target": {"kind": "kserve"}}, "has no adaptive batching"),
    ({"kind": "sklearn", "predictive": {"model_format": "onnx"}}, {}, "model_format is for triton"),
    ({"kind": "triton", "predictive": {"model_file": "model.onnx"}}, {"target": {"kind": "kserve"}}, "unset model_file"),
    ({"kind": "sklearn"}, {"slo": {"ttft_p99_ms": 100}}, "token figures do not exist"),
    ({"kind": "sklearn"}, {"load": {"endpoint": "chat", "num_requests": 5}}, "use v2"),
    ({"kind": "vllm"}, {"slo": {"latency_p99_ms": 10}}, "checked by the V2 load test"),
    ({"kind": "vllm"}, {"load": {"endpoint": "v2", "num_requests": 5}}, "serves completions or chat"),
    ({"kind": "sklearn"}, {"target": {"kind": "kserve", "keda": {"enabled": True}}}, "target.keda scales on vLLM"),
    ({"kind": "sklearn"}, {"target": {"kind": "kserve", "llm_inference_service": {"enabled": True}}}, "llm-d serving"),
    ({"kind": "sklearn", "predictive": {"quality": {"labelled_data": "x.jsonl", "min_accuracy": 1.5}}}, {},
     "less than or equal to 1"),
])
def test_refused_combinations(engine, sections, message):
    got = errors(spec(engine=engine, **sections))
    assert message in got, got


def test_triton_on_kserve_may_use_a_gpu():
    s = parse_spec(spec(engine={"kind": "triton", "predictive": {"model_format": "onnx"}},
                        target={"kind": "kserve", "gpu": {"count": 1}}))
    assert s.engine.predictive.runtime is None and s.target.gpu.count == 1
    assert "Triton model repository" in skip_reason(s, "build")


def test_examples_validate():
    from pathlib import Path

    from tasks.spec import load_spec

    root = Path(__file__).resolve().parents[2] / "examples"
    for name in ("sklearn-local.yaml", "sklearn-kserve.yaml"):
        s = load_spec(root / name)
        assert is_predictive(s) and s.load.endpoint == "v2" and s.engine.predictive.quality.min_accuracy > 0
