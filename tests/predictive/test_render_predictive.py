"""KServe objects for predictive models: the built-in runtimes, V2, no GPU, admitted against the real CRD schemas."""

from __future__ import annotations

import pytest

from tasks.errors import BadInput
from tasks.kserve.admission import admission_errors, admit
from tasks.kserve.render_predictive import predictive_predictor, render_predictive
from tasks.preflight.predictive import plan_resources
from tasks.spec import parse_spec

URI = "s3://models/iris/model"


def kserve_spec(kind: str = "sklearn", predictive: dict | None = None, **target) -> object:
    engine = {"kind": kind}
    if predictive is not None:
        engine["predictive"] = predictive
    return parse_spec({"name": "iris", "model": {"source": URI}, "engine": engine,
                       "target": {"kind": "kserve", "namespace": "models", **target},
                       "load": {"endpoint": "v2", "num_requests": 10}})


def isvc_of(objs: list[dict]) -> dict:
    (isvc,) = [o for o in objs if o["kind"] == "InferenceService"]
    return isvc


@pytest.mark.parametrize("kind, runtime, fmt", [
    ("sklearn", None, {"name": "sklearn", "version": "1"}),
    ("xgboost", None, {"name": "xgboost", "version": "2"}),
    ("sklearn", "sklearnserver", {"name": "sklearn", "version": "1"}),
    ("xgboost", "xgbserver", {"name": "xgboost", "version": "2"}),
])
def test_both_formats_render_and_are_admitted(tmp_path, kind, runtime, fmt):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / ("model.joblib" if kind == "sklearn" else "model.json")).write_bytes(b"x" * 300_000)
    s = kserve_spec(kind, {"runtime": runtime} if runtime else None)
    plan = plan_resources(model_dir, s)
    objs = render_predictive(s, URI, "sha256:abc", plan=plan)
    admit(objs)  # the vendored KServe CRD schemas (strict) and Kubernetes' own for RBAC
    isvc = isvc_of(objs)
    assert not any(o["kind"] in ("ServingRuntime", "ClusterServingRuntime") for o in objs)  # KServe ships them
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == fmt and model["protocolVersion"] == "v2" and model["storageUri"] == URI
    assert model["runtime"] == f"kserve-{runtime or 'mlserver'}"
    assert "name" not in model  # KServe's webhook refuses model.name on a stable predictor
    assert "nvidia.com/gpu" not in model["resources"]["requests"] and "nodeSelector" not in isvc["spec"]["predictor"]
    assert model["resources"] == plan.resources()
    # what serves is recorded in llmship's ConfigMap: KServe copies annotations into the pod template
    assert not [k for k in isvc["metadata"]["annotations"] if k.startswith("llmship.io/")]


def test_mlserver_settings_ride_on_env():
    s = kserve_spec("sklearn", {"parallel_workers": 3, "max_batch_size": 16, "max_batch_time_s": 0.004,
                                "model_file": "iris.joblib"})
    objs = render_predictive(s, URI, "sha256:abc")
    admit(objs)
    env = {e["name"]: e["value"] for e in isvc_of(objs)["spec"]["predictor"]["model"]["env"]}
    assert env == {"MLSERVER_PARALLEL_WORKERS": "3", "MLSERVER_MODEL_MAX_BATCH_SIZE": "16",
                   "MLSERVER_MODEL_MAX_BATCH_TIME": "0.004", "MLSERVER_MODEL_URI": "/mnt/models/iris.joblib"}
    # KServe's own servers take --workers instead
    s = kserve_spec("sklearn", {"runtime": "sklearnserver", "parallel_workers": 2})
    model = isvc_of(render_predictive(s, URI, "d"))["spec"]["predictor"]["model"]
    assert model["args"] == ["--workers=2"] and "env" not in model


def test_canary_entry_and_triton():
    s = kserve_spec("sklearn")
    entry = predictive_predictor(s, URI, canary=True, name="c1234567")
    assert entry["model"]["name"] == "kserve-container" and "maxReplicas" not in entry and "minReplicas" not in entry
    isvc = isvc_of(render_predictive(s, URI, "d"))
    isvc["spec"]["canary"] = [{"trafficPercent": 10, "predictor": entry}]
    assert admission_errors(isvc) == []
    t = kserve_spec("triton", {"model_format": "onnx"}, gpu={"count": 1, "product": "NVIDIA-L4"})
    objs = render_predictive(t, "s3://models/repo", "d")
    admit(objs)
    pred = isvc_of(objs)["spec"]["predictor"]
    assert pred["model"]["runtime"] == "kserve-tritonserver" and pred["model"]["modelFormat"] == {"name": "onnx", "version": "1"}
    assert pred["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pred["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}


def test_refusals():
    with pytest.raises(BadInput, match="KServe loads models from s3://"):
        render_predictive(kserve_spec(), "/local/folder", "d")
    s = parse_spec({"name": "iris", "model": {"source": URI, "served_name": "other"}, "engine": {"kind": "sklearn"},
                    "target": {"kind": "kserve"}})
    with pytest.raises(BadInput, match="served under the InferenceService's name"):
        render_predictive(s, URI, "d")
    with pytest.raises(BadInput, match="target.kind is not kserve"):
        render_predictive(parse_spec({"name": "iris", "model": {"source": URI}, "engine": {"kind": "sklearn"}}), URI, "d")


def test_example_spec_renders(tmp_path):
    from pathlib import Path

    from tasks.spec import load_spec

    s = load_spec(Path(__file__).resolve().parents[2] / "examples" / "sklearn-kserve.yaml")
    objs = render_predictive(s, s.storage.uri + "/model", "sha256:abc")
    admit(objs)
    model = isvc_of(objs)["spec"]["predictor"]["model"]
    assert model["runtime"] == "kserve-mlserver" and model["protocolVersion"] == "v2"
