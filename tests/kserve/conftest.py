"""Fixtures: a Kubernetes API test server with KServe's real CRDs, a KServe-playing reconciler,
vLLM metrics pages and a real Prometheus."""

from __future__ import annotations

import copy
import json
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from tasks.kserve.admission import SCHEMA_DIR
from tests.kserve.k8s_server import KubeServer
from tests.kserve.reconciler import KServeReconciler

SHARED_CRDS = Path(__file__).resolve().parents[3] / "shared" / "kserve-crds"
CRD_FILES = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "LLMInferenceService": "serving.kserve.io_llminferenceservices.yaml",
}


@lru_cache(maxsize=None)
def crd_doc(kind: str) -> dict:
    """The real CRD from ../shared when present, else rebuilt from the vendored schema."""
    f = SHARED_CRDS / CRD_FILES[kind]
    if f.is_file():
        return yaml.load(f.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    v = json.loads((SCHEMA_DIR / f"{kind}.json").read_text())
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{v['names']['plural']}.{v['group']}"},
            "spec": {"group": v["group"], "names": v["names"], "scope": v["scope"],
                     "versions": [{"name": n, "served": d["served"], "storage": d["storage"],
                                   "subresources": d["subresources"], "schema": {"openAPIV3Schema": d["schema"]}}
                                  for n, d in v["versions"].items()]}}


def gateway_crd(plural: str) -> dict:
    """A Gateway API CRD, from the copy the test cluster's build keeps (infra/testcluster/build.sh)."""
    from tests.cluster.harness import Binaries

    folder = Binaries.locate().gateway_api_crds
    if folder is None or not (folder / f"gateway.networking.k8s.io_{plural}.yaml").is_file():
        pytest.fail("the Gateway API CRDs are not there: run `make testcluster`")
    return yaml.safe_load((folder / f"gateway.networking.k8s.io_{plural}.yaml").read_text())


def crd_before_0_20() -> dict:
    """The InferenceService CRD as KServe < 0.20 ships it: no spec.canary, no canaryStatuses."""
    doc = copy.deepcopy(crd_doc("InferenceService"))
    for v in doc["spec"]["versions"]:
        props = v["schema"]["openAPIV3Schema"]["properties"]
        props["spec"]["properties"].pop("canary", None)
        props["status"]["properties"].pop("canaryStatuses", None)
    return doc


class Env:
    """One fake cluster: API server + KServe reconciler + kubeconfig."""

    def __init__(self, tmp: Path, mode: str, version: str, config_mode: str | None, ready_delay_s: float = 2.0,
                 gateway_api: bool = False):
        self.server = KubeServer().__enter__()
        s = self.server
        s.install_crd(crd_doc("InferenceService") if tuple(map(int, version.split(".")[:2])) >= (0, 20) else crd_before_0_20())
        s.install_crd(crd_doc("ServingRuntime"))
        s.install_crd(crd_doc("LLMInferenceService"))
        s.store.put("", "configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
                                       "data": {"deploy": json.dumps({"defaultDeploymentMode": config_mode or mode}),
                                                "ingress": json.dumps({"enableGatewayApi": gateway_api})}})
        if gateway_api:
            s.install_crd(gateway_crd("httproutes"))
        s.store.put("apps", "deployments", {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "metadata": {"name": "kserve-controller-manager", "namespace": "kserve"},
                                            "spec": {"selector": {"matchLabels": {"control-plane": "kserve-controller-manager"}},
                                                     "template": {"metadata": {"labels": {"control-plane": "kserve-controller-manager"}},
                                                                  "spec": {"containers": [
                                                {"name": "manager", "image": f"kserve/kserve-controller:v{version}"}]}}}})
        # Model load takes a while in life; 2 s also lets Prometheus discover a new pod (file_sd
        # picks up a changed file in ~3 s here) before traffic reaches it.
        self.reconciler = KServeReconciler(s.store, mode=mode, version=version, ready_delay_s=ready_delay_s,
                                           gateway_api=gateway_api).start()
        self.kubeconfig = s.kubeconfig(tmp / "kubeconfig")
        self.store = s.store

    def isvc(self, name: str, ns: str = "llm") -> dict | None:
        return self.store.get("serving.kserve.io", "inferenceservices", ns, name)

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.store.requests if m in ("POST", "PUT", "PATCH", "DELETE")]

    def close(self) -> None:
        self.reconciler.stop()
        self.server.__exit__(None, None, None)


@pytest.fixture
def make_env(tmp_path):
    envs = []

    def make(mode: str = "Knative", version: str = "0.20.0", config_mode: str | None = None,
             gateway_api: bool = False) -> Env:
        e = Env(tmp_path, mode, version, config_mode, gateway_api=gateway_api)
        envs.append(e)
        return e

    yield make
    for e in envs:
        e.close()


@pytest.fixture
def prometheus(tmp_path):
    from tests.kserve.metrics_fixture import Prometheus

    if not shutil.which("prometheus"):
        pytest.fail("Debian's prometheus is not installed: apt-get install -y prometheus")
    work = tmp_path / "prom"
    work.mkdir()
    p = Prometheus(work).start()
    yield p
    p.stop()


# The real control plane with the real KServe controller (tests/cluster): the KServe tests run there.
from tests.cluster.fixtures import (  # noqa: E402,F401
    kube_cluster, kube_cluster_factory, kube_namespace, pytest_runtest_makereport,
)
