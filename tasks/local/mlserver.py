"""Start, check and stop real MLServer servers (scikit-learn, XGBoost) as subprocesses on loopback.

The same model server KServe's `kserve-mlserver` runtime runs, from its own environment
(.venv-mlserver; see tasks/predictive/env.py). Like vLLM in tasks/local/server.py, a server
runs in its own process session (it outlives `llmship promote`; it stops as one group), on a
free loopback port, with its log in the store. Ready means `/v2/health/ready`, the model's
`/v2/models/{name}/ready`, and one real inference on `/v2/models/{name}/infer` that returns
outputs.

Each server gets a runtime folder beside its log (`<log stem>.mlserver/`): `settings.json`
(ports, workers, metrics dir) and `models/<name>/model-settings.json` (implementation, the
model file, adaptive batching, the declared inputs so `/v2/models/{name}` describes them).
The artifact folder is never written to.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tasks.errors import BadInput, StageFailed
from tasks.local.server import free_port, log_tail, port_in_use, stop_server
from tasks.predictive.env import SETUP_HINT, mlserver_command, mlserver_python, run_worker
from tasks.predictive.signature import TensorSpec, specs_from_inspect, specs_from_metadata, specs_from_mlflow, v2_requests
from tasks.spec import WELL_KNOWN_MODEL_FILES, PredictiveArgs
from tasks.values import Endpoint

STAGE = "deploy"
IMPLEMENTATIONS = {"sklearn": "mlserver_sklearn.SKLearnModel", "xgboost": "mlserver_xgboost.XGBoostModel"}
_MLFLOW_FLAVOURS = {"sklearn": ("sklearn", "pickled_model"), "xgboost": ("xgboost", "data")}

__all__ = [
    "MLServerEndpoint", "start_mlserver", "check_ready_v2", "find_model_file", "model_inputs", "stop_server",
    "IMPLEMENTATIONS",
]


class MLServerEndpoint(Endpoint):
    """An Endpoint (name, base_url, pid, log_path) with MLServer's other two ports and its runtime folder."""

    grpc_port: int
    metrics_url: str  # MLServer's Prometheus page (its own port)
    runtime_dir: str
    model_file: str
    inputs: list[TensorSpec]


def find_model_file(model_dir: str | Path, kind: str, model_file: str | None = None) -> Path:
    """The model file in an artifact folder: engine.predictive.model_file, an MLflow flavour's file, or a well-known name."""
    d = Path(model_dir)
    if not d.is_dir():
        raise BadInput(STAGE, str(d), "the model folder does not exist", "check the model source")
    if kind not in IMPLEMENTATIONS:
        raise BadInput(STAGE, kind, f"MLServer on the local target serves sklearn and xgboost, not {kind}",
                       "use target kserve for triton")
    if model_file:
        p = d / model_file
        if not p.is_file():
            raise BadInput(STAGE, str(p), "engine.predictive.model_file is not in the model folder",
                           f"files there: {', '.join(sorted(x.name for x in d.iterdir())[:20])}")
        return p
    mlmodel = d / "MLmodel"
    if mlmodel.is_file():
        flavour, key = _MLFLOW_FLAVOURS[kind]
        try:
            doc = yaml.safe_load(mlmodel.read_text()) or {}
        except yaml.YAMLError:
            doc = {}
        name = ((doc.get("flavors") or {}).get(flavour) or {}).get(key)
        if name and (d / name).is_file():
            return d / name
    for name in WELL_KNOWN_MODEL_FILES[kind]:
        if (d / name).is_file():
            return d / name
    raise BadInput(STAGE, str(d), f"no {kind} model file in the model folder",
                   f"write one of {', '.join(WELL_KNOWN_MODEL_FILES[kind])} or set engine.predictive.model_file")


def model_inputs(model_dir: str | Path, kind: str, model_path: Path) -> list[TensorSpec]:
    """The V2 inputs to declare: the MLflow signature when there is one, else what the model file says."""
    specs = specs_from_mlflow(model_dir)
    if specs:
        return specs
    info = run_worker("inspect", {"kind": kind, "model_path": str(model_path)}, STAGE, str(model_path), timeout_s=120)
    specs = specs_from_inspect(info)
    if not specs:
        raise BadInput(STAGE, str(model_path), "cannot tell the model's input width (no n_features_in_, no MLflow signature)",
                       "log the model with an MLflow signature")
    return specs


def _settings(args: PredictiveArgs, host: str, port: int, grpc_port: int, metrics_port: int, runtime: Path) -> dict:
    return {
        "host": host, "http_port": port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "debug": False, "parallel_workers": args.parallel_workers, "load_models_at_startup": True,
        "model_repository_root": str(runtime / "models"), "metrics_dir": str(runtime / "metrics"),
        "environments_dir": str(runtime / "envs"), "server_name": "mlserver",
    }


def _model_settings(served_name: str, kind: str, model_path: Path, args: PredictiveArgs, inputs: list[TensorSpec]) -> dict:
    ms: dict = {
        "name": served_name,
        "implementation": IMPLEMENTATIONS[kind],
        "parameters": {"uri": str(model_path)},
        "inputs": [s.model_dump() for s in inputs],
    }
    if args.max_batch_size > 1:
        ms["max_batch_size"] = args.max_batch_size
        ms["max_batch_time"] = args.max_batch_time_s
    return ms


