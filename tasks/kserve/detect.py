"""What kind of KServe this is: deployment mode and version, read from the cluster."""

from __future__ import annotations

import json
import re
from typing import Literal

from kubernetes.client.rest import ApiException
from pydantic import BaseModel

from tasks.kserve.cluster import Cluster

KSERVE_NAMESPACE = "kserve"
CONTROLLER = "kserve-controller-manager"
ISVC_CRD = "inferenceservices.serving.kserve.io"
STANDARD_CANARY_SINCE = (0, 20)

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
    mode: Mode
    mode_source: str  # status.deploymentMode | annotation | spec | inferenceservice-config
    kserve_version: str | None
    version_source: str
    standard_canary: bool  # spec.canary[] exists (KServe >= 0.20)
    standard_canary_source: str


def detect_mode(cluster: Cluster, existing: dict | None, spec_mode: str | None) -> tuple[Mode | None, str]:
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
    try:
        cm = cluster.core.read_namespaced_config_map("inferenceservice-config", KSERVE_NAMESPACE)
        deploy = json.loads((cm.data or {}).get("deploy", "{}"))
        m = normalize_mode(deploy.get("defaultDeploymentMode"))
        if m:
            return m, "inferenceservice-config defaultDeploymentMode"
    except (ApiException, ValueError):
        pass
    return None, "not found"


def detect_version(cluster: Cluster, spec_version: str | None) -> tuple[str | None, str]:
    if spec_version:
        return spec_version, "spec target.kserve_version"
    try:
        dep = cluster.apps.read_namespaced_deployment(CONTROLLER, KSERVE_NAMESPACE)
        for c in dep.spec.template.spec.containers:
            if "kserve-controller" in (c.image or "") or c.name == "manager":
                tag = (c.image or "").rpartition(":")[2]
                if parse_version(tag):
                    return tag, f"image of {KSERVE_NAMESPACE}/{CONTROLLER}"
        labels = dep.metadata.labels or {}
        for key in ("app.kubernetes.io/version", "helm.sh/chart"):
            if parse_version(labels.get(key)):
                return labels[key], f"label {key} of {KSERVE_NAMESPACE}/{CONTROLLER}"
    except (ApiException, ValueError, AttributeError):  # no access, or an object the client cannot parse
        pass
    return None, "not found"


def detect_standard_canary(cluster: Cluster, version: str | None) -> tuple[bool, str]:
    """Capability first (the installed CRD has spec.canary), then the version number."""
    try:
        # Raw JSON: the client's model classes take seconds to build a 2 MB schema.
        resp = cluster.ext.read_custom_resource_definition(ISVC_CRD, _preload_content=False)
        crd = json.loads(resp.data)
        for v in crd["spec"]["versions"]:
            if v["name"] == "v1beta1":
                spec = v.get("schema", {}).get("openAPIV3Schema", {}).get("properties", {}).get("spec", {})
                has = "canary" in spec.get("properties", {})
                return has, f"CRD {ISVC_CRD} {'has' if has else 'lacks'} spec.canary"
    except (ApiException, ValueError, KeyError):
        pass
    ver = parse_version(version)
    if ver:
        return ver >= STANDARD_CANARY_SINCE, f"KServe version {version}"
    return False, "unknown KServe version"


def detect(cluster: Cluster, existing: dict | None, spec_mode: str | None, spec_version: str | None) -> ClusterInfo | None:
    mode, mode_source = detect_mode(cluster, existing, spec_mode)
    if mode is None:
        return None
    version, version_source = detect_version(cluster, spec_version)
    canary, canary_source = detect_standard_canary(cluster, version)
    return ClusterInfo(mode=mode, mode_source=mode_source, kserve_version=version, version_source=version_source,
                       standard_canary=canary, standard_canary_source=canary_source)
