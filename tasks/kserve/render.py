"""Render the Kubernetes objects for a promotion spec with target kind kserve.

Plain dicts, in apply order. The same functions feed `llmship render` and the apply path,
so what a user reviews is what llmship sends.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math

import yaml

from tasks.errors import BadInput
from tasks.spec import PromotionSpec, is_predictive

SERVING_API = "serving.kserve.io/v1beta1"
RUNTIME_API = "serving.kserve.io/v1alpha1"
LLMISVC_API = "serving.kserve.io/v1alpha2"
PORT = 8080
RUNTIME_KIND_LABEL = "llmship.io/runtime"

# What serves and the canary's record live in a ConfigMap (tasks.kserve.records), not on the
# InferenceService: KServe copies an InferenceService's annotations into its pod template, so
# writing one restarts the pods (unless the operator lists it in serviceAnnotationDisallowedList).
# Older llmship versions wrote these; they are still read, never written.
ANN_DIGEST = "llmship.io/artifact-digest"
ANN_SOURCE = "llmship.io/model-source"
ANN_REGISTRY_VERSION = "llmship.io/registry-version"
ANN_SPEC_DIGEST = "llmship.io/spec-digest"
ANN_MODE = "serving.kserve.io/deploymentMode"
ANN_AUTOSCALER = "serving.kserve.io/autoscalerClass"
# Knative mode: KServe tags the newest revision `latest` (its own URL) only with this set.
ANN_TAG_ROUTING = "serving.kserve.io/enable-tag-routing"

DEFAULT_IMAGES = {
    "vllm": "vllm/vllm-openai:v0.11.0",
    "trtllm-serve": "nvcr.io/nvidia/tensorrt-llm/release:{trtllm_version}",
    "triton": "nvcr.io/nvidia/tritonserver:25.08-trtllm-python-py3",
}
MODEL_FORMAT = {"vllm": "vllm", "trtllm-serve": "tensorrt-llm", "triton": "tensorrtllm"}


def labels(spec: PromotionSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/managed-by": "llmship"}


def runtime_kind(spec: PromotionSpec) -> str:
    return "vllm" if spec.engine.kind == "vllm" else spec.target.trtllm_runtime


def runtime_name(spec: PromotionSpec) -> str:
    """Named by its content: a new runtime is a new object, so the stable's never changes under it
    (KServe re-renders every InferenceService on a runtime when the runtime changes)."""
    return serving_runtime(spec)["metadata"]["name"]


# What KServe's storage initializer reads (pkg/agent/storage, kserve v0.20.0).
KSERVE_STORAGE_SCHEMES = ("s3://", "pvc://", "gs://", "hf://", "oci://", "http://", "https://")


def storage_uri_for(spec: PromotionSpec, published_uri: str) -> str:
    uri = spec.target.storage_uri or published_uri
    if not uri.startswith(KSERVE_STORAGE_SCHEMES):
        raise BadInput(
            "render", f"storage uri {uri!r}", f"KServe loads models from {', '.join(KSERVE_STORAGE_SCHEMES)} only",
            "set storage.uri to s3://bucket/prefix or pvc://claim/path, or target.storage_uri to where the cluster reads it",
        )
    return uri


def engine_args(spec: PromotionSpec) -> list[str]:
    """Per-model server arguments; they ride on the InferenceService so a canary can differ from stable."""
    a = spec.engine.args
    if runtime_kind(spec) == "triton":
        return []  # Triton reads the engine's config.pbtxt from the model repository
    args = [f"--served-model-name={spec.served_name}", f"--max-model-len={a.max_model_len}"]
    if runtime_kind(spec) == "vllm":
        args += [
            f"--max-num-seqs={a.max_num_seqs}",
            f"--gpu-memory-utilization={a.gpu_memory_utilization}",
            f"--tensor-parallel-size={a.tensor_parallel_size}",
            f"--dtype={a.dtype}",
        ]
        if a.speculative:
            cfg = {"model": a.speculative.model, "num_speculative_tokens": a.speculative.num_speculative_tokens}
            args.append("--speculative-config=" + json.dumps(cfg, separators=(",", ":")))
    else:  # trtllm-serve
        args += [f"--max_batch_size={a.max_num_seqs}", f"--tp_size={a.tensor_parallel_size}"]
    return args + list(a.extra_args)


def _probes(spec: PromotionSpec, path: str) -> dict:
    period = 10
    startup_failures = max(1, math.ceil(spec.target.ready_timeout_s / period))
    get = lambda: {"path": path, "port": PORT}  # noqa: E731 - a fresh dict each: no YAML anchors
    return {
        "startupProbe": {"httpGet": get(), "periodSeconds": period, "failureThreshold": startup_failures},
        "readinessProbe": {"httpGet": get(), "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": get(), "periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 5},
    }


def serving_runtime(spec: PromotionSpec) -> dict:
    kind = runtime_kind(spec)
    image = DEFAULT_IMAGES[kind].format(trtllm_version=spec.engine.trtllm_version)
    prom = {"prometheus.kserve.io/port": str(PORT), "prometheus.kserve.io/path": "/metrics"}
    if kind == "vllm":
        container = {
            "name": "kserve-container",
            "image": image,
            "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
            "args": ["--model=/mnt/models", "--host=0.0.0.0", f"--port={PORT}"],
            "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
            **_probes(spec, "/health"),
        }
    elif kind == "trtllm-serve":
        container = {
            "name": "kserve-container",
            "image": image,
            "command": ["trtllm-serve", "serve", "/mnt/models"],
            "args": ["--host=0.0.0.0", f"--port={PORT}", "--backend=pytorch"],
            **_probes(spec, "/health"),
        }
    else:  # Triton with the tensorrtllm backend, for prebuilt engines (the legacy path)
        prom["prometheus.kserve.io/port"] = "8002"
        container = {
            "name": "kserve-container",
            "image": image,
            "command": ["tritonserver"],
            "args": ["--model-repository=/mnt/models", f"--http-port={PORT}", "--grpc-port=9000",
                     "--metrics-port=8002", "--allow-metrics=true"],
            **_probes(spec, "/v2/health/ready"),
        }
    container["ports"] = [{"containerPort": PORT, "name": "http1", "protocol": "TCP"}]
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    container["resources"] = {"requests": {"cpu": "1", "memory": "2Gi"}}
    body = {
        "annotations": dict(prom),  # copied onto predictor pods: Prometheus scrapes these
        # Never auto-selected: each InferenceService names its runtime, and KServe's webhook refuses two
        # auto-selecting runtimes of one format and priority in a namespace (servingruntime_webhook.go).
        "supportedModelFormats": [{"name": MODEL_FORMAT[kind], "autoSelect": False}],
        "protocolVersions": ["v2"] if kind == "triton" else ["v1"],
        "multiModel": False,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.target.shm_size}}],
    }
    content = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return {
        "apiVersion": RUNTIME_API,
        "kind": "ServingRuntime",
        "metadata": {"name": f"llmship-{kind}-{content}", "namespace": spec.target.namespace,
                     "labels": {"app.kubernetes.io/managed-by": "llmship", RUNTIME_KIND_LABEL: kind},
                     "annotations": dict(prom)},
        "spec": body,
    }


def resources(spec: PromotionSpec) -> dict:
    t = spec.target
    amounts = {"cpu": t.cpu, "memory": t.memory, "nvidia.com/gpu": str(t.gpu.count)}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def predictor(spec: PromotionSpec, storage_uri: str, name: str | None = None, canary: bool = False) -> dict:
    """spec.predictor of the InferenceService (or of a spec.canary[] entry when canary)."""
    t = spec.target
    model = {
        "modelFormat": {"name": MODEL_FORMAT[runtime_kind(spec)]},
        "runtime": runtime_name(spec),
        "storageUri": storage_uri,
        "args": engine_args(spec),
        "resources": resources(spec),
    }
    if spec.engine.image:
        model["image"] = spec.engine.image
    p: dict = {
        "serviceAccountName": t.service_account,
        "nodeSelector": {"nvidia.com/gpu.product": t.gpu.product},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "minReplicas": t.min_replicas,
        "model": model,
    }
    if canary:
        # spec.canary[] entries need a name (the CRD also asks model.name); KServe refuses
        # autoscaling fields there and sizes the canary from its traffic share, so no replicas.
        p["name"] = name
        model["name"] = "kserve-container"
        del p["minReplicas"]
    else:
        # KServe's validating webhook refuses a name on the stable predictor (model.name too).
        p["maxReplicas"] = max(t.max_replicas, t.min_replicas)
    return p


def isvc_annotations(spec: PromotionSpec, mode: str | None = None) -> dict[str, str]:
    """The InferenceService's annotations: only what KServe reads. They never change across
    promotions of one spec, so writing them restarts nothing."""
    t = spec.target
    ann = {ANN_TAG_ROUTING: "true"}
    mode = mode or t.deployment_mode
    if mode:
        ann[ANN_MODE] = mode
    if t.keda.enabled:
        ann[ANN_AUTOSCALER] = "external"  # KEDA owns the replica count, not KServe's HPA
    return ann


def inference_service(
    spec: PromotionSpec,
    storage_uri: str,
    artifact_digest: str,
    mode: str | None = None,
    registry_version: str | None = None,
    name: str | None = None,
) -> dict:
    t = spec.target
    ann = isvc_annotations(spec, mode)
    return {
        "apiVersion": SERVING_API,
        "kind": "InferenceService",
        "metadata": {"name": name or spec.name, "namespace": t.namespace, "labels": labels(spec), "annotations": ann},
        "spec": {"predictor": predictor(spec, storage_uri)},
    }


def llm_inference_service(spec: PromotionSpec, storage_uri: str, artifact_digest: str) -> dict:
    """llm-d based serving for large models: optional prefill/decode split, managed router."""
    o = spec.target.llm_inference_service
    tp = o.tensor_parallel or spec.engine.args.tensor_parallel_size
    container = {
        "name": "main",
        "args": engine_args(spec),
        "resources": resources(spec) | {
            "requests": resources(spec)["requests"] | {"nvidia.com/gpu": str(tp)},
            "limits": resources(spec)["limits"] | {"nvidia.com/gpu": str(tp)},
        },
    }
    if spec.engine.image:
        container["image"] = spec.engine.image
    parallel = {"tensor": tp, "data": o.data_parallel, "dataLocal": o.data_local_parallel}
    body: dict = {
        "model": {"uri": storage_uri, "name": spec.served_name},
        "replicas": o.replicas,
        "parallelism": parallel,
        "template": {"serviceAccountName": spec.target.service_account, "containers": [container],
                     "nodeSelector": {"nvidia.com/gpu.product": spec.target.gpu.product}},
    }
    if o.prefill_replicas:
        body["prefill"] = {"replicas": o.prefill_replicas, "parallelism": dict(parallel),
                           "template": {"containers": [copy.deepcopy(container)]}}
    if o.router:
        body["router"] = {"route": {}, "gateway": {}, "scheduler": {}}  # empty: KServe manages each
    return {
        "apiVersion": LLMISVC_API,
        "kind": "LLMInferenceService",
        "metadata": {"name": spec.name, "namespace": spec.target.namespace, "labels": labels(spec),
                     "annotations": {ANN_DIGEST: artifact_digest, ANN_SOURCE: spec.model.source}},
        "spec": body,
    }


def _pod_selector(spec: PromotionSpec) -> str:
    # Stable pods: {name}-predictor-* (Knative revisions too), or {name}-c<hash>-predictor-*
    # after a Standard-mode canary was promoted (KServe keeps the canary's Deployment).
    return f'namespace="{spec.target.namespace}",pod=~"{spec.name}-(c[0-9a-f]{{7}}-)?predictor-.*"'


def scaled_object(spec: PromotionSpec, prometheus_url: str, deployment: str | None = None) -> dict:
    """KEDA on vLLM's own signals: KV-cache usage and waiting requests (min 0: scale to zero)."""
    k = spec.target.keda
    sel = _pod_selector(spec)
    triggers = [
        {"type": "prometheus", "name": "kv-cache",
         "metadata": {"serverAddress": prometheus_url,
                      "query": f"avg(vllm:kv_cache_usage_perc{{{sel}}})",
                      "threshold": str(k.kv_cache_usage_target)}},
        {"type": "prometheus", "name": "waiting",
         "metadata": {"serverAddress": prometheus_url,
                      "query": f"sum(vllm:num_requests_waiting{{{sel}}})",
                      "threshold": str(k.waiting_requests_target)}},
    ]
    body = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment or f"{spec.name}-predictor"},
        "minReplicaCount": k.min_replicas,
        "maxReplicaCount": k.max_replicas,
        "pollingInterval": k.polling_interval_s,
        "cooldownPeriod": k.cooldown_s,
        "triggers": triggers,
    }
    if k.min_replicas == 0:
        # Wake on any request in flight or waiting; zero only after cooldown with none.
        triggers.append({"type": "prometheus", "name": "activity",
                         "metadata": {"serverAddress": prometheus_url,
                                      "query": f"sum(vllm:num_requests_running{{{sel}}}) + sum(vllm:num_requests_waiting{{{sel}}})",
                                      "threshold": "1", "activationThreshold": "0"}})
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": f"{spec.name}-predictor", "namespace": spec.target.namespace, "labels": labels(spec)},
        "spec": body,
    }


