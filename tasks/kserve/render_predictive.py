"""Render the InferenceService of a predictive model (sklearn, xgboost, triton) on KServe's built-in runtimes.

    objs = render_predictive(spec, storage_uri, artifact_digest, plan=plan_resources(model_dir, spec))

No ServingRuntime is rendered: these run on the ClusterServingRuntimes KServe installs
(config/runtimes in KServe v0.20):

| engine.predictive.runtime | ClusterServingRuntime | modelFormat (version) | protocols |
| --- | --- | --- | --- |
| mlserver (default for sklearn, xgboost) | kserve-mlserver (seldonio/mlserver:1.7.1) | sklearn (1), xgboost (2) | v2 |
| sklearnserver | kserve-sklearnserver | sklearn (1) | v1, v2 |
| xgbserver | kserve-xgbserver | xgboost (2) | v1, v2 |
| tritonserver (default for triton) | kserve-tritonserver | triton (2), onnx (1), tensorflow (2), pytorch (1), tensorrt (8) | v2, grpc-v2 |

kserve-mlserver is the default because it is the server the local target runs: what the
promotion tested on this machine is what serves in the cluster. KServe's MLServer defaults
name the model after the InferenceService (MLSERVER_MODEL_NAME), load /mnt/models and set the
`modelClass` label from modelFormat; llmship adds only what the spec changes (workers,
adaptive batching, a model file that is not found by name). `spec.predictor.model.name` is
never set on the stable predictor (KServe's validating webhook refuses it there).
CPU and memory come from the preflight plan (tasks/preflight/predictive.py), else from the
spec; no GPU unless a Triton spec asks for one.
"""

from __future__ import annotations

from tasks.errors import BadInput
from tasks.kserve.render import SERVING_API, isvc_annotations, labels, pod_monitor, rbac, storage_uri_for
from tasks.spec import PromotionSpec, is_predictive

CLUSTER_RUNTIMES = {
    "mlserver": "kserve-mlserver",
    "sklearnserver": "kserve-sklearnserver",
    "xgbserver": "kserve-xgbserver",
    "tritonserver": "kserve-tritonserver",
}
# modelFormat versions as the ClusterServingRuntimes list them (KServe v0.20 config/runtimes)
FORMAT_VERSIONS = {"sklearn": "1", "xgboost": "2", "triton": "2", "onnx": "1", "tensorflow": "2", "pytorch": "1",
                   "tensorrt": "8"}
MODEL_MOUNT = "/mnt/models"


def predictive_runtime(spec: PromotionSpec) -> str:
    """The ClusterServingRuntime name (kserve-mlserver, ...)."""
    p = spec.engine.predictive
    return CLUSTER_RUNTIMES[p.runtime or ("tritonserver" if spec.engine.kind == "triton" else "mlserver")]


def model_format(spec: PromotionSpec) -> dict:
    name = spec.engine.kind
    if name == "triton":
        name = spec.engine.predictive.model_format or "triton"
    return {"name": name, "version": FORMAT_VERSIONS[name]}


def _resources(spec: PromotionSpec, plan) -> dict:
    t = spec.target
    res = plan.resources() if plan is not None else {"requests": {"cpu": t.cpu, "memory": t.memory},
                                                      "limits": {"cpu": t.cpu, "memory": t.memory}}
    if spec.engine.kind == "triton" and "gpu" in t.model_fields_set:
        res["requests"]["nvidia.com/gpu"] = str(t.gpu.count)
        res["limits"]["nvidia.com/gpu"] = str(t.gpu.count)
    return res


