"""Preflight for predictive models (sklearn, xgboost, triton): CPU and memory from the model's size.

No GPU plan: MLServer and KServe's sklearn / xgb servers run on CPU; a GPU asked for them is
refused (`gpu_problem`). Triton may use one when the spec asks (target.gpu), and is sized
from its model repository like the others.

Memory per serving pod: the runtime itself (an MLServer process with its inference workers,
measured here: `RUNTIME_BASE_BYTES` for the main process and `WORKER_BASE_BYTES` per worker)
plus, in every process that loads the model, the model as loaded: the file's size times a
factor per format (a joblib pickle unpickles to about its size in numpy arrays plus Python
objects; an XGBoost JSON file is larger than the trees it parses into). Requests get 25%
headroom and a floor; limits are twice the memory request (a burst of large batches) and
the CPU request. CPU: one core per process that runs inference.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.errors import BadInput
from tasks.spec import PromotionSpec, is_predictive

MIB = 1024**2
# Resident memory measured here on MLServer 1.7.1 (Python 3.11, scikit-learn 1.9.1, xgboost 3.2): the
# main process 218 MB RSS, one inference worker 248 MB with three small models loaded (rounded up).
RUNTIME_BASE_BYTES = 256 * MIB
WORKER_BASE_BYTES = 256 * MIB
TRITON_BASE_BYTES = 600 * MIB
LOADED_FACTOR = {"sklearn": 2.0, "xgboost": 1.0, "triton": 1.5}
MIN_MEMORY_BYTES = 512 * MIB
HEADROOM = 1.25


class ResourcePlan(BaseModel):
    """CPU and memory for one serving replica of a predictive model (Kubernetes quantities)."""

    kind: str
    model_dir: str
    model_bytes: int = Field(description="the model file (the whole folder for a repository or an MLflow model)")
    model_file: str | None = None
    processes_loading_model: int
    estimated_bytes: int
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    source: str = Field(description="model size, or spec where target.cpu / target.memory were set")
    notes: list[str] = Field(default_factory=list)

    def resources(self) -> dict:
        """A container's resources block."""
        return {"requests": {"cpu": self.cpu_request, "memory": self.memory_request},
                "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit}}


def _mi(n_bytes: float) -> str:
    return f"{int(math.ceil(n_bytes / MIB / 64.0) * 64)}Mi"  # whole 64 Mi steps: stable across tiny size changes


def _size(model_dir: Path, kind: str, model_file: str | None) -> tuple[int, str | None]:
    if kind != "triton":
        from tasks.spec import WELL_KNOWN_MODEL_FILES

        names = [model_file] if model_file else list(WELL_KNOWN_MODEL_FILES[kind])
        for n in names:
            if (model_dir / n).is_file():
                return (model_dir / n).stat().st_size, n
        if model_file:
            raise BadInput("preflight", str(model_dir / model_file), "engine.predictive.model_file is not in the model folder",
                           "check the file name, or unset it to find model.joblib / model.json by name")
    total = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    if total == 0:
        raise BadInput("preflight", str(model_dir), "the model folder is empty", "check the model source")
    return total, None


def gpu_problem(spec: PromotionSpec) -> str | None:
    """The message for a GPU asked for a runtime that uses none (None when there is no such ask)."""
    if not is_predictive(spec) or spec.engine.kind == "triton":
        return None
    t = spec.target
    asked = t.gpu is not None if t.kind == "local" else "gpu" in t.model_fields_set
    if not asked:
        return None
    server = "MLServer" if t.kind == "local" else f"kserve-{spec.engine.predictive.runtime or 'mlserver'}"
    return (f"target.gpu is set, but {server} serves {spec.engine.kind} models on CPU and uses no GPU: "
            "remove target.gpu (CPU and memory come from the model's size)")


def plan_resources(model_dir: str | Path, spec: PromotionSpec) -> ResourcePlan:
    """CPU and memory requests and limits for serving this model under this spec."""
    if not is_predictive(spec):
        raise BadInput("preflight", spec.name, f"engine.kind {spec.engine.kind} is an LLM engine",
                       "use tasks.preflight.plan_memory for LLMs")
    why = gpu_problem(spec)
    if why:
        raise BadInput("preflight", spec.name, why, "remove target.gpu from the spec")
    d = Path(model_dir)
    if not d.is_dir():
        raise BadInput("preflight", str(d), "the model folder does not exist", "check the model source")
    kind = spec.engine.kind
    p = spec.engine.predictive
    size, file = _size(d, kind, p.model_file)
    runtime = p.runtime or ("tritonserver" if kind == "triton" else "mlserver")
    notes = []
    if runtime == "mlserver":
        workers = p.parallel_workers
        procs = max(1, workers)  # workers=0: the main process loads and runs the model
        base = RUNTIME_BASE_BYTES + workers * WORKER_BASE_BYTES
        notes.append(f"MLServer: main process + {workers} inference worker(s), each loading the model")
    elif runtime == "tritonserver":
        procs, base = 1, TRITON_BASE_BYTES
        notes.append("Triton: one process loads every model instance in the repository")
    else:  # KServe's own Python servers: --workers processes each load the model
        procs = max(1, p.parallel_workers)
        base = RUNTIME_BASE_BYTES + (procs - 1) * WORKER_BASE_BYTES
        notes.append(f"kserve-{runtime}: {procs} worker process(es), each loading the model")
    loaded = size * LOADED_FACTOR[kind]
    if p.max_batch_size > 1:
        notes.append(f"adaptive batching up to {p.max_batch_size} requests")
    estimated = int(base + procs * loaded)
    mem_req = max(MIN_MEMORY_BYTES, estimated * HEADROOM)
    cpu = str(procs)
    plan = ResourcePlan(
        kind=kind, model_dir=str(d), model_bytes=size, model_file=file, processes_loading_model=procs,
        estimated_bytes=estimated, cpu_request=cpu, cpu_limit=cpu, memory_request=_mi(mem_req),
        memory_limit=_mi(mem_req * 2), source="model size", notes=notes,
    )
    t = spec.target
    if t.kind == "kserve":
        upd = {}
        if "cpu" in t.model_fields_set:
            upd.update(cpu_request=t.cpu, cpu_limit=t.cpu)
        if "memory" in t.model_fields_set:
            upd.update(memory_request=t.memory, memory_limit=t.memory)
        if upd:
            upd["source"] = "spec" if len(upd) == 4 else "model size, spec"
            upd["notes"] = notes + [f"target.{k} set in the spec" for k in ("cpu", "memory") if k in t.model_fields_set]
            plan = plan.model_copy(update=upd)
    return plan


def plan_resources_for_size(spec: PromotionSpec, model_bytes: int) -> ResourcePlan:
    """The same plan from a size alone (when the artifact is not on this machine, e.g. only in S3)."""
    import tempfile

    kind = spec.engine.kind
    with tempfile.TemporaryDirectory() as tmp:
        name = spec.engine.predictive.model_file or ("model.joblib" if kind == "sklearn" else "model.json")
        path = Path(tmp) / (name if kind != "triton" else "blob")
        with path.open("wb") as f:
            f.truncate(max(1, model_bytes))
        plan = plan_resources(tmp, spec)
    return plan.model_copy(update={"model_dir": "", "model_file": None if kind == "triton" else name})
