"""The promote_model flow end to end on the KServe target: a real model folder published
into a PVC, rolled out on the Kubernetes API test server (with the test reconciler playing
KServe), then a candidate that never becomes Ready is rolled back by the flow."""

from __future__ import annotations

import pytest

from flows.promote import promote_model
from tasks.errors import RolledBack
from tasks.example_model import write_example_model
from tasks.storage.manifest import hash_tree

pytestmark = pytest.mark.servers


def spec_for(env, model, mount_root, **target) -> dict:
    return {
        "name": "tiny", "model": {"source": f"file://{model}", "served_name": "tiny-llama"},
        "target": {"kind": "kserve", "namespace": "llm", "kubeconfig": str(env.kubeconfig), "ready_timeout_s": 8,
                   "deployment_mode": "Knative", **target},
        "storage": {"uri": "pvc://models/llmship", "pvc_mount_root": str(mount_root)},
        "canary": {"steps": [50, 100], "step_duration_s": 2},
    }


def test_flow_promotes_then_rolls_back_a_candidate_that_never_serves(make_env, tiny_model, tmp_path):
    env = make_env(mode="Knative")
    mount = tmp_path / "pvc"
    (mount / "models").mkdir(parents=True)

    first = promote_model(spec=spec_for(env, tiny_model, mount))
    assert first.outcome == "promoted"
    states = {r.stage: r.state for r in first.stages}
    assert states["publish"] == "Completed" and states["deploy"] == "Completed" and states["canary"] == "Completed"
    assert states["warm_up"] == states["load_test"] == "Skipped"  # in-cluster URL: not reachable from here
    isvc = env.isvc("tiny")
    assert isvc["metadata"]["annotations"]["llmship.io/artifact-digest"] == first.artifact_digest
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert uri == f"pvc://models/llmship/artifacts/tiny/{first.artifact_digest[:16]}"
    assert (mount / "models" / "llmship" / "artifacts" / "tiny" / first.artifact_digest[:16] / "manifest.json").is_file()

    v2 = write_example_model(tmp_path / "v2", seed=1)
    v2_digest, _ = hash_tree(v2)
    env.reconciler.behaviour[f"pvc://models/llmship/artifacts/tiny/{v2_digest[:16]}"] = "never_ready"
    spec = spec_for(env, v2, mount, ready_timeout_s=3, prometheus_url="http://127.0.0.1:9")
    with pytest.raises(RolledBack) as info:
        promote_model(spec=spec)
    assert info.value.stage == "deploy"
    isvc = env.isvc("tiny")
    assert isvc["metadata"]["annotations"]["llmship.io/artifact-digest"] == first.artifact_digest
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"] or isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