def _env_and_args(spec: PromotionSpec) -> tuple[list[dict], list[str]]:
    p = spec.engine.predictive
    runtime = predictive_runtime(spec)
    env: list[dict] = []
    args: list[str] = []
    if runtime == "kserve-mlserver":
        env.append({"name": "MLSERVER_PARALLEL_WORKERS", "value": str(p.parallel_workers)})
        if p.max_batch_size > 1:
            env.append({"name": "MLSERVER_MODEL_MAX_BATCH_SIZE", "value": str(p.max_batch_size)})
            env.append({"name": "MLSERVER_MODEL_MAX_BATCH_TIME", "value": f"{p.max_batch_time_s:g}"})
        if p.model_file:
            env.append({"name": "MLSERVER_MODEL_URI", "value": f"{MODEL_MOUNT}/{p.model_file}"})
    elif runtime in ("kserve-sklearnserver", "kserve-xgbserver") and p.parallel_workers > 1:
        args.append(f"--workers={p.parallel_workers}")
    return env, args


def predictive_predictor(spec: PromotionSpec, storage_uri: str, plan=None, name: str | None = None,
                         canary: bool = False) -> dict:
    """spec.predictor of the InferenceService (or of a spec.canary[] entry when canary)."""
    t = spec.target
    model: dict = {
        "modelFormat": model_format(spec),
        "runtime": predictive_runtime(spec),
        "protocolVersion": spec.engine.predictive.protocol_version,
        "storageUri": storage_uri,
        "resources": _resources(spec, plan),
    }
    if canary:
        model["name"] = "kserve-container"  # the CRD requires it on spec.canary[] predictors (refused on stable)
    env, args = _env_and_args(spec)
    if env:
        model["env"] = env
    if args:
        model["args"] = args
    if spec.engine.image:
        model["image"] = spec.engine.image
    pred: dict = {"serviceAccountName": t.service_account, "minReplicas": t.min_replicas, "model": model}
    if spec.engine.kind == "triton" and "gpu" in t.model_fields_set:
        pred["nodeSelector"] = {"nvidia.com/gpu.product": t.gpu.product}
        pred["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if canary:
        # KServe refuses autoscaling fields on spec.canary[] entries and sizes a canary from its traffic share
        pred["name"] = name
        del pred["minReplicas"]
    else:
        pred["maxReplicas"] = max(t.max_replicas, t.min_replicas)
    return pred


def predictive_inference_service(
    spec: PromotionSpec,
    storage_uri: str,
    artifact_digest: str,
    plan=None,
    mode: str | None = None,
    registry_version: str | None = None,
    name: str | None = None,
) -> dict:
    """The InferenceService; `plan` is a tasks.preflight.predictive.ResourcePlan (else target.cpu / memory)."""
    t = spec.target
    ann = isvc_annotations(spec, mode)  # what serves is recorded in llmship's ConfigMap, not here (pod restarts)
    return {
        "apiVersion": SERVING_API,
        "kind": "InferenceService",
        "metadata": {"name": name or spec.name, "namespace": t.namespace, "labels": labels(spec), "annotations": ann},
        "spec": {"predictor": predictive_predictor(spec, storage_uri, plan)},
    }


def render_predictive(
    spec: PromotionSpec,
    storage_uri: str,
    artifact_digest: str,
    registry_version: str | None = None,
    mode: str | None = None,
    plan=None,
) -> list[dict]:
    """Every manifest for a predictive spec, in apply order: llmship's RBAC, then the InferenceService."""
    if spec.target.kind != "kserve":
        raise BadInput("render", spec.name, "target.kind is not kserve", "set target.kind: kserve to render KServe manifests")
    if not is_predictive(spec):
        raise BadInput("render", spec.name, f"engine.kind {spec.engine.kind} is an LLM engine",
                       "render it with tasks.kserve.render.render_all")
    if spec.served_name != spec.name:
        raise BadInput("render", spec.name, f"model.served_name {spec.served_name!r} differs from the name",
                       "on KServe a predictive model is served under the InferenceService's name: unset model.served_name")
    uri = storage_uri_for(spec, storage_uri)
    return rbac(spec) + [predictive_inference_service(spec, uri, artifact_digest, plan, mode, registry_version),
                         pod_monitor(spec)]


def served_url_path(spec: PromotionSpec) -> str:
    """The V2 inference path clients use on KServe (the model is named after the InferenceService)."""
    return f"/v2/models/{spec.name}/infer"
