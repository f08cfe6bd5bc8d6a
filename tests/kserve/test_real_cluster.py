"""The KServe target on a real control plane with the real KServe v0.20.0 controller.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KWOK and KServe's controller
manager with its admission webhooks (tests/cluster, docs/testcluster.md), in Standard mode.
Predictor pods are KWOK's: a real Prometheus scrapes vLLM metric pages whose traffic follows
what the cluster says serves (tests/kserve/cluster_metrics.py).

Each test drives the product's own target functions (tasks.targets), as the flow does.
"""

from __future__ import annotations

import time

import pytest
from kubernetes.client.rest import ApiException

from tasks import targets
from tasks.canary.machine import Phase
from tasks.errors import BadInput, RolledBack, StageFailed
from tasks.kserve import records
from tasks.kserve.cluster import RUNTIME, Cluster
from tasks.kserve.render import inference_service, render_all, serving_runtime
from tasks.spec import parse_spec
from tasks.values import PublishedArtifact, ResolvedModel
from tests.kserve.cluster_metrics import ClusterTraffic
from tests.kserve.metrics_fixture import MetricsFixture, Profile

pytestmark = pytest.mark.servers
NAME = "tiny"


class Env:
    def __init__(self, cluster, ns, prom, traffic, metrics):
        self.cluster, self.ns, self.prom, self.traffic, self.metrics = cluster, ns, prom, traffic, metrics

    def spec(self, version: str = "v1", strategy: str = "blue-green", target: dict | None = None, **sections):
        data = {
            "name": NAME, "model": {"source": f"hf://org/tiny@{version}", "served_name": "tiny-llama"},
            "target": {"kind": "kserve", "namespace": self.ns, "kubeconfig": str(self.cluster.kubeconfig),
                       "deployment_mode": "Standard", "strategy": strategy, "service_account": "llmship-models",
                       "prometheus_url": self.prom.url, "ready_timeout_s": 60, "cpu": "1", "memory": "1Gi",
                       **(target or {})},
            "slo": {"ttft_p99_ms": 500, "max_error_rate": 0.05},
            "canary": {"step_duration_s": 4, "min_requests": 10, "min_output_tokens": 0, "max_regression": 0.5},
        }
        for k, v in sections.items():
            data[k] = {**data.get(k, {}), **v}
        return parse_spec(data)

    def isvc(self, name: str = NAME) -> dict | None:
        try:
            return self.cluster.get_isvc(self.ns, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def pod_uids(self, isvc: str = NAME) -> set[str]:
        return {p.metadata.uid for p in self.cluster.isvc_pods(self.ns, isvc)}

    def serving(self, spec) -> records.ServingRecord | None:
        return records.read_serving(Cluster.connect(spec), spec)

    def record(self, spec):
        return records.read_canary(Cluster.connect(spec), spec)


def artifact(version: str, uri: str | None = None) -> PublishedArtifact:
    uri = uri or f"s3://models/tiny/{version}"
    return PublishedArtifact(uri=uri, local_path=None, digest=f"sha256:{version}", manifest_uri=f"{uri}/manifest.json")


def resolved(version: str) -> ResolvedModel:
    return ResolvedModel(source=f"hf://org/tiny@{version}", kind="hf", location="org/tiny", revision=version)


def promote(spec, version: str, uri: str | None = None):
    """deploy then the canary, as the flow runs them (no warm-up: pod IPs do not answer here)."""
    d = targets.deploy(spec, artifact(version, uri), resolved(version))
    if d.unchanged:
        return d, None
    return d, targets.run_canary(spec, d)


@pytest.fixture
def env(kube_cluster, kube_namespace, prometheus):
    kube_cluster.core.create_namespaced_service_account(kube_namespace, {"metadata": {"name": "llmship-models"}})
    traffic = ClusterTraffic(kube_cluster.core, kube_namespace, NAME)
    metrics = MetricsFixture(model_name="tiny-llama")
    metrics.profiles["s3://models/tiny/slow"] = Profile(ttft_s=lambda pct: 0.4)
    metrics.start(traffic, prometheus.sd_file)
    yield Env(kube_cluster, kube_namespace, prometheus, traffic, metrics)
    metrics.stop()


def test_the_real_webhook_refuses_a_named_stable_predictor_and_admits_what_llmship_renders(env):
    """What only the real controller catches: KServe's validating webhook (inference_service_validation.go)."""
    spec = env.spec()
    objs = render_all(spec, "s3://models/tiny/v1", "sha256:v1")
    api = Cluster.connect(spec).custom
    env.cluster.apply(serving_runtime(spec))
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", env.ns, "inferenceservices", isvc, dry_run="All")
    named = inference_service(spec, "s3://models/tiny/v1", "sha256:v1")
    named["spec"]["predictor"]["model"]["name"] = "kserve-container"  # what llmship rendered before
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", env.ns, "inferenceservices", named,
                                            dry_run="All")
    assert "the 'name' field is not allowed in standard predictor" in err.value.body


