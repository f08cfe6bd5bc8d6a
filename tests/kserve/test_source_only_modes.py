"""The routers the real control plane cannot show, on the project's own API server and a
reconciler that writes what KServe's source says it writes.

The real control plane (test_real_cluster.py) runs KServe v0.20.0 in Standard mode. These
three mechanisms cannot run there, so the home-made server stays for them, and only them:

- Knative mode: Knative Serving cannot become Ready here (docs/testcluster.md: the Go module
  proxy serves no Knative networking layer, and the Gateway API ones proxy through Envoy, which
  is C++). The reconciler writes KServe v0.20.0's Knative traffic targets
  (reconcilers/knative/ksvc_reconciler.go, the `latest` tag only under
  serving.kserve.io/enable-tag-routing) and latestRolledoutRevision as
  inference_service_status.go PropagateStatus keeps it.
- LLMInferenceService router groups: KServe's llmisvc controller is a separate binary, not
  built (llmisvc/router_group_status.go: members' effective weights, stopped members at 0).
- Standard mode that really splits spec.canary[]: only after v0.20.0, through Gateway API
  HTTPRoutes (httproute_reconciler.go, kserve PR 5912); the proxy serves no such KServe.

A real Prometheus scrapes vLLM metric pages whose traffic follows each pod's share.
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
        # 5 s windows: Prometheus scrapes every second, and increase() over a new pod's first
        # seconds can miss a family; one such check is tolerated
        "canary": {"steps": [25, 50, 100], "step_duration_s": 5, "min_requests": 5, "min_output_tokens": 0,
                   "max_regression": 0.5, "failure_limit": 1, **canary},
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


def test_llm_inference_service_group_moves_weights_and_stops_the_old_member(make_env, prometheus):
    """LLMInferenceService (KServe 0.20's router.route group and weights): not on the real control
    plane, whose KServe build has no llmisvc controller (docs/testcluster.md)."""
    from tasks.kserve.cluster import LLMISVC, Cluster

    env = make_env(mode="Standard")
    m = MetricsFixture(model_name="tiny-llama")
    m.start(env.reconciler.pod_traffic, prometheus.sd_file)
    try:
        def llm(v):
            s = spec(env, prometheus, v, steps=[50, 100])
            data = s.model_dump(mode="json", exclude_unset=True)
            data["target"]["llm_inference_service"] = {"enabled": True}
            data["target"]["deployment_mode"] = "Standard"
            return parse_spec(data)

        _, first = promote(llm("v1"), "v1")
        assert first.phase == Phase.SUCCEEDED and first.plan == []
        old = first.handle["candidate_member"]
        d, rec = promote(llm("v2"), "v2")
        assert rec.phase == Phase.SUCCEEDED, rec.reason
        new = rec.handle["candidate_member"]
        cluster = Cluster.connect(llm("v2"))
        members = {x["name"]: x for x in cluster.get(LLMISVC, "llm", new)["status"]["router"]["group"]["members"]}
        assert members[new]["weight"] == 100 and members[old]["weight"] == 0 and members[old].get("stopped")
        assert cluster.get(LLMISVC, "llm", old)["metadata"]["annotations"]["serving.kserve.io/stop"] == "true"
        assert [s.percent for s in rec.steps if s.verdict.value == "pass"] == [50, 100]
    finally:
        m.stop()


def test_standard_mode_that_splits_through_gateway_api(make_env, prometheus):
    env = make_env(mode="Standard", version="0.21.0", gateway_api=True)
    m = MetricsFixture(model_name="tiny-llama")
    m.start(env.reconciler.pod_traffic, prometheus.sd_file)
    try:
        def std(v, **canary):
            data = spec(env, prometheus, v, **canary).model_dump(mode="json", exclude_unset=True)
            data["target"].update({"deployment_mode": "Standard", "strategy": "canary", "kserve_version": "0.21.0"})
            return parse_spec(data)

        promote(std("v1"), "v1")
        d, rec = promote(std("v2", steps=[50, 100]), "v2")
        assert rec.phase == Phase.SUCCEEDED, rec.reason
        isvc = env.isvc("tiny")
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/tiny/v2" and "canary" not in isvc["spec"]
        assert "name" not in isvc["spec"]["predictor"]  # the stable keeps its name and Service: tiny-predictor
        shares = [(s.percent, s.traffic_share, s.note) for s in rec.steps]
        assert any(abs((s.traffic_share or 0) - 50) <= 10 for s in rec.steps if s.percent == 50), shares
    finally:
        m.stop()
