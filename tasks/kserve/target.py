"""The KServe target behind tasks.targets: deploy a candidate, run the canary, abort it.

    deploy       render + admit, read the cluster (KServe's namespace, mode, version, whether
                 Standard mode splits), refuse what cannot be done safely before any write,
                 resume or undo an unfinished canary, then put the candidate up with its router
    run_canary   the canary machine over that router and Prometheus
    abort        the machine rolls back from wherever the record says it stands

What serves and the canary's record live in the ConfigMap `llmship-<name>` (tasks.kserve.records).
"""

from __future__ import annotations

import httpx

from tasks.canary.judge import JudgeRules
from tasks.canary.machine import CanaryMachine, CanaryRecord, Policy
from tasks.errors import BadInput, RolledBack, StageFailed
from tasks.kserve import records
from tasks.kserve.admission import admit
from tasks.kserve.cluster import ISVC, LLMISVC, RUNTIME, Cluster
from tasks.kserve.detect import ClusterInfo, detect, normalize_mode
from tasks.kserve.observe import PrometheusObserver
from tasks.kserve.render import (
    ANN_MODE, RUNTIME_KIND_LABEL, inference_service, llm_inference_service, predictor, render_all, scaled_object,
    serving_runtime, storage_uri_for,
)
from tasks.kserve.routers import (
    BlueGreen, FirstRollout, KnativeCanary, LLMGroup, StandardSplit, canary_name_for, router_for,
)
from tasks.kserve.watch import is_true
from tasks.revision import ServingRevision, changed_inputs, revision_of
from tasks.spec import PromotionSpec, is_predictive
from tasks.values import Deployment, PublishedArtifact, ResolvedModel


def target_key(spec: PromotionSpec) -> str:
    return f"kserve:{spec.target.namespace}:{spec.name}"


def predictor_for(spec: PromotionSpec, uri: str, name: str | None = None, canary: bool = False) -> dict:
    if is_predictive(spec):
        from tasks.kserve.render_predictive import predictive_predictor

        return predictive_predictor(spec, uri, None, name=name, canary=canary)
    return predictor(spec, uri, name=name, canary=canary)


def isvc_for(spec: PromotionSpec, uri: str, digest: str, mode: str, name: str | None = None) -> dict:
    if is_predictive(spec):
        from tasks.kserve.render_predictive import predictive_inference_service

        isvc = predictive_inference_service(spec, uri, digest, None, mode, name=name)
    else:
        isvc = inference_service(spec, uri, digest, mode=mode, name=name)
    isvc["metadata"]["annotations"][ANN_MODE] = "Knative" if mode == "knative" else "Standard"
    return isvc


def revision_for(spec: PromotionSpec, storage_uri: str, artifact_digest: str, mode: str) -> ServingRevision:
    """Everything of the InferenceService that shapes the running server (its llmship name aside)."""
    runtime = None if is_predictive(spec) else serving_runtime(spec)["spec"]  # predictive: KServe's own, by name
    inputs = {"artifact": artifact_digest, "storage_uri": storage_uri, "mode": mode,
              "runtime": runtime, "engine": spec.engine.model_dump(mode="json")}
    if spec.target.llm_inference_service.enabled:
        inputs["llm_inference_service"] = llm_inference_service(spec, storage_uri, artifact_digest)["spec"]
    else:
        isvc = isvc_for(spec, storage_uri, artifact_digest, mode)
        inputs["predictor"] = isvc["spec"]["predictor"]
        inputs["annotations"] = isvc["metadata"]["annotations"]
    return revision_of(inputs)


def _reachable(url: str | None) -> str:
    """"" when this worker reaches the URL; else why not (in-cluster names do not resolve outside)."""
    if not url:
        return "KServe reports no URL for the candidate"
    try:
        code = httpx.get(url.rstrip("/") + "/health", timeout=3).status_code
        return "" if code == 200 else f"{url}/health answered {code}"
    except httpx.HTTPError as err:
        return f"{url} does not answer from this worker ({type(err).__name__})"


