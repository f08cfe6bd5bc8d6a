"""End to end on the Kubernetes API test server, with a real Prometheus for the gates.

The product code talks to the test server with the official kubernetes client over HTTP;
the test reconciler plays KServe; Prometheus scrapes vLLM metric pages whose request rate
follows each pod's traffic share.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tasks.errors import BadInput, RolledBack
from tasks.kserve import deploy_candidate, rollback, run_canary
from tasks.kserve import rollout as rollout_mod
from tasks.kserve.render import ANN_CANDIDATE_DIGEST, ANN_DIGEST, ANN_REGISTRY_VERSION, ANN_SOURCE
from tasks.spec import parse_spec
from tests.kserve.metrics_fixture import MetricsFixture, Profile

pytestmark = pytest.mark.servers

V1, V2, V3 = "s3://models/tiny/v1", "s3://models/tiny/v2", "s3://models/tiny/v3"


def make_spec(env, prom=None, mode=None, strategy="canary", source="hf://org/tiny@v2", keda=False, **canary):
    return parse_spec({
        "name": "tiny", "model": {"source": source, "served_name": "tiny-llama"},
        "target": {"kind": "kserve", "namespace": "llm", "kubeconfig": str(env.kubeconfig), "ready_timeout_s": 8,
                   "strategy": strategy, "keda": {"enabled": keda}, **({"deployment_mode": mode} if mode else {}),
                   **({"prometheus_url": prom.url} if prom else {})},
        "slo": {"ttft_p99_ms": 500, "max_error_rate": 0.05},
        "canary": {"steps": [10, 25, 50, 100], "step_duration_s": 3, **canary},
    })


def first_deploy(env, prom=None, **kw):
    """Stable v1 serving 100%, as a first llmship promotion leaves it (no gates: no metrics yet)."""
    spec = make_spec(env, None, source="hf://org/tiny@v1", **kw)
    r = deploy_candidate(spec, V1, "sha256:v1", registry_version="1")
    assert r.strategy == "initial"
    assert run_canary(spec, r).outcome == "promoted"
    return spec


def stable_has_history(prom, timeout_s: float = 20) -> None:
    """The stable model has served a while before a canary starts, as in production."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.get(prom.url + "/api/v1/query", params={"query": 'sum(rate(http_requests_total{namespace="llm"}[4s])) > 1'})
        if r.json()["data"]["result"]:
            return
        time.sleep(0.3)
    raise AssertionError("Prometheus never saw the stable model's requests")


@pytest.fixture
def metrics(prometheus):
    envs = []

    def attach(env, profiles=None):
        m = MetricsFixture(model_name="tiny-llama")
        m.profiles.update(profiles or {})
        m.start(env.reconciler.pod_traffic, prometheus.sd_file)
        envs.append(m)
        return m

    yield attach
    for m in envs:
        m.stop()


def traffic_by_uri(env) -> dict[str, float]:
    """Share of requests each artifact gets now, over all its pods (revisions, deployments)."""
    out: dict[str, float] = {}
    for _, _, uri, pct in env.reconciler.pod_traffic():
        out[uri] = out.get(uri, 0.0) + pct
    return out


