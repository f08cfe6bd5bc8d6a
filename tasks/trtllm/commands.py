"""TensorRT-LLM command lines, derived from the promotion spec. Pure functions: no GPU, no I/O.

Two paths, picked by the TensorRT-LLM version in the builder image:

* engine (1.2 and older): convert_checkpoint.py (per architecture) or ModelOpt's quantize.py
  writes a TensorRT-LLM checkpoint; `trtllm-build` compiles it into rank<N>.engine files;
  `trtllm-serve --backend tensorrt` serves them.
* pytorch (1.0 and newer; the only path after 1.2 removed trtllm-build): no engine. The HF
  checkpoint, ModelOpt-quantized when the spec quantizes (hf_quant_config.json), is served by
  `trtllm-serve --backend pytorch`.

Every flag emitted here is checked by tests against the option lists of TensorRT-LLM 1.2's
own parsers (tests/build/data/*.txt).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from tasks.errors import BadInput
from tasks.spec import PromotionSpec

TrtPath = Literal["engine", "pytorch"]
# The TensorRT-LLM release images keep the examples here.
DEFAULT_EXAMPLES_DIR = "/app/tensorrt_llm/examples"
# Per-architecture convert_checkpoint.py scripts (relative to the examples folder). Other
# architectures go through ModelOpt's quantize.py with --qformat full_prec, which converts any
# model TensorRT-LLM knows.
CONVERT_SCRIPTS = {
    "LlamaForCausalLM": "models/core/llama/convert_checkpoint.py",
    "MistralForCausalLM": "models/core/llama/convert_checkpoint.py",
}
QUANTIZE_SCRIPT = "quantization/quantize.py"
DEFAULT_MAX_NUM_TOKENS = 8192  # TensorRT-LLM's BuildConfig default


def parse_version(v: str) -> tuple[int, int, int]:
    m = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", v)
    if not m:
        raise BadInput("build", f"engine.trtllm_version {v!r}", "not a version", "write it like 1.2.0")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def choose_path(version: str, prefer: TrtPath | None = None) -> TrtPath:
    """engine for 1.2 and older (unless pytorch is preferred on 1.0+), pytorch after 1.2."""
    v = parse_version(version)
    if v[:2] > (1, 2):
        if prefer == "engine":
            raise BadInput("build", f"TensorRT-LLM {version}", "has no trtllm-build (removed after 1.2)",
                           "use the pytorch path, or a 1.2 builder image")
        return "pytorch"
    if prefer == "pytorch":
        if v < (1, 0, 0):
            raise BadInput("build", f"TensorRT-LLM {version}", "has no PyTorch backend for trtllm-serve",
                           "use TensorRT-LLM 1.0 or newer, or the engine path")
        return "pytorch"
    return "engine"


def qformat(spec: PromotionSpec) -> str | None:
    """ModelOpt's --qformat for the spec's quantization (None when not quantized)."""
    q = spec.quantization
    if q.method == "none":
        return None
    if q.method == "fp8":
        return "fp8"
    if q.w_bit != 4:
        raise BadInput("build", "quantization.w_bit", f"ModelOpt AWQ is int4 only, not {q.w_bit}-bit",
                       "set quantization.w_bit: 4, or use method: fp8")
    return "int4_awq"


def _dtype(spec: PromotionSpec) -> str:
    return spec.engine.args.dtype  # auto, float16, bfloat16, float32: the scripts take all four


def examples_dir() -> Path:
    return Path(os.environ.get("LLMSHIP_TRTLLM_EXAMPLES", DEFAULT_EXAMPLES_DIR))


def checkpoint_cmd(model_dir: str, ckpt_dir: str, spec: PromotionSpec, architecture: str,
                   calib_dir: str | None = None, python: str = "python3",
                   examples: Path | None = None) -> list[str]:
    """The command that writes a TensorRT-LLM checkpoint (engine path, step 1)."""
    ex = examples or examples_dir()
    args = spec.engine.args
    q = spec.quantization
    fmt = qformat(spec)
    script = CONVERT_SCRIPTS.get(architecture)
    if fmt is None and script:
        return [python, str(ex / script), "--model_dir", model_dir, "--output_dir", ckpt_dir,
                "--dtype", _dtype(spec), "--tp_size", str(args.tensor_parallel_size), "--pp_size", "1",
                "--workers", str(args.tensor_parallel_size)]
    cmd = [python, str(ex / QUANTIZE_SCRIPT), "--model_dir", model_dir, "--output_dir", ckpt_dir,
           "--dtype", _dtype(spec), "--qformat", fmt or "full_prec",
           "--tp_size", str(args.tensor_parallel_size), "--pp_size", "1"]
    if fmt:
        if calib_dir is None:
            raise BadInput("build", "quantization.calibration", "ModelOpt calibration needs a local dataset folder",
                           "the build flow writes one from the spec's calibration text")
        cmd += ["--calib_dataset", calib_dir, "--calib_size", str(q.calibration.num_samples),
                "--calib_max_seq_length", str(q.calibration.max_seq_len), "--batch_size", "1"]
        if fmt == "int4_awq":
            cmd += ["--awq_block_size", str(q.group_size if q.group_size > 0 else 128)]
    return cmd


def max_num_tokens(spec: PromotionSpec) -> int:
    """Tokens per scheduler step. Paged context FMHA lets a longer prompt run in chunks, so this
    may be below max_model_len."""
    a = spec.engine.args
    return min(DEFAULT_MAX_NUM_TOKENS, a.max_model_len * a.max_num_seqs)


def build_cmd(ckpt_dir: str, engine_dir: str, spec: PromotionSpec, trtllm_build: str = "trtllm-build") -> list[str]:
    """trtllm-build with the limits of the serving spec (engine path, step 2).

    Paged KV cache with paged context FMHA (chunked context, KV reuse); the GEMM plugin in the
    checkpoint's dtype; one build worker per rank.
    """
    a = spec.engine.args
    return [
        trtllm_build, "--checkpoint_dir", ckpt_dir, "--output_dir", engine_dir,
        "--max_batch_size", str(a.max_num_seqs),
        "--max_input_len", str(a.max_model_len),
        "--max_seq_len", str(a.max_model_len),
        "--max_num_tokens", str(max_num_tokens(spec)),
        "--gemm_plugin", "auto",
        "--kv_cache_type", "paged",
        "--use_paged_context_fmha", "enable",
        "--workers", str(a.tensor_parallel_size),
        "--log_level", "info",
    ]


def serve_options(spec: PromotionSpec) -> dict:
    """The extra LLM-API options trtllm-serve reads from its --extra_llm_api_options YAML."""
    a = spec.engine.args
    return {
        "kv_cache_config": {"free_gpu_memory_fraction": a.gpu_memory_utilization, "enable_block_reuse": True},
        "enable_chunked_prefill": True,
    }


def serve_cmd(model_path: str, spec: PromotionSpec, path: TrtPath, port: int = 8000, host: str = "0.0.0.0",
              tokenizer: str | None = None, options_file: str | None = None) -> list[str]:
    """trtllm-serve for either path: an engine folder (tensorrt backend, tokenizer from the HF
    folder) or an HF / ModelOpt checkpoint (pytorch backend)."""
    a = spec.engine.args
    cmd = ["trtllm-serve", "serve", model_path, "--host", host, "--port", str(port),
           "--backend", "tensorrt" if path == "engine" else "pytorch"]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    if path == "pytorch":
        # an engine has these baked in; the pytorch backend takes them at start-up
        cmd += ["--tp_size", str(a.tensor_parallel_size), "--max_batch_size", str(a.max_num_seqs),
                "--max_seq_len", str(a.max_model_len), "--max_num_tokens", str(max_num_tokens(spec))]
    cmd += ["--kv_cache_free_gpu_memory_fraction", str(a.gpu_memory_utilization)]
    if options_file:
        cmd += ["--extra_llm_api_options", options_file]
    return cmd


def flags(cmd: list[str]) -> list[str]:
    """The option names in a command line (what the flag-honesty test checks)."""
    return [t for t in cmd if t.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", t)]
