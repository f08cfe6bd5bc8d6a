"""Admission: check rendered objects the way a Kubernetes API server would.

KServe kinds are checked against the OpenAPI v3 schema of the real CRDs (vendored under
schemas/, descriptions dropped), core kinds with `kubernetes-validate`. The same code gives
the test API server its 422s, so tests and `llmship render` agree with each other.

Not evaluated: CEL rules (`x-kubernetes-validations`) and KServe's validating webhook.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from tasks.errors import BadInput

SCHEMA_DIR = Path(__file__).with_name("schemas")
KSERVE_GROUP = "serving.kserve.io"
KSERVE_KINDS = ("InferenceService", "ServingRuntime", "ClusterServingRuntime", "LLMInferenceService")
# Kubernetes minor version the core objects are validated against (kubernetes-validate schemas).
CORE_K8S_VERSION = "1.34"
# CRD-backed kinds of other operators: checked for shape here, not against their CRDs.
EXTERNAL_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}


@lru_cache(maxsize=None)
def crd(kind: str) -> dict:
    """The vendored CRD (names, versions, schemas) for a KServe kind."""
    return json.loads((SCHEMA_DIR / f"{kind}.json").read_text())


def crd_from_yaml(doc: dict) -> dict:
    """The same shape as the vendored files, from a full CRD document (used by tests)."""
    return {
        "group": doc["spec"]["group"],
        "names": doc["spec"]["names"],
        "scope": doc["spec"]["scope"],
        "versions": {
            v["name"]: {
                "served": v.get("served", True),
                "storage": v.get("storage", False),
                "subresources": v.get("subresources", {}),
                "schema": v["schema"]["openAPIV3Schema"],
            }
            for v in doc["spec"]["versions"]
        },
    }


def _to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 (structural, Kubernetes flavour) -> JSON Schema draft 7.

    - nullable: true allows null;
    - objects with properties reject unknown fields unless x-kubernetes-preserve-unknown-fields
      (a real server prunes them, or rejects them with fieldValidation=Strict; render is strict).
    """
    if isinstance(node, list):
        return [_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def _validator_for(kind: str, version: str, schema_json: str) -> jsonschema.Draft7Validator:
    schema = _to_jsonschema(json.loads(schema_json))
    # metadata is "type: object" in CRDs; the server checks ObjectMeta itself (name below).
    return jsonschema.Draft7Validator(schema)


def _path(err: jsonschema.ValidationError) -> str:
    parts = []
    for p in err.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else ("." if parts else "") + str(p))
    return "".join(parts) or "(object)"


