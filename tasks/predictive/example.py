"""Example predictive models: an iris-like classifier trained here, nothing downloaded.

    write_example_predictive(DIR, kind="sklearn")            # good: ~0.99 accuracy, ~20 trees
    write_example_predictive(DIR, kind="sklearn", worse=True)  # ~0.67: half its labels were noise
    write_example_predictive(DIR, kind="xgboost", slow=True)   # many more trees: slower per request

writes
    DIR/model/model.joblib (or model.json)   the artifact: what MLServer and KServe's runtimes load
    DIR/heldout.jsonl                        labelled held-out rows: {"inputs": [4 floats], "label": k}
    DIR/v2-payloads.jsonl                    V2 request bodies (load.dataset), one a line
    DIR/v2-request.json                      one V2 request (for curl)
    DIR/example.json                         what was trained: kind, trees, accuracy on heldout, versions

The artifact folder holds only the model file. A model-settings.json there would name the
model after its folder when no name is written in it (KServe mounts it at /mnt/models, and
MLServer reads JSON settings without the environment), so the served name would no longer be
the InferenceService's; MLServer's defaults (KServe sets MLSERVER_MODEL_NAME / _URI /
_IMPLEMENTATION) and the local launcher's own settings cover it instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from tasks.errors import BadInput
from tasks.predictive.env import run_worker
from tasks.predictive.signature import DEFAULT_INPUT

STAGE = "example-model"
# trees per preset: fast enough for a 2-core host, and a slow one that clearly breaks a latency SLO
TREES = {("sklearn", False): 20, ("sklearn", True): 1500, ("xgboost", False): 50, ("xgboost", True): 3000}


class ExampleModel(BaseModel):
    kind: str
    folder: str  # DIR
    model_dir: str  # DIR/model: the artifact (file:// source)
    model_file: str
    heldout: str
    payloads: str
    request: str
    accuracy: float  # on the held-out rows, measured at training time
    trees: int
    worse: bool
    slow: bool
    versions: dict[str, str]


def write_example_predictive(out_dir: str | Path, kind: str = "sklearn", *, worse: bool = False, slow: bool = False,
                             trees: int | None = None, seed: int = 0, n_samples: int = 3000) -> ExampleModel:
    """Train a small classifier in the MLServer environment and write the files above into out_dir."""
    if kind not in ("sklearn", "xgboost"):
        raise BadInput(STAGE, kind, "unknown kind for a predictive example", "use --kind sklearn or --kind xgboost")
    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        raise BadInput(STAGE, str(out), "folder is not empty", "give a new or empty folder")
    if trees is not None and trees < 1:
        raise BadInput(STAGE, str(trees), "trees must be at least 1", "give --trees 1 or more")
    n_trees = trees or TREES[(kind, slow)]
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    res = run_worker("train", {"kind": kind, "model_dir": str(model_dir), "trees": n_trees, "worse": worse,
                               "seed": seed, "n_samples": n_samples}, STAGE, str(out))
    X, y = res.pop("X_test"), res.pop("y_test")
    heldout = out / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"inputs": row, "label": label}) + "\n" for row, label in zip(X, y)))
    payloads = out / "v2-payloads.jsonl"
    with payloads.open("w") as f:
        for i in range(0, min(len(X), 200)):
            f.write(json.dumps(_request([X[i]])) + "\n")
    request = out / "v2-request.json"
    request.write_text(json.dumps(_request(X[:2]), indent=1) + "\n")
    info = ExampleModel(
        kind=kind, folder=str(out), model_dir=str(model_dir), model_file=res["model_file"], heldout=str(heldout),
        payloads=str(payloads), request=str(request), accuracy=res["accuracy"], trees=n_trees, worse=worse,
        slow=slow, versions=res["versions"],
    )
    (out / "example.json").write_text(info.model_dump_json(indent=1) + "\n")
    return info


def _request(rows: list[list[float]]) -> dict:
    return {"inputs": [{"name": DEFAULT_INPUT, "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                        "data": [x for r in rows for x in r]}]}