def test_first_rollout_then_the_same_revision_is_unchanged(env):
    spec = env.spec()
    d, rec = promote(spec, "v1")
    assert rec.phase == Phase.SUCCEEDED and rec.plan == []
    isvc = env.isvc()
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/tiny/v1"
    assert not [k for k in isvc["metadata"]["annotations"] if k.startswith("llmship.io/")]
    serving = env.serving(spec)
    assert serving.revision == d.revision and serving.artifact_digest == "sha256:v1"
    again, _ = promote(spec, "v1")
    assert again.unchanged and again.revision == d.revision


def test_blue_green_promotes_without_moving_the_stable_address_or_restarting_stable_early(env):
    spec = env.spec()
    promote(spec, "v1")
    svc_uid = env.cluster.core.read_namespaced_service(f"{NAME}-predictor", env.ns).metadata.uid
    stable_pods = env.pod_uids()
    env.traffic.synthetic[f"{NAME}-candidate-predictor"] = 40  # the load tester's traffic to the candidate
    d = targets.deploy(spec.model_copy(update={"model": spec.model.model_copy(update={"source": "hf://org/tiny@v2"})}),
                       artifact("v2"), resolved("v2"))
    assert env.isvc(f"{NAME}-candidate") is not None
    assert env.pod_uids() == stable_pods  # the candidate and llmship's records restart nothing of stable
    rec = targets.run_canary(spec, d)
    assert rec.phase == Phase.SUCCEEDED, rec.reason
    assert rec.steps[-1].candidate["requests"] >= 10 and rec.steps[-1].stable["requests"] > 0
    isvc = env.isvc()
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/tiny/v2"
    assert env.isvc(f"{NAME}-candidate") is None
    assert env.cluster.core.read_namespaced_service(f"{NAME}-predictor", env.ns).metadata.uid == svc_uid
    from tests.kserve.cluster_metrics import _storage_uri

    new_pods = [p for p in env.cluster.isvc_pods(env.ns, NAME) if p.metadata.deletion_timestamp is None]
    assert new_pods and {_storage_uri(p) for p in new_pods} == {"s3://models/tiny/v2"}
    assert env.serving(spec).artifact_digest == "sha256:v2"


def test_a_config_only_change_is_a_new_revision_and_rolls_out(env):
    spec = env.spec()
    first, _ = promote(spec, "v1")
    env.traffic.synthetic[f"{NAME}-candidate-predictor"] = 40
    changed = env.spec(engine={"args": {"max_num_seqs": 8}})
    d, rec = promote(changed, "v1")
    assert d.revision != first.revision and not d.unchanged
    assert any("engine" in n and "predictor" in n for n in d.notes), d.notes
    assert rec.phase == Phase.SUCCEEDED, rec.reason
    args = env.isvc()["spec"]["predictor"]["model"]["args"]
    assert "--max-num-seqs=8" in args
    dep = env.cluster.apps.read_namespaced_deployment(f"{NAME}-predictor", env.ns)
    assert "--max-num-seqs=8" in str(dep.spec.template.spec.containers[0].args)