def _info(cluster: Cluster, spec: PromotionSpec, existing: dict | None) -> ClusterInfo:
    t = spec.target
    info = detect(cluster, existing, t.deployment_mode, t.kserve_version, t.kserve_namespace)
    obj = f"{t.namespace}/{spec.name}"
    if info is None:
        raise BadInput("deploy", obj, "cannot tell the KServe deployment mode (no status, annotation or inferenceservice-config)",
                       "set target.deployment_mode: Knative or Standard")
    wanted = normalize_mode(t.deployment_mode)
    if existing and wanted and wanted != info.mode:
        raise BadInput("deploy", obj, f"the InferenceService runs in {info.mode} mode ({info.mode_source}); the spec asks {t.deployment_mode}",
                       "KServe cannot switch modes in place: match target.deployment_mode, or deploy under a new name")
    return info


def _refuse_unsafe(spec: PromotionSpec, info: ClusterInfo, existing: dict | None) -> None:
    """What must hold before llmship writes anything."""
    t = spec.target
    obj = f"{t.namespace}/{spec.name}"
    if not existing:
        return
    if t.strategy == "canary" and info.mode == "standard" and not info.standard_split:
        raise BadInput(
            "deploy", obj,
            f"Standard mode cannot split traffic on this cluster: {info.standard_split_source} "
            "(a canary would serve the candidate nothing, or, before 0.20, everything)",
            "set target.strategy: blue-green (the candidate is judged on its own, then one switch), or use "
            "Knative mode, or a KServe that splits spec.canary[] through Gateway API (ingress.enableGatewayApi)")
    if not t.prometheus_url:
        raise BadInput("deploy", obj, "a canary needs metrics, and target.prometheus_url is not set",
                       "set target.prometheus_url to the Prometheus that scrapes the predictor pods")
    foreign = existing["spec"].get("canary") or (existing["spec"].get("predictor") or {}).get("canaryTrafficPercent") not in (None, 0, 100)
    if foreign:
        raise BadInput("deploy", obj, "a canary that llmship did not start is in progress on this InferenceService",
                       "finish or remove it (canaryTrafficPercent / spec.canary) and re-run")


def _ensure_runtime(cluster: Cluster, spec: PromotionSpec) -> str:
    rt = serving_runtime(spec)
    if cluster.get(RUNTIME, spec.target.namespace, rt["metadata"]["name"]) is None:
        cluster.create(rt)  # never updated: a different runtime has a different name
    return rt["metadata"]["name"]


def collect_runtimes(cluster: Cluster, spec: PromotionSpec) -> list[str]:
    """Delete llmship's ServingRuntimes that no InferenceService in the namespace names any more."""
    ns = spec.target.namespace
    used = {((i.get("spec") or {}).get("predictor") or {}).get("model", {}).get("runtime")
            for i in cluster.list_custom(ISVC, ns)}
    for i in cluster.list_custom(ISVC, ns):
        for c in (i.get("spec") or {}).get("canary") or []:
            used.add((c.get("predictor") or {}).get("model", {}).get("runtime"))
    gone = []
    for rt in cluster.list_custom(RUNTIME, ns, label_selector=RUNTIME_KIND_LABEL):
        name = rt["metadata"]["name"]
        if name not in used and cluster.delete(RUNTIME, ns, name):
            gone.append(name)
    return gone


