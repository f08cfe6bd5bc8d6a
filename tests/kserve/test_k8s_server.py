"""The project's own API server (tests/kserve/k8s_server.py) answers the official kubernetes
client the way a real one does.

It stays only as the substrate of test_source_only_modes.py (Knative mode, LLMInferenceService
groups, the Gateway API split of KServe after v0.20.0), which the real control plane cannot run
here; these tests check that substrate, not llmship. Everything llmship does against an API
server (Cluster.update's conflict retry included) is tested on the real kube-apiserver in
test_real_cluster.py."""

from __future__ import annotations

import copy
import threading
import time

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.kserve.conftest import crd_doc
from tests.kserve.k8s_server import KubeServer

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"


def isvc(name="m", uri="s3://b/m"):
    return {"apiVersion": f"{G}/{V}", "kind": "InferenceService", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "vllm"}, "storageUri": uri}}}}


@pytest.fixture
def api(tmp_path):
    with KubeServer() as k:
        k.install_crd(crd_doc("InferenceService"))
        yield k, client.CustomObjectsApi(config.new_client_from_config(config_file=str(k.kubeconfig(tmp_path / "kc"))))


def test_create_201_get_404_409_exists(api):
    k, c = api
    with pytest.raises(ApiException) as e:
        c.get_namespaced_custom_object(G, V, "ns", P, "m")
    assert e.value.status == 404
    _, status, _ = c.create_namespaced_custom_object_with_http_info(G, V, "ns", P, isvc())
    assert status == 201
    got = c.get_namespaced_custom_object(G, V, "ns", P, "m")
    assert got["metadata"]["uid"] and got["metadata"]["resourceVersion"] and got["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as e:
        c.create_namespaced_custom_object(G, V, "ns", P, isvc())
    assert e.value.status == 409 and "AlreadyExists" in e.value.body


def test_stale_resource_version_409_and_generation(api):
    k, c = api
    created = c.create_namespaced_custom_object(G, V, "ns", P, isvc())
    a = copy.deepcopy(created)
    a["spec"]["predictor"]["minReplicas"] = 2
    updated = c.replace_namespaced_custom_object(G, V, "ns", P, "m", a)
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    stale = copy.deepcopy(created)
    stale["spec"]["predictor"]["minReplicas"] = 3
    with pytest.raises(ApiException) as e:
        c.replace_namespaced_custom_object(G, V, "ns", P, "m", stale)
    assert e.value.status == 409 and "Conflict" in e.value.body
    no_rv = copy.deepcopy(updated)
    del no_rv["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as e:
        c.replace_namespaced_custom_object(G, V, "ns", P, "m", no_rv)
    assert e.value.status == 422
    # merge patch: annotations only, generation stays
    p = c.patch_namespaced_custom_object(G, V, "ns", P, "m", {"metadata": {"annotations": {"a": "b"}}})
    assert p["metadata"]["annotations"] == {"a": "b"} and p["metadata"]["generation"] == 2


def test_schema_422_and_strict_unknown_fields(api):
    k, c = api
    bad = isvc()
    bad["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(ApiException) as e:
        c.create_namespaced_custom_object(G, V, "ns", P, bad)
    assert e.value.status == 422 and "spec.predictor.minReplicas" in e.value.body
    typo = isvc()
    typo["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(ApiException) as e:
        c.create_namespaced_custom_object(G, V, "ns", P, typo, field_validation="Strict")
    assert e.value.status == 400 and 'unknown field \\"spec.predictor.minReplica\\"' in e.value.body
    # without Strict the server prunes it, as kube-apiserver does
    created = c.create_namespaced_custom_object(G, V, "ns", P, typo)
    assert "minReplica" not in created["spec"]["predictor"]
    # spec.canary[] entries follow the real 0.20 schema: trafficPercent is 0..100
    canary = isvc("c")
    canary["spec"]["canary"] = [{"trafficPercent": 120, "predictor": {"name": "v2", "model": {
        "name": "kserve-container", "modelFormat": {"name": "vllm"}, "storageUri": "s3://b/v2"}}}]
    with pytest.raises(ApiException) as e:
        c.create_namespaced_custom_object(G, V, "ns", P, canary)
    assert e.value.status == 422 and "trafficPercent" in e.value.body


def test_status_subresource(api):
    k, c = api
    created = c.create_namespaced_custom_object(G, V, "ns", P, isvc() | {"status": {"url": "ignored"}})
    assert "status" not in created
    obj = copy.deepcopy(created)
    obj["status"] = {"url": "http://m", "observedGeneration": 1}
    st = c.replace_namespaced_custom_object_status(G, V, "ns", P, "m", obj)
    assert st["status"]["url"] == "http://m" and st["metadata"]["generation"] == 1
    obj = copy.deepcopy(st)
    obj["status"] = {"url": "overwritten?"}
    obj["spec"]["predictor"]["minReplicas"] = 1
    main = c.replace_namespaced_custom_object(G, V, "ns", P, "m", obj)
    assert main["status"]["url"] == "http://m"  # the main resource cannot write status


def test_watch_stream_from_resource_version(api):
    k, c = api
    created = c.create_namespaced_custom_object(G, V, "ns", P, isvc())
    c.create_namespaced_custom_object(G, V, "ns", P, isvc("other"))

    def later():
        time.sleep(0.3)
        obj = c.get_namespaced_custom_object(G, V, "ns", P, "m")
        obj["spec"]["predictor"]["minReplicas"] = 4
        c.replace_namespaced_custom_object(G, V, "ns", P, "m", obj)
        c.delete_namespaced_custom_object(G, V, "ns", P, "m")

    threading.Thread(target=later).start()
    seen = []
    w = watch.Watch()
    for ev in w.stream(c.list_namespaced_custom_object, G, V, "ns", P, field_selector="metadata.name=m",
                       resource_version=created["metadata"]["resourceVersion"], timeout_seconds=5):
        seen.append((ev["type"], ev["object"]["metadata"]["name"]))
        if ev["type"] == "DELETED":
            w.stop()
    assert seen == [("MODIFIED", "m"), ("DELETED", "m")]
    # without a resourceVersion: the existing objects first, as ADDED
    w = watch.Watch()
    first = next(iter(w.stream(c.list_namespaced_custom_object, G, V, "ns", P, timeout_seconds=2)))
    w.stop()
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "other"


def test_server_side_apply_is_refused_honestly(api):
    k, c = api
    c.create_namespaced_custom_object(G, V, "ns", P, isvc())
    with pytest.raises(ApiException) as e:
        c.patch_namespaced_custom_object(G, V, "ns", P, "m", isvc(), field_manager="llmship", force=True,
                                         _content_type="application/apply-patch+yaml")
    assert e.value.status == 415  # llmship uses RV-guarded replace, not SSA

