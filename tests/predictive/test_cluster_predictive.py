"""The rendered predictive InferenceServices on the real control plane (tests/cluster): KServe v0.20's
validating and defaulting webhooks admit them, its controller picks the built-in ClusterServingRuntime,
and the predictor pod runs MLServer's settings as KServe's defaults fill them in."""

from __future__ import annotations

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tasks.kserve.render_predictive import render_predictive
from tasks.spec import parse_spec

pytestmark = pytest.mark.servers
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")


def _cluster_runtimes(cluster, names: tuple[str, ...]) -> None:
    """Install KServe's own ClusterServingRuntimes (config/runtimes of the KServe the cluster runs), once."""
    folder = cluster.binaries.kserve_config / "runtimes"
    for name in names:
        doc = yaml.safe_load((folder / f"{name}.yaml").read_text())
        try:
            cluster.custom.get_cluster_custom_object("serving.kserve.io", "v1alpha1", "clusterservingruntimes", name)
        except ApiException as err:
            if err.status != 404:
                raise
            cluster.apply(doc)


def _spec(ns: str, kind: str, runtime: str | None) -> object:
    engine = {"kind": kind, "predictive": {"runtime": runtime, "parallel_workers": 2}}
    return parse_spec({"name": f"iris-{kind}", "model": {"source": "s3://models/iris"}, "engine": engine,
                       "target": {"kind": "kserve", "namespace": ns, "service_account": "default"},
                       "load": {"endpoint": "v2", "num_requests": 10}})


@pytest.mark.parametrize("kind, runtime, model_class", [
    ("sklearn", None, "mlserver_sklearn.SKLearnModel"),
    ("xgboost", None, "mlserver_xgboost.XGBoostModel"),
    ("sklearn", "sklearnserver", None),
])
def test_admitted_and_ready_on_kserve(kube_cluster, kube_namespace, kind, runtime, model_class):
    ns = kube_namespace
    _cluster_runtimes(kube_cluster, ("kserve-mlserver", "kserve-sklearnserver", "kserve-xgbserver"))
    s = _spec(ns, kind, runtime)
    (isvc,) = [o for o in render_predictive(s, f"s3://models/iris-{kind}", "sha256:abc") if o["kind"] == "InferenceService"]
    kube_cluster.custom.create_namespaced_custom_object(*ISVC[:2], ns, ISVC[2], isvc)  # the webhooks run here
    ready = kube_cluster.wait_isvc_condition(ns, s.name, "Ready", "True", timeout=120)
    model = ready["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == f"kserve-{runtime or 'mlserver'}"
    pod = kube_cluster.isvc_pods(ns, s.name)[0]
    container = next(c for c in pod.spec.containers if c.name == "kserve-container")
    env = {e.name: e.value for e in container.env or []}
    if model_class:  # KServe's MLServer defaults: model named after the ISVC, /mnt/models, class from modelFormat
        assert env.get("MLSERVER_MODEL_IMPLEMENTATION") == model_class, env
        assert env.get("MLSERVER_MODEL_NAME") == s.name and env.get("MLSERVER_MODEL_URI") == "/mnt/models", env
        assert env.get("MLSERVER_PARALLEL_WORKERS") == "2", env
    else:
        assert f"--model_name={s.name}" in container.args and "--workers=2" in container.args
    assert "nvidia.com/gpu" not in (container.resources.limits or {})
