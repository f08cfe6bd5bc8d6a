"""Rendered manifests: admitted by the real schemas, golden for the example, vLLM's real metric names."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from tasks.errors import BadInput
from tasks.kserve import admission_errors, render_manifests
from tasks.kserve.admission import SCHEMA_DIR, crd_from_yaml
from tasks.kserve.render import predictor, render_all, scaled_object
from tasks.spec import load_spec, parse_spec
from tests.kserve import golden
from tests.kserve.conftest import CRD_FILES, SHARED_CRDS, crd_doc
from tests.kserve.metrics_fixture import SAMPLE

EXAMPLE = golden.EXAMPLE


def example():
    return load_spec(EXAMPLE)


def variants():
    base = example()
    out = {"example": base}
    for name, change in {
        "trtllm-serve": lambda s: setattr(s.engine, "kind", "tensorrt-llm"),
        "triton": lambda s: (setattr(s.engine, "kind", "tensorrt-llm"), setattr(s.target, "trtllm_runtime", "triton")),
        "knative-no-keda": lambda s: (setattr(s.target, "deployment_mode", "Knative"), setattr(s.target.keda, "enabled", False)),
        "scale-to-zero": lambda s: setattr(s.target.keda, "min_replicas", 0),
        "llmisvc-pd": lambda s: (setattr(s.target.llm_inference_service, "enabled", True),
                                 setattr(s.target.llm_inference_service, "prefill_replicas", 2)),
        "pvc-and-image": lambda s: (setattr(s.target, "storage_uri", "pvc://models/tiny"), setattr(s.engine, "image", "my/vllm:1")),
    }.items():
        s = base.model_copy(deep=True)
        change(s)
        out[name] = s
    spec = parse_spec({"name": "spec-dec", "model": {"source": "hf://o/m@r"}, "target": {"kind": "kserve"},
                       "engine": {"args": {"speculative": {"model": "o/draft", "num_speculative_tokens": 4},
                                           "extra_args": ["--enable-prefix-caching"]}}})
    out["speculative"] = spec
    return out


@pytest.mark.parametrize("name", list(variants()))
def test_every_manifest_is_admitted(name):
    spec = variants()[name]
    objs = render_manifests(spec, "s3://bucket/model", "sha256:abc", registry_version="7")
    kinds = [o["kind"] for o in objs]
    assert "ServiceAccount" in kinds and "Role" in kinds and "PrometheusRule" in kinds
    assert ("LLMInferenceService" in kinds) == (name == "llmisvc-pd")
    for o in objs:
        assert admission_errors(o) == [], (o["kind"], admission_errors(o))


def test_vllm_runtime_and_isvc_carry_what_kserve_needs():
    objs = {o["kind"]: o for o in render_manifests(example(), "s3://b/m", "sha256:abc", "3")}
    rt, isvc = objs["ServingRuntime"], objs["InferenceService"]
    c = rt["spec"]["containers"][0]
    assert c["image"].startswith("vllm/vllm-openai:") and "--model=/mnt/models" in c["args"]
    assert {c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]} == {"/health"}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
    assert rt["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8080"
    assert rt["metadata"]["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    assert rt["spec"]["volumes"][0]["emptyDir"]["medium"] == "Memory" and c["volumeMounts"][0]["mountPath"] == "/dev/shm"
    ann = isvc["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "Standard" and ann["serving.kserve.io/enable-tag-routing"] == "true"
    # KServe copies InferenceService annotations into the pod template: llmship keeps its records elsewhere
    assert not [k for k in ann if k.startswith("llmship.io/")]
    # KServe's validating webhook refuses a name on the stable predictor
    assert "name" not in isvc["spec"]["predictor"] and "name" not in isvc["spec"]["predictor"]["model"]
    assert re.fullmatch(r"llmship-vllm-[0-9a-f]{8}", rt["metadata"]["name"])
    assert isvc["spec"]["predictor"]["model"]["runtime"] == rt["metadata"]["name"]
    m = isvc["spec"]["predictor"]["model"]
    assert m["storageUri"] == "s3://b/m" and m["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--served-model-name=tiny-llama" in m["args"] and "--max-model-len=2048" in m["args"]


def test_canary_entry_is_admitted_and_has_no_autoscaling_fields():
    spec = example()
    isvc = next(o for o in render_all(spec, "s3://b/v1", "d") if o["kind"] == "InferenceService")
    isvc["spec"]["canary"] = [{"trafficPercent": 10, "predictor": predictor(spec, "s3://b/v2", name="c1234567", canary=True)}]
    assert admission_errors(isvc) == []
    entry = isvc["spec"]["canary"][0]["predictor"]
    # KServe sizes a canary from its traffic share; minReplicas would deploy a full second copy
    assert "maxReplicas" not in entry and "minReplicas" not in entry and entry["name"] == "c1234567"
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 10
    assert admission_errors(isvc) == []


def test_admission_names_each_bad_field():
    isvc = next(o for o in render_all(example(), "s3://b/v1", "d") if o["kind"] == "InferenceService")
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["minReplicas"] = "one"
    bad["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    errs = admission_errors(bad)
    assert "spec.predictor.minReplicas: 'one' is not of type 'integer'" in errs
    assert "spec.predictor.model.storageURI: unknown field" in errs
    role = next(o for o in render_all(example(), "s3://b/v1", "d") if o["kind"] == "Role")
    role = copy.deepcopy(role)
    role["rules"][0]["verbs"] = "get"
    assert any("rules.0.verbs" in e for e in admission_errors(role))
    bad_keda = scaled_object(example(), "http://p")
    bad_keda["spec"]["triggers"][0]["metadata"]["threshold"] = 0.8  # KEDA wants strings
    assert admission_errors(bad_keda) == ["spec.triggers[0].metadata.threshold: Required string"]


def test_bad_storage_and_target_are_bad_input():
    with pytest.raises(BadInput) as e:
        render_manifests(example(), "/local/folder", "d")
    assert e.value.exit_code == 2 and "s3://, pvc://" in e.value.message
    local = parse_spec({"name": "x", "model": {"source": "hf://o/m@r"}})
    with pytest.raises(BadInput, match="not kserve"):
        render_manifests(local, "s3://b/m", "d")


def test_golden_example_and_infra_match_the_renderer():
    stale = [str(p.relative_to(golden.ROOT)) for p, text in golden.expected_files().items()
             if not p.is_file() or p.read_text() != text]
    assert not stale, f"re-render with `python -m tests.kserve.golden --write`: {stale}"
    docs = list(yaml.safe_load_all(golden.GOLDEN.read_text()))
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding", "Role", "RoleBinding", "ClusterRole",
                                         "ClusterRoleBinding", "ServingRuntime", "InferenceService", "ScaledObject",
                                         "PrometheusRule", "PodMonitor", "ConfigMap"]
    for p in golden.expected_files():
        if p.suffix != ".yaml":
            continue  # infra/grafana/dashboard.json: the dashboard itself, not a Kubernetes object
        for d in yaml.safe_load_all(p.read_text()):
            assert admission_errors(d) == [], (p, d["kind"])


@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason="../shared/kserve-crds not present")
@pytest.mark.parametrize("kind", list(CRD_FILES))
def test_vendored_schemas_match_the_real_crds(kind):
    from tests.kserve.vendor_crd_schemas import strip

    vend = json.loads((SCHEMA_DIR / f"{kind}.json").read_text())
    real = crd_from_yaml(crd_doc(kind))
    for v in real["versions"].values():
        v["schema"] = strip(v["schema"])
    assert vend == json.loads(json.dumps(real))


def test_metric_names_are_real_vllm_names():
    """Every vLLM metric llmship queries (the canary's judge, KEDA, alerts) is on a real vLLM-CPU /metrics page."""
    real = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", SAMPLE.read_text(), re.M))
    spec = example().model_copy(deep=True)
    spec.slo.tpot_p99_ms, spec.slo.e2e_p99_ms = 50, 5000
    from tasks.canary import figures

    judged = [n + "_bucket" for n in figures.LATENCIES.values()] + [figures.OUTPUT_TOKENS, figures.HTTP_REQUESTS]
    text = json.dumps(render_all(spec, "s3://b/m", "d")) + json.dumps(judged)
    used = set(re.findall(r"(vllm:[a-z0-9_]+|http_requests_total)", text))
    assert {"vllm:kv_cache_usage_perc", "vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket",
            "vllm:e2e_request_latency_seconds_bucket"} <= used
    assert used <= real, used - real
    assert "vllm:gpu_cache_usage_perc" not in real  # the pre-v1 names are gone


def test_cli_render_writes_admitted_files(tmp_path):
    from flows.cli import app

    r = CliRunner().invoke(app, ["render", str(EXAMPLE), "--out", str(tmp_path / "m"), "--artifact-digest", "sha256:x"])
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "m").glob("*.yaml"))
    assert len(files) == 14 and "08-inferenceservice-tiny-llama.yaml" in [f.name for f in files]
    assert (tmp_path / "m" / "grafana-dashboard-tiny-llama.json").is_file()
    r = CliRunner().invoke(app, ["render", str(EXAMPLE), "--out", str(tmp_path / "n"), "--storage-uri", "/tmp/x"])
    assert r.exit_code == 2 and "[render]" in r.output
