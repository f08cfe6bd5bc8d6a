"""A real Kubernetes control plane with the real KServe controller, started by the tests.

`TestCluster` starts, on loopback, each as its own process group with its log in
`<workdir>/logs/<component>.log`:

- etcd 3.6.4 (or $KUBEBUILDER_ASSETS/etcd)
- kube-apiserver (client-certificate authentication, RBAC, the default admission plugins
  with real Mutating/ValidatingAdmissionWebhook calls)
- kube-controller-manager (deployments, replica sets, namespaces, garbage collection,
  service accounts, endpoints, persistent-volume binding, ...)
- kube-scheduler (so nodeSelector, tolerations and `nvidia.com/gpu` requests really place pods)
- kwok: fake nodes (a CPU node and a GPU node by default) whose pods become Running and Ready
  without a container runtime, or fail on purpose (see infra/testcluster/kwok/fault-stages.yaml)
- where built (by default): the KEDA operator and its admission webhooks (namespace `keda`)
- the KServe controller manager v0.20.0, with KServe's CRDs, RBAC (it runs as its service
  account), `inferenceservice-config` and its admission webhooks served on 127.0.0.1 (the
  webhook configurations come from KServe's config/webhook, with `url:` clientConfigs)
- optionally the Gateway API CRDs (`gateway_api=True`; no Gateway controller)

The binaries come from `infra/testcluster/build.sh` (`make testcluster`); nothing is built
here. See docs/testcluster.md.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from tests.cluster.pki import CertificateAuthority, service_account_key

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "infra" / "testcluster" / "build.sh"

FAULT_ANNOTATION = "testcluster.llmship.io/fault"
"""Pod annotation (copied from an InferenceService's annotations) that makes KWOK fail the pod."""
FAULTS = ("never-ready", "crash-loop", "init-fail")
"""Fault tokens: a pod whose spec holds one of these in any string (storageUri, env, arg, image)
or whose FAULT_ANNOTATION has it as value fails that way (fault-stages.yaml)."""

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

# Controllers of kube-controller-manager that KServe's objects need.
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "persistentvolume-binder-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
    "pod-garbage-collector-controller",
    "job-controller",
    "statefulset-controller",
    "disruption-controller",
    "ttl-after-finished-controller",
    "clusterrole-aggregation-controller",
)


