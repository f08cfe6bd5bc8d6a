"""The canary's routers on KServe, one per traffic mechanism (tasks.canary.machine.Router).

    FirstRollout        no stable yet: the InferenceService is created; nothing to split
    KnativeCanary       Knative mode: canaryTrafficPercent, revisions judged by name
    StandardSplit       Standard mode where the cluster really splits: spec.canary[] with HTTPRoute weights
    BlueGreen           a second InferenceService judged on its own, then one switch of the stable
    LLMGroup            LLMInferenceServices in one router.route group, by weight; the old one stopped

Each keeps what it must remember in the canary record's `handle` (JSON), so a run killed at
any point rebuilds the same router from the record. Every operation is idempotent.
"""

from __future__ import annotations

import copy
import hashlib

from tasks.canary.machine import Health
from tasks.errors import StageFailed
from tasks.kserve import records
from tasks.kserve.cluster import HTTPROUTE, ISVC, LLMISVC, Cluster
from tasks.kserve.watch import (
    Verdict, diagnostics, failed_to_load, is_true, pod_trouble, predictor_status, rollout_verdict, wait_until,
)
from tasks.spec import PromotionSpec

SETTLE_TIMEOUT_S = 300.0  # traffic moves and rollbacks of revisions that already run
STOP_ANNOTATION = "serving.kserve.io/stop"  # KServe v0.20 constants.StopAnnotationKey


def predictor_deployment(isvc: str, predictor_name: str | None = None) -> str:
    """KServe's name for a predictor's Deployment and Service (constants.PredictorServiceName)."""
    return f"{isvc}-{predictor_name}-predictor" if predictor_name else f"{isvc}-predictor"


def canary_name_for(revision: str) -> str:
    return "c" + hashlib.sha256(revision.encode()).hexdigest()[:7]


class KServeRouter:
    """What every KServe router shares: the cluster, the spec, the record's handle."""

    kind = "kserve"

    def __init__(self, spec: PromotionSpec, cluster: Cluster, handle: dict):
        self.spec = spec
        self.cluster = cluster
        self.h = handle
        self.ns = spec.target.namespace
        self.name = spec.name

    # -- helpers -----------------------------------------------------------------------

    def isvc(self, name: str | None = None) -> dict | None:
        return self.cluster.get(ISVC, self.ns, name or self.name)

    def _wait(self, check, what: str, obj: str, pod_prefix: str, timeout_s: float | None = None) -> str:
        return wait_until(check, timeout_s or self.spec.target.ready_timeout_s, what, f"{self.ns}/{obj}",
                          lambda: diagnostics(self.cluster, self.ns, obj, self.cluster.get(ISVC, self.ns, obj), pod_prefix),
                          stage=self.cluster.stage)

    def deployment_check(self, deployment: str, isvc: str | None = None) -> Verdict:
        dep = self.cluster.deployment(self.ns, deployment)
        pods = self.cluster.pods_of(self.ns, dep) if dep else []
        if isvc:
            obj = self.isvc(isvc) or {}
            fail = failed_to_load((obj.get("status") or {}).get("modelStatus"))
            if fail:
                return "fail", fail
        return rollout_verdict(dep, pods)

    def delete_and_wait(self, kind, name: str) -> None:
        """Delete, then wait until the object is really gone (KServe's finalizer runs first)."""
        if not self.cluster.delete(kind, self.ns, name):
            return
        wait_until(lambda: ("ok", "gone") if self.cluster.get(kind, self.ns, name) is None
                   else ("wait", f"{kind.kind} {name} still being deleted"), SETTLE_TIMEOUT_S,
                   f"{kind.kind} not deleted", f"{self.ns}/{name}",
                   lambda: diagnostics(self.cluster, self.ns, name, self.cluster.get(kind, self.ns, name), name),
                   stage=self.cluster.stage)

    def pods_ok(self, deployment: str) -> str | None:
        """None when the Deployment's pods serve; else what is wrong."""
        dep = self.cluster.deployment(self.ns, deployment)
        if dep is None:
            return f"Deployment {deployment} is gone"
        trouble = pod_trouble(self.cluster.pods_of(self.ns, dep))
        if trouble:
            return trouble
        if (dep.get("status") or {}).get("availableReplicas", 0) < 1:
            return f"Deployment {deployment} has no available replica"
        return None

    def record_serving(self, isvc: str, kind: str = "InferenceService") -> None:
        h = self.h
        records.write_serving(self.cluster, self.spec, records.ServingRecord(
            revision=h["candidate_revision"], revision_inputs=h.get("candidate_inputs", {}),
            artifact_digest=h.get("artifact_digest"), storage_uri=h.get("storage_uri"), source=h.get("source"),
            registry_version=h.get("registry_version"), isvc=isvc, kind=kind))

    def health_of(self, candidate_deployment: str | None, stable_deployment: str | None) -> Health:
        c = self.pods_ok(candidate_deployment) if candidate_deployment else None
        s = self.pods_ok(stable_deployment) if stable_deployment else None
        detail = "; ".join(x for x in (f"candidate: {c}" if c else "", f"stable: {s}" if s else "") if x)
        return Health(candidate_ok=c is None, stable_ok=None if stable_deployment is None else s is None, detail=detail)

    def prepare(self) -> None:
        """Read what a rollback will need, before any write (the record is saved after this)."""
        cur = self.isvc()
        if cur is not None:
            self.h.setdefault("stable_predictor", copy.deepcopy(cur["spec"]["predictor"]))

    # pods of each side, for Prometheus (regexes on pod names)
    candidate_pods = ""
    stable_pods: str | None = None


