"""The test cluster itself: real kube-apiserver, controllers, scheduler, KWOK and KServe v0.20.

Every object here is written by hand (not by llmship), so a failure points at the cluster,
not at llmship's manifests.
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes.client.exceptions import ApiException

from tests.cluster.harness import FAULT_ANNOTATION

pytestmark = pytest.mark.servers

ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
RUNTIME = ("serving.kserve.io", "v1alpha1", "servingruntimes")


def _runtime(name: str = "test-runtime") -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": name},
        "spec": {
            "supportedModelFormats": [{"name": "llmship-test", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2"],
            "containers": [{
                "name": "kserve-container",
                "image": "registry.invalid/llmship/test-server:1",
                "args": ["--model-dir=/mnt/models", "--port=8080"],
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            }],
        },
    }


def _isvc(name: str, storage_uri: str, **predictor_extra) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": {
            "model": {"modelFormat": {"name": "llmship-test"}, "runtime": "test-runtime", "storageUri": storage_uri},
            **predictor_extra,
        }},
    }


def _create(cluster, ns: str, group: tuple, body: dict) -> dict:
    return cluster.custom.create_namespaced_custom_object(group[0], group[1], ns, group[2], body)


def _condition(obj: dict, kind: str) -> str | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return c["status"]
    return None


def test_api_server_answers(kube_cluster):
    from kubernetes import client

    version = client.VersionApi(kube_cluster.api).get_code()
    assert version.git_version == kube_cluster.binaries.kube_version
    nodes = {n.metadata.name: n for n in kube_cluster.core.list_node().items}
    assert {"kwok-cpu-0", "kwok-gpu-0"} <= set(nodes)
    gpu = nodes["kwok-gpu-0"]
    assert gpu.status.allocatable["nvidia.com/gpu"] == "8"
    assert gpu.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert [(t.key, t.effect) for t in gpu.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]
    assert all({c.type: c.status for c in n.status.conditions}["Ready"] == "True" for n in nodes.values())
    # KServe's CRDs are served, and its controller runs in the KServe namespace
    groups = {g.name: [v.version for v in g.versions] for g in client.ApisApi(kube_cluster.api).get_api_versions().groups}
    assert {"v1alpha1", "v1beta1"} <= set(groups["serving.kserve.io"])
    assert kube_cluster.apps.read_namespaced_deployment("kserve-controller-manager", kube_cluster.kserve_namespace)
    kube_cluster.check_alive()


def test_plain_deployment_gets_running_ready_pods(kube_cluster, kube_namespace):
    ns = kube_namespace
    pod_spec = {"containers": [{"name": "app", "image": "registry.invalid/app:1",
                                "resources": {"requests": {"cpu": "100m"}}}]}
    kube_cluster.apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec}},
    })
    kube_cluster.wait_for("deployment web 2/2 ready",
                          lambda: (kube_cluster.apps.read_namespaced_deployment_status("web", ns).status.ready_replicas or 0) == 2,
                          60)
    pods = kube_cluster.pods(ns, "app=web")
    assert len(pods) == 2
    for p in pods:
        assert p.status.phase == "Running"
        assert p.spec.node_name == "kwok-cpu-0"  # no toleration: never the tainted GPU node
        assert {c.type: c.status for c in p.status.conditions}["Ready"] == "True"
        assert p.status.pod_ip

    # a GPU pod lands on the GPU node only with the toleration; too many GPUs stays Pending
    def gpu_pod(name: str, gpus: int) -> dict:
        return {"metadata": {"name": name}, "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "app", "image": "registry.invalid/app:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}
    kube_cluster.core.create_namespaced_pod(ns, gpu_pod("gpu-ok", 1))
    kube_cluster.core.create_namespaced_pod(ns, gpu_pod("gpu-too-many", 9))
    kube_cluster.wait_for("gpu-ok Running on kwok-gpu-0", lambda: (
        (p := kube_cluster.core.read_namespaced_pod("gpu-ok", ns)).status.phase == "Running"
        and p.spec.node_name == "kwok-gpu-0"), 30)

    def unschedulable():
        p = kube_cluster.core.read_namespaced_pod("gpu-too-many", ns)
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in (p.status.conditions or []))
    kube_cluster.wait_for("gpu-too-many Unschedulable", unschedulable, 30)


def test_standard_isvc_admitted_and_ready(kube_cluster, kube_namespace):
    ns = kube_namespace
    _create(kube_cluster, ns, RUNTIME, _runtime())
    _create(kube_cluster, ns, ISVC, _isvc("tiny", "s3://models/tiny"))
    kube_cluster.wait_isvc_condition(ns, "tiny", "Ready", "True", timeout=90)

    # the controller reports the model Loaded (KServe may write this one reconcile after Ready=True)
    def loaded():
        isvc = kube_cluster.get_isvc(ns, "tiny")
        states = isvc.get("status", {}).get("modelStatus", {}).get("states", {})
        return states.get("activeModelState") == "Loaded" and isvc
    isvc = kube_cluster.wait_for("modelStatus Loaded", loaded, 30)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"  # defaulting webhook
    assert isvc["status"]["url"]
    assert _condition(isvc, "PredictorReady") == "True"
    # real KServe children: Deployment, Service, pods with the storage-initializer injected by
    # KServe's pod-mutating webhook
    dep = kube_cluster.apps.read_namespaced_deployment("tiny-predictor", ns)
    assert dep.status.available_replicas == 1
    svc = kube_cluster.core.read_namespaced_service("tiny-predictor", ns)
    assert svc.spec.selector
    pods = kube_cluster.isvc_pods(ns, "tiny")
    assert len(pods) == 1
    init = {c.name: c for c in pods[0].spec.init_containers or []}
    assert "storage-initializer" in init, [c.name for c in pods[0].spec.init_containers or []]
    assert init["storage-initializer"].args[0] == "s3://models/tiny"
    assert pods[0].status.phase == "Running"


def test_webhook_refuses_model_name_on_stable_predictor(kube_cluster, kube_namespace):
    ns = kube_namespace
    _create(kube_cluster, ns, RUNTIME, _runtime())
    body = _isvc("named", "s3://models/tiny")
    body["spec"]["predictor"]["model"]["name"] = "tiny"
    with pytest.raises(ApiException) as err:
        _create(kube_cluster, ns, ISVC, body)
    assert err.value.status == 403
    message = json.loads(err.value.body)["message"]
    assert message == ('admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: '
                       "the 'name' field is not allowed in standard predictor")


def test_never_ready_pod_keeps_isvc_not_ready(kube_cluster, kube_namespace):
    ns = kube_namespace
    _create(kube_cluster, ns, RUNTIME, _runtime())
    _create(kube_cluster, ns, ISVC, _isvc("stuck", "s3://models/never-ready/tiny"))

    def running_unready():
        pods = kube_cluster.isvc_pods(ns, "stuck")
        return pods and pods[0].status.phase == "Running" and not pods[0].status.container_statuses[0].ready
    kube_cluster.wait_for("never-ready pod Running, not ready", running_unready, 60)
    time.sleep(5)
    isvc = kube_cluster.get_isvc(ns, "stuck")
    assert _condition(isvc, "Ready") != "True", isvc.get("status")
    assert _condition(isvc, "PredictorReady") != "True"
    dep = kube_cluster.apps.read_namespaced_deployment_status("stuck-predictor", ns)
    assert not dep.status.ready_replicas


def test_crash_loop_pod_restarts(kube_cluster, kube_namespace):
    ns = kube_namespace
    _create(kube_cluster, ns, RUNTIME, _runtime())
    _create(kube_cluster, ns, ISVC, _isvc("crashy", "s3://models/crash-loop/tiny"))

    def restarted_twice():
        pods = kube_cluster.isvc_pods(ns, "crashy")
        if not pods or not pods[0].status.container_statuses:
            return None
        cs = pods[0].status.container_statuses[0]
        return cs.restart_count >= 2 and cs.state.waiting and cs.state.waiting.reason == "CrashLoopBackOff" and cs
    cs = kube_cluster.wait_for("crash-loop pod restarting", restarted_twice, 60)
    assert cs.last_state.terminated.exit_code == 1
    assert cs.last_state.terminated.reason == "Error"

    def failed_to_load():
        isvc = kube_cluster.get_isvc(ns, "crashy")
        states = isvc.get("status", {}).get("modelStatus", {}).get("states", {})
        return states.get("targetModelState") == "FailedToLoad" and isvc
    isvc = kube_cluster.wait_for("KServe reports FailedToLoad", failed_to_load, 60)
    assert _condition(isvc, "Ready") != "True"
    assert isvc["status"]["modelStatus"]["lastFailureInfo"]["reason"] == "ModelLoadFailed"


def test_init_fail_and_annotation_marker(kube_cluster, kube_namespace):
    """The storage-initializer fails (annotation marker); KServe says ModelLoadFailed."""
    ns = kube_namespace
    _create(kube_cluster, ns, RUNTIME, _runtime())
    body = _isvc("noload", "s3://models/tiny")
    body["metadata"]["annotations"] = {FAULT_ANNOTATION: "init-fail"}
    _create(kube_cluster, ns, ISVC, body)

    def failed_to_load():
        isvc = kube_cluster.get_isvc(ns, "noload")
        info = isvc.get("status", {}).get("modelStatus", {}).get("lastFailureInfo")
        return info and info.get("reason") == "ModelLoadFailed" and isvc
    isvc = kube_cluster.wait_for("KServe reports ModelLoadFailed", failed_to_load, 60)
    assert isvc["status"]["modelStatus"]["states"]["targetModelState"] == "FailedToLoad"
    pod = kube_cluster.isvc_pods(ns, "noload")[0]
    assert pod.status.phase == "Pending"
    assert pod.status.init_container_statuses[0].state.waiting.reason == "CrashLoopBackOff"


def test_kserve_in_another_namespace(kube_cluster_factory):
    """KServe reads its namespace from POD_NAMESPACE (pkg/constants: KServeNamespace); a
    cluster can run it outside `kserve`, with its config map and Deployment there."""
    cluster = kube_cluster_factory(kserve_namespace="kserve-system")
    assert cluster.core.read_namespaced_config_map("inferenceservice-config", "kserve-system")
    assert cluster.apps.read_namespaced_deployment("kserve-controller-manager", "kserve-system")
    ns = cluster.create_namespace(prefix="other")
    _create(cluster, ns, RUNTIME, _runtime())
    _create(cluster, ns, ISVC, _isvc("tiny", "s3://models/tiny"))
    cluster.wait_isvc_condition(ns, "tiny", "Ready", "True", timeout=90)


def test_keda_scaledobject_and_webhook(kube_cluster, kube_namespace):
    """The real KEDA operator makes an HPA for a ScaledObject; its webhook refuses a second one."""
    assert kube_cluster.keda_enabled, "KEDA is not built: run `bash infra/testcluster/build.sh --extras keda`"
    ns = kube_namespace
    kube_cluster.apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}},
    })

    def scaled_object(name: str) -> dict:
        return {
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"scaleTargetRef": {"name": "web"}, "minReplicaCount": 1, "maxReplicaCount": 3,
                     # a closed loopback port: the scaler really queries it (and fails), nothing leaves the host
                     "triggers": [{"type": "prometheus", "metadata": {
                         "serverAddress": "http://127.0.0.1:9", "query": "sum(up)", "threshold": "1"}}]},
        }
    kube_cluster.apply(scaled_object("web"))

    def ready():
        so = kube_cluster.get("keda.sh/v1alpha1", "ScaledObject", "web", ns) or {}
        return so.get("status", {}).get("hpaName") == "keda-hpa-web" and so
    kube_cluster.wait_for("ScaledObject web gets its HPA", ready, 60)
    from kubernetes import client

    hpa = client.AutoscalingV2Api(kube_cluster.api).read_namespaced_horizontal_pod_autoscaler("keda-hpa-web", ns)
    assert hpa.spec.scale_target_ref.name == "web"
    with pytest.raises(ApiException) as err:
        kube_cluster.apply(scaled_object("web-2"))
    # the webhook names whichever owner it finds first: KEDA's HPA, or the ScaledObject itself
    assert json.loads(err.value.body)["message"] in (
        'admission webhook "vscaledobject.kb.io" denied the request: the workload \'web\' of type '
        f"'apps/v1.Deployment' is already managed by the {owner}" for owner in ("hpa 'keda-hpa-web'", "ScaledObject 'web'"))