def prometheus_rule(spec: PromotionSpec) -> dict:
    a = spec.target.alerts
    ns = spec.target.namespace
    sel = _pod_selector(spec)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": f"{spec.name}-vllm", "namespace": ns, "labels": labels(spec)},
        "spec": {"groups": [{
            "name": f"{spec.name}.vllm",
            "rules": [
                {"alert": "VllmKvCacheHigh",
                 "expr": f"max(vllm:kv_cache_usage_perc{{{sel}}}) > {a.kv_cache_usage_max}",
                 "for": a.for_duration,
                 "labels": {"severity": "warning"},
                 "annotations": {"summary": f"{spec.name}: KV cache above {a.kv_cache_usage_max:.0%}",
                                 "description": "Requests will queue or be preempted; add replicas or lower max-num-seqs."}},
                {"alert": "VllmE2ELatencyP99High",
                 "expr": ("histogram_quantile(0.99, sum by (le) "
                          f"(rate(vllm:e2e_request_latency_seconds_bucket{{{sel}}}[5m]))) > {a.e2e_p99_s_max}"),
                 "for": a.for_duration,
                 "labels": {"severity": "warning"},
                 "annotations": {"summary": f"{spec.name}: p99 end-to-end latency above {a.e2e_p99_s_max}s"}},
            ],
        }]},
    }