def deploy(spec: PromotionSpec, artifact: PublishedArtifact, resolved: ResolvedModel) -> Deployment:
    t = spec.target
    ns, name = t.namespace, spec.name
    objs = render_all(spec, artifact.uri, artifact.digest, resolved.registry_version)
    admit(objs, "deploy")  # the cluster would refuse them anyway; say so before touching it
    uri = storage_uri_for(spec, artifact.uri)
    cluster = Cluster.connect(spec)
    llm = t.llm_inference_service.enabled
    existing = None if llm else cluster.get(ISVC, ns, name)
    info = _info(cluster, spec, existing)
    revision = revision_for(spec, uri, artifact.digest, info.mode)
    notes = [f"KServe {info.kserve_version or 'version unknown'} in namespace {info.kserve_namespace} "
             f"({info.namespace_source}), {info.mode} mode ({info.mode_source})"]

    record = records.read_canary(cluster, spec)
    if record is not None and not record.done:
        router = router_for(spec, cluster, record.handle)
        if record.candidate_revision == revision.digest and router.health().candidate_ok:
            notes.append(f"resumed the promotion of {revision.short} in phase {record.phase.value} at step "
                         f"{record.step_index + 1} of {len(record.plan) or 1}")
            return _deployment(spec, revision, record, cluster, notes, resumed=True)
        why = "another revision" if record.candidate_revision != revision.digest else "its candidate no longer serves"
        _machine(spec, cluster, record).abort(f"a new promotion found an unfinished canary ({why}); rolled back first",
                                              decided_by="next run")
        notes.append(f"rolled back an unfinished promotion of {record.candidate_revision[:12]} ({why})")
        existing = None if llm else cluster.get(ISVC, ns, name)

    serving = records.read_serving(cluster, spec)
    if serving and serving.revision == revision.digest and _serves(cluster, spec, serving):
        return _deployment(spec, revision, None, cluster, notes + [f"revision {revision.short} already serves "
                           f"{ns}/{serving.isvc} since {serving.since}"], unchanged=True, serving=serving)
    if serving and existing:
        notes.append(f"serving revision {(serving.revision or '(unrecorded)')[:12]} -> {revision.short}: "
                     f"{', '.join(changed_inputs(serving.revision_inputs, revision.inputs))} changed")
    if llm and serving and not t.prometheus_url:
        raise BadInput("deploy", f"{ns}/{name}", "a canary needs metrics, and target.prometheus_url is not set",
                       "set target.prometheus_url to the Prometheus that scrapes the predictor pods")
    _refuse_unsafe(spec, info, existing)

    runtime = None if llm or is_predictive(spec) else _ensure_runtime(cluster, spec)
    handle = {"mode": info.mode, "candidate_revision": revision.digest, "candidate_inputs": revision.inputs,
              "artifact_digest": artifact.digest, "storage_uri": uri, "source": spec.model.source,
              "registry_version": resolved.registry_version, "runtime": runtime,
              "stable_revision_digest": serving.revision if serving else None}
    if llm:
        handle.update(router="LLMGroup", candidate_member=f"{name}-{revision.digest[:8]}",
                      stable_member=serving.isvc if serving else None)
    elif existing is None:
        handle["router"] = "FirstRollout"
    elif t.strategy == "blue-green":
        handle["router"] = "BlueGreen"
    elif info.mode == "knative":
        handle["router"] = "KnativeCanary"
    else:
        handle.update(router="StandardSplit", canary_name=canary_name_for(revision.digest))
    router = router_for(spec, cluster, handle)
    router.prepare()
    plan = [] if handle["router"] == "FirstRollout" or (llm and not serving) else \
        (router.plan() if hasattr(router, "plan") else list(spec.canary.steps))
    record = CanaryRecord(target=target_key(spec), candidate_revision=revision.digest,
                          stable_revision=serving.revision if serving else None, plan=plan,
                          failure_limit=spec.canary.failure_limit, handle=router.h)
    records.save_canary(cluster, spec, record)  # before any write: a crash leaves a trail to the candidate
    try:
        if isinstance(router, LLMGroup):
            member = llm_inference_service(spec, uri, artifact.digest)
            member["metadata"]["name"] = handle["candidate_member"]
            member["spec"].setdefault("router", {}).setdefault("route", {}).update(
                {"group": name, "weight": 0 if serving else 100})
            router.deploy(member)
        elif isinstance(router, FirstRollout):
            router.deploy(isvc_for(spec, uri, artifact.digest, info.mode))
        elif isinstance(router, BlueGreen):
            router.deploy(isvc_for(spec, uri, artifact.digest, info.mode, name=f"{name}-candidate"))
        elif isinstance(router, KnativeCanary):
            router.deploy(predictor_for(spec, uri))
        else:
            router.deploy(predictor_for(spec, uri, name=handle["canary_name"], canary=True))
    except StageFailed as err:
        record.handle = router.h
        done = _machine(spec, cluster, record).abort(f"deploy failed: {err.message}", decided_by="deploy")
        if handle["router"] == "FirstRollout":
            raise StageFailed("deploy", err.obj, err.message + "; the new InferenceService was deleted",
                              err.hint, detail=err.detail) from None
        raise RolledBack("deploy", err.obj, f"{err.message}; {done.phase.value}: the stable model serves 100%",
                         err.hint, detail=err.detail) from None
    record.handle = router.h
    records.save_canary(cluster, spec, record)
    if t.keda.enabled and info.mode == "standard" and not llm:
        prom = t.prometheus_url or "http://prometheus-operated.monitoring.svc:9090"
        cluster.ensure(scaled_object(spec, prom))
    return _deployment(spec, revision, record, cluster, notes)