def stable_serves_v1(env) -> None:
    isvc = env.isvc("tiny")
    ann = isvc["metadata"]["annotations"]
    assert ann[ANN_DIGEST] == "sha256:v1" and ANN_CANDIDATE_DIGEST not in ann
    assert V2 not in str(isvc["spec"])  # the candidate is gone from the spec
    st = isvc["status"]
    if env.reconciler.knative:
        rolled = st["components"]["predictor"]["latestRolledoutRevision"]
        full = [t for t in st["components"]["predictor"]["traffic"] if t["percent"] == 100]
        assert [t["revisionName"] for t in full] == [rolled]
        assert env.reconciler.state[("llm", "tiny")].revisions[int(rolled[-5:]) - 1].uri == V1
        assert all(t["percent"] == 0 for t in st["components"]["predictor"]["traffic"] if t["revisionName"] != rolled)
    else:
        assert "canary" not in isvc["spec"] and "canaryStatuses" not in st
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == V1
    assert traffic_by_uri(env) == {V1: 100.0} | ({V2: 0.0} if V2 in {u for *_, u, _ in env.reconciler.pod_traffic()} else {})


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_canary_success_promotes(make_env, prometheus, metrics, mode):
    env = make_env(mode=mode, version="0.20.0")
    metrics(env)
    keda = mode == "Standard"
    first_deploy(env, prometheus, keda=keda)
    stable_has_history(prometheus)
    assert env.isvc("tiny")["metadata"]["annotations"][ANN_DIGEST] == "sha256:v1"
    if keda:
        so = env.store.get("keda.sh", "scaledobjects", "llm", "tiny-predictor")
        assert so["spec"]["scaleTargetRef"]["name"] == "tiny-predictor"

    spec = make_spec(env, prometheus, keda=keda)
    r = deploy_candidate(spec, V2, "sha256:v2", registry_version="2")
    assert r.strategy == "canary" and r.mode == ("knative" if mode == "Knative" else "standard")
    isvc = env.isvc("tiny")
    if mode == "Knative":
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    else:
        assert isvc["spec"]["canary"][0]["trafficPercent"] == 10
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == V1  # stable untouched

    out = run_canary(spec, r)
    assert out.outcome == "promoted" and out.steps == [10, 25, 50, 100]
    names = {c.name for c in out.checks}
    assert {"error-rate", "ttft-p99", "ttft-p99-vs-stable"} <= names
    ttft = [c for c in out.checks if c.name == "ttft-p99"]
    assert all(c.ok and c.value is not None and c.value < 0.5 for c in ttft)  # real data, under the SLO

    isvc = env.isvc("tiny")
    ann = isvc["metadata"]["annotations"]
    assert ann[ANN_DIGEST] == "sha256:v2" and ann[ANN_REGISTRY_VERSION] == "2" and ann[ANN_SOURCE] == "hf://org/tiny@v2"
    assert ANN_CANDIDATE_DIGEST not in ann
    assert traffic_by_uri(env)[V2] == 100.0 and not traffic_by_uri(env).get(V1)
    if mode == "Knative":
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    else:
        assert "canary" not in isvc["spec"] and isvc["spec"]["predictor"]["name"] == r.canary_name
        # KServe keeps the canary's Deployment on promotion: KEDA must follow it.
        so = env.store.get("keda.sh", "scaledobjects", "llm", "tiny-predictor")
        assert so["spec"]["scaleTargetRef"]["name"] == f"tiny-{r.canary_name}-predictor"


@pytest.mark.parametrize("failure", ["never_ready", "failed_to_load"])
def test_never_ready_is_rolled_back(make_env, failure):
    env = make_env(mode="Knative")
    spec = first_deploy(env)
    env.reconciler.behaviour[V2] = failure
    spec = make_spec(env, prom=None).model_copy(deep=True)
    spec.target.prometheus_url = "http://127.0.0.1:9"  # never reached: the candidate fails first
    spec.target.ready_timeout_s = 3
    with pytest.raises(RolledBack) as ei:
        deploy_candidate(spec, V2, "sha256:v2")
    err = ei.value
    assert err.stage == "deploy" and err.obj == "llm/tiny"
    assert "condition PredictorReady=False" in err.detail or "condition Ready=False" in err.detail
    assert "log tail of pod tiny-predictor-00002-deployment" in err.detail
    if failure == "failed_to_load":
        assert "FailedToLoad" in err.message and "config.json" in err.detail and "BackOff" in err.detail
    else:
        assert "timed out" in err.message and "still loading weights" in err.detail
    stable_serves_v1(env)


def test_slo_breach_at_step_2_rolls_back(make_env, prometheus, metrics):
    env = make_env(mode="Knative")
    # The candidate is fast at 10% and slow once it takes 25%: TTFT 1.5 s > the 500 ms SLO.
    metrics(env, {V2: Profile(ttft_s=lambda pct: 0.04 if pct < 25 else 1.5)})
    first_deploy(env, prometheus)
    stable_has_history(prometheus)
    spec = make_spec(env, prometheus)
    r = deploy_candidate(spec, V2, "sha256:v2")
    with pytest.raises(RolledBack) as ei:
        run_canary(spec, r)
    err = ei.value
    assert err.stage == "canary" and "ttft-p99" in err.message and "at 25%" in err.message
    assert "10% ttft-p99: ok" in err.detail and "25% ttft-p99: FAILED" in err.detail
    stable_serves_v1(env)


