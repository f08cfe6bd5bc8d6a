"""A focused Kubernetes API server for tests: real HTTP on loopback, the calls llmship makes.

What it does like a real API server:
- create answers 201 with uid, resourceVersion, generation and creationTimestamp; 409 AlreadyExists;
- every write bumps a global resourceVersion; PUT/merge-PATCH with a stale one answers 409 Conflict;
  PUT of a custom resource without one answers 422 (as kube-apiserver does);
- 404 NotFound as a Status object;
- custom resources are checked against the OpenAPI v3 schema of their real CRD: 422 Invalid
  with causes; unknown fields are pruned with a Warning header, or 400 under fieldValidation=Strict;
- the status subresource: the main resource ignores status, /status ignores everything else;
  generation moves only when spec changes;
- watch streams (chunked JSON lines) from a resourceVersion, with ADDED for existing objects
  when none is given, fieldSelector metadata.name / labelSelector, timeoutSeconds, 410 Gone;
- pods/log, events, configmaps, deployments, and CRDs (apiextensions) for reads.
Not implemented: server-side apply (415), json-patch (415), finalizers, auth.

It is used only by test_source_only_modes.py, for what the real control plane built here cannot
run (Knative mode, LLMInferenceService groups, KServe's Gateway API split after v0.20.0); all else
runs on the real kube-apiserver (tests/kserve/test_real_cluster.py).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tasks.kserve.admission import crd_from_yaml, prune_unknown, schema_errors


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Resource:
    group: str  # "" for core
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    crd: dict | None = None  # vendored-shape CRD: schema per version
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass
class Event:
    rv: int
    type: str
    key: tuple
    obj: dict


@dataclass
class Store:
    resources: dict = field(default_factory=dict)  # (group, version, plural) -> Resource
    objects: dict = field(default_factory=dict)  # (group, plural, ns, name) -> obj
    logs: dict = field(default_factory=dict)  # (ns, pod) -> text
    history: list = field(default_factory=list)
    rv: int = 1000
    cond: threading.Condition = field(default_factory=threading.Condition)
    requests: list = field(default_factory=list)  # (method, path) of every request, for assertions

    def add_resource(self, r: Resource) -> None:
        self.resources[(r.group, r.version, r.plural)] = r

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, etype: str, key: tuple, obj: dict) -> None:
        self.history.append(Event(self.rv, etype, key, copy.deepcopy(obj)))
        del self.history[:-5000]
        self.cond.notify_all()

    # Direct access for the test reconciler (it plays a controller: writes like one, no HTTP).
    def get(self, group: str, plural: str, ns: str, name: str) -> dict | None:
        with self.cond:
            o = self.objects.get((group, plural, ns, name))
            return copy.deepcopy(o) if o else None

    def list(self, group: str, plural: str, ns: str | None = None) -> list[dict]:
        with self.cond:
            return [copy.deepcopy(o) for (g, p, n, _), o in self.objects.items() if g == group and p == plural and (ns is None or n == ns)]

    def put(self, group: str, plural: str, obj: dict, validate: bool = True) -> dict:
        """Create or overwrite (controller write: no RV check); emits a watch event."""
        with self.cond:
            meta = obj.setdefault("metadata", {})
            ns = meta.get("namespace", "")
            key = (group, plural, ns, meta["name"])
            res = next(r for (g, _, p), r in self.resources.items() if g == group and p == plural)
            if validate and res.crd:
                errs = schema_errors(obj, res.crd)
                if errs:
                    raise ValueError(f"test reconciler wrote an invalid {res.kind}: {errs}")
            old = self.objects.get(key)
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"] if old else now())
            meta["resourceVersion"] = self._bump()
            self.objects[key] = copy.deepcopy(obj)
            self._emit("MODIFIED" if old else "ADDED", key, obj)
            return copy.deepcopy(obj)

    def delete(self, group: str, plural: str, ns: str, name: str) -> bool:
        with self.cond:
            obj = self.objects.pop((group, plural, ns, name), None)
            if obj is None:
                return False
            obj["metadata"]["resourceVersion"] = self._bump()
            self._emit("DELETED", (group, plural, ns, name), obj)
            return True


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details or {}, "code": code}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.body = status_body(code, reason, message, details)
        self.code = code


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _without_rv(obj: dict) -> dict:
    o = copy.deepcopy(obj)
    o["metadata"].pop("resourceVersion", None)
    o["metadata"].pop("managedFields", None)
    return o


def _labels_match(obj: dict, selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(obj: dict, selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        k, _, v = term.replace("==", "=").partition("=")
        node = obj
        for part in k.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != v:
            return False
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: Store  # set on the subclass per server

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, code: int, body, headers: dict | None = None, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "BadRequest", "request body is not JSON") from None

    def _route(self):
        u = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        parts = [p for p in u.path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({u.path})")
        ns = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "no resource in path")
        plural, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
        res = self.store.resources.get((group, version, plural))
        if res is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({group}/{version} {plural})")
        return res, ns or "", name, sub, q

    def _dispatch(self, method: str) -> None:
        self.store.requests.append((method, self.path))
        try:
            res, ns, name, sub, q = self._route()
            getattr(self, f"_{method.lower()}")(res, ns, name, sub, q)
        except ApiError as err:
            self._send(err.code, err.body)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # -- validation ----------------------------------------------------------------------

    def _admit(self, res: Resource, obj: dict, q: dict) -> dict:
        """Unknown fields, then the CRD schema; returns response headers (warnings)."""
        headers = {}
        if obj.get("kind") != res.kind or obj.get("apiVersion") != res.api_version:
            raise ApiError(400, "BadRequest", f"the object is {obj.get('apiVersion')}/{obj.get('kind')}, "
                                              f"the URL is for {res.api_version}/{res.kind}")
        if res.crd is None:
            return headers
        schema = res.crd["versions"][res.version]["schema"]
        probe = copy.deepcopy(obj)
        dropped = prune_unknown(probe, schema)
        if dropped:
            if q.get("fieldValidation") == "Strict":
                raise ApiError(400, "BadRequest", "strict decoding error: " + ", ".join(f'unknown field "{d}"' for d in dropped))
            prune_unknown(obj, schema)
            headers["Warning"] = ", ".join(f'299 - "unknown field \\"{d}\\""' for d in dropped)
        errs = [e for e in schema_errors(obj, res.crd) if not e.endswith("unknown field")]
        if errs:
            name = obj.get("metadata", {}).get("name")
            causes = [{"reason": "FieldValueInvalid", "message": e, "field": e.split(":", 1)[0]} for e in errs]
            raise ApiError(422, "Invalid", f'{res.kind}.{res.group} "{name}" is invalid: ' + "; ".join(errs),
                           {"name": name, "group": res.group, "kind": res.kind, "causes": causes})
        return headers

    # -- verbs ---------------------------------------------------------------------------

    def _get(self, res, ns, name, sub, q):
        s = self.store
        if name is None:
            if q.get("watch") in ("true", "1"):
                return self._watch(res, ns, q)
            with s.cond:
                items = [copy.deepcopy(o) for (g, p, n, _), o in s.objects.items()
                         if g == res.group and p == res.plural and (not res.namespaced or not ns or n == ns)]
                rv = str(s.rv)
            items = [o for o in items if _fields_match(o, q.get("fieldSelector", "")) and _labels_match(o, q.get("labelSelector", ""))]
            return self._send(200, {"kind": res.kind + "List", "apiVersion": res.api_version,
                                    "metadata": {"resourceVersion": rv}, "items": items})
        obj = s.get(res.group, res.plural, ns, name)
        if obj is None:
            raise ApiError(404, "NotFound", f'{res.plural}.{res.group} "{name}" not found',
                           {"name": name, "group": res.group, "kind": res.plural})
        if sub == "log":
            text = s.logs.get((ns, name), "")
            if q.get("tailLines"):
                text = "\n".join(text.splitlines()[-int(q["tailLines"]):]) + "\n"
            return self._send(200, text, ctype="text/plain")
        return self._send(200, obj)

    def _post(self, res, ns, name, sub, q):
        s = self.store
        obj = self._body()
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "body must be an object")
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace", ns) != ns:
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the namespace on the request")
            meta["namespace"] = ns
        headers = self._admit(res, obj, q)
        with s.cond:
            key = (res.group, res.plural, ns, meta["name"])
            if key in s.objects:
                raise ApiError(409, "AlreadyExists", f'{res.plural}.{res.group} "{meta["name"]}" already exists',
                               {"name": meta["name"], "group": res.group, "kind": res.plural})
            if res.status_subresource:
                obj.pop("status", None)
            meta.pop("resourceVersion", None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1, resourceVersion=s._bump())
            if q.get("fieldManager"):
                meta["managedFields"] = [{"manager": q["fieldManager"], "operation": "Update", "time": now()}]
            s.objects[key] = copy.deepcopy(obj)
            s._emit("ADDED", key, obj)
        return self._send(201, obj, headers)

    def _write(self, res, ns, name, sub, q, new: dict, stale_rv: str | None) -> None:
        s = self.store
        headers = self._admit(res, new, q)
        with s.cond:
            key = (res.group, res.plural, ns, name)
            cur = s.objects.get(key)
            if cur is None:
                raise ApiError(404, "NotFound", f'{res.plural}.{res.group} "{name}" not found')
            if stale_rv is not None and stale_rv != cur["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.plural}.{res.group} "{name}": '
                                                "the object has been modified; please apply your changes to the latest version and try again",
                               {"name": name, "group": res.group, "kind": res.plural})
            out = copy.deepcopy(new)
            meta = out["metadata"]
            for k in ("uid", "creationTimestamp", "namespace", "name", "generation"):
                if k in cur["metadata"]:
                    meta[k] = cur["metadata"][k]
            if sub == "status":
                out = copy.deepcopy(cur) | {"status": new.get("status", {})}
            elif res.status_subresource:
                if "status" in cur:
                    out["status"] = cur["status"]
                else:
                    out.pop("status", None)
                if out.get("spec") != cur.get("spec"):
                    out["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
            if _without_rv(out) == _without_rv(cur):
                return self._send(200, cur, headers)  # a no-op write keeps the resourceVersion
            out["metadata"]["resourceVersion"] = s._bump()
            s.objects[key] = copy.deepcopy(out)
            s._emit("MODIFIED", key, out)
        return self._send(200, out, headers)

    def _put(self, res, ns, name, sub, q):
        new = self._body()
        if not isinstance(new, dict) or name is None:
            raise ApiError(405, "MethodNotAllowed", "PUT needs an object and a name")
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if not rv and res.crd is not None:
            raise ApiError(422, "Invalid", f'{res.kind}.{res.group} "{name}" is invalid: metadata.resourceVersion: '
                                           "Invalid value: 0x0: must be specified for an update")
        if (new.get("metadata") or {}).get("name") != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        self._write(res, ns, name, sub, q, new, rv)

    def _patch(self, res, ns, name, sub, q):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0]
        if ctype != "application/merge-patch+json":
            raise ApiError(415, "UnsupportedMediaType", f"this test server takes merge patches only, not {ctype}")
        patch = self._body()
        cur = self.store.get(res.group, res.plural, ns, name)
        if cur is None:
            raise ApiError(404, "NotFound", f'{res.plural}.{res.group} "{name}" not found')
        rv = ((patch or {}).get("metadata") or {}).get("resourceVersion")
        self._write(res, ns, name, sub, q, merge_patch(cur, patch), rv)

    def _delete(self, res, ns, name, sub, q):
        obj = self.store.get(res.group, res.plural, ns, name)
        if obj is None or not self.store.delete(res.group, res.plural, ns, name):
            raise ApiError(404, "NotFound", f'{res.plural}.{res.group} "{name}" not found')
        self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": name, "group": res.group, "kind": res.plural}})

    def _watch(self, res, ns, q):
        s = self.store
        timeout = float(q.get("timeoutSeconds") or 60)
        deadline = time.monotonic() + timeout
        fsel, lsel = q.get("fieldSelector", ""), q.get("labelSelector", "")

        def matches(key, obj) -> bool:
            return (key[0] == res.group and key[1] == res.plural and (not ns or key[2] == ns)
                    and _fields_match(obj, fsel) and _labels_match(obj, lsel))

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(ev: dict) -> None:
            data = (json.dumps(ev) + "\n").encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        try:
            with s.cond:
                since = q.get("resourceVersion")
                pending: list[dict] = []
                if not since or since == "0":
                    pending = [{"type": "ADDED", "object": copy.deepcopy(o)} for k, o in s.objects.items() if matches(k, o)]
                    last = s.rv
                else:
                    last = int(since)
                    if s.history and last < s.history[0].rv - 1 and len(s.history) >= 5000:
                        pending = [{"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")}]
            for ev in pending:
                chunk(ev)
            while time.monotonic() < deadline:
                with s.cond:
                    new = [e for e in s.history if e.rv > last]
                    if not new:
                        s.cond.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                        new = [e for e in s.history if e.rv > last]
                if new:
                    last = new[-1].rv
                for e in new:
                    if matches(e.key, e.obj):
                        chunk({"type": e.type, "object": e.obj})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


class KubeServer:
    """Start with `with KubeServer() as k:`; k.url, k.store, k.kubeconfig(path)."""

    def __init__(self):
        self.store = Store()
        handler = type("BoundHandler", (Handler,), {"store": self.store})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        for r in (
            Resource("", "v1", "configmaps", "ConfigMap"),
            Resource("", "v1", "events", "Event"),
            Resource("", "v1", "pods", "Pod"),
            Resource("", "v1", "serviceaccounts", "ServiceAccount"),
            Resource("apps", "v1", "deployments", "Deployment"),
            Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False),
            Resource("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject"),
        ):
            self.store.add_resource(r)

    def install_crd(self, crd_doc: dict) -> None:
        """Serve a CRD's kinds with its schemas, and the CRD itself from apiextensions."""
        vend = crd_from_yaml(crd_doc)
        for ver, d in vend["versions"].items():
            if d["served"]:
                self.store.add_resource(Resource(vend["group"], ver, vend["names"]["plural"], vend["names"]["kind"],
                                                 namespaced=vend["scope"] == "Namespaced", crd=vend,
                                                 status_subresource="status" in (d.get("subresources") or {})))
        doc = copy.deepcopy(crd_doc)
        doc.setdefault("metadata", {})
        self.store.put("apiextensions.k8s.io", "customresourcedefinitions", doc, validate=False)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
        }))
        return path

    def __enter__(self) -> "KubeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
