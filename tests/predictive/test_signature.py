"""Inputs from the model's signature, metadata or file, and the V2 requests made from them."""

from __future__ import annotations

import json

import pytest

from tasks.errors import BadInput
from tasks.predictive.quality import predictions, read_labelled
from tasks.predictive.signature import (
    TensorSpec, check_v2_request, read_v2_payloads, rows_request, specs_from_inspect, specs_from_metadata,
    specs_from_mlflow, v2_requests,
)


def test_requests_from_specs_are_distinct_and_shaped():
    specs = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4]), TensorSpec(name="flag", datatype="BOOL", shape=[-1])]
    reqs = v2_requests(specs, 50, rows=3, seed=1)
    assert len(reqs) == 50
    x, flag = reqs[0]["inputs"]
    assert x["shape"] == [3, 4] and len(x["data"]) == 12 and x["datatype"] == "FP32"
    assert flag["shape"] == [3] and all(isinstance(v, bool) for v in flag["data"])
    assert len({json.dumps(r) for r in reqs}) == 50
    assert v2_requests(specs, 5, rows=3, seed=1) == reqs[:5]  # seeded
    assert all(check_v2_request(r) is None for r in reqs)
    ints = v2_requests([TensorSpec(name="i", datatype="INT64", shape=[-1, 2])], 1)[0]["inputs"][0]
    assert all(isinstance(v, int) for v in ints["data"])
    with pytest.raises(BadInput, match="no input tensors"):
        v2_requests([], 3)


def test_specs_from_metadata_and_inspect():
    meta = {"name": "iris", "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]},
                                       {"name": "bad", "datatype": "NOPE", "shape": [1]}], "outputs": []}
    assert specs_from_metadata(meta) == [TensorSpec(name="input-0", datatype="FP64", shape=[-1, 4])]
    assert specs_from_metadata({"inputs": []}) == [] and specs_from_metadata(None) == []
    assert specs_from_inspect({"n_features": 7}) == [TensorSpec(name="input-0", datatype="FP64", shape=[-1, 7])]
    assert specs_from_inspect({"n_features": None}) is None


def test_mlflow_signatures(tmp_path):
    assert specs_from_mlflow(tmp_path) is None
    cols = [{"name": n, "type": "double"} for n in ("a", "b", "c")]
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  sklearn: {pickled_model: model.pkl}\nsignature:\n  inputs: '" + json.dumps(cols) + "'\n")
    assert specs_from_mlflow(tmp_path) == [TensorSpec(name="input-0", datatype="FP64", shape=[-1, 3])]
    tensor = [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 8]}}]
    (tmp_path / "MLmodel").write_text("signature:\n  inputs: '" + json.dumps(tensor) + "'\n")
    assert specs_from_mlflow(tmp_path) == [TensorSpec(name="input-0", datatype="FP32", shape=[-1, 8])]
    text = [{"name": "t", "type": "string"}]
    (tmp_path / "MLmodel").write_text("signature:\n  inputs: '" + json.dumps(text) + "'\n")
    with pytest.raises(BadInput, match="non-numeric columns"):
        specs_from_mlflow(tmp_path)


def test_read_v2_payloads(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}) + "\n\n")
    assert len(read_v2_payloads(good)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64"}]}) + "\n")
    with pytest.raises(BadInput, match=r"bad.jsonl:1.*lacks data|lacks data"):
        read_v2_payloads(bad)
    with pytest.raises(BadInput, match="not found"):
        read_v2_payloads(tmp_path / "none.jsonl")
    bad.write_text("{nope\n")
    with pytest.raises(BadInput, match="not JSON"):
        read_v2_payloads(bad)


def test_rows_request_and_predictions():
    body = rows_request([[1.0, 2.0], [3.0, 4.0]], outputs=["predict_proba"])
    assert body["inputs"][0] == {"name": "input-0", "shape": [2, 2], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}
    assert body["outputs"] == [{"name": "predict_proba"}]
    # labels as they come, one column
    assert predictions([{"name": "predict", "shape": [3, 1], "data": [2, 0, 1]}], None, 3) == ([2, 0, 1], "predict")
    # probabilities: arg-max per row
    probs = {"name": "predict_proba", "shape": [2, 3], "data": [0.1, 0.7, 0.2, 0.8, 0.1, 0.1]}
    assert predictions([{"name": "predict", "shape": [2], "data": [9, 9]}, probs], "predict_proba", 2)[0] == [1, 0]
    with pytest.raises(ValueError, match="3 values for 2 rows"):
        predictions([{"name": "predict", "shape": [3], "data": [1, 2, 3]}], None, 2)
    with pytest.raises(ValueError, match="no output named"):
        predictions([{"name": "predict", "shape": [1], "data": [1]}], "other", 1)


def test_read_labelled(tmp_path):
    p = tmp_path / "l.jsonl"
    req = {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP64", "data": [1, 2]}]}
    p.write_text(json.dumps({"inputs": [1, 2], "label": 1}) + "\n" + json.dumps({"request": req, "labels": [0, 1]}) + "\n")
    items = read_labelled(p)
    assert items[0] == (None, [[1, 2]], [1]) and items[1] == (req, [], [0, 1])
    p.write_text(json.dumps({"features": [1]}) + "\n")
    with pytest.raises(BadInput, match="needs \"inputs\""):
        read_labelled(p)
