"""What a predictive model takes: V2 input tensors, read from the model and turned into requests.

Sources, in the order a load test or the ready check asks them:
- the server's own metadata, `GET /v2/models/{name}` (MLServer lists the inputs its
  model-settings declare; the local target's launcher declares them);
- an MLflow model signature (the `MLmodel` file of a `models:/` artifact), tensor- or
  column-based;
- the model file itself (`n_features_in_`, read by the worker in the MLServer environment).

`v2_requests` makes Open Inference Protocol request bodies from those specs, `read_v2_payloads`
reads a JSONL of ready-made ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from tasks.errors import BadInput

V2_DATATYPES = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
}
# MLflow / numpy dtype names -> V2 datatypes
_MLFLOW_TYPES = {
    "double": "FP64", "float": "FP32", "float64": "FP64", "float32": "FP32", "float16": "FP16",
    "long": "INT64", "integer": "INT32", "int64": "INT64", "int32": "INT32", "int16": "INT16", "int8": "INT8",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "boolean": "BOOL", "bool": "BOOL", "string": "BYTES", "str": "BYTES", "binary": "BYTES", "bytes": "BYTES",
    "object": "BYTES",
}
DEFAULT_INPUT = "input-0"  # MLServer's name for a single unnamed input


class TensorSpec(BaseModel):
    """One V2 input: name, datatype, shape (-1 for a variable dimension; the first is the batch)."""

    name: str
    datatype: str
    shape: list[int] = Field(default_factory=lambda: [-1])

    def concrete_shape(self, rows: int) -> list[int]:
        if not self.shape:
            return [rows]
        return [rows] + [d if d > 0 else 1 for d in self.shape[1:]]


def specs_from_metadata(meta: dict | None) -> list[TensorSpec]:
    """Inputs from a `GET /v2/models/{name}` answer (empty when the server declares none)."""
    out = []
    for t in (meta or {}).get("inputs") or []:
        if isinstance(t, dict) and t.get("name") and t.get("datatype") in V2_DATATYPES:
            out.append(TensorSpec(name=t["name"], datatype=t["datatype"], shape=[int(d) for d in t.get("shape") or [-1]]))
    return out


def specs_from_mlflow(model_dir: str | Path) -> list[TensorSpec] | None:
    """Inputs from an MLflow model's signature (`MLmodel`); None when there is no signature."""
    import yaml

    path = Path(model_dir) / "MLmodel"
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        raw = (doc.get("signature") or {}).get("inputs")
        cols = json.loads(raw) if isinstance(raw, str) else raw
    except (yaml.YAMLError, ValueError) as err:
        raise BadInput("load_test", str(path), f"cannot read the MLflow signature: {err}",
                       "re-log the model with mlflow's infer_signature, or give load.dataset") from None
    if not cols:
        return None
    if all(c.get("type") == "tensor" for c in cols):
        specs = []
        for i, c in enumerate(cols):
            ts = c.get("tensor-spec") or {}
            dt = _MLFLOW_TYPES.get(str(ts.get("dtype", "")).lower())
            if dt is None:
                raise BadInput("load_test", str(path), f"tensor dtype {ts.get('dtype')!r} has no V2 datatype",
                               "give load.dataset (a JSONL of V2 requests)")
            specs.append(TensorSpec(name=c.get("name") or f"input-{i}", datatype=dt, shape=list(ts.get("shape") or [-1])))
        return specs
    # Column-based: one 2-D tensor of the columns, as MLServer's sklearn/xgboost runtimes decode it.
    types = {_MLFLOW_TYPES.get(str(c.get("type", "")).lower()) for c in cols}
    if None in types or "BYTES" in types:
        raise BadInput("load_test", str(path), "the signature has non-numeric columns; a generated request would not fit",
                       "give load.dataset (a JSONL of V2 requests)")
    dt = "FP64" if types & {"FP64", "FP32", "FP16"} else sorted(types)[0]
    return [TensorSpec(name=DEFAULT_INPUT, datatype=dt, shape=[-1, len(cols)])]


def specs_from_inspect(info: dict) -> list[TensorSpec] | None:
    """Inputs from what the worker read off the model file (n_features_in_)."""
    n = info.get("n_features")
    if not n:
        return None
    return [TensorSpec(name=DEFAULT_INPUT, datatype="FP64", shape=[-1, int(n)])]


def _values(spec: TensorSpec, count: int, rng: np.random.Generator) -> list:
    dt = spec.datatype
    if dt.startswith("FP"):
        return np.round(rng.normal(0.0, 1.0, count), 4).tolist()
    if dt.startswith(("INT", "UINT")):
        return rng.integers(0, 10, count).tolist()
    if dt == "BOOL":
        return rng.integers(0, 2, count).astype(bool).tolist()
    return [f"v{int(x)}" for x in rng.integers(0, 1000, count)]


def v2_requests(specs: list[TensorSpec], n: int, rows: int = 1, seed: int = 0) -> list[dict]:
    """n distinct V2 request bodies of `rows` rows each, values drawn from the datatypes."""
    if not specs:
        raise BadInput("load_test", "model inputs", "no input tensors to build requests from",
                       "declare the model's inputs (MLflow signature, model-settings) or give load.dataset")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        inputs = []
        for s in specs:
            shape = s.concrete_shape(rows)
            inputs.append({"name": s.name, "shape": shape, "datatype": s.datatype,
                           "data": _values(s, int(np.prod(shape)), rng)})
        out.append({"inputs": inputs})
    return out


def rows_request(rows: list[list], spec: TensorSpec | None = None, outputs: list[str] | None = None) -> dict:
    """One V2 request carrying these feature rows as a single 2-D tensor."""
    spec = spec or TensorSpec(name=DEFAULT_INPUT, datatype="FP64", shape=[-1, len(rows[0]) if rows else 0])
    width = len(rows[0]) if rows else 0
    body: dict = {"inputs": [{"name": spec.name, "shape": [len(rows), width], "datatype": spec.datatype,
                              "data": [x for r in rows for x in r]}]}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return body


def check_v2_request(obj: object) -> str | None:
    """Why this is not a V2 request body (None when it is one)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), list) or not obj["inputs"]:
        return "needs an \"inputs\" list"
    for i, t in enumerate(obj["inputs"]):
        if not isinstance(t, dict):
            return f"inputs[{i}] is not an object"
        missing = [k for k in ("name", "shape", "datatype", "data") if k not in t]
        if missing:
            return f"inputs[{i}] lacks {', '.join(missing)}"
        if t["datatype"] not in V2_DATATYPES:
            return f"inputs[{i}].datatype {t['datatype']!r} is not a V2 datatype"
    return None


def read_v2_payloads(path: str | Path, stage: str = "load_test") -> list[dict]:
    """A JSONL file, one V2 request body a line (`{"inputs": [...]}`)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(stage, str(p), "V2 payload file not found", "give a JSONL file, one {\"inputs\": [...]} a line")
    out = []
    for no, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise BadInput(stage, f"{p}:{no}", f"not JSON: {err}", "one JSON object a line") from None
        why = check_v2_request(obj)
        if why:
            raise BadInput(stage, f"{p}:{no}", f"not a V2 request: {why}",
                           "each line is an Open Inference Protocol request body")
        out.append(obj)
    if not out:
        raise BadInput(stage, str(p), "no request in the file", "one {\"inputs\": [...]} a line")
    return out