def test_a_slower_candidate_is_rolled_back_and_stable_is_untouched(env):
    spec = env.spec()
    promote(spec, "v1")
    before = env.isvc()
    stable_pods = env.pod_uids()
    env.traffic.synthetic[f"{NAME}-candidate-predictor"] = 40
    d, rec = promote(spec, "slow")
    assert rec.phase == Phase.ROLLED_BACK and rec.decided_by == "judge"
    assert "ttft" in rec.reason
    assert env.isvc(f"{NAME}-candidate") is None
    after = env.isvc()
    assert after["spec"] == before["spec"] and env.pod_uids() == stable_pods
    assert env.serving(spec).artifact_digest == "sha256:v1"


@pytest.mark.parametrize("fault,expect", [("crash-loop", "FailedToLoad|restarted"), ("never-ready", "timed out")])
def test_a_candidate_that_never_serves_is_rolled_back(env, fault, expect):
    import re

    spec = env.spec(target={"ready_timeout_s": 15})
    promote(spec, "v1")
    started = time.monotonic()
    with pytest.raises(RolledBack) as err:
        targets.deploy(spec, artifact("v2", f"s3://models/{fault}/v2"), resolved("v2"))
    assert re.search(expect, err.value.message), err.value.render()
    if fault == "crash-loop":
        assert time.monotonic() - started < 15  # seen from the pods, not waited out
    assert env.isvc(f"{NAME}-candidate") is None
    assert env.record(spec).phase == Phase.ROLLED_BACK
    assert env.isvc()["spec"]["predictor"]["model"]["storageUri"] == "s3://models/tiny/v1"


def test_a_first_rollout_that_never_serves_leaves_nothing(env):
    spec = env.spec(target={"ready_timeout_s": 20})
    with pytest.raises(StageFailed) as err:
        targets.deploy(spec, artifact("v1", "s3://models/crash-loop/v1"), resolved("v1"))
    assert "was deleted" in err.value.message
    env.cluster.wait_for("the InferenceService deleted", lambda: env.isvc() is None, 30)
    assert env.serving(spec) is None


def test_a_canary_where_standard_mode_cannot_split_is_refused_before_any_write(env):
    spec = env.spec()
    promote(spec, "v1")
    rv = env.isvc()["metadata"]["resourceVersion"]
    cm = Cluster.connect(spec).get_configmap(env.ns, records.configmap_name(NAME))
    with pytest.raises(BadInput) as err:
        targets.deploy(env.spec(strategy="canary"), artifact("v2"), resolved("v2"))
    assert err.value.exit_code == 2 and "blue-green" in err.value.hint
    assert "no traffic" in err.value.message and "0.20" in err.value.message
    assert env.isvc()["metadata"]["resourceVersion"] == rv and env.isvc(f"{NAME}-candidate") is None
    assert Cluster.connect(spec).get_configmap(env.ns, records.configmap_name(NAME)) == cm


def test_a_crash_mid_canary_resumes_from_the_record(env, monkeypatch):
    from tasks.kserve import observe

    spec = env.spec()
    promote(spec, "v1")
    env.traffic.synthetic[f"{NAME}-candidate-predictor"] = 40
    d = targets.deploy(spec, artifact("v2"), resolved("v2"))
    real = observe.PrometheusObserver.observe

    def killed(self, percent, seconds):
        raise KeyboardInterrupt("the promoting process was killed")

    monkeypatch.setattr(observe.PrometheusObserver, "observe", killed)
    with pytest.raises(KeyboardInterrupt):
        targets.run_canary(spec, d)
    assert env.record(spec).phase == Phase.PROGRESSING and env.isvc(f"{NAME}-candidate") is not None
    monkeypatch.setattr(observe.PrometheusObserver, "observe", real)
    again = targets.deploy(spec, artifact("v2"), resolved("v2"))
    assert again.resumed and any("resumed the promotion" in n for n in again.notes)
    rec = targets.run_canary(spec, again)
    assert rec.phase == Phase.SUCCEEDED, rec.reason
    assert [t.to for t in rec.transitions].count(Phase.PROGRESSING) >= 1
    assert env.isvc()["spec"]["predictor"]["model"]["storageUri"] == "s3://models/tiny/v2"


