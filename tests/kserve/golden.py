"""The rendered example and the static manifests under infra/, kept equal to the renderer.

    .venv/bin/python -m tests.kserve.golden --write    # after an intended render change

test_render.py fails when a file here differs from what the code renders now.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tasks.kserve.render import prometheus_rule, rbac, render_all, scaled_object, serving_runtime, to_yaml
from tasks.monitoring import dashboard, dashboard_configmap
from tasks.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kserve.yaml"
GOLDEN = Path(__file__).with_name("data") / "golden" / "examples-kserve.yaml"
DIGEST = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
HEADER = "# Rendered from examples/kserve.yaml by `python -m tests.kserve.golden --write`; do not edit.\n"


def _dump(objs: list[dict]) -> str:
    return HEADER + to_yaml(objs)


def expected_files() -> dict[Path, str]:
    spec = load_spec(EXAMPLE)
    files = {GOLDEN: _dump(render_all(spec, spec.storage.uri, DIGEST, registry_version="1"))}
    runtimes = []
    for engine, trt in (("vllm", "trtllm-serve"), ("tensorrt-llm", "trtllm-serve"), ("tensorrt-llm", "triton")):
        s = spec.model_copy(deep=True)
        s.engine.kind = engine
        s.target.trtllm_runtime = trt
        runtimes.append(serving_runtime(s))
    files[ROOT / "infra" / "kserve" / "servingruntimes.yaml"] = _dump(runtimes)
    isvc = [o for o in render_all(spec, spec.storage.uri, DIGEST) if o["kind"] == "InferenceService"]
    files[ROOT / "infra" / "kserve" / "inferenceservice-example.yaml"] = _dump(isvc)
    llm = spec.model_copy(deep=True)
    llm.target.llm_inference_service.enabled = True
    llm.target.llm_inference_service.prefill_replicas = 2
    llm.target.llm_inference_service.replicas = 2
    llm.engine.args.tensor_parallel_size = 2
    files[ROOT / "infra" / "kserve" / "llminferenceservice-example.yaml"] = _dump(
        [o for o in render_all(llm, llm.storage.uri, DIGEST) if o["kind"] == "LLMInferenceService"])
    prom = spec.target.prometheus_url
    zero = spec.model_copy(deep=True)
    zero.target.keda.min_replicas = 0
    files[ROOT / "infra" / "keda" / "scaledobject.yaml"] = _dump([scaled_object(spec, prom)])
    files[ROOT / "infra" / "keda" / "scaledobject-scale-to-zero.yaml"] = _dump([scaled_object(zero, prom)])
    files[ROOT / "infra" / "prometheus" / "prometheusrule.yaml"] = _dump([prometheus_rule(spec)])
    files[ROOT / "infra" / "rbac" / "rbac.yaml"] = _dump(rbac(spec))
    files[ROOT / "infra" / "grafana" / "dashboard-configmap.yaml"] = _dump([dashboard_configmap(spec)])
    files[ROOT / "infra" / "grafana" / "dashboard.json"] = json.dumps(dashboard(spec), indent=2) + "\n"  # for an import
    return files


if __name__ == "__main__":
    if "--write" in sys.argv:
        for path, text in expected_files().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path.relative_to(ROOT))
