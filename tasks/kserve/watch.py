"""Wait until the cluster reports a change itself, judged on the thing that changed.

KServe's `status.observedGeneration` is copied from a child object (the stable Deployment in
Standard mode, the Knative Service in Knative mode: kserve v0.20.0
pkg/apis/serving/v1beta1/inference_service_status.go), so it is not compared with the
InferenceService's own generation. Each check reads what the controller reports for what
was changed: a Deployment's rollout status and its pods, a Knative revision and the traffic
block, canaryStatuses, an LLMInferenceService group's members. A crashing or unschedulable
pod, or a model that FailedToLoad, fails at once; a timeout fails with the conditions, the
recent Events and a pod's log tail.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

from tasks.errors import StageFailed
from tasks.kserve.cluster import Cluster

Verdict = tuple[Literal["ok", "wait", "fail"], str]
POLL_S = 1.0
# Container states that never end in a serving pod without a change to its spec.
STUCK = ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName",
         "CreateContainerError", "RunContainerError")


def condition(obj: dict, ctype: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_true(obj: dict, ctype: str) -> bool:
    c = condition(obj, ctype)
    return bool(c) and c.get("status") == "True"


def predictor_status(obj: dict) -> dict:
    return ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}


def failed_to_load(model_status: dict | None) -> str | None:
    ms = model_status or {}
    if (ms.get("states") or {}).get("activeModelState") == "FailedToLoad" or ms.get("transitionStatus") == "BlockedByFailedLoad":
        info = ms.get("lastFailureInfo") or {}
        return f"model FailedToLoad: {info.get('reason', '?')}: {info.get('message', '')} (exit code {info.get('exitCode', '?')})"
    return None


def pod_trouble(pods: list[dict]) -> str | None:
    """Why these pods will not serve as they are (crash loop, restarts, bad image, failed), or None."""
    for pod in pods:
        name = pod["metadata"]["name"]
        st = pod.get("status") or {}
        if st.get("phase") == "Failed":
            return f"pod {name} Failed: {st.get('reason') or ''} {st.get('message') or ''}".strip()
        for cs in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
            waiting = ((cs.get("state") or {}).get("waiting") or {})
            if waiting.get("reason") in STUCK:
                return f"pod {name} container {cs.get('name')}: {waiting['reason']} {waiting.get('message') or ''}".strip()
            if cs.get("restartCount", 0) >= 2:
                last = ((cs.get("lastState") or {}).get("terminated") or {})
                return (f"pod {name} container {cs.get('name')} restarted {cs['restartCount']} times"
                        + (f" (last exit {last.get('exitCode')}: {last.get('reason') or ''})" if last else ""))
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return f"pod {name} cannot be scheduled: {c.get('message') or ''}"
    return None


def rollout_verdict(dep: dict | None, pods: list[dict]) -> Verdict:
    """A Deployment whose newest spec runs on every replica, available; its pods not stuck."""
    if dep is None:
        return "wait", "Deployment not created yet"
    name = dep["metadata"]["name"]
    trouble = pod_trouble(pods)
    if trouble:
        return "fail", trouble
    spec, st = dep.get("spec") or {}, dep.get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return "fail", f"Deployment {name}: {c.get('message') or 'progress deadline exceeded'}"
    want = spec.get("replicas", 1)
    if st.get("observedGeneration", 0) < dep["metadata"].get("generation", 0):
        return "wait", f"Deployment {name}: controller has not seen generation {dep['metadata'].get('generation')}"
    updated, available, total = st.get("updatedReplicas", 0), st.get("availableReplicas", 0), st.get("replicas", 0)
    if updated >= want and available >= want and total <= want:
        return "ok", f"Deployment {name}: {available}/{want} available on the newest spec"
    return "wait", f"Deployment {name}: {updated} updated, {available} available, {total} in all of {want}"


def describe(obj: dict | None) -> str:
    if not obj:
        return "(object not found)"
    st = obj.get("status") or {}
    lines = [f"{obj.get('kind', '')} {obj['metadata'].get('name')} generation {obj['metadata'].get('generation')}"]
    for c in st.get("conditions") or []:
        lines.append(f"condition {c.get('type')}={c.get('status')} {c.get('reason') or ''} {c.get('message') or ''}".rstrip())
    pred = predictor_status(obj)
    if pred:
        lines.append(f"predictor latestCreated={pred.get('latestCreatedRevision')} latestReady={pred.get('latestReadyRevision')}"
                     f" rolledOut={pred.get('latestRolledoutRevision')}")
        for t in pred.get("traffic") or []:
            lines.append(f"traffic {t.get('revisionName')} {t.get('percent')}% tag={t.get('tag')}")
    for cs in st.get("canaryStatuses") or []:
        lines.append(f"canary {cs.get('name')} ready={cs.get('ready')} traffic={cs.get('trafficPercent')}%")
    if st.get("modelStatus"):
        ms = st["modelStatus"]
        lines.append(f"modelStatus {(ms.get('states') or {}).get('activeModelState')} {ms.get('transitionStatus')}")
    return "\n".join(lines)


def diagnostics(cluster: Cluster, ns: str, name: str, obj: dict | None, pod_prefix: str) -> str:
    parts = ["status:", describe(obj), "recent events:"]
    parts += cluster.events_for(ns, name) or ["(none)"]
    pod, log = cluster.pod_log_tail(ns, pod_prefix)
    parts.append(f"log tail of pod {pod}:" if pod else f"no pod matching {pod_prefix}*")
    if log:
        parts.append(log.rstrip())
    return "\n".join(parts)


def wait_until(check: Callable[[], Verdict], timeout_s: float, what: str, obj: str,
               explain: Callable[[], str], stage: str = "deploy", poll_s: float = POLL_S) -> str:
    """Poll `check` until ok (returns its message); StageFailed on fail or timeout, with `explain()`."""
    deadline = time.monotonic() + timeout_s
    while True:
        verdict, msg = check()
        if verdict == "ok":
            return msg
        if verdict == "fail":
            raise StageFailed(stage, obj, f"{what}: {msg}", "see the status, events and pod log below; fix the "
                              "model or engine args and re-run", detail=explain())
        if time.monotonic() >= deadline:
            raise StageFailed(stage, obj, f"{what}: timed out after {timeout_s:.0f} s ({msg})",
                              "raise target.ready_timeout_s for slow loads, or read the events and log below",
                              detail=explain())
        time.sleep(poll_s)