def test_failure_limit_tolerates_one_failed_check(make_env, prometheus, metrics):
    env = make_env(mode="Standard")
    # Errors only at 25%: one failed check, tolerated by failure_limit 1.
    metrics(env, {V2: Profile(error_rate=lambda pct: 0.5 if 20 <= pct < 30 else 0.0)})
    first_deploy(env, prometheus)
    stable_has_history(prometheus)
    spec = make_spec(env, prometheus, failure_limit=1)
    r = deploy_candidate(spec, V2, "sha256:v2")
    out = run_canary(spec, r)
    assert out.outcome == "promoted" and out.failures >= 1
    assert any(c.name == "error-rate" and not c.ok and c.step == 25 for c in out.checks)


def test_no_data_fails_unless_spec_says_otherwise(make_env, prometheus):
    env = make_env(mode="Knative")  # no metrics fixture: Prometheus has no series at all
    first_deploy(env, prometheus)
    spec = make_spec(env, prometheus)
    r = deploy_candidate(spec, V2, "sha256:v2")
    with pytest.raises(RolledBack) as ei:
        run_canary(spec, r)
    assert "no data" in ei.value.message and "at 10%" in ei.value.message
    stable_serves_v1(env)

    spec = make_spec(env, prometheus, no_data_fails=False)
    out = run_canary(spec, deploy_candidate(spec, V2, "sha256:v2"))
    assert out.outcome == "promoted" and all(c.value is None and c.ok for c in out.checks)


def test_standard_before_0_20_refuses_canary_and_changes_nothing(make_env, prometheus):
    env = make_env(mode="RawDeployment", version="0.19.2")
    first_deploy(env, prometheus, mode="RawDeployment")
    before = env.isvc("tiny")
    writes = len(env.writes())
    spec = make_spec(env, prometheus, mode="RawDeployment")
    with pytest.raises(BadInput) as ei:
        deploy_candidate(spec, V2, "sha256:v2")
    err = ei.value
    assert err.exit_code == 2 and err.stage == "deploy" and err.obj == "llm/tiny"
    assert "kserve#5335" in err.message and "blue-green" in err.hint
    assert len(env.writes()) == writes  # not a single write reached the server
    assert env.isvc("tiny")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_standard_before_0_20_blue_green_switches_once(make_env, prometheus, metrics):
    env = make_env(mode="RawDeployment", version="0.19.2")
    metrics(env)
    first_deploy(env, prometheus, mode="RawDeployment")
    stable_has_history(prometheus)
    spec = make_spec(env, prometheus, mode="RawDeployment", strategy="blue-green")
    r = deploy_candidate(spec, V2, "sha256:v2")
    assert r.strategy == "blue-green" and env.isvc("tiny-candidate") is not None
    assert env.isvc("tiny")["spec"]["predictor"]["model"]["storageUri"] == V1  # stable untouched meanwhile
    out = run_canary(spec, r)
    assert out.outcome == "promoted" and out.steps == [100]
    assert env.isvc("tiny-candidate") is None
    isvc = env.isvc("tiny")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == V2
    assert isvc["metadata"]["annotations"][ANN_DIGEST] == "sha256:v2"


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so llmship's cleanup does not run."""


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_crash_between_steps_then_rerun_finishes(make_env, prometheus, metrics, monkeypatch, mode):
    env = make_env(mode=mode)
    metrics(env)
    first_deploy(env, prometheus)
    stable_has_history(prometheus)
    spec = make_spec(env, prometheus)
    r = deploy_candidate(spec, V2, "sha256:v2")

    real = rollout_mod.analysis.evaluate
    calls = []

    def crash_on_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise Crash()
        return real(*a, **kw)

    monkeypatch.setattr(rollout_mod.analysis, "evaluate", crash_on_second)
    with pytest.raises(Crash):
        run_canary(spec, r)
    monkeypatch.setattr(rollout_mod.analysis, "evaluate", real)
    isvc = env.isvc("tiny")
    assert isvc["metadata"]["annotations"][ANN_CANDIDATE_DIGEST] == "sha256:v2"  # half-done, on the cluster

    # Re-run with the same candidate: resumes at 25%, never a second canary on top.
    r2 = deploy_candidate(spec, V2, "sha256:v2")
    assert r2.resumed and spec.canary.steps[r2.step_index] == 25
    if mode == "Knative":
        assert r2.candidate_revision == r.candidate_revision
    else:
        assert len(env.isvc("tiny")["spec"]["canary"]) == 1
    out = run_canary(spec, r2)
    assert out.outcome == "promoted" and out.steps == [25, 50, 100]
    assert env.isvc("tiny")["metadata"]["annotations"][ANN_DIGEST] == "sha256:v2"


