"""The promote_model flow end to end on the KServe target, on the real control plane with the
real KServe controller (tests/cluster): a real model folder published into a PVC, rolled out,
then a candidate whose pods never become ready is rolled back by the flow, and the stable
model is what serves and what llmship's record says serves."""

from __future__ import annotations

import pytest

from flows.promote import promote_model
from tasks.errors import RolledBack
from tasks.example_model import write_example_model
from tasks.kserve import records
from tasks.kserve.cluster import Cluster

pytestmark = pytest.mark.servers


def spec_for(cluster, ns, model, mount_root, extra_args=(), **target) -> dict:
    return {
        "name": "tiny", "model": {"source": f"file://{model}", "served_name": "tiny-llama"},
        "engine": {"args": {"max_model_len": 512, "extra_args": list(extra_args)}},
        "target": {"kind": "kserve", "namespace": ns, "kubeconfig": str(cluster.kubeconfig), "ready_timeout_s": 60,
                   "deployment_mode": "Standard", "strategy": "blue-green", "service_account": "default",
                   "cpu": "1", "memory": "1Gi", **target},
        "storage": {"uri": "pvc://models/llmship", "pvc_mount_root": str(mount_root)},
        "canary": {"steps": [100], "step_duration_s": 2},
    }


def test_flow_promotes_then_rolls_back_a_candidate_that_never_serves(kube_cluster, kube_namespace, tiny_model, tmp_path):
    ns = kube_namespace
    kube_cluster.make_bound_pvc(ns, "models")
    mount = tmp_path / "pvc"
    (mount / "models").mkdir(parents=True)

    first = promote_model(spec=spec_for(kube_cluster, ns, tiny_model, mount))
    assert first.outcome == "promoted", first.reason
    states = {r.stage: r.state for r in first.stages}
    assert states["publish"] == "Completed" and states["deploy"] == "Completed" and states["canary"] == "Completed"
    assert states["warm_up"] == states["load_test"] == "Skipped"  # pod IPs do not answer from this worker
    notes = {r.stage: r.note for r in first.stages}
    assert "does not answer from this worker" in notes["warm_up"]  # a visible reason, never a silent skip
    isvc = kube_cluster.get_isvc(ns, "tiny")
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert uri == f"pvc://models/llmship/artifacts/tiny/{first.artifact_digest[:16]}"
    assert (mount / "models" / "llmship" / "artifacts" / "tiny" / first.artifact_digest[:16] / "manifest.json").is_file()
    # KServe's storage initializer mounts the claim: the pod names it
    pod = kube_cluster.isvc_pods(ns, "tiny")[0]
    assert any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "models" for v in pod.spec.volumes)

    v2 = write_example_model(tmp_path / "v2", seed=1)
    # KWOK keeps a pod whose spec holds the token never-ready from ever becoming ready (docs/testcluster.md)
    bad = spec_for(kube_cluster, ns, v2, mount, extra_args=["--served-model-name-suffix=never-ready"],
                   ready_timeout_s=15, prometheus_url="http://127.0.0.1:9")
    with pytest.raises(RolledBack) as info:
        promote_model(spec=bad)
    assert info.value.stage == "deploy" and "timed out" in info.value.message
    assert kube_cluster.get_isvc(ns, "tiny")["spec"]["predictor"]["model"]["storageUri"] == uri
    spec = records.read_serving(Cluster.connect(parse(bad)), parse(bad))
    assert spec.artifact_digest == first.artifact_digest and spec.revision == first.revision


def parse(data: dict):
    from tasks.spec import parse_spec

    return parse_spec(data)
