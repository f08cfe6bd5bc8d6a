"""What kind of KServe this is, read from the cluster: where it runs, its mode and version, and
whether its Standard mode can really split traffic."""

from __future__ import annotations

import json
import re
from typing import Literal

from kubernetes.client.rest import ApiException
from pydantic import BaseModel

from tasks.kserve.cluster import Cluster

DEFAULT_KSERVE_NAMESPACE = "kserve"
CONTROLLER = "kserve-controller-manager"
CONFIG = "inferenceservice-config"
WEBHOOK = "inferenceservice.serving.kserve.io"  # KServe's ValidatingWebhookConfiguration
# spec.canary[] exists from 0.20, but v0.20.0 sends it no traffic: weighted routing came after
# it, through Gateway API HTTPRoutes only (httproute_reconciler.go, kserve PR 5912).
STANDARD_SPLIT_SINCE = (0, 21)

Mode = Literal["knative", "standard"]


def normalize_mode(value: str | None) -> Mode | None:
    """KServe renamed Serverless -> Knative and RawDeployment -> Standard; accept both."""
    v = (value or "").strip().lower()
    if v in ("serverless", "knative"):
        return "knative"
    if v in ("rawdeployment", "standard"):
        return "standard"
    return None


def parse_version(text: str | None) -> tuple[int, int] | None:
    m = re.search(r"v?(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


class ClusterInfo(BaseModel):
    kserve_namespace: str
    namespace_source: str
    mode: Mode
    mode_source: str
    kserve_version: str | None
    version_source: str
    gateway_api: bool  # ingress.enableGatewayApi in inferenceservice-config
    standard_split: bool  # spec.canary[] traffic really reaches the canary
    standard_split_source: str


def kserve_namespace(cluster: Cluster, configured: str | None) -> tuple[str, str]:
    """Where KServe runs: the namespace of the service its validating webhook calls, else of its
    controller's Deployment."""
    if configured:
        return configured, "spec target.kserve_namespace"
    try:
        hook = cluster.admission.read_validating_webhook_configuration(WEBHOOK)
        for w in hook.webhooks or []:
            svc = w.client_config.service if w.client_config else None
            if svc is not None and svc.namespace:
                return svc.namespace, f"ValidatingWebhookConfiguration {WEBHOOK}"
    except ApiException:
        pass
    try:  # a webhook configured by url (no service): where the controller's Deployment is
        deps = cluster.apps.list_deployment_for_all_namespaces(field_selector=f"metadata.name={CONTROLLER}").items
        if deps:
            return deps[0].metadata.namespace, f"Deployment {CONTROLLER}"
    except ApiException:
        pass
    return DEFAULT_KSERVE_NAMESPACE, "default"


def _config(cluster: Cluster, ns: str) -> dict[str, dict]:
    try:
        cm = cluster.core.read_namespaced_config_map(CONFIG, ns)
    except ApiException:
        return {}
    out = {}
    for key, text in (cm.data or {}).items():
        try:
            out[key] = json.loads(text)
        except ValueError:
            continue
    return out


def detect_mode(existing: dict | None, spec_mode: str | None, config: dict) -> tuple[Mode | None, str]:
    if existing:
        m = normalize_mode((existing.get("status") or {}).get("deploymentMode"))
        if m:
            return m, "status.deploymentMode"
        m = normalize_mode((existing["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode"))
        if m:
            return m, "annotation serving.kserve.io/deploymentMode"
    m = normalize_mode(spec_mode)
    if m:
        return m, "spec target.deployment_mode"
    m = normalize_mode((config.get("deploy") or {}).get("defaultDeploymentMode"))
    if m:
        return m, f"{CONFIG} defaultDeploymentMode"
    return None, "not found"


def detect_version(cluster: Cluster, ns: str, spec_version: str | None) -> tuple[str | None, str]:
    if spec_version:
        return spec_version, "spec target.kserve_version"
    try:
        dep = cluster.apps.read_namespaced_deployment(CONTROLLER, ns)
        for c in dep.spec.template.spec.containers:
            if "kserve-controller" in (c.image or "") or c.name == "manager":
                tag = (c.image or "").rpartition(":")[2]
                if parse_version(tag):
                    return tag, f"image of {ns}/{CONTROLLER}"
        labels = dep.metadata.labels or {}
        for key in ("app.kubernetes.io/version", "helm.sh/chart"):
            if parse_version(labels.get(key)):
                return labels[key], f"label {key} of {ns}/{CONTROLLER}"
    except (ApiException, ValueError, AttributeError):  # no access, or an object the client cannot parse
        pass
    return None, "not found"


def detect(cluster: Cluster, existing: dict | None, spec_mode: str | None, spec_version: str | None,
           spec_kserve_namespace: str | None = None) -> ClusterInfo | None:
    ns, ns_source = kserve_namespace(cluster, spec_kserve_namespace)
    config = _config(cluster, ns)
    mode, mode_source = detect_mode(existing, spec_mode, config)
    if mode is None:
        return None
    version, version_source = detect_version(cluster, ns, spec_version)
    gateway = bool((config.get("ingress") or {}).get("enableGatewayApi"))
    ver = parse_version(version)
    if ver is None:
        split, why = False, "KServe version unknown: a split cannot be shown"
    elif ver < STANDARD_SPLIT_SINCE:
        split, why = False, f"KServe {version} gives spec.canary[] entries no traffic"
    elif not gateway:
        split, why = False, f"KServe {version} splits only through Gateway API, and ingress.enableGatewayApi is off"
    else:
        split, why = True, f"KServe {version} with ingress.enableGatewayApi"
    return ClusterInfo(kserve_namespace=ns, namespace_source=ns_source, mode=mode, mode_source=mode_source,
                       kserve_version=version, version_source=version_source, gateway_api=gateway,
                       standard_split=split, standard_split_source=why)