def pod_monitor(spec: PromotionSpec) -> dict:
    """Prometheus Operator scrapes vLLM's /metrics on every predictor pod of the name (stable,
    canary, blue-green candidate): in Standard mode nothing else would (KServe's
    prometheus.kserve.io annotations are read only by a Prometheus configured for them).
    The operator labels each series with `namespace` and `pod`, which the canary selects on."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": f"{spec.name}-vllm", "namespace": spec.target.namespace, "labels": labels(spec)},
        "spec": {
            "selector": {"matchExpressions": [{"key": "serving.kserve.io/inferenceservice", "operator": "In",
                                               "values": [spec.name, f"{spec.name}-candidate"]}]},
            # llmship's runtimes name the port http1; KServe's own (kserve-mlserver, ...) name none, on 8080
            "podMetricsEndpoints": [{**({"portNumber": PORT} if is_predictive(spec) else {"port": "http1"}),
                                     "path": "/metrics", "interval": "15s"}],
        },
    }


DEPLOYER_SA = "llmship-deployer"


def rbac(spec: PromotionSpec) -> list[dict]:
    """What llmship itself needs: its objects in the target namespace, read-only elsewhere."""
    ns = spec.target.namespace
    kserve_ns = spec.target.kserve_namespace or "kserve"
    meta = {"namespace": ns, "labels": {"app.kubernetes.io/managed-by": "llmship"}}
    rw = ["get", "list", "watch", "create", "update", "patch", "delete"]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "llmship-deployer", **meta},
        "rules": [
            {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices", "llminferenceservices"], "verbs": rw},
            # one runtime per content, deleted once no InferenceService names it
            {"apiGroups": ["serving.kserve.io"], "resources": ["servingruntimes"],
             "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": ["get", "create", "update"]},
            # llmship-<name>: what serves and the canary's record
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["events", "pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": ["get", "list"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "llmship-deployer", **meta},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "llmship-deployer"},
        "subjects": [{"kind": "ServiceAccount", "name": DEPLOYER_SA, "namespace": ns}],
    }
    # Mode, version and split detection read KServe's config and controller.
    kserve_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "llmship-kserve-reader", "namespace": kserve_ns,
                     "labels": {"app.kubernetes.io/managed-by": "llmship"}},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["inferenceservice-config"], "verbs": ["get"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["kserve-controller-manager"], "verbs": ["get"]},
        ],
    }
    kserve_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": f"llmship-kserve-reader-{ns}", "namespace": kserve_ns,
                     "labels": {"app.kubernetes.io/managed-by": "llmship"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "llmship-kserve-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": DEPLOYER_SA, "namespace": ns}],
    }
    crd_reader = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "llmship-crd-reader", "labels": {"app.kubernetes.io/managed-by": "llmship"}},
        "rules": [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                   "resourceNames": ["inferenceservices.serving.kserve.io"], "verbs": ["get"]},
                  # where KServe runs: the namespace of the service its webhook calls
                  {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
                   "resourceNames": ["inferenceservice.serving.kserve.io"], "verbs": ["get"]},
                  # ... or of the controller's Deployment (a webhook called by url names no service)
                  {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]}],
    }
    crd_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": f"llmship-crd-reader-{ns}", "labels": {"app.kubernetes.io/managed-by": "llmship"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "llmship-crd-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": DEPLOYER_SA, "namespace": ns}],
    }
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEPLOYER_SA, **meta}}
    return [sa, role, binding, kserve_role, kserve_binding, crd_reader, crd_binding]


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def to_yaml(objs: list[dict]) -> str:
    """Multi-document YAML without anchors, in the order given (apply order)."""
    return yaml.dump_all(objs, Dumper=_NoAliasDumper, sort_keys=False)


def render_all(
    spec: PromotionSpec,
    storage_uri: str,
    artifact_digest: str,
    registry_version: str | None = None,
    mode: str | None = None,
) -> list[dict]:
    """Every manifest for the spec, in apply order."""
    if spec.target.kind != "kserve":
        raise BadInput("render", spec.name, "target.kind is not kserve", "set target.kind: kserve to render KServe manifests")
    if is_predictive(spec):  # KServe's own runtimes (kserve-mlserver, ...): tasks/kserve/render_predictive.py
        from tasks.kserve.render_predictive import render_predictive

        return render_predictive(spec, storage_uri, artifact_digest, registry_version, mode)
    uri = storage_uri_for(spec, storage_uri)
    t = spec.target
    objs: list[dict] = rbac(spec)
    if t.llm_inference_service.enabled:
        objs.append(llm_inference_service(spec, uri, artifact_digest))
    else:
        objs.append(serving_runtime(spec))
        objs.append(inference_service(spec, uri, artifact_digest, mode=mode, registry_version=registry_version))
    prom = t.prometheus_url or "http://prometheus-operated.monitoring.svc:9090"
    if t.keda.enabled:
        objs.append(scaled_object(spec, prom))
    objs.append(prometheus_rule(spec))
    objs.append(pod_monitor(spec))
    from tasks.monitoring import monitoring_manifests  # the Grafana dashboard ConfigMap (tasks/monitoring)

    objs += monitoring_manifests(spec)
    return objs
