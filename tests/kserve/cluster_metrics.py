"""vLLM metrics for the pods of the real test cluster (tests/cluster), scraped by a real Prometheus.

The pods are KWOK's: they run nothing, so each Ready predictor pod gets a /metrics page from
MetricsFixture (vLLM's real families and buckets) with its share of a steady request rate.
The shares follow what the cluster itself says serves: the stable InferenceService's
Deployment takes the name's traffic; a blue-green candidate takes only what a test's load
tester sends it (`synthetic`). Each pod's storageUri (the storage-initializer's argument,
as KServe wrote it) picks its latency and error profile.
"""

from __future__ import annotations

from tasks.kserve.routers import predictor_deployment


def _ready(pod) -> bool:
    if pod.metadata.deletion_timestamp is not None or (pod.status.phase or "") != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _deployment_of(pod) -> str | None:
    for ref in pod.metadata.owner_references or []:
        if ref.kind == "ReplicaSet":
            return ref.name.rsplit("-", 1)[0]  # <deployment>-<pod-template-hash>
    return None


def _storage_uri(pod) -> str:
    for c in pod.spec.init_containers or []:
        if c.name == "storage-initializer" and c.args:
            return c.args[0]
    for c in pod.spec.containers or []:
        for e in c.env or []:
            if e.name == "STORAGE_URI":
                return e.value or ""
    return ""


class ClusterTraffic:
    """A pod_traffic callable for MetricsFixture: (namespace, pod, storageUri, percent) per Ready pod."""

    def __init__(self, core, namespace: str, name: str):
        self.core = core
        self.namespace = namespace
        self.name = name
        self.synthetic: dict[str, float] = {}  # Deployment -> percent-equivalent of load-tester traffic

    def shares(self) -> dict[str, float]:
        return {predictor_deployment(self.name): 100.0, **self.synthetic}

    def __call__(self) -> list[tuple[str, str, str, float]]:
        pods = [p for p in self.core.list_namespaced_pod(self.namespace).items if _ready(p)]
        groups: dict[str, list] = {}
        for p in pods:
            dep = _deployment_of(p)
            if dep:
                groups.setdefault(dep, []).append(p)
        out = []
        shares = self.shares()
        for dep, members in groups.items():
            pct = shares.get(dep, 0.0) / len(members)
            out += [(self.namespace, p.metadata.name, _storage_uri(p), pct) for p in members]
        return out