class FirstRollout(KServeRouter):
    """Nothing serves the name yet: create the InferenceService; the load test was its judge."""

    kind = "kserve first rollout"

    def deploy(self, isvc: dict) -> None:
        if self.isvc() is None:
            self.cluster.create(isvc)
        self.wait_ready()

    def wait_ready(self) -> None:
        if self.h["mode"] == "knative":
            self._wait(lambda: _knative_ready(self.isvc(), old=()), "first deployment not Ready", self.name,
                       f"{self.name}-predictor")
        else:
            dep = predictor_deployment(self.name)
            self._wait(lambda: self.deployment_check(dep, self.name), "first deployment not Ready", self.name, dep)

    @property
    def candidate_pods(self) -> str:
        return f"{self.name}-predictor-.*"

    def set_weight(self, percent: int) -> None:
        pass

    def promote(self) -> None:
        self.record_serving(self.name)

    def rollback(self) -> None:
        self.delete_and_wait(ISVC, self.name)  # nothing served before: leave nothing half-made
        records.write_serving(self.cluster, self.spec, None)

    def health(self) -> Health:
        return Health(candidate_ok=True, stable_ok=None)


def _knative_ready(obj: dict | None, old: tuple[str, ...]) -> Verdict:
    """A new Knative revision (not one of `old`) is the latest ready one."""
    if obj is None:
        return "wait", "InferenceService not found"
    fail = failed_to_load((obj.get("status") or {}).get("modelStatus"))
    if fail:
        return "fail", fail
    p = predictor_status(obj)
    created, ready = p.get("latestCreatedRevision"), p.get("latestReadyRevision")
    if not created or created in old:
        return "wait", "KServe has not created the candidate revision yet"
    if ready == created and is_true(obj, "PredictorReady"):
        return "ok", f"revision {created} Ready"
    return "wait", f"revision {created} not Ready yet (latest ready: {ready})"