class ClusterStartError(RuntimeError):
    """A component did not start; the message carries the tail of its log."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kserve_manager: Path
    kserve_config: Path
    kwok: Path
    kwok_stages: Path
    kwok_fault_stages: Path
    kube_version: str
    kserve_version: str
    kwok_version: str
    gateway_api_crds: Path | None = None
    keda_operator: Path | None = None
    keda_webhooks: Path | None = None
    keda_config: Path | None = None
    keda_version: str = ""

    @classmethod
    def locate(cls) -> "Binaries":
        """Where build.sh puts (or would put) each part; raises if one is missing."""
        out = subprocess.run(
            ["bash", str(BUILD_SH), "--print-env"], check=True, capture_output=True, text=True
        ).stdout
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        b = cls(
            etcd=Path(env["ETCD"]),
            kube_apiserver=Path(env["KUBE_APISERVER"]),
            kube_controller_manager=Path(env["KUBE_CONTROLLER_MANAGER"]),
            kube_scheduler=Path(env["KUBE_SCHEDULER"]),
            kserve_manager=Path(env["KSERVE_MANAGER"]),
            kserve_config=Path(env["KSERVE_CONFIG"]),
            kwok=Path(env["KWOK"]),
            kwok_stages=Path(env["KWOK_STAGES"]),
            kwok_fault_stages=Path(env["KWOK_FAULT_STAGES"]),
            kube_version=env["KUBE_VERSION"],
            kserve_version=env["KSERVE_VERSION"],
            kwok_version=env["KWOK_VERSION"],
            gateway_api_crds=Path(env["GATEWAY_API_CRDS"]),
            keda_operator=Path(env["KEDA_OPERATOR"]),
            keda_webhooks=Path(env["KEDA_WEBHOOKS"]),
            keda_config=Path(env["KEDA_CONFIG"]),
            keda_version=env["KEDA_VERSION"],
        )
        missing = [str(p) for p in (b.etcd, b.kube_apiserver, b.kube_controller_manager, b.kube_scheduler,
                                    b.kserve_manager, b.kwok, b.kserve_config, b.kwok_stages) if not p.exists()]
        if missing:
            raise ClusterStartError(
                "the test cluster's binaries are not built: missing " + ", ".join(missing)
                + ". Run `make testcluster` (infra/testcluster/build.sh; cold it takes ~20-30 min on 2 cores, "
                "see docs/testcluster.md)."
            )
        return b

    @property
    def keda_built(self) -> bool:
        return all(p is not None and p.exists() for p in (self.keda_operator, self.keda_webhooks, self.keda_config))

    def require_keda(self) -> None:
        missing = [str(p) for p in (self.keda_operator, self.keda_webhooks, self.keda_config) if not p.exists()]
        if missing:
            raise ClusterStartError(
                "KEDA is not built: missing " + ", ".join(missing)
                + ". Run `bash infra/testcluster/build.sh --extras keda` (docs/testcluster.md)."
            )


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """One component, in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.argv = argv
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.pop("KUBECONFIG", None)
        full_env.update(env or {})
        with open(log, "ab") as fh:
            fh.write(("$ " + " ".join(argv) + "\n").encode())
            fh.flush()
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                preexec_fn=_own_session_ended_with_parent, env=full_env, cwd=cwd,
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40, width: int = 600) -> str:
        """The last lines of the log, each cut to `width` characters (stack traces are long)."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line if len(line) <= width else line[:width] + " …" for line in text[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(5)


def _own_session_ended_with_parent() -> None:
    """In the child before exec: its own process group (stop() signals the whole group), and
    SIGTERM when the test process dies without stopping it (Linux PR_SET_PDEATHSIG)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait(what: str, check: Callable[[], Any], timeout: float, proc: Process | None = None,
          interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise ClusterStartError(
                f"{proc.name} exited with code {proc.popen.returncode} while waiting for {what}; "
                f"log {proc.log}:\n{proc.tail()}"
            )
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        time.sleep(interval)
    detail = f"; last error: {last}" if last else ""
    logtail = f"\nlog {proc.log}:\n{proc.tail()}" if proc else ""
    raise ClusterStartError(f"timed out after {timeout:.0f} s waiting for {what}{detail}{logtail}")


def _https_get(url: str, ca: Path | None = None, cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# --------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    """A fake node that KWOK runs pods on."""

    name: str
    gpus: int = 0
    gpu_product: str = GPU_PRODUCT
    cpu: str = "64"
    memory: str = "512Gi"
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] | None = None  # None: GPU nodes get nvidia.com/gpu:NoSchedule


DEFAULT_NODES = (Node("kwok-cpu-0"), Node("kwok-gpu-0", gpus=8))


class TestCluster:
    """A real control plane with KServe; see the module docstring.

    Use as a context manager, or call start() / stop(). Attributes once started:
    kubeconfig (admin, system:masters), server (https URL), ca_file, logs_dir,
    kserve_namespace, deployment_mode, binaries (versions and paths).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        kserve: bool = True,
        keda: bool | None = None,
        gateway_api: bool = False,
        kserve_namespace: str = "kserve",
        deployment_mode: str = "Standard",
        kserve_config: dict[str, dict] | None = None,
        nodes: Iterable[Node] = DEFAULT_NODES,
        keep_workdir: bool = False,
    ):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="llmship-testcluster-"))
        self.kserve_enabled = kserve
        self.keda_enabled = keda
        self.gateway_api = gateway_api
        self.kserve_namespace = kserve_namespace
        self.deployment_mode = deployment_mode
        self.kserve_config_overrides = kserve_config or {}
        self.nodes = list(nodes)
        self.keep_workdir = keep_workdir
        self.logs_dir = self.workdir / "logs"
        self.procs: dict[str, Process] = {}
        self.timings: dict[str, float] = {}
        self.binaries: Binaries | None = None
        self._api = None
        self._dyn = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "TestCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "TestCluster":
        t0 = time.monotonic()
        try:
            self.binaries = Binaries.locate()
            if self.keda_enabled is None:  # KEDA runs where it is built (build.sh builds it by default)
                self.keda_enabled = self.binaries.keda_built
            if self.keda_enabled:
                self.binaries.require_keda()
            self._pki()
            self._step("etcd", self._start_etcd)
            self._step("kube-apiserver", self._start_apiserver)
            self._step("kube-controller-manager", self._start_controller_manager)
            self._step("kube-scheduler", self._start_scheduler)
            self._step("kwok", self._start_kwok)
            if self.keda_enabled:  # before KServe: it watches ScaledObjects only if their CRD exists
                self._step("keda", self._start_keda)
            if self.kserve_enabled:
                self._step("kserve", self._start_kserve)
        except ClusterStartError:
            self.stop()
            raise
        except BaseException as exc:
            report = self.logs_report(30) if self.procs else ""
            self.stop()
            if isinstance(exc, Exception):
                raise ClusterStartError(f"test cluster start failed: {type(exc).__name__}: {exc}\n{report}") from exc
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _step(self, name: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - t

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.procs[name].stop()
        if self._api is not None:
            self._api.close()
            self._api = None
            self._dyn = None
        if self.keep_workdir:
            return
        if self._own_workdir:
            _rmtree(self.workdir)
        else:  # a folder of the caller's (pytest's tmp_path): keep the logs, drop etcd's data
            _rmtree(self.workdir / "etcd-data")

    # ------------------------------------------------------------------ diagnostics

    def log_tail(self, component: str, lines: int = 60) -> str:
        proc = self.procs.get(component)
        return proc.tail(lines) if proc else f"(no component {component})"

    def logs_report(self, lines: int = 30, components: Iterable[str] | None = None) -> str:
        """The last lines of each component's log, for a failure message."""
        parts = []
        for name in components or self.procs:
            proc = self.procs[name]
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"----- {name} ({state}; {proc.log}) -----\n{proc.tail(lines)}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        dead = [p for p in self.procs.values() if not p.alive()]
        if dead:
            raise ClusterStartError(
                "test cluster component(s) died: " + ", ".join(p.name for p in dead) + "\n"
                + self.logs_report(components=[p.name for p in dead])
            )

    # ------------------------------------------------------------------ clients

    def api_client(self):
        """A new kubernetes.client.ApiClient for the admin user (the global config is untouched)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    @property
    def api(self):
        """One shared admin ApiClient."""
        if self._api is None:
            self._api = self.api_client()
        return self._api

    @property
    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @property
    def apps(self):
        from kubernetes import client

        return client.AppsV1Api(self.api)

    @property
    def custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def apply(self, obj: dict, namespace: str | None = None) -> dict:
        """Create an object (any kind) or, if it exists, replace it; returns the server's copy."""
        from kubernetes import dynamic
        from kubernetes.dynamic.exceptions import NotFoundError

        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        if getattr(self, "_dyn", None) is None:
            self._dyn = dynamic.DynamicClient(self.api)
        try:
            res = self._dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:  # a kind added since discovery was cached (a new CRD)
            self._dyn.resources.invalidate_cache()
            res = self._dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        ns = (namespace or obj.get("metadata", {}).get("namespace")) if res.namespaced else None
        name = obj["metadata"]["name"]
        # serialize=False: plain JSON (wrapping a CRD's schema in ResourceInstance takes seconds)
        try:
            current = json.loads(res.get(name=name, namespace=ns, serialize=False).data)
        except NotFoundError:
            return json.loads(res.create(body=obj, namespace=ns, serialize=False).data)
        body = copy.deepcopy(obj)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return json.loads(res.replace(body=body, namespace=ns, serialize=False).data)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """Any object as plain JSON, or None when it does not exist."""
        from kubernetes import dynamic
        from kubernetes.dynamic.exceptions import NotFoundError

        if self._dyn is None:
            self._dyn = dynamic.DynamicClient(self.api)
        res = self._dyn.resources.get(api_version=api_version, kind=kind)
        try:
            return json.loads(res.get(name=name, namespace=namespace, serialize=False).data)
        except NotFoundError:
            return None

    def create_namespace(self, name: str | None = None, prefix: str = "t", labels: dict | None = None) -> str:
        name = name or f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
        # the serviceaccount controller adds "default"; pods are refused until it exists
        _wait(f"service account default in {name}",
              lambda: self.core.read_namespaced_service_account("default", name), 30)
        return name

    def delete_namespace(self, name: str, wait: bool = False) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise
        if wait:
            def gone():
                try:
                    self.core.read_namespace(name)
                    return False
                except ApiException as e:
                    return e.status == 404
            _wait(f"namespace {name} deleted", gone, 60)

    # helpers for tests -------------------------------------------------------

    def pods(self, namespace: str, label_selector: str = "") -> list:
        return self.core.list_namespaced_pod(namespace, label_selector=label_selector).items

    def isvc_pods(self, namespace: str, isvc: str, component: str = "predictor") -> list:
        return self.pods(namespace, f"serving.kserve.io/inferenceservice={isvc},component={component}")

    def get_isvc(self, namespace: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object("serving.kserve.io", "v1beta1", namespace,
                                                        "inferenceservices", name)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.5) -> Any:
        """Poll check() until it returns something truthy; on timeout raise with component logs."""
        try:
            return _wait(what, check, timeout, interval=interval)
        except ClusterStartError as e:
            self.check_alive()
            raise AssertionError(f"{e}\n{self.logs_report(20, ['kserve'] if 'kserve' in self.procs else None)}") from None

    def wait_isvc_condition(self, namespace: str, name: str, cond: str = "Ready", status: str = "True",
                            timeout: float = 60.0) -> dict:
        def check():
            isvc = self.get_isvc(namespace, name)
            for c in isvc.get("status", {}).get("conditions", []):
                if c["type"] == cond and c["status"] == status:
                    return isvc
            return None
        return self.wait_for(f"InferenceService {namespace}/{name} {cond}={status}", check, timeout)

    def events(self, namespace: str) -> list[str]:
        evs = self.core.list_namespaced_event(namespace).items
        return [f"{e.involved_object.kind}/{e.involved_object.name}: {e.type} {e.reason}: {e.message}" for e in evs]

    def diagnose(self, namespace: str | None = None) -> str:
        """Namespace objects, events and component log tails: text to attach to a failure."""
        lines = []
        if namespace:
            try:
                for p in self.pods(namespace):
                    cs = [(c.name, c.ready, c.restart_count) for c in (p.status.container_statuses or [])]
                    lines.append(f"pod {p.metadata.name} node={p.spec.node_name} phase={p.status.phase} containers={cs}")
                lines += self.events(namespace)[-30:]
                isvcs = self.custom.list_namespaced_custom_object("serving.kserve.io", "v1beta1", namespace,
                                                                  "inferenceservices")["items"]
                for i in isvcs:
                    lines.append(f"isvc {i['metadata']['name']} status={json.dumps(i.get('status', {}))[:2000]}")
            except Exception as exc:  # noqa: BLE001
                lines.append(f"(could not read namespace {namespace}: {exc})")
        lines.append(self.logs_report(25))
        return "\n".join(lines)

    def make_bound_pvc(self, namespace: str, name: str, size: str = "10Gi") -> None:
        """A PersistentVolume (hostPath) and a claim bound to it, for pvc:// storage URIs.

        The real persistentvolume-binder controller binds them; the scheduler places pods
        that mount the claim only once it is Bound.
        """
        pv = f"pv-{namespace}-{name}"[:63]
        self.core.create_persistent_volume({
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                "hostPath": {"path": f"/tmp/{pv}"},
                "claimRef": {"namespace": namespace, "name": name},
            },
        })
        self.core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": size}}},
        })
        self.wait_for(f"PVC {namespace}/{name} Bound",
                      lambda: self.core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Bound",
                      30)

    def add_node(self, node: Node) -> None:
        self.core.create_node(self._node_body(node))
        self._wait_nodes_ready([node.name])

    # ------------------------------------------------------------------ components

    def _pki(self) -> None:
        pki = self.workdir / "pki"
        self.ca = CertificateAuthority(pki)
        self.ca_file = self.ca.cert_path
        self.apiserver_cert = self.ca.issue(
            "apiserver", common_name="kube-apiserver", server=True,
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                       "kubernetes.default.svc.cluster.local"),
            ip_addresses=("127.0.0.1", "10.96.0.1"),
        )
        self.sa_key = service_account_key(pki / "sa.key")
        self.client_certs = {
            "admin": self.ca.issue("admin", common_name="admin", organizations=("system:masters",), client=True),
            # the control-plane components get system:masters: RBAC is real for KServe, which runs
            # as its own service account with KServe's ClusterRole
            "kube-controller-manager": self.ca.issue("kcm", common_name="system:kube-controller-manager",
                                                     organizations=("system:masters",), client=True),
            "kube-scheduler": self.ca.issue("scheduler", common_name="system:kube-scheduler",
                                            organizations=("system:masters",), client=True),
            "kwok": self.ca.issue("kwok", common_name="kwok", organizations=("system:masters",), client=True),
        }

    def _kubeconfig(self, name: str, *, cert=None, token: str | None = None) -> Path:
        user: dict[str, str] = {}
        if cert is not None:
            user = {"client-certificate": str(cert.cert), "client-key": str(cert.key)}
        if token is not None:
            user = {"token": token}
        cfg = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "testcluster", "cluster": {"server": self.server,
                                                             "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": "testcluster", "user": name}}],
            "current-context": name,
        }
        path = self.workdir / "kubeconfigs" / f"{name}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    def _start_etcd(self) -> None:
        b = self.binaries
        self.etcd_port, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        data = self.workdir / "etcd-data"
        proc = self.procs["etcd"] = Process("etcd", [
            str(b.etcd), "--name", "testcluster", "--data-dir", str(data),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"testcluster=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(2 << 30), "--log-level", "warn",
        ], self.logs_dir / "etcd.log")

        def healthy():
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
        _wait("etcd /health", healthy, 30, proc)

    def _start_apiserver(self) -> None:
        b = self.binaries
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self.workdir / "pki"
        proc = self.procs["kube-apiserver"] = Process("kube-apiserver", [
            str(b.kube_apiserver),
            "--etcd-servers", self.etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(port),
            "--tls-cert-file", str(self.apiserver_cert.cert), "--tls-private-key-file", str(self.apiserver_cert.key),
            "--client-ca-file", str(self.ca_file),
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(self.sa_key),
            "--service-account-signing-key-file", str(self.sa_key),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--authorization-mode", "RBAC",
            "--allow-privileged=true",
            "--endpoint-reconciler-type", "none",
            # no node-lifecycle controller runs to lift the not-ready taint from a new node
            "--disable-admission-plugins", "TaintNodesByCondition",
            "--cert-dir", str(pki / "apiserver-generated"),
            "--profiling=false",
            "--v", "1",
        ], self.logs_dir / "kube-apiserver.log")
        admin = self.client_certs["admin"]
        _wait("kube-apiserver /readyz",
              lambda: _https_get(f"{self.server}/readyz", self.ca_file, (admin.cert, admin.key))[0] == 200,
              60, proc)
        self.kubeconfig = self._kubeconfig("admin", cert=admin)

    def _start_controller_manager(self) -> None:
        b = self.binaries
        kc = self._kubeconfig("kube-controller-manager", cert=self.client_certs["kube-controller-manager"])
        port = free_port()
        proc = self.procs["kube-controller-manager"] = Process("kube-controller-manager", [
            str(b.kube_controller_manager),
            "--kubeconfig", str(kc), "--authentication-kubeconfig", str(kc), "--authorization-kubeconfig", str(kc),
            "--bind-address", "127.0.0.1", "--secure-port", str(port),
            "--cert-dir", str(self.workdir / "pki" / "kcm-generated"),
            "--leader-elect=false",
            "--controllers", ",".join(CONTROLLERS),
            "--service-account-private-key-file", str(self.sa_key),
            "--root-ca-file", str(self.ca_file),
            "--use-service-account-credentials=false",
            "--concurrent-deployment-syncs", "10", "--concurrent-replicaset-syncs", "10",
            "--v", "1",
        ], self.logs_dir / "kube-controller-manager.log")
        _wait("kube-controller-manager /healthz",
              lambda: _https_get(f"https://127.0.0.1:{port}/healthz")[0] == 200, 60, proc)

    def _start_scheduler(self) -> None:
        b = self.binaries
        kc = self._kubeconfig("kube-scheduler", cert=self.client_certs["kube-scheduler"])
        port = free_port()
        proc = self.procs["kube-scheduler"] = Process("kube-scheduler", [
            str(b.kube_scheduler),
            "--kubeconfig", str(kc), "--authentication-kubeconfig", str(kc), "--authorization-kubeconfig", str(kc),
            "--bind-address", "127.0.0.1", "--secure-port", str(port),
            "--cert-dir", str(self.workdir / "pki" / "scheduler-generated"),
            "--leader-elect=false", "--v", "1",
        ], self.logs_dir / "kube-scheduler.log")
        _wait("kube-scheduler /healthz",
              lambda: _https_get(f"https://127.0.0.1:{port}/healthz")[0] == 200, 60, proc)

    def _node_body(self, node: Node) -> dict:
        labels = {
            "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": node.name,
            "type": "kwok",
        }
        capacity = {"cpu": node.cpu, "memory": node.memory, "pods": "110"}
        taints = node.taints
        if node.gpus:
            labels.update({"nvidia.com/gpu.product": node.gpu_product, "nvidia.com/gpu.present": "true",
                           "nvidia.com/gpu.count": str(node.gpus)})
            capacity["nvidia.com/gpu"] = str(node.gpus)
            if taints is None:
                taints = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
        labels.update(node.labels)
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": labels,
                         "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                                         "node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"taints": taints or []},
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    def _wait_nodes_ready(self, names: list[str]) -> None:
        def ready():
            for n in names:
                node = self.core.read_node(n)
                conds = {c.type: c.status for c in (node.status.conditions or [])}
                if conds.get("Ready") != "True":
                    return False
            return True
        _wait(f"nodes {names} Ready (kwok)", ready, 30, self.procs["kwok"])

    def _start_kwok(self) -> None:
        b = self.binaries
        kc = self._kubeconfig("kwok", cert=self.client_certs["kwok"])
        stages = sorted(b.kwok_stages.glob("*.yaml")) + [b.kwok_fault_stages]
        config = self.workdir / "kwok.yaml"
        config.write_text("\n---\n".join(p.read_text() for p in stages))
        port = free_port()
        self.procs["kwok"] = Process("kwok", [
            str(b.kwok), "--kubeconfig", str(kc), "--config", str(config),
            "--manage-nodes-with-annotation-selector", "=".join(KWOK_NODE_ANNOTATION),
            "--server-address", f"127.0.0.1:{port}",
            "--cidr", "10.244.0.0/16", "--node-ip", "10.0.0.1",
            "-v", "INFO",
        ], self.logs_dir / "kwok.log")
        for node in self.nodes:
            self.core.create_node(self._node_body(node))
        self._wait_nodes_ready([n.name for n in self.nodes])

    # ------------------------------------------------------------------ KEDA

    def _start_keda(self) -> None:
        """KEDA's operator and admission webhooks (config/ of the KEDA module), namespace `keda`."""
        b = self.binaries
        ns = "keda"
        cfg = b.keda_config
        for f in sorted((cfg / "crd" / "bases").glob("*.yaml")):
            for crd in _load_yaml(f):
                self.apply(crd)
        self.core.create_namespace({"metadata": {"name": ns}})
        _wait(f"service account default in {ns}", lambda: self.core.read_namespaced_service_account("default", ns), 30)
        for rel in ("service_account/service_account.yaml", "rbac/role.yaml", "rbac/role_binding.yaml"):
            for doc in _load_yaml(cfg / rel):
                self.apply(doc)
        certs = self.workdir / "keda-certs"
        self.ca.issue("keda", common_name="keda-admission-webhooks", server=True, client=True,
                      dns_names=("localhost", "keda-operator", f"keda-operator.{ns}.svc",
                                 "keda-admission-webhooks", f"keda-admission-webhooks.{ns}.svc"),
                      ip_addresses=("127.0.0.1",), folder=certs, cert_file="tls.crt", key_file="tls.key")
        (certs / "ca.crt").write_bytes(self.ca.cert_pem)
        ca_dir = self.workdir / "keda-ca"  # every file there is read as a CA certificate
        ca_dir.mkdir(exist_ok=True)
        (ca_dir / "ca.crt").write_bytes(self.ca.cert_pem)
        token = self.core.create_namespaced_service_account_token(
            "keda-operator", ns, {"spec": {"expirationSeconds": 7 * 24 * 3600}}).status.token
        kc = self._kubeconfig("keda-operator", token=token)
        env = {"KUBECONFIG": str(kc), "POD_NAMESPACE": ns, "WATCH_NAMESPACE": "",
               "KEDA_CLUSTER_OBJECT_NAMESPACE": ns, "KEDA_HTTP_DEFAULT_TIMEOUT": "2000"}

        def crd_established():
            crd = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "scaledobjects.keda.sh") or {}
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in (crd.get("status", {}).get("conditions") or []))
        _wait("KEDA CRDs Established", crd_established, 30, self.procs["kube-apiserver"])

        op_probe = free_port()
        op = self.procs["keda-operator"] = Process("keda-operator", [
            str(b.keda_operator), "--leader-elect=false",
            "--metrics-bind-address", f"127.0.0.1:{free_port()}",
            "--health-probe-bind-address", f"127.0.0.1:{op_probe}",
            "--metrics-service-bind-address", f"127.0.0.1:{free_port()}",
            "--cert-dir", str(certs), "--enable-cert-rotation=false",
            "--enable-webhook-patching=false", "--enable-apiservice-patching=false",
            "--ca-dir", str(ca_dir), "--zap-log-level", "info",
        ], self.logs_dir / "keda-operator.log", env=env, cwd=self.workdir)
        self.keda_webhook_port = free_port()
        wh_probe = free_port()
        wh = self.procs["keda-webhooks"] = Process("keda-webhooks", [
            str(b.keda_webhooks), "--port", str(self.keda_webhook_port), "--cert-dir", str(certs),
            "--metrics-bind-address", f"127.0.0.1:{free_port()}",
            "--health-probe-bind-address", f"127.0.0.1:{wh_probe}", "--zap-log-level", "info",
        ], self.logs_dir / "keda-webhooks.log", env=env, cwd=self.workdir)
        ca_bundle = base64.b64encode(self.ca.cert_pem).decode()
        for doc in _load_yaml(cfg / "webhooks" / "validation_webhooks.yaml"):
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": f"https://127.0.0.1:{self.keda_webhook_port}{path}",
                                        "caBundle": ca_bundle}
            self.apply(doc)
        for proc, port in ((op, op_probe), (wh, wh_probe)):
            _wait(f"{proc.name} /readyz",
                  lambda port=port: urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200,
                  60, proc)

    # ------------------------------------------------------------------ KServe

    def _kserve_docs(self, rel: str) -> list[dict]:
        return _load_yaml(self.binaries.kserve_config / rel)

    def _start_kserve(self) -> None:
        t0 = time.monotonic()
        ns = self.kserve_namespace
        cfg = self.binaries.kserve_config
        if self.gateway_api:  # before the manager starts: it owns HTTPRoutes only if their CRD exists
            for f in sorted(self.binaries.gateway_api_crds.glob("*.yaml")):
                for doc in _load_yaml(f):
                    self.apply(doc)
        # CRDs (KServe's config/crd/full)
        crd_files = sorted((cfg / "crd" / "full").glob("serving.kserve.io_*.yaml"))
        crd_files += sorted((cfg / "crd" / "full" / "clusterstoragecontainer").glob("*.yaml"))
        names = []
        for f in crd_files:
            for crd in _load_yaml(f):
                if crd.get("kind") == "CustomResourceDefinition":
                    self.apply(crd)
                    names.append(crd["metadata"]["name"])

        def established():
            for n in names:
                crd = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", n) or {}
                conds = {c["type"]: c["status"] for c in (crd.get("status", {}).get("conditions") or [])}
                if conds.get("Established") != "True":
                    return False
            return True
        # kube-apiserver takes ~10 s to establish the InferenceService CRD (its schema is huge):
        # write the other objects meanwhile, and wait before the first custom object
        self.timings["kserve.crds-created"] = time.monotonic() - t0

        # namespace, service account and RBAC (config/base, config/rbac)
        self.core.create_namespace({"metadata": {"name": ns, "labels": {"control-plane": "kserve-controller-manager"}}})
        _wait(f"service account default in {ns}", lambda: self.core.read_namespaced_service_account("default", ns), 30)
        for rel in ("rbac/service_account.yaml", "rbac/role.yaml", "rbac/role_binding.yaml",
                    "rbac/leader_election_role.yaml", "rbac/leader_election_role_binding.yaml"):
            for doc in self._kserve_docs(rel):
                doc.setdefault("metadata", {})
                if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
                    doc["metadata"]["namespace"] = ns
                for s in doc.get("subjects", []):
                    if s.get("kind") == "ServiceAccount":
                        s["namespace"] = ns
                self.apply(doc)

        # inferenceservice-config (config/configmap) with the deployment mode and overrides
        cm = self._kserve_docs("configmap/inferenceservice.yaml")[0]
        cm["metadata"]["namespace"] = ns
        overrides = {"deploy": {"defaultDeploymentMode": self.deployment_mode}}
        for key, value in self.kserve_config_overrides.items():
            overrides.setdefault(key, {}).update(value)
        for key, value in overrides.items():
            current = json.loads(cm["data"].get(key, "{}"))
            current.update(value)
            cm["data"][key] = json.dumps(current, indent=2)
        self.apply(cm)
        self.kserve_config = {k: json.loads(v) for k, v in cm["data"].items() if k != "_example"}

        _wait("KServe CRDs Established", established, 60, self.procs["kube-apiserver"])
        self.timings["kserve.crds-established"] = time.monotonic() - t0

        # the default ClusterStorageContainer (config/storagecontainers; image as kustomize sets it)
        for doc in self._kserve_docs("storagecontainers/default.yaml"):
            doc["spec"]["container"]["image"] = "kserve/storage-initializer:latest"
            self.apply(doc)

        # the manager's Deployment record, so the cluster shows where KServe runs (its pods run on a
        # KWOK node and do nothing; the real manager is the process started below)
        for doc in self._kserve_docs("manager/manager.yaml"):
            if doc.get("kind") != "Deployment":
                continue
            doc["metadata"]["namespace"] = ns
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "manager":
                    c["image"] = f"kserve/kserve-controller:{self.binaries.kserve_version}"
            doc["spec"]["template"]["spec"].setdefault("tolerations", [])
            self.apply(doc)

        # serving certificate where controller-runtime's webhook server looks: $TMPDIR/k8s-webhook-server/serving-certs
        tmp = self.workdir / "kserve-tmp"
        self.ca.issue("kserve-webhook", common_name="kserve-webhook-server-service", server=True,
                      dns_names=("localhost", f"kserve-webhook-server-service.{ns}.svc"), ip_addresses=("127.0.0.1",),
                      folder=tmp / "k8s-webhook-server" / "serving-certs", cert_file="tls.crt", key_file="tls.key")

        # the manager's credentials: a token of its own service account (RBAC applies)
        token = self.core.create_namespaced_service_account_token(
            "kserve-controller-manager", ns, {"spec": {"expirationSeconds": 7 * 24 * 3600}}).status.token
        kc = self._kubeconfig("kserve-controller-manager", token=token)

        self.kserve_webhook_port = free_port()
        probe, metrics = free_port(), free_port()
        proc = self.procs["kserve"] = Process("kserve", [
            str(self.binaries.kserve_manager),
            "--webhook-port", str(self.kserve_webhook_port),
            "--health-probe-addr", f"127.0.0.1:{probe}",
            "--metrics-addr", f"127.0.0.1:{metrics}",
            "--leader-elect=false",
        ], self.logs_dir / "kserve.log", env={
            "KUBECONFIG": str(kc), "POD_NAMESPACE": ns, "TMPDIR": str(tmp),
            "SECRET_NAME": "kserve-webhook-server-cert",
        }, cwd=self.workdir)

        # webhook configurations (config/webhook/manifests.yaml), pointed at the manager on loopback
        ca_bundle = base64.b64encode(self.ca.cert_pem).decode()
        for doc in self._kserve_docs("webhook/manifests.yaml"):
            doc["metadata"].pop("creationTimestamp", None)
            for wh in doc["webhooks"]:
                path = wh["clientConfig"]["service"]["path"]
                wh["clientConfig"] = {"url": f"https://127.0.0.1:{self.kserve_webhook_port}{path}",
                                      "caBundle": ca_bundle}
            self.apply(doc)

        self.timings["kserve.objects"] = time.monotonic() - t0
        _wait("KServe manager /readyz",
              lambda: urllib.request.urlopen(f"http://127.0.0.1:{probe}/readyz", timeout=2).status == 200, 60, proc)
        self.timings["kserve.manager-ready"] = time.monotonic() - t0
        # the webhook answers through kube-apiserver: a dry-run create passes defaulting and validation
        probe_isvc = {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "webhook-probe"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://probe/model"}}},
        }
        _wait("KServe webhooks reachable from kube-apiserver",
              lambda: self.custom.create_namespaced_custom_object(
                  "serving.kserve.io", "v1beta1", "default", "inferenceservices", probe_isvc, dry_run="All"),
              30, proc)


def _load_yaml(path: Path) -> list[dict]:
    """The documents of a YAML file (libyaml's parser where PyYAML has it: KServe's
    InferenceService CRD is 30,000 lines)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(path.read_text(), Loader=loader) if d]


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
