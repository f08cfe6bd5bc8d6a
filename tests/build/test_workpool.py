"""The GPU work pool's base job template renders, through prefect-kubernetes' own job
configuration, into a Job that asks for nvidia.com/gpu on a GPU node."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "workpools" / "gpu-build-job-template.json"
pytest.importorskip("prefect_kubernetes")


def render(values: dict) -> dict:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    cfg = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    return cfg.job_manifest


def test_template_defaults_ask_for_one_gpu():
    manifest = render({})
    pod = manifest["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["image"] == "llmship-gpu-worker:latest" and manifest["spec"]["backoffLimit"] == 0
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}


def test_template_values_override():
    manifest = render({"gpu_count": 4, "gpu_product": "NVIDIA-H200", "image": "registry.example/llmship-gpu:1.2.0",
                       "namespace": "ml"})
    c = manifest["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert manifest["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert c["image"] == "registry.example/llmship-gpu:1.2.0" and manifest["metadata"]["namespace"] == "ml"


def test_env_defaults_point_at_the_quantization_venv():
    template = json.loads(TEMPLATE.read_text())
    env = template["variables"]["properties"]["env"]["default"]
    assert env["LLMSHIP_QUANT_PYTHON"] == "/opt/venv-quant/bin/python"
