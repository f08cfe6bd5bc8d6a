"""Deploy a candidate on KServe, step it through a canary with metric gates, promote or roll back.

State lives on the cluster, in the InferenceService itself: the candidate's spec
(canaryTrafficPercent, spec.canary[] or a second InferenceService) and llmship.io/candidate-*
annotations. A re-run reads them and resumes the same candidate or undoes a different one,
so there is never a second canary on top of the first.

Modes:
- knative: one InferenceService; the candidate is a new revision; traffic by canaryTrafficPercent.
- standard, KServe >= 0.20: the candidate is a spec.canary[] entry (its own Deployment);
  promotion moves it into spec.predictor (KServe retargets the stable name, no restart).
- standard < 0.20: canaryTrafficPercent is ignored there (kserve#5335), so a canary is refused;
  strategy blue-green instead validates a separate InferenceService, then switches once.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from typing import Literal

from pydantic import BaseModel, Field

from tasks.errors import BadInput, LlmshipError, RolledBack, StageFailed
from tasks.kserve import analysis
from tasks.kserve.admission import admit
from tasks.kserve.cluster import ISVC, LLMISVC, Cluster
from tasks.kserve.detect import ClusterInfo, detect, normalize_mode
from tasks.kserve.render import (
    ANN_CANDIDATE_DIGEST,
    ANN_CANDIDATE_REGISTRY_VERSION,
    ANN_CANDIDATE_SOURCE,
    ANN_DIGEST,
    ANN_REGISTRY_VERSION,
    ANN_SOURCE,
    ANN_STABLE_PREDICTOR,
    inference_service,
    predictor,
    render_all,
    scaled_object,
    storage_uri_for,
)
from tasks.kserve.watch import (
    condition,
    failed_to_load,
    generation_observed,
    is_true,
    predictor_status,
    wait_for,
)
from tasks.spec import PromotionSpec

ANN_CANDIDATE_STRATEGY = "llmship.io/candidate-strategy"
ANN_CANDIDATE_NAME = "llmship.io/candidate-name"
CANDIDATE_ANNS = (ANN_CANDIDATE_DIGEST, ANN_CANDIDATE_SOURCE, ANN_CANDIDATE_REGISTRY_VERSION,
                  ANN_STABLE_PREDICTOR, ANN_CANDIDATE_STRATEGY, ANN_CANDIDATE_NAME)
CANARY_CONDITIONS = ("CanaryPredictorReady", "CanaryReady")  # KServe 0.20 names it the former
SETTLE_TIMEOUT_S = 300.0  # traffic moves and rollbacks of already-running revisions


class KServeRollout(BaseModel):
    """Where a candidate stands on the cluster; small and picklable, no live clients."""

    namespace: str
    name: str  # the InferenceService clients call
    mode: Literal["knative", "standard"]
    kserve_version: str | None = None
    strategy: Literal["initial", "canary", "blue-green", "unchanged", "llmisvc"]
    candidate_digest: str
    candidate_source: str
    registry_version: str | None = None
    canary_name: str | None = None  # spec.canary[] entry (standard) or the candidate ISVC (blue-green)
    candidate_revision: str | None = None  # knative
    stable_revision: str | None = None  # knative
    candidate_pods: str  # regex on pod names, for PromQL and the log tail
    stable_pods: str | None = None
    step_index: int = 0  # index into spec.canary.steps of the traffic applied now
    resumed: bool = False
    candidate_url: str | None = None
    notes: list[str] = Field(default_factory=list)


class CanaryOutcome(BaseModel):
    outcome: Literal["promoted", "unchanged"]
    serving_digest: str
    steps: list[int] = Field(default_factory=list)  # traffic percents that passed analysis
    failures: int = 0
    checks: list[analysis.GateResult] = Field(default_factory=list)
    load_tests: list[dict] = Field(default_factory=list)
    note: str = ""


def canary_name_for(digest: str) -> str:
    return "c" + hashlib.sha256(digest.encode()).hexdigest()[:7]


def _obj(rollout: KServeRollout) -> str:
    return f"{rollout.namespace}/{rollout.name}"


def _anns(obj: dict) -> dict:
    return obj["metadata"].get("annotations") or {}


def _stable_workload(isvc: dict) -> str:
    pname = (isvc["spec"].get("predictor") or {}).get("name")
    return f"{isvc['metadata']['name']}-{pname}-predictor" if pname else f"{isvc['metadata']['name']}-predictor"


def _canary_status(obj: dict, cname: str) -> dict | None:
    for cs in (obj.get("status") or {}).get("canaryStatuses") or []:
        if cs.get("name") == cname:
            return cs
    return None


def _canary_condition_true(obj: dict) -> bool:
    return any(is_true(obj, c) for c in CANARY_CONDITIONS)


def _set_candidate_anns(obj: dict, spec: PromotionSpec, digest: str, registry_version: str | None,
                        strategy: str, cname: str | None) -> None:
    ann = obj["metadata"].setdefault("annotations", {})
    ann[ANN_CANDIDATE_DIGEST] = digest
    ann[ANN_CANDIDATE_SOURCE] = spec.model.source
    ann[ANN_CANDIDATE_STRATEGY] = strategy
    if cname:
        ann[ANN_CANDIDATE_NAME] = cname
    if registry_version:
        ann[ANN_CANDIDATE_REGISTRY_VERSION] = registry_version


def _clear_candidate_anns(obj: dict) -> None:
    ann = obj["metadata"].setdefault("annotations", {})
    for k in CANDIDATE_ANNS:
        ann.pop(k, None)


def _record_promoted(obj: dict, rollout: KServeRollout) -> None:
    """What serves now, for the triggers: written in the same update that makes it so."""
    ann = obj["metadata"].setdefault("annotations", {})
    ann[ANN_DIGEST] = rollout.candidate_digest
    ann[ANN_SOURCE] = rollout.candidate_source
    if rollout.registry_version:
        ann[ANN_REGISTRY_VERSION] = rollout.registry_version
    else:
        ann.pop(ANN_REGISTRY_VERSION, None)
    _clear_candidate_anns(obj)


def _sync_keda(spec: PromotionSpec, cluster: Cluster, isvc: dict | None) -> None:
    """Point the KEDA ScaledObject at the Deployment that serves now (its name moves when a
    Standard-mode canary is promoted). Standard mode only: Knative scales itself."""
    t = spec.target
    if not t.keda.enabled or isvc is None or normalize_mode(((isvc.get("status") or {}).get("deploymentMode"))) != "standard":
        return
    prom = t.prometheus_url or "http://prometheus-operated.monitoring.svc:9090"
    cluster.ensure(scaled_object(spec, prom, deployment=_stable_workload(isvc)))


# -- readiness checks --------------------------------------------------------------------


def _ready_check(obj: dict):
    fail = failed_to_load((obj.get("status") or {}).get("modelStatus"))
    if fail:
        return "fail", fail
    if generation_observed(obj) and is_true(obj, "Ready"):
        return "ok", "Ready"
    c = condition(obj, "Ready") or {}
    return "wait", f"Ready={c.get('status', 'Unknown')} {c.get('reason') or ''}".strip()


def _knative_candidate_check(stable_revision: str | None, old_revisions: tuple = ()):
    def check(obj: dict):
        fail = failed_to_load((obj.get("status") or {}).get("modelStatus"))
        if fail:
            return "fail", fail
        p = predictor_status(obj)
        created, ready = p.get("latestCreatedRevision"), p.get("latestReadyRevision")
        if not generation_observed(obj) or not created or created == stable_revision or created in old_revisions:
            return "wait", "waiting for KServe to create the candidate revision"
        if ready == created and is_true(obj, "Ready"):
            return "ok", f"revision {created} Ready"
        return "wait", f"revision {created} not Ready yet (latest ready: {ready})"
    return check


def _standard_candidate_check(cname: str):
    def check(obj: dict):
        cs = _canary_status(obj, cname)
        if cs:
            fail = failed_to_load(cs.get("modelStatus"))
            if fail:
                return "fail", f"canary {cname}: {fail}"
        if generation_observed(obj) and cs and cs.get("ready") and _canary_condition_true(obj):
            return "ok", f"canary {cname} Ready"
        return "wait", f"canary {cname} not Ready yet"
    return check


def _traffic_check(rollout: KServeRollout, percent: int):
    def check(obj: dict):
        if not generation_observed(obj):
            return "wait", "KServe has not seen the change yet"
        if rollout.mode == "knative":
            for t in predictor_status(obj).get("traffic") or []:
                if t.get("revisionName") == rollout.candidate_revision and t.get("percent") == percent:
                    return "ok", f"{percent}% on {rollout.candidate_revision}"
            return "wait", f"traffic not yet {percent}% on {rollout.candidate_revision}"
        cs = _canary_status(obj, rollout.canary_name or "")
        if cs and cs.get("trafficPercent") == percent and cs.get("ready"):
            return "ok", f"{percent}% on canary {rollout.canary_name}"
        return "wait", f"canary {rollout.canary_name} not yet at {percent}%"
    return check


def _stable_back_check(rollout: KServeRollout):
    def check(obj: dict):
        if not generation_observed(obj):
            return "wait", "KServe has not seen the rollback yet"
        if rollout.mode == "knative":
            traffic = predictor_status(obj).get("traffic") or []
            for t in traffic:
                if t.get("revisionName") == rollout.stable_revision and t.get("percent") == 100:
                    return "ok", f"100% on {rollout.stable_revision}"
            return "wait", f"traffic not yet back at 100% on {rollout.stable_revision}"
        if (obj.get("status") or {}).get("canaryStatuses"):
            return "wait", "canary status still present"
        return ("ok", "canary removed") if is_true(obj, "Ready") else ("wait", "not Ready after removing the canary")
    return check


def _promoted_check(rollout: KServeRollout):
    def check(obj: dict):
        ok, msg = _ready_check(obj)
        if ok != "ok":
            return ok, msg
        if rollout.mode == "knative":
            traffic = predictor_status(obj).get("traffic") or []
            full = [t for t in traffic if t.get("percent") == 100]
            if full and full[0].get("revisionName") != rollout.stable_revision:
                return "ok", f"100% on {full[0].get('revisionName')}"
            return "wait", "traffic not yet 100% on the candidate"
        if (obj.get("status") or {}).get("canaryStatuses"):
            return "wait", "canary status still present"
        return "ok", "promoted"
    return check


# -- deploy ------------------------------------------------------------------------------


def _needs_analysis(spec: PromotionSpec) -> bool:
    return spec.target.prometheus_url is not None


def _cluster_info(cluster: Cluster, spec: PromotionSpec, existing: dict | None) -> ClusterInfo:
    t = spec.target
    info = detect(cluster, existing, t.deployment_mode, t.kserve_version)
    obj = f"{t.namespace}/{spec.name}"
    if info is None:
        raise BadInput("deploy", obj, "cannot tell the KServe deployment mode (no status, annotation or inferenceservice-config)",
                       "set target.deployment_mode: Knative or Standard")
    wanted = normalize_mode(t.deployment_mode)
    if existing and wanted and wanted != info.mode:
        raise BadInput("deploy", obj, f"the InferenceService runs in {info.mode} mode ({info.mode_source}); the spec asks {t.deployment_mode}",
                       "KServe cannot switch modes in place: match target.deployment_mode, or deploy under a new name")
    return info


def _refuse_unsafe(spec: PromotionSpec, info: ClusterInfo, existing: dict | None, digest: str) -> None:
    """Checks that must pass before llmship changes anything."""
    t = spec.target
    obj = f"{t.namespace}/{spec.name}"
    if existing and _anns(existing).get(ANN_DIGEST) == digest and ANN_CANDIDATE_DIGEST not in _anns(existing):
        return  # already serving this artifact: nothing will change
    if existing and t.strategy == "canary" and info.mode == "standard" and not info.standard_canary:
        raise BadInput(
            "deploy", obj,
            f"Standard (RawDeployment) mode on KServe {info.kserve_version or '< 0.20'} has no traffic split: it ignores "
            f"canaryTrafficPercent (kserve#5335), so a canary would be a full rollout ({info.standard_canary_source})",
            "upgrade KServe to 0.20+ (spec.canary[]), or set target.strategy: blue-green, or use Knative mode",
        )
    if existing and t.strategy in ("canary", "blue-green") and not _needs_analysis(spec):
        raise BadInput("deploy", obj, "a canary needs metrics, and target.prometheus_url is not set",
                       "set target.prometheus_url to the Prometheus that scrapes the predictor pods")
    if existing:
        a = _anns(existing)
        foreign_canary = (existing["spec"].get("canary") or
                          (existing["spec"].get("predictor") or {}).get("canaryTrafficPercent") not in (None, 0, 100))
        if foreign_canary and ANN_CANDIDATE_DIGEST not in a:
            raise BadInput("deploy", obj, "a canary that llmship did not start is in progress on this InferenceService",
                           "finish or remove it (canaryTrafficPercent / spec.canary) and re-run")


def _rollout_from_cluster(spec: PromotionSpec, info: ClusterInfo, isvc: dict) -> KServeRollout:
    """Rebuild the in-flight rollout from the annotations and status on the cluster."""
    a = _anns(isvc)
    ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
    strategy = a.get(ANN_CANDIDATE_STRATEGY, "canary")
    cname = a.get(ANN_CANDIDATE_NAME)
    steps = spec.canary.steps
    r = KServeRollout(namespace=ns, name=name, mode=info.mode, kserve_version=info.kserve_version, strategy=strategy,
                      candidate_digest=a[ANN_CANDIDATE_DIGEST], candidate_source=a.get(ANN_CANDIDATE_SOURCE, ""),
                      registry_version=a.get(ANN_CANDIDATE_REGISTRY_VERSION), canary_name=cname,
                      candidate_pods="", resumed=True)
    if strategy == "blue-green":
        r.candidate_pods = f"{cname}-predictor-.*"
        r.stable_pods = f"{_stable_workload(isvc)}-.*"
        return r
    if info.mode == "knative":
        p = predictor_status(isvc)
        percent = (isvc["spec"]["predictor"] or {}).get("canaryTrafficPercent")
        r.stable_revision = p.get("latestRolledoutRevision")
        r.candidate_revision = p.get("latestCreatedRevision") if p.get("latestCreatedRevision") != r.stable_revision else None
        r.candidate_pods = f"{r.candidate_revision}-.*" if r.candidate_revision else f"{name}-predictor-.*"
        r.stable_pods = f"{r.stable_revision}-.*" if r.stable_revision else None
    else:
        entry = next((c for c in isvc["spec"].get("canary") or [] if c["predictor"].get("name") == cname), None)
        percent = entry["trafficPercent"] if entry else None
        r.candidate_pods = f"{name}-{cname}-predictor-.*"
        r.stable_pods = f"{_stable_workload(isvc)}-.*"
    r.step_index = max([i for i, s in enumerate(steps) if percent is not None and s <= percent] or [0])
    return r


def _pod_prefix(rollout: KServeRollout) -> str:
    return rollout.candidate_pods.removesuffix(".*").rstrip("-")


def deploy_candidate(
    spec: PromotionSpec,
    storage_uri: str,
    artifact_digest: str,
    registry_version: str | None = None,
    cluster: Cluster | None = None,
) -> KServeRollout:
    """Put the candidate on the cluster next to the stable model and wait until it is Ready.

    Refuses (BadInput) before changing anything when the cluster cannot split traffic. On a
    candidate that never becomes Ready it rolls back and raises RolledBack with the conditions,
    events and pod log. A re-run after a crash resumes the same candidate or undoes another.
    """
    t = spec.target
    ns, name = t.namespace, spec.name
    objs = render_all(spec, storage_uri, artifact_digest, registry_version)
    admit(objs, "deploy")  # the cluster would refuse them anyway; say so before touching it
    uri = storage_uri_for(spec, storage_uri)
    cluster = cluster or Cluster.connect(spec)

    if t.llm_inference_service.enabled:
        return _deploy_llmisvc(spec, cluster, objs, artifact_digest, registry_version)

    existing = cluster.get(ISVC, ns, name)
    info = _cluster_info(cluster, spec, existing)
    _refuse_unsafe(spec, info, existing, artifact_digest)

    # A rollout already in flight: the same candidate resumes, another is undone first.
    if existing and ANN_CANDIDATE_DIGEST in _anns(existing):
        inflight = _rollout_from_cluster(spec, info, existing)
        if inflight.candidate_digest == artifact_digest:
            return _resume(spec, cluster, inflight)
        rollback(spec, inflight, cluster=cluster)
        existing = cluster.get(ISVC, ns, name)

    # A blue-green switch that crashed before deleting its candidate leaves it orphaned: remove it.
    orphan = cluster.get(ISVC, ns, f"{name}-candidate") if existing else None
    if orphan and (orphan["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "llmship" \
            and ANN_CANDIDATE_DIGEST not in _anns(existing):
        cluster.delete(ISVC, ns, f"{name}-candidate")

    for obj in objs:  # the runtime first: the InferenceService names it
        if obj["kind"] == "ServingRuntime":
            cluster.ensure(obj)

    base = dict(namespace=ns, name=name, mode=info.mode, kserve_version=info.kserve_version,
                candidate_digest=artifact_digest, candidate_source=spec.model.source,
                registry_version=registry_version)
    notes = [f"mode {info.mode} ({info.mode_source}); KServe {info.kserve_version or 'unknown'} ({info.version_source})"]

    if existing is None:
        rollout = KServeRollout(**base, strategy="initial", candidate_pods=f"{name}-predictor-.*", notes=notes)
        isvc = next(o for o in objs if o["kind"] == "InferenceService")
        if t.deployment_mode is None:
            isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Knative" if info.mode == "knative" else "Standard"
        cluster.create(isvc)
        try:
            wait_for(cluster, ns, name, _ready_check, t.ready_timeout_s, "first deployment not Ready", f"{name}-predictor")
        except StageFailed as err:
            cluster.delete(ISVC, ns, name)  # nothing was serving before: leave nothing half-made
            raise StageFailed("deploy", err.obj, err.message + "; the new InferenceService was deleted",
                              err.hint, detail=err.detail) from None
        created = cluster.get(ISVC, ns, name)
        rollout.candidate_url = (created or {}).get("status", {}).get("url")
        _sync_keda(spec, cluster, created)
        return rollout

    if _anns(existing).get(ANN_DIGEST) == artifact_digest and is_true(existing, "Ready"):
        return KServeRollout(**base, strategy="unchanged", candidate_pods=f"{_stable_workload(existing)}-.*",
                             notes=notes + ["this artifact already serves"])

    if t.strategy == "blue-green":
        return _deploy_blue_green(spec, cluster, existing, uri, base, notes)
    if info.mode == "knative":
        return _deploy_knative(spec, cluster, existing, uri, base, notes)
    return _deploy_standard(spec, cluster, existing, uri, base, notes)


def _fail_deploy(spec: PromotionSpec, cluster: Cluster, rollout: KServeRollout, err: StageFailed) -> None:
    rollback(spec, rollout, cluster=cluster)
    raise RolledBack("deploy", err.obj, err.message + "; rolled back, the stable model serves 100%",
                     err.hint, detail=err.detail) from None


def _deploy_knative(spec, cluster, existing, uri, base, notes) -> KServeRollout:
    t = spec.target
    ns, name = t.namespace, spec.name
    ps = predictor_status(existing)
    # The revision KServe splits against is the last one rolled out to 100%.
    stable_rev = ps.get("latestRolledoutRevision") or ps.get("latestReadyRevision")
    old_revs = tuple(r for r in (ps.get("latestCreatedRevision"), ps.get("latestReadyRevision")) if r)
    first = spec.canary.steps[0]

    def change(cur: dict) -> dict:
        stable_pred = copy.deepcopy(cur["spec"]["predictor"])
        stable_pred.pop("canaryTrafficPercent", None)
        _set_candidate_anns(cur, spec, base["candidate_digest"], base["registry_version"], "canary", None)
        cur["metadata"]["annotations"][ANN_STABLE_PREDICTOR] = json.dumps(stable_pred, sort_keys=True, separators=(",", ":"))
        cur["spec"]["predictor"] = predictor(spec, uri) | {"canaryTrafficPercent": first}
        return cur

    cluster.update(ISVC, ns, name, change)
    rollout = KServeRollout(**base, strategy="canary", stable_revision=stable_rev, candidate_pods=f"{name}-predictor-.*",
                            stable_pods=f"{stable_rev}-.*" if stable_rev else None, notes=notes)
    try:
        obj = wait_for(cluster, ns, name, _knative_candidate_check(stable_rev, old_revs), t.ready_timeout_s,
                       "candidate revision not Ready", f"{name}-predictor")
    except StageFailed as err:
        _fail_deploy(spec, cluster, rollout, err)
    p = predictor_status(obj)
    rollout.candidate_revision = p["latestCreatedRevision"]
    rollout.candidate_pods = f"{rollout.candidate_revision}-.*"
    rollout.candidate_url = next((x.get("url") for x in p.get("traffic") or [] if x.get("tag") == "latest"), None)
    return rollout


def _deploy_standard(spec, cluster, existing, uri, base, notes) -> KServeRollout:
    t = spec.target
    ns, name = t.namespace, spec.name
    cname = canary_name_for(base["candidate_digest"])
    if cname == (existing["spec"]["predictor"] or {}).get("name"):
        cname = canary_name_for(base["candidate_digest"] + "/2")  # never reuse the stable's name

    def change(cur: dict) -> dict:
        _set_candidate_anns(cur, spec, base["candidate_digest"], base["registry_version"], "canary", cname)
        cur["spec"]["canary"] = [{"trafficPercent": spec.canary.steps[0], "predictor": predictor(spec, uri, name=cname, canary=True)}]
        return cur

    cluster.update(ISVC, ns, name, change)
    rollout = KServeRollout(**base, strategy="canary", canary_name=cname, candidate_pods=f"{name}-{cname}-predictor-.*",
                            stable_pods=f"{_stable_workload(existing)}-.*", notes=notes,
                            candidate_url=f"http://{name}-{cname}-predictor.{ns}.svc.cluster.local")
    try:
        wait_for(cluster, ns, name, _standard_candidate_check(cname), t.ready_timeout_s,
                 f"canary {cname} not Ready", f"{name}-{cname}-predictor")
    except StageFailed as err:
        _fail_deploy(spec, cluster, rollout, err)
    return rollout


def _deploy_blue_green(spec, cluster, existing, uri, base, notes) -> KServeRollout:
    t = spec.target
    ns, name = t.namespace, spec.name
    cname = f"{name}-candidate"
    isvc = inference_service(spec, uri, base["candidate_digest"], registry_version=base["registry_version"], name=cname)
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Knative" if base["mode"] == "knative" else "Standard"

    # Mark the stable first: a crash after the create still leaves a trail to the candidate.
    cluster.update(ISVC, ns, name, lambda cur: (_set_candidate_anns(cur, spec, base["candidate_digest"],
                                                                     base["registry_version"], "blue-green", cname), cur)[1])
    if cluster.get(ISVC, ns, cname) is None:
        cluster.create(isvc)
    rollout = KServeRollout(**base, strategy="blue-green", canary_name=cname, candidate_pods=f"{cname}-predictor-.*",
                            stable_pods=f"{_stable_workload(existing)}-.*", notes=notes)
    try:
        obj = wait_for(cluster, ns, cname, _ready_check, t.ready_timeout_s, "candidate not Ready", f"{cname}-predictor")
    except StageFailed as err:
        _fail_deploy(spec, cluster, rollout, err)
    rollout.candidate_url = (obj.get("status") or {}).get("url")
    return rollout


def _resume(spec: PromotionSpec, cluster: Cluster, r: KServeRollout) -> KServeRollout:
    """Same candidate already on the cluster: wait for it, continue from the traffic it has."""
    t = spec.target
    r.notes.append(f"resumed an in-flight rollout of {r.candidate_digest} at {spec.canary.steps[r.step_index]}%")
    try:
        if r.strategy == "blue-green":
            if cluster.get(ISVC, r.namespace, r.canary_name) is None:
                raise StageFailed("deploy", f"{r.namespace}/{r.canary_name}", "blue-green candidate is gone", "re-run")
            obj = wait_for(cluster, r.namespace, r.canary_name, _ready_check, t.ready_timeout_s, "candidate not Ready", _pod_prefix(r))
            r.candidate_url = (obj.get("status") or {}).get("url")
        elif r.mode == "knative":
            obj = wait_for(cluster, r.namespace, r.name, _knative_candidate_check(r.stable_revision), t.ready_timeout_s,
                           "candidate revision not Ready", f"{r.name}-predictor")
            p = predictor_status(obj)
            r.candidate_revision = p["latestCreatedRevision"]
            r.candidate_pods = f"{r.candidate_revision}-.*"
        else:
            wait_for(cluster, r.namespace, r.name, _standard_candidate_check(r.canary_name or ""), t.ready_timeout_s,
                     f"canary {r.canary_name} not Ready", _pod_prefix(r))
    except StageFailed as err:
        _fail_deploy(spec, cluster, r, err)
    return r


def _deploy_llmisvc(spec, cluster, objs, digest, registry_version) -> KServeRollout:
    """LLMInferenceService: applied and watched; llm-d rolls it out itself (no llmship canary)."""
    t = spec.target
    obj = next(o for o in objs if o["kind"] == "LLMInferenceService")
    cluster.ensure(obj)
    deadline = time.monotonic() + t.ready_timeout_s
    while True:
        cur = cluster.get(LLMISVC, t.namespace, spec.name) or {}
        if generation_observed(cur) and is_true(cur, "Ready"):
            break
        if time.monotonic() > deadline:
            raise StageFailed("deploy", f"{t.namespace}/{spec.name}", "LLMInferenceService not Ready in time",
                              "read its conditions with kubectl describe llminferenceservice")
        time.sleep(2)
    return KServeRollout(namespace=t.namespace, name=spec.name, mode="standard", strategy="llmisvc",
                         candidate_digest=digest, candidate_source=spec.model.source, registry_version=registry_version,
                         candidate_pods=f"{spec.name}-.*", notes=["LLMInferenceService: rolled out by llm-d, no canary"])


# -- canary ------------------------------------------------------------------------------


def _set_traffic(cluster: Cluster, rollout: KServeRollout, percent: int) -> None:
    def change(cur: dict) -> dict:
        if rollout.mode == "knative":
            cur["spec"]["predictor"]["canaryTrafficPercent"] = percent
        else:
            for c in cur["spec"].get("canary") or []:
                if c["predictor"].get("name") == rollout.canary_name:
                    c["trafficPercent"] = percent
        return cur

    cluster.update(ISVC, rollout.namespace, rollout.name, change)


def _load_test(spec: PromotionSpec, url: str) -> dict:
    from tasks.loadtest import arun_load_test  # the load-test engine; imported only when asked for

    report = asyncio.run(arun_load_test(url, spec.served_name, spec.load, spec.slo))
    data = report.model_dump() if hasattr(report, "model_dump") else dict(report)
    return data


def _load_test_passed(data: dict) -> bool:
    for key in ("passed", "slo_passed", "meets_slo", "ok"):
        if key in data:
            return bool(data[key])
    return not data.get("slo_violations")


def run_canary(spec: PromotionSpec, rollout: KServeRollout, cluster: Cluster | None = None) -> CanaryOutcome:
    """Step traffic with analysis at each step; promote at the end, or roll back and raise RolledBack."""
    if rollout.strategy in ("unchanged", "llmisvc"):
        return CanaryOutcome(outcome="unchanged" if rollout.strategy == "unchanged" else "promoted",
                             serving_digest=rollout.candidate_digest, note=rollout.notes[-1])
    cluster = cluster or Cluster.connect(spec, stage="canary")
    cluster.stage = "canary"
    outcome = CanaryOutcome(outcome="promoted", serving_digest=rollout.candidate_digest)
    try:
        _run_steps(spec, rollout, cluster, outcome)
        _promote(spec, rollout, cluster)
    except RolledBack:
        raise
    except LlmshipError as err:
        # Anything else that goes wrong mid-canary still ends with the stable model at 100%.
        rollback(spec, rollout, cluster=cluster)
        raise RolledBack("canary", err.obj, f"{err.message}; rolled back, the stable model serves 100%",
                         err.hint, detail=err.detail) from None
    return outcome


def _steps_for(spec: PromotionSpec, rollout: KServeRollout) -> list[int]:
    if rollout.strategy in ("initial", "blue-green"):
        return [100]  # one analysis round on the candidate's own pods
    return spec.canary.steps[rollout.step_index:]


def _run_steps(spec: PromotionSpec, rollout: KServeRollout, cluster: Cluster, outcome: CanaryOutcome) -> None:
    t, c = spec.target, spec.canary
    gates = analysis.builtin_gates(spec, has_stable=rollout.stable_pods is not None) if t.prometheus_url else []
    for percent in _steps_for(spec, rollout):
        if rollout.strategy == "canary":
            _set_traffic(cluster, rollout, percent)
            wait_for(cluster, rollout.namespace, rollout.name, _traffic_check(rollout, percent), SETTLE_TIMEOUT_S,
                     f"traffic did not move to {percent}%", _pod_prefix(rollout), stage="canary")
            rollout.step_index = spec.canary.steps.index(percent)
        load_test = t.canary_load_test and rollout.candidate_url
        started = time.monotonic()
        if gates or load_test:
            time.sleep(c.step_duration_s)  # let the step's traffic show up in the metrics
        # Rates over this step's own time only: a longer window would mix in the previous step.
        window = f"{max(2, int(time.monotonic() - started))}s"
        results = []
        if gates:
            values = {"namespace": rollout.namespace, "model": spec.served_name, "window": window,
                      "candidate_pods": rollout.candidate_pods, "stable_pods": rollout.stable_pods or "^$"}
            results = analysis.evaluate(t.prometheus_url, gates, values, percent)
        if load_test:
            data = _load_test(spec, rollout.candidate_url)
            outcome.load_tests.append(data)
            ok = _load_test_passed(data)
            results.append(analysis.GateResult(step=percent, name="load-test", query=rollout.candidate_url, value=None,
                                               limit="spec.slo", ok=ok, reason="SLO met" if ok else "SLO not met"))
        outcome.checks += results
        failed = [r for r in results if not r.ok]
        outcome.failures += len(failed)
        if outcome.failures > c.failure_limit:
            rollback(spec, rollout, cluster=cluster)
            lines = [f"{r.step}% {r.name}: {'ok' if r.ok else 'FAILED'} {r.reason}" for r in outcome.checks]
            raise RolledBack("canary", _obj(rollout),
                             f"gate {failed[0].name} failed at {percent}% ({failed[0].reason}); "
                             f"{outcome.failures} failed check(s) > failure_limit {c.failure_limit}; rolled back, the stable model serves 100%",
                             "read the checks below; fix the candidate or relax spec.slo / canary.gates",
                             detail="\n".join(lines + [f"query: {failed[0].query}"]))
        outcome.steps.append(percent)


def _promote(spec: PromotionSpec, rollout: KServeRollout, cluster: Cluster) -> None:
    ns, name = rollout.namespace, rollout.name
    if rollout.strategy == "initial":
        cluster.update(ISVC, ns, name, lambda cur: (_record_promoted(cur, rollout), cur)[1])
        return
    if rollout.strategy == "blue-green":
        cand = cluster.get(ISVC, ns, rollout.canary_name)
        if cand is None:
            raise StageFailed("canary", f"{ns}/{rollout.canary_name}", "blue-green candidate disappeared", "re-run llmship")

        def switch(cur: dict) -> dict:
            cur["spec"]["predictor"] = copy.deepcopy(cand["spec"]["predictor"])
            _record_promoted(cur, rollout)
            return cur

        cluster.update(ISVC, ns, name, switch)
        obj = wait_for(cluster, ns, name, _ready_check, spec.target.ready_timeout_s, "switch to the candidate not Ready",
                       f"{name}-predictor", stage="canary")
        cluster.delete(ISVC, ns, rollout.canary_name)
        _sync_keda(spec, cluster, obj)
        return

    def promote(cur: dict) -> dict:
        if rollout.mode == "knative":
            cur["spec"]["predictor"].pop("canaryTrafficPercent", None)
        else:
            entry = next(c for c in cur["spec"].get("canary") or [] if c["predictor"].get("name") == rollout.canary_name)
            stable = cur["spec"]["predictor"]
            pred = copy.deepcopy(entry["predictor"])
            if "maxReplicas" in stable:
                pred["maxReplicas"] = stable["maxReplicas"]
            cur["spec"]["predictor"] = pred  # same name as the canary: KServe keeps its pods
            cur["spec"]["canary"] = [c for c in cur["spec"]["canary"] if c is not entry]
            if not cur["spec"]["canary"]:
                del cur["spec"]["canary"]
        _record_promoted(cur, rollout)
        return cur

    cluster.update(ISVC, ns, name, promote)
    obj = wait_for(cluster, ns, name, _promoted_check(rollout), SETTLE_TIMEOUT_S, "promotion did not settle",
                   _pod_prefix(rollout), stage="canary")
    _sync_keda(spec, cluster, obj)


# -- rollback ----------------------------------------------------------------------------


def rollback(spec: PromotionSpec, rollout: KServeRollout, cluster: Cluster | None = None) -> None:
    """Stable back at 100%, candidate removed, candidate annotations cleared. Safe to repeat."""
    cluster = cluster or Cluster.connect(spec, stage="canary")
    ns, name = rollout.namespace, rollout.name
    if rollout.strategy in ("unchanged", "llmisvc"):
        return
    if rollout.strategy == "initial":
        cluster.delete(ISVC, ns, name)
        return
    if rollout.strategy == "blue-green":
        if rollout.canary_name:
            cluster.delete(ISVC, ns, rollout.canary_name)
        if cluster.get(ISVC, ns, name):
            cluster.update(ISVC, ns, name, lambda cur: (_clear_candidate_anns(cur), cur)[1])
        return
    if cluster.get(ISVC, ns, name) is None:
        return

    def undo(cur: dict) -> dict:
        a = _anns(cur)
        if rollout.mode == "knative":
            if ANN_STABLE_PREDICTOR in a:
                cur["spec"]["predictor"] = json.loads(a[ANN_STABLE_PREDICTOR])
            # 0 keeps every request on the last rolled-out (stable) revision, also while
            # KServe reconciles the restored spec into a new revision of the stable model.
            cur["spec"]["predictor"]["canaryTrafficPercent"] = 0
        else:
            keep = [c for c in cur["spec"].get("canary") or [] if c["predictor"].get("name") != rollout.canary_name]
            if keep:
                cur["spec"]["canary"] = keep
            else:
                cur["spec"].pop("canary", None)
        _clear_candidate_anns(cur)
        return cur

    cluster.update(ISVC, ns, name, undo)
    if rollout.mode == "knative" and not rollout.stable_revision:
        return
    wait_for(cluster, ns, name, _stable_back_check(rollout), SETTLE_TIMEOUT_S, "rollback did not settle",
             _pod_prefix(rollout), stage="canary")