def schema_errors(obj: dict, crd_doc: dict) -> list[str]:
    """'field.path: message' for every way obj breaks the CRD's schema (incl. unknown fields)."""
    api_version = obj.get("apiVersion", "")
    group, _, version = api_version.rpartition("/")
    if group != crd_doc["group"]:
        return [f"apiVersion: group {group!r} is not {crd_doc['group']!r}"]
    ver = crd_doc["versions"].get(version)
    if not ver or not ver["served"]:
        served = [v for v, d in crd_doc["versions"].items() if d["served"]]
        return [f"apiVersion: version {version!r} of {obj.get('kind')} is not served (served: {', '.join(served)})"]
    errors = []
    name = (obj.get("metadata") or {}).get("name") or ""
    if not name and not (obj.get("metadata") or {}).get("generateName"):
        errors.append("metadata.name: Required value")
    v = _validator_for(crd_doc["names"]["kind"], version, json.dumps(ver["schema"], sort_keys=True))
    for err in sorted(v.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator == "additionalProperties" and err.validator_value is False:
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            for k in extra:
                prefix = _path(err)
                errors.append(f"{'' if prefix == '(object)' else prefix + '.'}{k}: unknown field")
            continue
        errors.append(f"{_path(err)}: {err.message}")
    return errors


def prune_unknown(obj: Any, schema: dict) -> list[str]:
    """Drop fields the schema does not know, in place, like a server without Strict; return their paths."""
    dropped: list[str] = []

    def walk(node: Any, sch: dict, path: str) -> None:
        if not isinstance(sch, dict):
            return
        if isinstance(node, dict):
            if sch.get("x-kubernetes-preserve-unknown-fields"):
                props = sch.get("properties", {})
                for k, v in node.items():
                    if k in props:
                        walk(v, props[k], f"{path}.{k}")
                return
            props = sch.get("properties")
            addl = sch.get("additionalProperties")
            for k in list(node):
                if props is not None and k in props:
                    walk(node[k], props[k], f"{path}.{k}".lstrip("."))
                elif isinstance(addl, dict):
                    walk(node[k], addl, f"{path}.{k}".lstrip("."))
                elif props is not None and addl is None and path != "metadata" and sch.get("type") == "object":
                    dropped.append(f"{path}.{k}".lstrip("."))
                    del node[k]
        elif isinstance(node, list) and isinstance(sch.get("items"), dict):
            for i, item in enumerate(node):
                walk(item, sch["items"], f"{path}[{i}]")

    walk(obj, schema, "")
    return dropped


def _core_errors(obj: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(copy.deepcopy(obj), CORE_K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:  # carries the jsonschema error's fields
        path = ".".join(str(p) for p in err.absolute_path) or "(object)"
        return [f"{path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"apiVersion/kind: {obj.get('apiVersion')}/{obj.get('kind')} is not a Kubernetes {CORE_K8S_VERSION} kind"]
    return []


def _external_errors(obj: dict) -> list[str]:
    """KEDA and Prometheus Operator CRDs are not vendored: check the fields llmship relies on."""
    errors = []
    spec = obj.get("spec") or {}
    if obj["kind"] == "ScaledObject":
        ref = spec.get("scaleTargetRef") or {}
        if not ref.get("name"):
            errors.append("spec.scaleTargetRef.name: Required value")
        for i, t in enumerate(spec.get("triggers") or []):
            if t.get("type") == "prometheus":
                for key in ("serverAddress", "query", "threshold"):
                    if not isinstance((t.get("metadata") or {}).get(key), str):
                        errors.append(f"spec.triggers[{i}].metadata.{key}: Required string")
        if not spec.get("triggers"):
            errors.append("spec.triggers: Required value")
    if obj["kind"] == "PrometheusRule":
        for gi, g in enumerate(spec.get("groups") or []):
            for ri, r in enumerate(g.get("rules") or []):
                if not isinstance(r.get("expr"), str) or not (r.get("alert") or r.get("record")):
                    errors.append(f"spec.groups[{gi}].rules[{ri}]: needs expr and alert or record")
    if obj["kind"] == "PodMonitor":
        if not (spec.get("selector") or {}):
            errors.append("spec.selector: Required value")
        for i, ep in enumerate(spec.get("podMetricsEndpoints") or []):
            if not ep.get("port") and not ep.get("portNumber"):
                errors.append(f"spec.podMetricsEndpoints[{i}]: needs port or portNumber")
        if not spec.get("podMetricsEndpoints"):
            errors.append("spec.podMetricsEndpoints: Required value")
    return errors


def admission_errors(obj: dict) -> list[str]:
    """Every reason a Kubernetes API server (with KServe's CRDs installed) would refuse obj."""
    if not isinstance(obj, dict) or not obj.get("kind") or not obj.get("apiVersion"):
        return ["(object): needs apiVersion and kind"]
    kind = obj["kind"]
    if obj["apiVersion"].startswith(KSERVE_GROUP + "/") and kind in KSERVE_KINDS:
        return schema_errors(obj, crd(kind))
    if (obj["apiVersion"], kind) in EXTERNAL_KINDS:
        return _external_errors(obj)
    return _core_errors(obj)


def admit(objs: list[dict], stage: str = "render") -> None:
    """Raise BadInput listing every object that would be refused."""
    problems = []
    for obj in objs:
        ident = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        problems += [f"{ident}: {e}" for e in admission_errors(obj)]
    if problems:
        raise BadInput(
            stage, "rendered manifests", f"{len(problems)} admission error(s) against the KServe/Kubernetes schemas",
            "fix the spec fields that feed these manifest fields (engine.args, target.*)",
            detail="\n".join(problems),
        )
