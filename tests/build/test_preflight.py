"""The preflight memory plan: counts, KV bytes, verdicts, recommendations, the artifact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.errors import BadInput
from tasks.preflight import plan_memory, read_shape, require_fit
from tasks.preflight.plan import GIB, count_params_config, count_params_safetensors
from tasks.preflight.vllm_log import parse_kv_report
from tasks.spec import PromotionSpec

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "max_position_embeddings": 131072,
}
LLAMA3_70B = {**LLAMA3_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64}


def config_only(tmp_path: Path, cfg: dict, name: str = "m") -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def spec(**over) -> PromotionSpec:
    data = {"name": "t", "model": {"source": "file:///m"}, **over}
    return PromotionSpec.model_validate(data)


def kserve(gib=80.0, count=1, **engine_args) -> PromotionSpec:
    return spec(target={"kind": "kserve", "gpu": {"memory_gib": gib, "count": count}},
                engine={"args": engine_args})


def test_llama3_8b_counts_match_published_figures(tmp_path):
    d = config_only(tmp_path, LLAMA3_8B)
    plan = plan_memory(d, kserve())
    assert plan.params == 8_030_261_248  # Meta-Llama-3-8B's parameter count
    assert plan.params_source == "config"
    assert plan.kv_bytes_per_token == 32 * 8 * 128 * 2 * 2 == 131_072  # 128 KiB per token in bf16
    assert plan.kv_bytes == 131_072 * 2048 * 16
    assert plan.weight_bytes == 2 * 8_030_261_248
    assert plan.verdict == "fits"
    assert plan.budget_bytes == int(80 * GIB * 0.9)
    assert plan.recommendations == []


def test_safetensors_count_equals_config_count_on_a_real_checkpoint(tiny_model):
    shape = read_shape(tiny_model)
    total, linear = count_params_safetensors(tiny_model)
    assert (total, linear) == count_params_config(shape)
    from safetensors.torch import load_file

    tensors = load_file(str(Path(tiny_model) / "model.safetensors"))
    assert total == sum(t.numel() for t in tensors.values())
    assert linear == sum(t.numel() for n, t in tensors.items() if t.dim() == 2 and "embed" not in n and "lm_head" not in n)
    plan = plan_memory(str(tiny_model), spec(engine={"args": {"dtype": "bfloat16"}}))
    assert plan.params_source == "safetensors"
    assert plan.kv_bytes_per_token == shape.num_layers * shape.num_kv_heads * shape.head_dim * 2 * 2


def test_70b_on_one_h100_does_not_fit_and_says_what_would(tmp_path):
    d = config_only(tmp_path, LLAMA3_70B)
    s = kserve()
    plan = plan_memory(d, s)
    assert plan.verdict == "does-not-fit"
    assert "budget" in plan.reason
    recs = " | ".join(plan.recommendations)
    assert "int4 AWQ" in recs
    # 70B in bf16 is 131 GiB of weights: TP 2 (144 GiB budget) is too tight with KV + activations
    assert "tensor_parallel_size to 4" in recs and "raise target.gpu.count" in recs
    with pytest.raises(BadInput) as err:
        require_fit(plan, obj="t")
    assert err.value.stage == "preflight" and err.value.exit_code == 2
    assert "int4" in err.value.hint

    # each recommendation, applied, fits
    q = spec(target={"kind": "kserve", "gpu": {"memory_gib": 80, "count": 1}},
             quantization={"method": "awq"})
    assert plan_memory(d, q).verdict == "fits"
    assert plan_memory(d, kserve(count=2, tensor_parallel_size=2)).verdict == "does-not-fit"
    assert plan_memory(d, kserve(count=4, tensor_parallel_size=4)).verdict == "fits"


def test_long_context_recommends_fewer_seqs_or_shorter_len_that_fit(tmp_path):
    d = config_only(tmp_path, LLAMA3_8B)
    plan = plan_memory(d, kserve(max_model_len=131072, max_num_seqs=16))
    assert plan.verdict == "does-not-fit"
    text = " | ".join(plan.recommendations)
    seqs = int(re.search(r"max_num_seqs to (\d+)", text).group(1))
    model_len = int(re.search(r"max_model_len to ([\d,]+)", text).group(1).replace(",", ""))
    assert plan_memory(d, kserve(max_model_len=131072, max_num_seqs=seqs)).verdict == "fits"
    assert plan_memory(d, kserve(max_model_len=131072, max_num_seqs=seqs + 1)).verdict == "does-not-fit"
    assert plan_memory(d, kserve(max_model_len=model_len, max_num_seqs=16)).verdict == "fits"


def test_quantized_weights_shrink_linear_layers_only(tmp_path):
    d = config_only(tmp_path, LLAMA3_8B)
    bf16 = plan_memory(d, kserve())
    awq = plan_memory(d, spec(target={"kind": "kserve"}, quantization={"method": "awq"}))
    fp8 = plan_memory(d, spec(target={"kind": "kserve"}, quantization={"method": "fp8"}))
    embed = bf16.params - bf16.quantized_params
    assert fp8.weight_bytes == bf16.quantized_params * 1 + embed * 2
    assert awq.weight_bytes == int(bf16.quantized_params * (0.5 + 2.5 / 128) + embed * 2)
    assert "int4-awq" in awq.weight_format and awq.weight_bytes < fp8.weight_bytes < bf16.weight_bytes


def test_no_gpu_plans_for_reference_and_checks_vllm_cpu_kv_space(tiny_model, tmp_path):
    plan = plan_memory(str(tiny_model), spec())
    assert plan.verdict == "no-gpu" and "no GPU to plan against" in plan.reason
    assert require_fit(plan) is plan
    d = config_only(tmp_path, LLAMA3_8B)
    big = plan_memory(d, spec(target={"kind": "local", "cpu_kvcache_gib": 1}, engine={"args": {"max_model_len": 65536}}))
    assert big.verdict == "does-not-fit" and "cpu_kvcache_gib" in big.reason
    assert "max_model_len to 8,192" in big.recommendations[0]


def test_tp_needs_gpus_and_head_divisibility(tmp_path):
    d = config_only(tmp_path, LLAMA3_8B)
    plan = plan_memory(d, kserve(count=2, tensor_parallel_size=4))
    assert plan.verdict == "does-not-fit" and "needs 4 GPUs" in plan.reason
    odd = config_only(tmp_path, {**LLAMA3_8B, "num_attention_heads": 30, "num_key_value_heads": 6}, "odd")
    assert "does not divide" in plan_memory(odd, kserve(count=4, tensor_parallel_size=4)).reason


def test_missing_config_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no config.json"):
        plan_memory(str(tmp_path), spec())


def test_vllm_log_parser_cpu_and_gpu_lines():
    cpu = ("(Worker pid=1) INFO [cpu_worker.py:260] Explicitly set (1.0/17.96) GiB for KV cache on node 0.\n"
           "(EngineCore pid=2) INFO [kv_cache_utils.py:2327] CPU KV cache size: 1,048,576 tokens, Maximum "
           "concurrency for 512 tokens per request: 2048.00x\n")
    r = parse_kv_report(cpu)
    assert r.kv_tokens == 1_048_576 and r.bytes_per_token == 1024
    gpu = "INFO Available KV cache memory: 61.25 GiB\nINFO GPU KV cache size: 501,760 tokens\n"
    assert round(parse_kv_report(gpu).bytes_per_token) == round(61.25 * GIB / 501_760)
    assert parse_kv_report("nothing yet") is None


def test_plan_table_artifact_in_a_flow_run(tiny_model):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.preflight.prefect import publish_plan_artifact

    plan = plan_memory(str(tiny_model), spec())

    @flow
    def plan_flow():
        publish_plan_artifact(plan, key="memory-plan-test-b5")

    plan_flow()
    import asyncio

    async def read():
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["memory-plan-test-b5"])))

    arts = asyncio.run(read())
    assert arts and arts[0].type == "table"
    rows = arts[0].data if isinstance(arts[0].data, list) else json.loads(arts[0].data)
    assert {"item": "verdict", "value": "no-gpu"} in rows


def test_tp_beyond_kv_heads_replicates_the_cache(tmp_path):
    d = config_only(tmp_path, LLAMA3_8B)  # 8 KV heads
    tp8 = plan_memory(d, kserve(count=8, tensor_parallel_size=8))
    tp16 = plan_memory(d, kserve(count=16, tensor_parallel_size=16))
    assert tp8.kv_bytes == tp8.kv_bytes_per_token * 2048 * 16
    assert tp16.kv_bytes == 2 * tp8.kv_bytes