class KnativeCanary(KServeRouter):
    """Knative mode: the candidate is the newest revision; canaryTrafficPercent splits by revision.

    Once a revision has taken 100%, KServe records it as latestRolledoutRevision, and a rollback
    can then no longer send traffic back to the old revision. So a step of 100% is run at 99%
    (the stable revision keeps 1% and its name), and only a passed analysis removes the split.
    """

    kind = "kserve knative"
    MAX_SPLIT = 99

    def prepare(self) -> None:
        cur = self.isvc()
        p = predictor_status(cur)
        self.h.setdefault("stable_revision", p.get("latestRolledoutRevision") or p.get("latestReadyRevision"))
        self.h.setdefault("old_revisions", sorted({r for r in (p.get("latestCreatedRevision"),
                                                               p.get("latestReadyRevision"), self.h["stable_revision"]) if r}))
        stable_pred = copy.deepcopy(cur["spec"]["predictor"])
        stable_pred.pop("canaryTrafficPercent", None)
        self.h.setdefault("stable_predictor", stable_pred)

    def deploy(self, candidate_predictor: dict) -> None:
        def change(obj: dict) -> dict:
            obj["spec"]["predictor"] = copy.deepcopy(candidate_predictor) | {"canaryTrafficPercent": 0}
            return obj

        self.cluster.update(ISVC, self.ns, self.name, change)
        self._wait(lambda: _knative_ready(self.isvc(), tuple(self.h["old_revisions"])), "candidate revision not Ready",
                   self.name, f"{self.name}-predictor")
        obj = self.isvc()
        self.h["candidate_revision_name"] = predictor_status(obj)["latestCreatedRevision"]
        self.h["candidate_url"] = next((t.get("url") for t in predictor_status(obj).get("traffic") or []
                                        if t.get("tag") == "latest"), None)

    @property
    def candidate_pods(self) -> str:
        return f"{self.h['candidate_revision_name']}-deployment-.*"

    @property
    def stable_pods(self) -> str | None:
        return f"{self.h['stable_revision']}-deployment-.*" if self.h.get("stable_revision") else None

    def _traffic(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in predictor_status(self.isvc() or {}).get("traffic") or []:
            out[t.get("revisionName")] = out.get(t.get("revisionName"), 0) + (t.get("percent") or 0)
        return out

    def _set_percent(self, percent: int | None) -> None:
        def change(obj: dict) -> dict:
            if percent is None:
                obj["spec"]["predictor"].pop("canaryTrafficPercent", None)
            else:
                obj["spec"]["predictor"]["canaryTrafficPercent"] = percent
            return obj

        self.cluster.update(ISVC, self.ns, self.name, change)

    def set_weight(self, percent: int) -> None:
        applied = min(percent, self.MAX_SPLIT)
        self._set_percent(applied)
        cand = self.h["candidate_revision_name"]
        self._wait(lambda: ("ok", f"{applied}% on {cand}") if self._traffic().get(cand) == applied
                   else ("wait", f"traffic {self._traffic()}, want {applied}% on {cand}"),
                   f"traffic did not move to {applied}%", self.name, f"{cand}-deployment", SETTLE_TIMEOUT_S)

    def promote(self) -> None:
        cand = self.h["candidate_revision_name"]
        self._set_percent(None)
        self._wait(lambda: ("ok", f"100% on {cand}") if self._traffic().get(cand) == 100
                   else ("wait", f"traffic {self._traffic()}"), "promotion did not settle", self.name,
                   f"{cand}-deployment", SETTLE_TIMEOUT_S)
        self.record_serving(self.name)

    def rollback(self) -> None:
        stable_rev = self.h.get("stable_revision")

        def change(obj: dict) -> dict:
            # 0 keeps every request on the last rolled-out (stable) revision, also while KServe
            # turns the restored spec into a new revision of the stable model.
            obj["spec"]["predictor"] = copy.deepcopy(self.h["stable_predictor"]) | {"canaryTrafficPercent": 0}
            return obj

        if self.isvc() is None or not self.h.get("stable_predictor"):
            return  # nothing was changed yet
        self.cluster.update(ISVC, self.ns, self.name, change)
        if stable_rev:
            self._wait(lambda: ("ok", f"100% on {stable_rev}") if self._traffic().get(stable_rev) == 100
                       else ("wait", f"traffic {self._traffic()}"), "rollback did not settle", self.name,
                       f"{stable_rev}-deployment", SETTLE_TIMEOUT_S)

    def health(self) -> Health:
        cand = self.h.get("candidate_revision_name")
        stable = self.h.get("stable_revision")
        return self.health_of(f"{cand}-deployment" if cand else None, f"{stable}-deployment" if stable else None)


class StandardSplit(KServeRouter):
    """Standard mode on a KServe that really splits spec.canary[] traffic (Gateway API HTTPRoutes)."""

    kind = "kserve standard split"

    def deploy(self, candidate_predictor: dict) -> None:
        cname = self.h["canary_name"]

        def change(obj: dict) -> dict:
            keep = [c for c in obj["spec"].get("canary") or [] if c["predictor"].get("name") != cname]
            obj["spec"]["canary"] = keep + [{"trafficPercent": 0, "predictor": copy.deepcopy(candidate_predictor)}]
            return obj

        self.cluster.update(ISVC, self.ns, self.name, change)
        dep = predictor_deployment(self.name, cname)
        self._wait(lambda: self._canary_ready(dep), f"canary {cname} not Ready", self.name, dep)

    def _canary_ready(self, dep: str) -> Verdict:
        verdict, msg = self.deployment_check(dep)
        if verdict != "ok":
            return verdict, msg
        cs = next((c for c in (self.isvc() or {}).get("status", {}).get("canaryStatuses") or []
                   if c.get("name") == self.h["canary_name"]), None)
        return ("ok", msg) if cs and cs.get("ready") else ("wait", "canaryStatuses not ready yet")

    @property
    def candidate_pods(self) -> str:
        return f"{predictor_deployment(self.name, self.h['canary_name'])}-.*"

    @property
    def stable_pods(self) -> str:
        return f"{predictor_deployment(self.name)}-.*"

    def _route_weights(self) -> dict[str, int]:
        """backendRef weights of the HTTPRoutes KServe owns for this InferenceService."""
        weights: dict[str, int] = {}
        for route in self.cluster.list_custom(HTTPROUTE, self.ns):
            owners = [o.get("name") for o in route["metadata"].get("ownerReferences") or []]
            if self.name not in owners:
                continue
            for rule in (route.get("spec") or {}).get("rules") or []:
                for ref in rule.get("backendRefs") or []:
                    weights[ref.get("name")] = weights.get(ref.get("name"), 0) + ref.get("weight", 1)
        return weights

    def set_weight(self, percent: int) -> None:
        cname = self.h["canary_name"]

        def change(obj: dict) -> dict:
            for c in obj["spec"].get("canary") or []:
                if c["predictor"].get("name") == cname:
                    c["trafficPercent"] = percent
            return obj

        self.cluster.update(ISVC, self.ns, self.name, change)
        canary_svc, stable_svc = predictor_deployment(self.name, cname), predictor_deployment(self.name)

        def split() -> Verdict:
            w = self._route_weights()
            total = w.get(canary_svc, 0) + w.get(stable_svc, 0)
            if total and round(100 * w.get(canary_svc, 0) / total) == percent:
                return "ok", f"HTTPRoute sends {percent}% to {canary_svc}"
            return "wait", f"HTTPRoute weights {w}, want {percent}% on {canary_svc}"

        self._wait(split, f"traffic did not move to {percent}%", self.name, canary_svc, SETTLE_TIMEOUT_S)

    def promote(self) -> None:
        cname = self.h["canary_name"]
        cur = self.isvc()
        entry = next((c for c in cur["spec"].get("canary") or [] if c["predictor"].get("name") == cname), None)
        if entry is not None:
            # The stable predictor takes the candidate's spec: its Deployment and Service keep
            # their names ({name}-predictor), so in-cluster clients never move.
            new = copy.deepcopy(entry["predictor"])
            new.pop("name", None)
            new.get("model", {}).pop("name", None)
            for k in ("maxReplicas", "minReplicas"):
                if k in self.h["stable_predictor"]:
                    new[k] = self.h["stable_predictor"][k]

            def change(obj: dict) -> dict:
                obj["spec"]["predictor"] = new
                return obj

            self.cluster.update(ISVC, self.ns, self.name, change)
        stable_dep = predictor_deployment(self.name)
        self._wait(lambda: self.deployment_check(stable_dep, self.name), "stable did not roll to the candidate",
                   self.name, stable_dep)
        self._remove_canary()
        self.record_serving(self.name)

    def _remove_canary(self) -> None:
        cname = self.h["canary_name"]

        def change(obj: dict) -> dict:
            keep = [c for c in obj["spec"].get("canary") or [] if c["predictor"].get("name") != cname]
            if keep:
                obj["spec"]["canary"] = keep
            else:
                obj["spec"].pop("canary", None)
            return obj

        if self.isvc() is None:
            return
        self.cluster.update(ISVC, self.ns, self.name, change)
        dep = predictor_deployment(self.name, cname)
        self._wait(lambda: ("ok", "canary removed") if self.cluster.deployment(self.ns, dep) is None
                   else ("wait", f"Deployment {dep} still there"), "canary removal did not settle", self.name, dep,
                   SETTLE_TIMEOUT_S)

    def rollback(self) -> None:
        cur = self.isvc()
        if cur is not None and self.h.get("stable_predictor") and cur["spec"]["predictor"] != self.h["stable_predictor"]:
            def change(obj: dict) -> dict:  # a promotion that had begun the switch: undo it
                obj["spec"]["predictor"] = copy.deepcopy(self.h["stable_predictor"])
                return obj

            self.cluster.update(ISVC, self.ns, self.name, change)
        self._remove_canary()

    def health(self) -> Health:
        return self.health_of(predictor_deployment(self.name, self.h["canary_name"]), predictor_deployment(self.name))


class BlueGreen(KServeRouter):
    """A second InferenceService, `<name>-candidate`, judged before one switch of the stable.

    It takes no real traffic before the switch, so its analysis needs traffic of its own
    (target.canary_load_test from a worker that reaches it); without any the step is
    Inconclusive and the spec's on_inconclusive decides. The switch gives the stable
    InferenceService the candidate's predictor: its Deployment rolls in place, its Service
    and in-cluster address stay. Success waits for the new pods (KServe's Ready stays True
    through a rolling update), then the candidate InferenceService goes.
    """

    kind = "kserve blue-green"

    @property
    def candidate_isvc(self) -> str:
        return f"{self.name}-candidate"

    def deploy(self, candidate: dict) -> None:
        if self.isvc(self.candidate_isvc) is None:
            self.cluster.create(candidate)
        dep = predictor_deployment(self.candidate_isvc)
        self._wait(lambda: self.deployment_check(dep, self.candidate_isvc), "candidate not Ready",
                   self.candidate_isvc, dep)
        self.h["candidate_url"] = ((self.isvc(self.candidate_isvc) or {}).get("status") or {}).get("url")

    def plan(self) -> list[int]:
        return [0]

    @property
    def candidate_pods(self) -> str:
        return f"{predictor_deployment(self.candidate_isvc)}-.*"

    @property
    def stable_pods(self) -> str:
        return f"{predictor_deployment(self.name)}-.*"

    def set_weight(self, percent: int) -> None:
        pass  # the candidate takes no real traffic before the switch

    def promote(self) -> None:
        cand = self.isvc(self.candidate_isvc)
        if cand is not None:
            new = copy.deepcopy(cand["spec"]["predictor"])

            def change(obj: dict) -> dict:
                obj["spec"]["predictor"] = new
                return obj

            self.cluster.update(ISVC, self.ns, self.name, change)
        dep = predictor_deployment(self.name)
        self._wait(lambda: self.deployment_check(dep, self.name), "switch to the candidate not rolled out", self.name, dep)
        self.delete_and_wait(ISVC, self.candidate_isvc)
        self.record_serving(self.name)

    def rollback(self) -> None:
        cur = self.isvc()
        if cur is not None and self.h.get("stable_predictor") and cur["spec"]["predictor"] != self.h["stable_predictor"]:
            def change(obj: dict) -> dict:  # a switch that had begun: put stable back
                obj["spec"]["predictor"] = copy.deepcopy(self.h["stable_predictor"])
                return obj

            self.cluster.update(ISVC, self.ns, self.name, change)
            dep = predictor_deployment(self.name)
            self._wait(lambda: self.deployment_check(dep, self.name), "stable not restored", self.name, dep)
        self.delete_and_wait(ISVC, self.candidate_isvc)

    def health(self) -> Health:
        return self.health_of(predictor_deployment(self.candidate_isvc), predictor_deployment(self.name))


class LLMGroup(KServeRouter):
    """LLMInferenceServices `<name>-<revision>` in one router.route group `<name>`, split by weight.

    Promotion gives the candidate the whole weight and stops the old member
    (serving.kserve.io/stop frees its GPUs; KServe keeps a stopped member at weight 0).
    """

    kind = "kserve llm group"

    def member(self, name: str) -> dict | None:
        return self.cluster.get(LLMISVC, self.ns, name)

    def deploy(self, obj: dict) -> None:
        if self.member(obj["metadata"]["name"]) is None:
            self.cluster.create(obj)
        name = obj["metadata"]["name"]

        def ready() -> Verdict:
            cur = self.member(name) or {}
            return ("ok", f"{name} Ready") if is_true(cur, "Ready") else ("wait", f"{name} not Ready")

        wait_until(ready, self.spec.target.ready_timeout_s, "LLMInferenceService not Ready", f"{self.ns}/{name}",
                   lambda: diagnostics(self.cluster, self.ns, name, self.member(name), name))

    @property
    def candidate_pods(self) -> str:
        return f"{self.h['candidate_member']}-.*"

    @property
    def stable_pods(self) -> str | None:
        return f"{self.h['stable_member']}-.*" if self.h.get("stable_member") else None

    def _weights_seen(self) -> dict[str, int]:
        cur = self.member(self.h["candidate_member"]) or {}
        group = ((cur.get("status") or {}).get("router") or {}).get("group") or {}
        return {m["name"]: (0 if m.get("stopped") else m.get("weight", 0)) for m in group.get("members") or []}

    def _set(self, name: str, weight: int, stop: bool | None = None) -> None:
        def change(obj: dict) -> dict:
            obj["spec"].setdefault("router", {}).setdefault("route", {})["weight"] = weight
            ann = obj["metadata"].setdefault("annotations", {})
            if stop:
                ann[STOP_ANNOTATION] = "true"
            elif stop is False:
                ann.pop(STOP_ANNOTATION, None)
            return obj

        if self.member(name) is not None:
            self.cluster.update(LLMISVC, self.ns, name, change)

    def _wait_weights(self, want: dict[str, int]) -> None:
        def check() -> Verdict:
            seen = self._weights_seen()
            return ("ok", f"group weights {seen}") if all(seen.get(k) == v for k, v in want.items()) \
                else ("wait", f"group weights {seen}, want {want}")

        wait_until(check, SETTLE_TIMEOUT_S, "group weights did not settle", f"{self.ns}/{self.h['candidate_member']}",
                   lambda: diagnostics(self.cluster, self.ns, self.h["candidate_member"],
                                       self.member(self.h["candidate_member"]), self.h["candidate_member"]),
                   stage=self.cluster.stage)

    def set_weight(self, percent: int) -> None:
        stable, cand = self.h.get("stable_member"), self.h["candidate_member"]
        self._set(cand, percent)
        if stable:
            self._set(stable, 100 - percent)
        self._wait_weights({cand: percent, **({stable: 100 - percent} if stable else {})})

    def promote(self) -> None:
        stable, cand = self.h.get("stable_member"), self.h["candidate_member"]
        self._set(cand, 100, stop=False)
        if stable:
            self._set(stable, 0, stop=True)
        self._wait_weights({cand: 100, **({stable: 0} if stable else {})})
        self.record_serving(cand, kind="LLMInferenceService")

    def rollback(self) -> None:
        stable, cand = self.h.get("stable_member"), self.h["candidate_member"]
        if stable:
            self._set(stable, 100, stop=False)
        self.delete_and_wait(LLMISVC, cand)
        if not stable:
            records.write_serving(self.cluster, self.spec, None)

    def health(self) -> Health:
        def ok(name: str | None) -> bool | None:
            if not name:
                return None
            cur = self.member(name)
            return cur is not None and is_true(cur, "Ready")

        c, s = ok(self.h["candidate_member"]), ok(self.h.get("stable_member"))
        return Health(candidate_ok=bool(c), stable_ok=s,
                      detail="" if c and s is not False else f"candidate Ready={c}, stable Ready={s}")


ROUTERS = {cls.__name__: cls for cls in (FirstRollout, KnativeCanary, StandardSplit, BlueGreen, LLMGroup)}


def router_for(spec: PromotionSpec, cluster: Cluster, handle: dict) -> KServeRouter:
    return ROUTERS[handle["router"]](spec, cluster, handle)

