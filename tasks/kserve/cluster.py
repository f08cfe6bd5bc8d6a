"""A thin layer over the official `kubernetes` client: typed errors, RV-guarded updates.

Every write is a create (201) or a replace that carries the resourceVersion it read, so a
concurrent writer makes the server answer 409; llmship then re-reads and re-applies its
change to the fresh object, never overwriting blindly.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Callable

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tasks.errors import BadInput, StageFailed
from tasks.spec import PromotionSpec

FIELD_MANAGER = "llmship"
MAX_CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str


ISVC = Kind("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
RUNTIME = Kind("serving.kserve.io", "v1alpha1", "servingruntimes", "ServingRuntime")
LLMISVC = Kind("serving.kserve.io", "v1alpha2", "llminferenceservices", "LLMInferenceService")
SCALED_OBJECT = Kind("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject")
HTTPROUTE = Kind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
KINDS = {k.kind: k for k in (ISVC, RUNTIME, LLMISVC, SCALED_OBJECT, HTTPROUTE)}


class Cluster:
    """The API clients for one cluster; built from a kubeconfig or the in-cluster config."""

    def __init__(self, api_client: client.ApiClient, stage: str = "deploy"):
        self.api = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.ext = client.ApiextensionsV1Api(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)
        self.stage = stage

    @classmethod
    def connect(cls, spec: PromotionSpec, stage: str = "deploy") -> "Cluster":
        t = spec.target
        try:
            if t.kubeconfig or os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
                api = config.new_client_from_config(config_file=t.kubeconfig, context=t.context)
            else:
                cfg = client.Configuration()
                config.load_incluster_config(client_configuration=cfg)
                api = client.ApiClient(cfg)
        except (config.ConfigException, OSError) as err:
            raise BadInput(
                stage, t.kubeconfig or "kubeconfig", f"cannot load Kubernetes credentials: {err}",
                "set target.kubeconfig (and target.context) or KUBECONFIG, or run inside the cluster",
            ) from None
        return cls(api, stage)

    # -- errors --------------------------------------------------------------------------

    def fail(self, obj: str, action: str, err: ApiException) -> StageFailed:
        reason = err.reason or ""
        body = (err.body or "")[:2000] if isinstance(err.body, str) else str(err.body)[:2000]
        hints = {
            401: "check the kubeconfig credentials",
            403: "grant llmship the Role in infra/rbac/ (llmship render writes it)",
            404: "check the namespace and that KServe's CRDs are installed",
            422: "the cluster rejected the object: compare with `llmship render` output and the KServe version",
        }
        return StageFailed(self.stage, obj, f"{action} failed: HTTP {err.status} {reason}",
                           hints.get(err.status, "retry; if it persists, check the API server"), detail=body)

    # -- custom objects ------------------------------------------------------------------

    def get(self, kind: Kind, ns: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise self.fail(f"{ns}/{name}", f"get {kind.kind}", err) from None

    def create(self, obj: dict) -> dict:
        kind = KINDS[obj["kind"]]
        ns = obj["metadata"]["namespace"]
        try:
            return self.custom.create_namespaced_custom_object(
                kind.group, kind.version, ns, kind.plural, obj, field_manager=FIELD_MANAGER, field_validation="Strict"
            )
        except ApiException as err:
            raise self.fail(f"{ns}/{obj['metadata']['name']}", f"create {kind.kind}", err) from None

    def update(self, kind: Kind, ns: str, name: str, change: Callable[[dict], dict | None]) -> dict:
        """Read, apply `change` to a copy, replace with the read resourceVersion; on 409 re-read and redo."""
        for _ in range(MAX_CONFLICT_RETRIES):
            current = self.get(kind, ns, name)
            if current is None:
                raise StageFailed(self.stage, f"{ns}/{name}", f"{kind.kind} disappeared while llmship was updating it",
                                  "someone deleted it; re-run llmship to start from the cluster's state")
            desired = change(copy.deepcopy(current))
            if desired is None or desired == current:
                return current
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            desired["metadata"].pop("managedFields", None)  # unset: the server keeps field ownership as is
            desired.pop("status", None)
            try:
                return self.custom.replace_namespaced_custom_object(
                    kind.group, kind.version, ns, kind.plural, name, desired,
                    field_manager=FIELD_MANAGER, field_validation="Strict",
                )
            except ApiException as err:
                if err.status == 409:
                    continue  # someone else wrote first: redo our change on their version
                raise self.fail(f"{ns}/{name}", f"update {kind.kind}", err) from None
        raise StageFailed(self.stage, f"{ns}/{name}", f"{kind.kind} kept changing under llmship ({MAX_CONFLICT_RETRIES} conflicts)",
                          "another controller or user is writing it; stop them and re-run")

    def delete(self, kind: Kind, ns: str, name: str) -> bool:
        try:
            self.custom.delete_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, name)
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise self.fail(f"{ns}/{name}", f"delete {kind.kind}", err) from None

    def ensure(self, obj: dict, keep: Callable[[dict, dict], dict] | None = None) -> dict:
        """Create obj, or bring an existing one's labels/annotations/spec to it (RV-guarded)."""
        kind = KINDS[obj["kind"]]
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if self.get(kind, ns, name) is None:
            try:
                return self.custom.create_namespaced_custom_object(
                    kind.group, kind.version, ns, kind.plural, obj, field_manager=FIELD_MANAGER, field_validation="Strict"
                )
            except ApiException as err:
                if err.status != 409:  # 409 here: created meanwhile; fall through to update
                    raise self.fail(f"{ns}/{name}", f"create {kind.kind}", err) from None

        def change(cur: dict) -> dict:
            cur["metadata"].setdefault("labels", {}).update(obj["metadata"].get("labels", {}))
            cur["metadata"].setdefault("annotations", {}).update(obj["metadata"].get("annotations", {}))
            cur["spec"] = copy.deepcopy(obj["spec"])
            return keep(cur, obj) if keep else cur

        return self.update(kind, ns, name, change)

    # -- config maps (llmship's records: they restart nothing when written) ----------------

    def get_configmap(self, ns: str, name: str) -> dict | None:
        try:
            return self.api.sanitize_for_serialization(self.core.read_namespaced_config_map(name, ns))
        except ApiException as err:
            if err.status == 404:
                return None
            raise self.fail(f"{ns}/{name}", "get ConfigMap", err) from None

    def update_configmap(self, ns: str, name: str, change: Callable[[dict], dict | None],
                         labels: dict | None = None) -> dict:
        """Create the ConfigMap if missing, then read-change-replace guarded by resourceVersion."""
        for _ in range(MAX_CONFLICT_RETRIES):
            current = self.get_configmap(ns, name)
            if current is None:
                body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {},
                        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})}}
                desired = change(copy.deepcopy(body))
                if desired is None:
                    return body
                try:
                    created = self.core.create_namespaced_config_map(ns, desired, field_manager=FIELD_MANAGER)
                    return self.api.sanitize_for_serialization(created)
                except ApiException as err:
                    if err.status == 409:
                        continue  # created meanwhile: change that one
                    raise self.fail(f"{ns}/{name}", "create ConfigMap", err) from None
            desired = change(copy.deepcopy(current))
            if desired is None or desired == current:
                return current
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            desired["metadata"].pop("managedFields", None)
            try:
                replaced = self.core.replace_namespaced_config_map(name, ns, desired, field_manager=FIELD_MANAGER)
                return self.api.sanitize_for_serialization(replaced)
            except ApiException as err:
                if err.status == 409:
                    continue
                raise self.fail(f"{ns}/{name}", "update ConfigMap", err) from None
        raise StageFailed(self.stage, f"{ns}/{name}", f"ConfigMap kept changing under llmship ({MAX_CONFLICT_RETRIES} conflicts)",
                          "another llmship or user is writing it; stop them and re-run")

    def list_custom(self, kind: Kind, ns: str, label_selector: str | None = None) -> list[dict]:
        try:
            return self.custom.list_namespaced_custom_object(kind.group, kind.version, ns, kind.plural,
                                                             label_selector=label_selector or "")["items"]
        except ApiException as err:
            if err.status == 404:
                return []
            raise self.fail(ns, f"list {kind.kind}", err) from None

    # -- core, read-only -----------------------------------------------------------------

    def deployment(self, ns: str, name: str) -> dict | None:
        try:
            return self.api.sanitize_for_serialization(self.apps.read_namespaced_deployment(name, ns))
        except ApiException as err:
            if err.status == 404:
                return None
            raise self.fail(f"{ns}/{name}", "get Deployment", err) from None

    def pods_of(self, ns: str, deployment: dict) -> list[dict]:
        """The pods a Deployment selects (by its own selector, not by name)."""
        match = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        try:
            pods = self.core.list_namespaced_pod(ns, label_selector=selector).items
        except ApiException as err:
            raise self.fail(ns, "list Pods", err) from None
        return [self.api.sanitize_for_serialization(p) for p in pods]

    def events_for(self, ns: str, prefix: str, limit: int = 15) -> list[str]:
        try:
            items = self.core.list_namespaced_event(ns).items
        except ApiException:
            return []
        evs = [e for e in items if (e.involved_object.name or "").startswith(prefix)]
        evs.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp or ""))
        return [f"{e.type} {e.reason} {e.involved_object.kind}/{e.involved_object.name}: {e.message}" for e in evs[-limit:]]

    def pod_log_tail(self, ns: str, pod_prefix: str, lines: int = 40) -> tuple[str, str]:
        """(pod name, last lines of its kserve-container log) for the newest pod whose name has the prefix."""
        try:
            pods = [p for p in self.core.list_namespaced_pod(ns).items if p.metadata.name.startswith(pod_prefix)]
        except ApiException:
            return "", ""
        if not pods:
            return "", ""
        pod = sorted(pods, key=lambda p: str(p.metadata.creation_timestamp or ""))[-1]
        try:
            log = self.core.read_namespaced_pod_log(pod.metadata.name, ns, container="kserve-container", tail_lines=lines)
        except ApiException as err:
            log = f"(log unavailable: HTTP {err.status})"
        return pod.metadata.name, log
