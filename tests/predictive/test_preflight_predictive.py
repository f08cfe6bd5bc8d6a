"""CPU and memory for predictive models from the model's size; a GPU asked for a CPU runtime is refused."""

from __future__ import annotations

import pytest

from tasks.errors import BadInput
from tasks.preflight.predictive import MIB, gpu_problem, plan_resources, plan_resources_for_size
from tasks.spec import PromotionSpec, parse_spec


def spec(kind="sklearn", predictive=None, target=None) -> PromotionSpec:
    engine = {"kind": kind} | ({"predictive": predictive} if predictive else {})
    return parse_spec({"name": "iris", "model": {"source": "s3://b/iris"}, "engine": engine,
                       "target": target or {"kind": "kserve"}})


def _model(tmp_path, name: str, size: int):
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(b"\0" * size)
    return d


def test_memory_grows_with_the_model_and_the_workers(tmp_path):
    small = plan_resources(_model(tmp_path, "model.joblib", 100_000), spec())
    assert small.cpu_request == "1" and small.memory_request.endswith("Mi") and small.model_file == "model.joblib"
    assert int(small.memory_request[:-2]) >= 512 and int(small.memory_limit[:-2]) == pytest.approx(
        2 * int(small.memory_request[:-2]), abs=64)
    big = plan_resources_for_size(spec(), 400 * MIB)
    assert int(big.memory_request[:-2]) > int(small.memory_request[:-2]) + 800  # 400 MiB joblib loads to ~800 MiB
    four = plan_resources_for_size(spec(predictive={"parallel_workers": 4}), 400 * MIB)
    assert four.cpu_request == "4" and four.processes_loading_model == 4
    assert int(four.memory_request[:-2]) > 3 * int(big.memory_request[:-2])
    xgb = plan_resources(_model(tmp_path, "model.json", 50 * MIB), spec("xgboost"))
    assert xgb.model_bytes == 50 * MIB and xgb.kind == "xgboost"


def test_spec_values_win(tmp_path):
    d = _model(tmp_path, "model.joblib", 1000)
    p = plan_resources(d, spec(target={"kind": "kserve", "cpu": "2", "memory": "3Gi"}))
    assert (p.cpu_request, p.memory_request, p.memory_limit, p.source) == ("2", "3Gi", "3Gi", "spec")
    p = plan_resources(d, spec(target={"kind": "kserve", "memory": "3Gi"}))
    assert p.memory_request == "3Gi" and p.cpu_request == "1" and p.source == "model size, spec"


def test_gpu_message_and_bad_folders(tmp_path):
    assert gpu_problem(spec()) is None
    with pytest.raises(BadInput, match="uses no GPU"):
        parse_spec({"name": "iris", "model": {"source": "s3://b/iris"}, "engine": {"kind": "sklearn"},
                    "target": {"kind": "kserve", "gpu": {"count": 1}}})
    # a spec that asks for a GPU got past validation some other way (model_copy skips validators)
    forced = spec().model_copy(update={"target": spec().target.model_copy(update={"gpu": spec().target.gpu})})
    forced.target.model_fields_set.add("gpu")
    assert "kserve-mlserver serves sklearn models on CPU and uses no GPU" in gpu_problem(forced)
    with pytest.raises(BadInput, match="uses no GPU"):
        plan_resources(_model(tmp_path, "model.joblib", 10), forced)
    with pytest.raises(BadInput, match="does not exist"):
        plan_resources(tmp_path / "none", spec())
    with pytest.raises(BadInput, match="model_file is not in the model folder"):
        plan_resources(_model(tmp_path, "model.joblib", 10), spec(predictive={"model_file": "other.joblib"}))
    with pytest.raises(BadInput, match="LLM engine"):
        plan_resources(tmp_path, parse_spec({"name": "x", "model": {"source": "s3://b/x"}}))