def test_another_revision_after_a_crash_rolls_the_first_back(env, monkeypatch):
    from tasks.kserve import observe

    spec = env.spec()
    promote(spec, "v1")
    d = targets.deploy(spec, artifact("v2"), resolved("v2"))
    monkeypatch.setattr(observe.PrometheusObserver, "observe", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        targets.run_canary(spec, d)
    monkeypatch.undo()
    env.traffic.synthetic[f"{NAME}-candidate-predictor"] = 40
    d3, rec = promote(spec, "v3")
    assert any("rolled back an unfinished promotion" in n for n in d3.notes)
    assert rec.phase == Phase.SUCCEEDED and env.serving(spec).artifact_digest == "sha256:v3"


def test_kserve_elsewhere_is_found_from_its_controller(kube_cluster_factory):
    from tasks.kserve.detect import detect

    other = kube_cluster_factory(kserve_namespace="kserve-system")
    spec = parse_spec({"name": NAME, "model": {"source": "hf://org/tiny@v1"},
                       "target": {"kind": "kserve", "kubeconfig": str(other.kubeconfig)}})
    info = detect(Cluster.connect(spec), None, None, None)
    assert info.kserve_namespace == "kserve-system" and info.mode == "standard"
    assert info.kserve_version and info.kserve_version.startswith("v0.20") and not info.standard_split


def test_a_runtime_change_gets_its_own_runtime_and_the_stables_stays_unchanged(env):
    """KServe re-renders every InferenceService on a ServingRuntime when it changes, so a new
    runtime is a new object (named by content, never auto-selected: KServe's webhook refuses two
    auto-selecting runtimes of one format and priority in a namespace)."""
    from tasks.kserve.cluster import RUNTIME

    spec = env.spec()
    promote(spec, "v1")
    cluster = Cluster.connect(spec)
    old_rt = env.isvc()["spec"]["predictor"]["model"]["runtime"]
    rv = cluster.get(RUNTIME, env.ns, old_rt)["metadata"]["resourceVersion"]
    stable_pods = env.pod_uids()
    env.traffic.synthetic[f"{NAME}-candidate-predictor"] = 40
    changed = env.spec(target={"shm_size": "4Gi"})  # the runtime's /dev/shm volume
    d = targets.deploy(changed, artifact("v1"), resolved("v1"))
    new_rt = env.isvc(f"{NAME}-candidate")["spec"]["predictor"]["model"]["runtime"]
    assert new_rt != old_rt and cluster.get(RUNTIME, env.ns, new_rt) is not None
    assert cluster.get(RUNTIME, env.ns, old_rt)["metadata"]["resourceVersion"] == rv and env.pod_uids() == stable_pods
    rec = targets.run_canary(changed, d)
    assert rec.phase == Phase.SUCCEEDED, rec.reason
    assert env.isvc()["spec"]["predictor"]["model"]["runtime"] == new_rt
    assert cluster.get(RUNTIME, env.ns, old_rt) is None  # no InferenceService names it any more


def test_an_update_that_loses_a_race_redoes_its_change_on_the_winners_version(env):
    """Cluster.update against the real kube-apiserver's optimistic concurrency: another writer
    between llmship's read and its replace gets llmship a 409; it re-reads and keeps both changes."""
    spec = env.spec()
    cluster = Cluster.connect(spec)
    runtime = cluster.create(serving_runtime(spec))
    name = runtime["metadata"]["name"]
    seen = []

    def change(cur):
        seen.append(cur["metadata"]["resourceVersion"])
        if len(seen) == 1:  # someone else writes after llmship read
            other = cluster.get(RUNTIME, env.ns, name)
            other["metadata"].setdefault("annotations", {})["someone"] = "else"
            cluster.custom.replace_namespaced_custom_object(RUNTIME.group, RUNTIME.version, env.ns, RUNTIME.plural,
                                                            name, other)
        cur["metadata"].setdefault("labels", {})["llmship.io/raced"] = "yes"
        return cur

    out = cluster.update(RUNTIME, env.ns, name, change)
    assert len(seen) == 2 and seen[0] != seen[1]  # the first replace was refused, the second read is fresh
    assert out["metadata"]["labels"]["llmship.io/raced"] == "yes" and out["metadata"]["annotations"]["someone"] == "else"
