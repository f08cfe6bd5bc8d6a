"""A test controller that plays KServe on the test API server.

It reads InferenceServices from the store and writes what KServe would: revisions and traffic
(Knative mode), per-canary Deployments and canaryStatuses (Standard mode, 0.20+), conditions,
modelStatus, predictor pods with a log, and Events. Per storageUri it can be told to load
fine, never become Ready, or fail with FailedToLoad. As KServe < 0.20 in Standard mode it
ignores canaryTrafficPercent (a full rollout), which is why llmship refuses that case.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from tests.kserve.k8s_server import Store, now

GROUP, PLURAL = "serving.kserve.io", "inferenceservices"


@dataclass
class Workload:
    """A Knative revision or a raw Deployment: pods of one predictor spec."""

    name: str
    model: dict
    uri: str
    created: float
    pod: str


@dataclass
class IsvcState:
    revisions: list[Workload] = field(default_factory=list)  # knative, in creation order
    rolled_out: str | None = None
    previous_rolled_out: str | None = None
    deployments: dict[str, Workload] = field(default_factory=dict)  # standard: name -> workload


class KServeReconciler:
    def __init__(self, store: Store, mode: str = "Knative", version: str = "0.20.0", ready_delay_s: float = 0.3,
                 gateway_api: bool = False):
        self.store = store
        self.gateway_api = gateway_api
        self.mode = mode  # status.deploymentMode to report: Knative / Serverless / Standard / RawDeployment
        self.version = tuple(int(x) for x in version.split(".")[:2])
        self.ready_delay_s = ready_delay_s
        self.behaviour: dict[str, str] = {}  # storageUri -> ok | never_ready | failed_to_load
        self.serving_urls: dict[str, str] = {}  # storageUri -> a real server that answers for its revision
        self.state: dict[tuple, IsvcState] = {}
        self.paused = False  # a controller that is down: nothing moves
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @property
    def knative(self) -> bool:
        return self.mode in ("Knative", "Serverless")

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> "KServeReconciler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.paused:
                for isvc in self.store.list(GROUP, PLURAL):
                    try:
                        self.reconcile(isvc)
                    except Exception as err:  # a test controller must not die silently
                        print(f"reconciler error on {isvc['metadata']['name']}: {err!r}")
                        raise
                for llm in self.store.list(GROUP, "llminferenceservices"):
                    self._llmisvc(llm)
                self._gc()
            with self.store.cond:
                self.store.cond.wait(timeout=0.1)

    # -- helpers -------------------------------------------------------------------------

    def _ready(self, w: Workload) -> bool:
        ready = self.behaviour.get(w.uri, "ok") == "ok" and time.monotonic() >= w.created + self.ready_delay_s
        dep = w.__dict__.get("deployment")
        if ready and dep and not w.__dict__.get("available"):  # the Deployment reports its pod available
            ns = next((k[0] for k, st in self.state.items()
                       if w in st.revisions or w in st.deployments.values()), None)
            cur = self.store.get("apps", "deployments", ns, dep) if ns else None
            if cur is not None:
                cur["status"]["availableReplicas"] = 1
                self.store.put("apps", "deployments", cur, validate=False)
                w.__dict__["available"] = True
        return ready

    def _workload(self, ns: str, name: str, pred: dict) -> Workload:
        model = pred.get("model") or {}
        uri = model.get("storageUri", "")
        pod = f"{name}-{'deployment-' if self.knative else ''}{hashlib.sha1((name + uri).encode()).hexdigest()[:6]}-x7k2p"
        w = Workload(name=name, model=json.loads(json.dumps(model, sort_keys=True)), uri=uri, created=time.monotonic(), pod=pod)
        behaviour = self.behaviour.get(uri, "ok")
        self.store.put("", "pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns, "labels": {
                "serving.kserve.io/inferenceservice": name.split("-predictor")[0], "component": "predictor",
                **({"serving.knative.dev/revision": name} if self.knative else {"app": name})}},
            "spec": {"containers": [{"name": "kserve-container", "image": "vllm/vllm-openai"}]},
            "status": {"phase": "Running" if behaviour == "ok" else "Pending"},
        }, validate=False)
        log = ["INFO Starting vLLM API server on http://0.0.0.0:8080", f"INFO Loading model from {uri} at /mnt/models"]
        if behaviour == "failed_to_load":
            log += ["ERROR Engine core initialization failed", "OSError: /mnt/models does not appear to have a config.json"]
        elif behaviour == "never_ready":
            log += ["INFO Waiting for the engine core to start (still loading weights)"]
        else:
            log += ["INFO Application startup complete."]
        self.store.logs[(ns, pod)] = "\n".join(log) + "\n"
        dep = f"{name}-deployment" if self.knative else name
        select = {"serving.knative.dev/revision": name} if self.knative else {"app": name}
        ok = behaviour == "ok"
        self.store.put("apps", "deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": dep, "namespace": ns, "generation": 1},
            "spec": {"replicas": 1, "selector": {"matchLabels": select}, "template": {"metadata": {"labels": select}}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0},
        }, validate=False)
        w.__dict__["deployment"] = dep
        w.__dict__["loads_ok"] = ok
        return w

    def _event(self, ns: str, isvc: str, involved: str, kind: str, etype: str, reason: str, message: str) -> None:
        name = f"{involved}.{uuid.uuid4().hex[:10]}"
        self.store.put("", "events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": kind, "name": involved, "namespace": ns},
            "type": etype, "reason": reason, "message": message, "lastTimestamp": now(), "count": 1,
        }, validate=False)

    def _model_status(self, w: Workload | None) -> dict:
        b = self.behaviour.get(w.uri, "ok") if w else "ok"
        if b == "failed_to_load":
            return {"states": {"activeModelState": "FailedToLoad", "targetModelState": "FailedToLoad"},
                    "transitionStatus": "BlockedByFailedLoad", "copies": {"failedCopies": 1, "totalCopies": 1},
                    "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "engine core initialization failed",
                                        "exitCode": 1, "location": w.pod if w else "", "time": now()}}
        if w and self._ready(w):
            return {"states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                    "transitionStatus": "UpToDate", "copies": {"failedCopies": 0, "totalCopies": 1}}
        return {"states": {"activeModelState": "Loading", "targetModelState": "Loaded"},
                "transitionStatus": "InProgress", "copies": {"failedCopies": 0}}

    @staticmethod
    def _cond(ctype: str, ok: bool | None, reason: str = "", message: str = "") -> dict:
        c = {"type": ctype, "status": "True" if ok else ("Unknown" if ok is None else "False"), "lastTransitionTime": now()}
        if reason:
            c["reason"] = reason
        if message:
            c["message"] = message
        return c

    def _write_status(self, isvc: dict, status: dict) -> None:
        old = isvc.get("status") or {}
        strip = lambda st: json.dumps({**st, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                                             for c in st.get("conditions") or []]}, sort_keys=True)
        if strip(old) == strip(status):
            return
        cur = self.store.get(GROUP, PLURAL, isvc["metadata"]["namespace"], isvc["metadata"]["name"])
        if cur is None or cur["metadata"]["resourceVersion"] != isvc["metadata"]["resourceVersion"]:
            return  # changed meanwhile: the next pass sees the new spec
        cur["status"] = status
        self.store.put(GROUP, PLURAL, cur)

    def _gc(self) -> None:
        live = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in self.store.list(GROUP, PLURAL)}
        for key in list(self.state):
            if key not in live:
                st = self.state.pop(key)
                for w in st.revisions + list(st.deployments.values()):
                    self.store.delete("", "pods", key[0], w.pod)

    # -- reconcile -----------------------------------------------------------------------

    def reconcile(self, isvc: dict) -> None:
        ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
        st = self.state.setdefault((ns, name), IsvcState())
        if self.knative:
            self._knative(isvc, ns, name, st)
        else:
            self._standard(isvc, ns, name, st)

    def _knative(self, isvc: dict, ns: str, name: str, st: IsvcState) -> None:
        pred = json.loads(json.dumps(isvc["spec"]["predictor"]))
        ctp = pred.pop("canaryTrafficPercent", None)
        model = json.loads(json.dumps(pred.get("model") or {}, sort_keys=True))
        if not st.revisions or st.revisions[-1].model != model or st.revisions[-1].__dict__.get("pred") != pred:
            rev = f"{name}-predictor-{len(st.revisions) + 1:05d}"
            w = self._workload(ns, rev, pred)
            w.__dict__["pred"] = pred
            st.revisions.append(w)
            b = self.behaviour.get(w.uri, "ok")
            if b == "failed_to_load":
                self._event(ns, name, w.pod, "Pod", "Warning", "BackOff", "Back-off restarting failed container kserve-container")
                self._event(ns, name, name, "InferenceService", "Warning", "InternalError", f"revision {rev} failed: model load failed")
        latest = st.revisions[-1]
        ready = [w for w in st.revisions if self._ready(w)]
        latest_ready = ready[-1].name if ready else None
        latest_ok = self._ready(latest)
        if ctp in (None, 100) and latest_ok and st.rolled_out != latest.name:
            st.previous_rolled_out, st.rolled_out = st.rolled_out, latest.name
        url = lambda tag, rev: f"http://{tag + '-' if tag else ''}{name}-predictor.{ns}.example.com"
        # KServe tags the newest revision `latest` only with this annotation (ksvc_reconciler.go)
        tagged = (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/enable-tag-routing") == "true"
        latest_tag = {"tag": "latest", "url": self.serving_urls.get(latest.uri) or url("latest", latest.name)} if tagged else {}
        if ctp not in (None, 100) and st.rolled_out and latest_ok and latest.name != st.rolled_out:
            traffic = [{"revisionName": latest.name, "percent": ctp, "latestRevision": True, **latest_tag},
                       {"revisionName": st.rolled_out, "percent": 100 - ctp, "tag": "prev", "latestRevision": False, "url": url("prev", st.rolled_out)}]
        elif ctp == 100 and st.previous_rolled_out and latest_ok:
            traffic = [{"revisionName": latest.name, "percent": 100, "tag": "latest", "latestRevision": True, "url": url("latest", latest.name)},
                       {"revisionName": st.previous_rolled_out, "percent": 0, "tag": "prev", "latestRevision": False, "url": url("prev", "")}]
        elif st.rolled_out:
            traffic = [{"revisionName": st.rolled_out, "percent": 100, "latestRevision": st.rolled_out == latest.name}]
        else:
            traffic = []
        failed = self.behaviour.get(latest.uri, "ok") == "failed_to_load"
        pred_ready = latest_ok
        conds = [
            self._cond("IngressReady", bool(traffic), "" if traffic else "RouteNotReady"),
            self._cond("PredictorReady", pred_ready if not failed else False,
                       "" if pred_ready else ("RevisionFailed" if failed else "RevisionMissing"),
                       "" if pred_ready else f"Revision {latest.name} is not ready"),
        ]
        conds.append(self._cond("Ready", pred_ready and bool(traffic), "" if pred_ready and traffic else "PredictorNotReady"))
        comp = {"latestCreatedRevision": latest.name, "url": url("", "")}
        if latest_ready:
            comp["latestReadyRevision"] = latest_ready
        if st.rolled_out:
            comp["latestRolledoutRevision"] = st.rolled_out
        if st.previous_rolled_out:
            comp["previousRolledoutRevision"] = st.previous_rolled_out
        if traffic:
            comp["traffic"] = traffic
        status = {"observedGeneration": isvc["metadata"]["generation"], "deploymentMode": self.mode,
                  "url": f"http://{name}.{ns}.example.com", "address": {"url": f"http://{name}.{ns}.svc.cluster.local"},
                  "conditions": conds, "components": {"predictor": comp}, "modelStatus": self._model_status(latest)}
        self._write_status(isvc, status)

    def _standard(self, isvc: dict, ns: str, name: str, st: IsvcState) -> None:
        pred = isvc["spec"]["predictor"]
        sname = pred.get("name")
        stable_dep = f"{name}-{sname}-predictor" if sname else f"{name}-predictor"
        desired = {stable_dep: pred}
        canaries = isvc["spec"].get("canary") or [] if self.version >= (0, 20) else []  # < 0.20: no such field
        for c in canaries:
            desired[f"{name}-{c['predictor']['name']}-predictor"] = c["predictor"]
        for dname, p in desired.items():
            model = json.loads(json.dumps(p.get("model") or {}, sort_keys=True))
            w = st.deployments.get(dname)
            if w is None or w.model != model:  # a new Deployment, or a rolling update of its pods
                if w is not None:
                    self.store.delete("", "pods", ns, w.pod)
                st.deployments[dname] = self._workload(ns, dname, p)
                if self.behaviour.get(st.deployments[dname].uri, "ok") == "failed_to_load":
                    self._event(ns, name, st.deployments[dname].pod, "Pod", "Warning", "BackOff",
                                "Back-off restarting failed container kserve-container")
        for dname in list(st.deployments):
            if dname not in desired:  # removed canary, or the old stable after a promotion
                self.store.delete("", "pods", ns, st.deployments.pop(dname).pod)
                self.store.delete("apps", "deployments", ns, dname)
        stable = st.deployments[stable_dep]
        stable_ok = self._ready(stable)
        conds = [self._cond("IngressReady", True), self._cond("PredictorReady", stable_ok, "" if stable_ok else "DeploymentNotReady")]
        cstatuses = []
        for c in canaries:
            w = st.deployments[f"{name}-{c['predictor']['name']}-predictor"]
            cs = {"name": c["predictor"]["name"], "ready": self._ready(w), "trafficPercent": c["trafficPercent"]}
            ms = self._model_status(w)
            if ms["states"]["activeModelState"] == "FailedToLoad":
                cs["modelStatus"] = ms
            cstatuses.append(cs)
        if canaries:
            all_ok = all(cs["ready"] for cs in cstatuses)
            conds.append(self._cond("CanaryPredictorReady", all_ok, "AllCanariesReady" if all_ok else "CanariesNotReady"))
        conds.append(self._cond("Ready", stable_ok, "" if stable_ok else "PredictorNotReady"))
        status = {"observedGeneration": isvc["metadata"]["generation"], "deploymentMode": self.mode,
                  "url": f"http://{name}.{ns}.example.com", "address": {"url": f"http://{name}-predictor.{ns}.svc.cluster.local"},
                  "conditions": conds, "components": {"predictor": {"url": f"http://{stable_dep}.{ns}.svc.cluster.local"}},
                  "modelStatus": self._model_status(stable)}
        if cstatuses:
            status["canaryStatuses"] = cstatuses
        if self.version >= (0, 21) and self.gateway_api:
            self._httproute(ns, name, stable_dep, canaries, cstatuses)
        self._write_status(isvc, status)

    def _httproute(self, ns: str, name: str, stable_dep: str, canaries: list, cstatuses: list) -> None:
        """What KServe after v0.20 writes with ingress.enableGatewayApi (httproute_reconciler.go,
        kserve PR 5912): one HTTPRoute whose backendRefs split by the ready canaries' percents."""
        ready = {cs["name"] for cs in cstatuses if cs["ready"]}
        refs = [{"name": f"{name}-{c['predictor']['name']}-predictor", "port": 80, "weight": c["trafficPercent"]}
                for c in canaries if c["predictor"]["name"] in ready]
        refs.insert(0, {"name": stable_dep, "port": 80, "weight": 100 - sum(r["weight"] for r in refs)})
        route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": name, "namespace": ns,
                              "ownerReferences": [{"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                                                   "name": name, "uid": "x", "controller": True}]},
                 "spec": {"parentRefs": [{"name": "kserve-ingress-gateway", "namespace": "kserve"}],
                          "rules": [{"backendRefs": refs}]}}
        cur = self.store.get("gateway.networking.k8s.io", "httproutes", ns, name)
        if cur is None or cur.get("spec") != route["spec"]:
            self.store.put("gateway.networking.k8s.io", "httproutes", route, validate=False)

    def _llmisvc(self, obj: dict) -> None:
        """An LLMInferenceService becomes Ready after the delay; members of a router.route group
        get the group's status as KServe v0.20 writes it (llmisvc/router_group_status.go: each
        member's effective weight, 0 and stopped under serving.kserve.io/stop)."""
        ns, name, gen = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["metadata"]["generation"]
        first = self.__dict__.setdefault("_llm_seen", {}).setdefault((ns, name), time.monotonic())
        if time.monotonic() < first + self.ready_delay_s:
            return
        status = {"observedGeneration": gen, "url": f"http://{name}.{ns}.example.com",
                  "conditions": [self._cond("Ready", True)]}
        group = ((obj["spec"].get("router") or {}).get("route") or {}).get("group")
        if group:
            members = []
            for m in self.store.list(GROUP, "llminferenceservices"):
                route = (m["spec"].get("router") or {}).get("route") or {}
                if m["metadata"]["namespace"] != ns or route.get("group") != group:
                    continue
                stopped = (m["metadata"].get("annotations") or {}).get("serving.kserve.io/stop") == "true"
                members.append({"name": m["metadata"]["name"], "weight": 0 if stopped else route.get("weight", 0),
                                **({"stopped": True} if stopped else {})})
            status["router"] = {"group": {"name": group, "members": sorted(members, key=lambda x: x["name"])}}
            pod = f"{name}-kserve-7f9c-x2k4p"
            if self.store.get("", "pods", ns, pod) is None:
                self.store.put("", "pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": ns},
                                            "spec": {"containers": [{"name": "main"}]}, "status": {"phase": "Running"}},
                               validate=False)
        old = obj.get("status") or {}
        strip = lambda st: json.dumps({**st, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                                             for c in st.get("conditions") or []]}, sort_keys=True)
        if strip(old) != strip(status):
            cur = self.store.get(GROUP, "llminferenceservices", ns, name)
            if cur is None or cur["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
                return  # changed meanwhile: the next pass sees the new spec
            cur["status"] = status
            self.store.put(GROUP, "llminferenceservices", cur)

    # -- for the metrics fixture ---------------------------------------------------------

    def pod_traffic(self) -> list[tuple[str, str, str, float]]:
        """(namespace, pod, storageUri, percent of its InferenceService's traffic) for every pod."""
        out = []
        for m in self.store.list(GROUP, "llminferenceservices"):  # a group splits by its members' weights
            group = ((m.get("status") or {}).get("router") or {}).get("group") or {}
            total = sum(x["weight"] for x in group.get("members") or []) or 1
            mine = next((x["weight"] for x in group.get("members") or [] if x["name"] == m["metadata"]["name"]), 0)
            out.append((m["metadata"]["namespace"], f"{m['metadata']['name']}-kserve-7f9c-x2k4p",
                        m["spec"]["model"]["uri"], 100.0 * mine / total))
        for isvc in self.store.list(GROUP, PLURAL):
            ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
            st = self.state.get((ns, name))
            if not st:
                continue
            if self.knative:
                share = {t["revisionName"]: t["percent"] for t in
                         ((isvc.get("status") or {}).get("components", {}).get("predictor", {}).get("traffic") or [])}
                for w in st.revisions:
                    out.append((ns, w.pod, w.uri, float(share.get(w.name, 0)) if self._ready(w) else 0.0))
            else:
                cs = {c["name"]: c for c in (isvc.get("status") or {}).get("canaryStatuses") or []}
                canary_total = 0.0
                for dname, w in st.deployments.items():
                    cname = dname[len(name) + 1:-len("-predictor")] if dname != f"{name}-predictor" else None
                    if cname in cs:  # KServe routes to a canary only once it is Ready (kserve#5984)
                        pct = float(cs[cname]["trafficPercent"]) if cs[cname]["ready"] else 0.0
                        out.append((ns, w.pod, w.uri, pct))
                        canary_total += pct
                for dname, w in st.deployments.items():
                    cname = dname[len(name) + 1:-len("-predictor")] if dname != f"{name}-predictor" else None
                    if cname not in cs:
                        out.append((ns, w.pod, w.uri, max(0.0, 100 - canary_total) if self._ready(w) else 0.0))
        return out