def test_crash_then_rerun_with_other_candidate_undoes_first(make_env, prometheus, metrics, monkeypatch):
    env = make_env(mode="Standard")
    metrics(env)
    first_deploy(env, prometheus)
    stable_has_history(prometheus)
    spec = make_spec(env, prometheus)
    deploy_candidate(spec, V2, "sha256:v2")  # crash right after: v2 at 10%
    spec3 = make_spec(env, prometheus, source="hf://org/tiny@v3")
    r3 = deploy_candidate(spec3, V3, "sha256:v3")
    isvc = env.isvc("tiny")
    assert [c["predictor"]["model"]["storageUri"] for c in isvc["spec"]["canary"]] == [V3]  # v2 undone, one canary
    assert not r3.resumed
    rollback(spec3, r3)
    stable = env.isvc("tiny")
    assert "canary" not in stable["spec"] and stable["metadata"]["annotations"][ANN_DIGEST] == "sha256:v1"


def test_same_digest_is_unchanged(make_env):
    env = make_env(mode="Knative")
    spec = first_deploy(env)
    writes = len(env.writes())
    r = deploy_candidate(spec, V1, "sha256:v1")
    assert r.strategy == "unchanged" and run_canary(spec, r).outcome == "unchanged"
    assert len([w for w in env.writes()[writes:] if "inferenceservices" in w[1]]) == 0


def test_mode_mismatch_is_bad_input(make_env):
    env = make_env(mode="Knative")
    first_deploy(env)
    spec = make_spec(env, mode="Standard")
    with pytest.raises(BadInput, match="cannot switch modes"):
        deploy_candidate(spec, V2, "sha256:v2")


def test_llminferenceservice_is_applied_and_watched(make_env):
    env = make_env(mode="Standard")
    spec = make_spec(env)
    spec.target.llm_inference_service.enabled = True
    spec.target.llm_inference_service.prefill_replicas = 1
    r = deploy_candidate(spec, V1, "sha256:v1")
    assert r.strategy == "llmisvc" and run_canary(spec, r).outcome == "promoted"
    obj = env.store.get("serving.kserve.io", "llminferenceservices", "llm", "tiny")
    assert obj["spec"]["model"]["uri"] == V1 and obj["spec"]["prefill"]["replicas"] == 1
    r2 = deploy_candidate(spec, V2, "sha256:v2")  # an update, RV-guarded, watched to Ready again
    obj = env.store.get("serving.kserve.io", "llminferenceservices", "llm", "tiny")
    assert r2.strategy == "llmisvc" and obj["spec"]["model"]["uri"] == V2 and obj["metadata"]["generation"] == 2


def test_blue_green_crash_after_switch_leaves_no_orphan(make_env, monkeypatch):
    env = make_env(mode="RawDeployment", version="0.19.2")
    first_deploy(env, mode="RawDeployment")
    spec = make_spec(env, mode="RawDeployment", strategy="blue-green")
    spec.target.prometheus_url = "http://127.0.0.1:9"
    spec.canary.gates = []
    r = deploy_candidate(spec, V2, "sha256:v2")
    monkeypatch.setattr(rollout_mod.analysis, "evaluate", lambda *a, **k: [])  # gates pass
    monkeypatch.setattr(rollout_mod.Cluster, "delete", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        run_canary(spec, r)  # switched, then died before deleting the candidate
    monkeypatch.undo()
    assert env.isvc("tiny")["metadata"]["annotations"][ANN_DIGEST] == "sha256:v2" and env.isvc("tiny-candidate")
    r2 = deploy_candidate(spec, V2, "sha256:v2")
    assert r2.strategy == "unchanged" and env.isvc("tiny-candidate") is None