def check_ready_v2(base_url: str, served_name: str, payload: dict | None = None, timeout_s: float = 30.0) -> str | None:
    """None when the server serves the model; else what is missing. Health alone passes before the model loads."""
    try:
        with httpx.Client(base_url=base_url, timeout=timeout_s) as c:
            r = c.get("/v2/health/ready")
            if r.status_code != 200:
                return f"/v2/health/ready is HTTP {r.status_code}"
            r = c.get(f"/v2/models/{served_name}/ready")
            if r.status_code != 200:
                return f"/v2/models/{served_name}/ready is HTTP {r.status_code}"
            if payload is None:
                meta = c.get(f"/v2/models/{served_name}")
                specs = specs_from_metadata(meta.json() if meta.status_code == 200 else None)
                if not specs:
                    return f"/v2/models/{served_name} declares no inputs to build a request from"
                payload = v2_requests(specs, 1, rows=1)[0]
            r = c.post(f"/v2/models/{served_name}/infer", json=payload)
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code != 200 or not body.get("outputs"):
                why = body.get("error") if isinstance(body, dict) else ""
                return f"an inference returned HTTP {r.status_code} without outputs" + (f" ({why})" if why else "")
    except (httpx.HTTPError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def start_mlserver(
    model_dir: str | Path,
    served_name: str,
    args: PredictiveArgs | None,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: str | Path = "mlserver.log",
    *,
    kind: str | None = None,
    startup_timeout_s: float = 180.0,
    inputs: list[TensorSpec] | None = None,
) -> MLServerEndpoint:
    """Start MLServer for one model and wait until it answers a real inference. Nothing is left running on failure.

    `kind` (sklearn | xgboost) defaults from the model file's name; `inputs` (the V2 tensors to
    declare) default to the MLflow signature or the model file's own feature count.
    """
    args = args or PredictiveArgs()
    if port is None:
        port = free_port(host)
    if port_in_use(host, port):
        raise BadInput(STAGE, f"{host}:{port}", "port is already in use",
                       "stop what listens there (`llmship status`, `llmship stop`) or leave target.port unset")
    if mlserver_python() is None:
        raise BadInput(STAGE, "MLServer", "no MLServer environment on this machine", SETUP_HINT)
    if kind is None:
        kind = _kind_from_folder(Path(model_dir), args.model_file)
    model_path = find_model_file(model_dir, kind, args.model_file)
    specs = inputs or model_inputs(model_dir, kind, model_path)
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    runtime = log_path.with_name(log_path.stem + ".mlserver")
    (runtime / "models" / served_name).mkdir(parents=True, exist_ok=True)
    grpc_port, metrics_port = free_port(host), free_port(host)
    (runtime / "settings.json").write_text(json.dumps(_settings(args, host, port, grpc_port, metrics_port, runtime), indent=1))
    (runtime / "models" / served_name / "model-settings.json").write_text(
        json.dumps(_model_settings(served_name, kind, model_path.resolve(), args, specs), indent=1))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = mlserver_command() + ["start", str(runtime)]
    with log_path.open("ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=runtime, start_new_session=True)
    base_url = f"http://{host}:{port}"
    payload = v2_requests(specs, 1, rows=1)[0]
    deadline = time.monotonic() + startup_timeout_s
    why = "not started"
    obj = f"MLServer for {served_name}"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StageFailed(STAGE, obj, f"the server exited with code {proc.returncode} while starting",
                                  f"read the log {log_path}; check the model file and engine.predictive",
                                  detail=log_tail(log_path))
            try:
                httpx.get(base_url + "/v2/health/live", timeout=2).raise_for_status()
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            why = check_ready_v2(base_url, served_name, payload) or ""
            if not why:
                return MLServerEndpoint(
                    name=served_name, base_url=base_url, artifact_digest="", pid=proc.pid, log_path=str(log_path),
                    grpc_port=grpc_port, metrics_url=f"http://{host}:{metrics_port}/metrics", runtime_dir=str(runtime),
                    model_file=str(model_path), inputs=specs,
                )
            time.sleep(0.5)
        raise StageFailed(STAGE, obj, f"not ready after {startup_timeout_s:.0f} s ({why})",
                          "raise target.startup_timeout_s or read the log", detail=log_tail(log_path))
    except BaseException:
        stop_server(proc.pid)
        raise


def _kind_from_folder(d: Path, model_file: str | None) -> str:
    names = [model_file] if model_file else [p.name for p in d.iterdir()] if d.is_dir() else []
    for kind, known in WELL_KNOWN_MODEL_FILES.items():
        exts = {k[k.rfind("."):] for k in known}
        if any(n in known or Path(n).suffix in exts for n in names if n):
            return kind
    raise BadInput(STAGE, str(d), "cannot tell whether this is a sklearn or an xgboost model",
                   "pass kind=, or set engine.kind and engine.predictive.model_file")
