"""Knative mode, on the project's own Kubernetes API server and KServe-playing reconciler.

The real control plane (tests/test_real_cluster.py) runs KServe in Standard mode only:
Knative Serving cannot become Ready here (docs/testcluster.md: the Go module proxy serves no
Knative networking layer, and the Gateway API ones proxy through Envoy, which is C++). So
this is what the home-made server still shows, and only this: the reconciler writes what
KServe v0.20.0 writes in Knative mode (pkg/controller/v1beta1/inferenceservice/reconcilers/
knative/ksvc_reconciler.go traffic targets, with the `latest` tag only under
serving.kserve.io/enable-tag-routing; inference_service_status.go PropagateStatus for
latestRolledoutRevision), and a real Prometheus scrapes vLLM metric pages whose traffic
follows each revision's share.
"""

from __future__ import annotations

import pytest

from tasks import targets
from tasks.canary.machine import Phase
from tasks.kserve.watch import predictor_status
from tasks.spec import parse_spec
from tasks.values import PublishedArtifact, ResolvedModel
from tests.kserve.metrics_fixture import MetricsFixture, Profile

pytestmark = pytest.mark.servers


def spec(env, prom, version="v1", **canary):
    return parse_spec({
        "name": "tiny", "model": {"source": f"hf://org/tiny@{version}", "served_name": "tiny-llama"},
        "target": {"kind": "kserve", "namespace": "llm", "kubeconfig": str(env.kubeconfig), "ready_timeout_s": 15,
                   "deployment_mode": "Knative", "prometheus_url": prom.url},
        "slo": {"ttft_p99_ms": 500, "max_error_rate": 0.05},
        "canary": {"steps": [25, 50, 100], "step_duration_s": 3, "min_requests": 5, "min_output_tokens": 0,
                   "max_regression": 0.5, **canary},
    })


def artifact(v: str) -> PublishedArtifact:
    return PublishedArtifact(uri=f"s3://models/tiny/{v}", local_path=None, digest=f"sha256:{v}",
                             manifest_uri=f"s3://models/tiny/{v}/manifest.json")


def resolved(v: str) -> ResolvedModel:
    return ResolvedModel(source=f"hf://org/tiny@{v}", kind="hf", location="org/tiny", revision=v)


def promote(s, v):
    d = targets.deploy(s, artifact(v), resolved(v))
    return d, targets.run_canary(s, d)


def traffic(env) -> dict[str, int]:
    return {t["revisionName"]: t["percent"] for t in predictor_status(env.isvc("tiny")).get("traffic") or []}


@pytest.fixture
def knative(make_env, prometheus):
    env = make_env(mode="Knative")
    m = MetricsFixture(model_name="tiny-llama")
    m.profiles["s3://models/tiny/slow"] = Profile(ttft_s=lambda pct: 0.4)
    # slow only once it takes most of the traffic: a breach that shows at the last step alone
    m.profiles["s3://models/tiny/late"] = Profile(ttft_s=lambda pct: 0.4 if pct > 60 else 0.04)
    m.start(env.reconciler.pod_traffic, prometheus.sd_file)
    yield env, prometheus
    m.stop()


def test_canary_steps_traffic_by_revision_and_promotes(knative):
    env, prom = knative
    s = spec(env, prom)
    promote(s, "v1")
    stable_rev = predictor_status(env.isvc("tiny"))["latestRolledoutRevision"]
    d, rec = promote(spec(env, prom, "v2"), "v2")
    assert rec.phase == Phase.SUCCEEDED, rec.reason
    # the 100% step was analysed at 99%: the old revision kept its name and 1% until the analysis passed
    # (a step may take a second window when a new revision's first scrapes leave it too little traffic)
    assert sorted({st.percent for st in rec.steps}) == [25, 50, 100] and rec.steps[-1].verdict.value == "pass"
    assert rec.steps[-1].traffic_share is None or rec.steps[-1].traffic_share > 90
    cand = rec.handle["candidate_revision_name"]
    assert cand != stable_rev and traffic(env) == {cand: 100}
    assert predictor_status(env.isvc("tiny"))["latestRolledoutRevision"] == cand
    # the `latest` tag (the candidate's own URL) exists because llmship sets enable-tag-routing
    assert env.isvc("tiny")["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    assert rec.handle["candidate_url"], rec.handle


def test_breach_at_a_middle_step_returns_all_traffic_to_the_stable_revision(knative):
    env, prom = knative
    promote(spec(env, prom), "v1")
    stable_rev = predictor_status(env.isvc("tiny"))["latestRolledoutRevision"]
    _, rec = promote(spec(env, prom, "slow"), "slow")
    assert rec.phase == Phase.ROLLED_BACK and rec.step_index == 0
    assert traffic(env).get(stable_rev) == 100


def test_breach_at_the_last_step_still_rolls_back_to_the_old_revision(knative):
    """Had the last step set 100%, KServe would record the candidate as rolled out, and a
    rollback would send traffic to the candidate again (kserve issue 9 point 4)."""
    env, prom = knative
    promote(spec(env, prom, steps=[25, 100]), "v1")
    stable_rev = predictor_status(env.isvc("tiny"))["latestRolledoutRevision"]
    _, rec = promote(spec(env, prom, "late", steps=[25, 100]), "late")
    assert rec.phase == Phase.ROLLED_BACK, rec.reason
    assert [st.percent for st in rec.steps][-1] == 100 and "ttft" in rec.reason, rec.reason
    assert predictor_status(env.isvc("tiny"))["latestRolledoutRevision"] == stable_rev
    assert traffic(env).get(stable_rev) == 100