def _serves(cluster: Cluster, spec: PromotionSpec, serving: records.ServingRecord) -> bool:
    kind = LLMISVC if serving.kind == "LLMInferenceService" else ISVC
    obj = cluster.get(kind, spec.target.namespace, serving.isvc or spec.name)
    return obj is not None and is_true(obj, "Ready")


def _deployment(spec: PromotionSpec, revision: ServingRevision, record: CanaryRecord | None, cluster: Cluster,
                notes: list[str], unchanged: bool = False, resumed: bool = False,
                serving: records.ServingRecord | None = None) -> Deployment:
    t = spec.target
    served = cluster.get(ISVC, t.namespace, spec.name) or {}
    served_url = (served.get("status") or {}).get("url") or f"http://{spec.name}.{t.namespace}.svc.cluster.local"
    handle = record.handle if record else {}
    url = handle.get("candidate_url") if handle.get("router") != "FirstRollout" else served_url
    why = "" if unchanged else _reachable(url)
    return Deployment(target="kserve", name=spec.name, served_name=spec.served_name, revision=revision.digest,
                      revision_inputs=revision.inputs, unchanged=unchanged,
                      stable_revision=(record.stable_revision if record else (serving.revision if serving else None)),
                      served_url=served_url, candidate_url=None if why else url,
                      candidate_unreachable=f"{why}; warm-up and load test need a worker that reaches it" if why else "",
                      resumed=resumed, passed=tuple(record.pre_rollout) if record else (), notes=tuple(notes))


def _machine(spec: PromotionSpec, cluster: Cluster, record: CanaryRecord, on_step=None, on_report=None) -> CanaryMachine:
    router = router_for(spec, cluster, record.handle)
    load_url = None
    if spec.target.canary_load_test:
        load_url = record.handle.get("candidate_url") if isinstance(router, BlueGreen) else \
            ((cluster.get(ISVC, spec.target.namespace, spec.name) or {}).get("status") or {}).get("url")
        load_url = load_url if load_url and not _reachable(load_url) else None
    observer = PrometheusObserver(spec, spec.target.namespace, router.candidate_pods if record.plan else "",
                                  router.stable_pods if record.plan else None, load_url=load_url, on_report=on_report)

    def save(r: CanaryRecord) -> None:
        records.save_canary(cluster, spec, r)

    return CanaryMachine(record, router, observer, JudgeRules.from_spec(spec), Policy.from_spec(spec), save=save,
                         on_step=on_step)


def run_canary(spec: PromotionSpec, deployment: Deployment, on_step=None, on_report=None) -> CanaryRecord:
    cluster = Cluster.connect(spec, stage="canary")
    record = records.read_canary(cluster, spec)
    if record is None or record.candidate_revision != deployment.revision:
        raise StageFailed("canary", f"{spec.target.namespace}/{spec.name}", "the canary record is gone from the cluster",
                          f"someone removed ConfigMap {records.configmap_name(spec.name)}; re-run the promotion")
    try:
        return _machine(spec, cluster, record, on_step, on_report).run()
    finally:
        if records.read_canary(cluster, spec) is not None and not spec.target.llm_inference_service.enabled:
            collect_runtimes(cluster, spec)


def abort(spec: PromotionSpec, why: str, decided_by: str) -> CanaryRecord | None:
    cluster = Cluster.connect(spec, stage="canary")
    record = records.read_canary(cluster, spec)
    if record is None or record.done:
        return None
    return _machine(spec, cluster, record).abort(why, decided_by)


def mark_passed(spec: PromotionSpec, stage: str) -> None:
    cluster = Cluster.connect(spec)
    record = records.read_canary(cluster, spec)
    if record is not None and not record.done:
        record.pre_rollout[stage] = "passed"
        records.save_canary(cluster, spec, record)


def current_record(spec: PromotionSpec) -> CanaryRecord | None:
    return records.read_canary(Cluster.connect(spec), spec)


__all__ = ["abort", "collect_runtimes", "current_record", "deploy", "mark_passed", "run_canary"]
