"""Wait on an InferenceService through a watch stream until a condition holds.

Each check reads the status KServe writes: the Ready / PredictorReady / IngressReady
conditions, status.components.predictor (revisions and traffic), status.modelStatus and
status.canaryStatuses. A FailedToLoad model fails at once; a timeout fails with the
conditions, the recent Events and the predictor pod's log tail.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

from kubernetes import watch
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from tasks.errors import StageFailed
from tasks.kserve.cluster import ISVC, Cluster

Verdict = tuple[Literal["ok", "wait", "fail"], str]


def condition(obj: dict, ctype: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_true(obj: dict, ctype: str) -> bool:
    c = condition(obj, ctype)
    return bool(c) and c.get("status") == "True"


def generation_observed(obj: dict) -> bool:
    return (obj.get("status") or {}).get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)


def predictor_status(obj: dict) -> dict:
    return ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}


def failed_to_load(model_status: dict | None) -> str | None:
    ms = model_status or {}
    if (ms.get("states") or {}).get("activeModelState") == "FailedToLoad" or ms.get("transitionStatus") == "BlockedByFailedLoad":
        info = ms.get("lastFailureInfo") or {}
        return f"model FailedToLoad: {info.get('reason', '?')}: {info.get('message', '')} (exit code {info.get('exitCode', '?')})"
    return None


def describe(obj: dict | None) -> str:
    if not obj:
        return "(object not found)"
    st = obj.get("status") or {}
    lines = [f"generation {obj['metadata'].get('generation')} observed {st.get('observedGeneration')}"]
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
    parts = ["conditions:", describe(obj), "recent events:"]
    parts += cluster.events_for(ns, name) or ["(none)"]
    pod, log = cluster.pod_log_tail(ns, pod_prefix)
    parts.append(f"log tail of pod {pod}:" if pod else f"no predictor pod matching {pod_prefix}*")
    if log:
        parts.append(log.rstrip())
    return "\n".join(parts)


def wait_for(
    cluster: Cluster,
    ns: str,
    name: str,
    check: Callable[[dict], Verdict],
    timeout_s: float,
    what: str,
    pod_prefix: str,
    stage: str = "deploy",
) -> dict:
    """Return the object once check says ok; raise StageFailed on fail or timeout."""
    deadline = time.monotonic() + timeout_s
    obj = cluster.get(ISVC, ns, name)
    last_msg = "not found"
    while True:
        if obj is not None:
            verdict, last_msg = check(obj)
            if verdict == "ok":
                return obj
            if verdict == "fail":
                raise StageFailed(stage, f"{ns}/{name}", f"{what}: {last_msg}",
                                  "see the pod log below; fix the model or engine args and re-run",
                                  detail=diagnostics(cluster, ns, name, obj, pod_prefix))
        left = deadline - time.monotonic()
        if left <= 0:
            raise StageFailed(stage, f"{ns}/{name}", f"{what}: timed out after {timeout_s:.0f}s ({last_msg})",
                              "raise target.ready_timeout_s for slow loads, or read the events and log below",
                              detail=diagnostics(cluster, ns, name, obj, pod_prefix))
        rv = obj["metadata"]["resourceVersion"] if obj else None
        w = watch.Watch()
        try:
            for ev in w.stream(cluster.custom.list_namespaced_custom_object, ISVC.group, ISVC.version, ns, ISVC.plural,
                               field_selector=f"metadata.name={name}", resource_version=rv,
                               timeout_seconds=max(1, int(min(left, 30)))):
                if ev["type"] == "DELETED":
                    obj = None
                elif ev["type"] in ("ADDED", "MODIFIED"):
                    obj = ev["object"]
                else:
                    continue
                if obj is not None and check(obj)[0] != "wait":
                    break
        except ApiException as err:
            if err.status != 410:  # 410 Gone: our resourceVersion is too old; re-read below
                raise cluster.fail(f"{ns}/{name}", "watch InferenceService", err) from None
        except (Urllib3Error, OSError):
            time.sleep(0.2)  # a dropped stream: re-read and watch again
        finally:
            w.stop()
        if obj is None or check(obj)[0] == "wait":
            obj = cluster.get(ISVC, ns, name)
