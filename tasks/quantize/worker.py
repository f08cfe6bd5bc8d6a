"""The quantization worker: runs inside the quantization environment (its own venv or image).

    python worker.py JOB.json

Needs only the standard library, torch, transformers and the chosen backend, so it runs in an
interpreter that does not have llmship installed (the quantization backends pin versions that
conflict with vLLM's). It reads a job, measures held-out perplexity of the original model,
quantizes, saves, reloads the saved artifact and measures again, and writes a result JSON.
It never raises to the caller: every outcome, good or bad, is a result file.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from pathlib import Path


class JobError(Exception):
    """A failure the caller reports as-is: kind is bad_input or failed."""

    def __init__(self, kind: str, message: str, hint: str = ""):
        super().__init__(message)
        self.kind, self.message, self.hint = kind, message, hint


def _device(want: str) -> str:
    import torch

    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise JobError("bad_input", "device cuda was asked for but torch sees no CUDA GPU",
                       "run on a GPU worker or set the device to cpu")
    return want


def _eval_dtype(device: str):
    import torch

    # float32 on CPU keeps the before/after comparison free of half-precision noise
    return torch.float32 if device == "cpu" else torch.bfloat16


def perplexity(model, tokenizer, texts: list[str], max_len: int, device: str) -> float:
    """exp(mean next-token NLL) over the held-out texts, in windows of max_len tokens."""
    import torch

    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer.encode(t.strip()))
    limit = getattr(model.config, "max_position_embeddings", max_len) or max_len
    window = max(8, min(max_len, limit))
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start : start + window]
            if len(chunk) < 2:
                break
            x = torch.tensor([chunk], device=device)
            logits = model(x).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            target = x[0, 1:]
            nll -= logp.gather(1, target.unsqueeze(1)).sum().item()
            count += target.numel()
    if count == 0:
        raise JobError("bad_input", "the held-out text is empty after tokenization", "give held-out text with words in it")
    return math.exp(nll / count)


def _load_plain(model_dir: str, device: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_eval_dtype(device))
    return model.to(device)


def _calib_kept(tokenizer, texts: list[str], max_len: int) -> tuple[list[str], int]:
    """autoawq silently drops samples longer than max_calib_seq_len; find out beforehand."""
    kept, tokens = [], 0
    for t in texts:
        n = len(tokenizer.encode(t.strip()))
        if 0 < n <= max_len:
            kept.append(t)
            tokens += n
    return kept, tokens


# ---- backends -------------------------------------------------------------------------------

def _awq_without_triton_on_cpu(device: str) -> None:
    """PyPI's torch brings triton, and autoawq then runs its triton GEMM kernels, which enter a
    CUDA device context even for CPU tensors ("invalid argument to exchangeDevice"). On a CPU
    autoawq is told triton is absent, so it dequantizes and multiplies, as it does without it."""
    if device != "cpu":
        return
    import awq.modules.linear.gemm as awq_gemm

    awq_gemm.TRITON_AVAILABLE = False


def _llm_compressor(job: dict, tokenizer, device: str) -> dict:
    import torch

    if device == "cpu":
        # llm-compressor pins calibration batches for a GPU; on CPU pinning fails without one.
        torch.Tensor.pin_memory = lambda self, *a, **k: self
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype="auto")
    if job["method"] == "awq":
        from llmcompressor.modifiers.awq import AWQModifier

        weights = {"num_bits": job["w_bit"], "type": "int", "symmetric": not job["zero_point"],
                   "strategy": "group" if job["group_size"] > 0 else "channel"}
        if job["group_size"] > 0:
            weights["group_size"] = job["group_size"]
        recipe = [AWQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                              ignore=["lm_head"])]
        fmt = f"compressed-tensors (AWQ W{job['w_bit']}A16, {'asym' if job['zero_point'] else 'sym'}, group {job['group_size']})"
    else:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        recipe = [QuantizationModifier(scheme="FP8_DYNAMIC", targets=["Linear"], ignore=["lm_head"])]
        fmt = "compressed-tensors (FP8 dynamic)"
    texts = job["calibration"]
    ds = Dataset.from_dict({"text": texts})
    t0 = time.time()
    oneshot(model=model, dataset=ds, processor=tokenizer, recipe=recipe,
            max_seq_length=job["max_seq_len"], num_calibration_samples=len(texts))
    seconds = time.time() - t0
    model.save_pretrained(job["out_dir"], save_compressed=True)
    tokenizer.save_pretrained(job["out_dir"])
    del model
    cfg = json.loads((Path(job["out_dir"]) / "config.json").read_text()).get("quantization_config", {})
    fmt += f"; format {cfg.get('format', '?')}"
    reloaded = _load_plain(job["out_dir"], device)  # transformers decompresses compressed-tensors
    return {"seconds_quantize": seconds, "format": fmt, "model_after": reloaded, "after_measured_on": "reloaded artifact",
            "calib_samples_used": len(texts)}


def _autoawq(job: dict, tokenizer, device: str) -> dict:
    if job["w_bit"] != 4:
        raise JobError("bad_input", f"autoawq writes 4-bit GEMM weights only, not w_bit {job['w_bit']}",
                       "set quantization.w_bit: 4 or use backend llm-compressor")
    kept, tokens = _calib_kept(tokenizer, job["calibration"], job["max_seq_len"])
    n_all = len(job["calibration"])
    if not kept:
        raise JobError("bad_input",
                       f"all {n_all} calibration samples are longer than calibration.max_seq_len "
                       f"({job['max_seq_len']} tokens); autoawq would drop every one and crash in torch.cat",
                       "raise quantization.calibration.max_seq_len or split the calibration text into shorter samples")
    if tokens < job["max_seq_len"]:
        raise JobError("bad_input",
                       f"the {len(kept)} usable calibration samples hold {tokens} tokens, fewer than one "
                       f"{job['max_seq_len']}-token block; autoawq would calibrate on nothing",
                       "give more calibration text (calibration.num_samples / calibration.file) or lower "
                       "calibration.max_seq_len")
    _awq_without_triton_on_cpu(device)
    from awq import AutoAWQForCausalLM

    model = AutoAWQForCausalLM.from_pretrained(job["model_dir"])
    quant_config = {"zero_point": job["zero_point"], "q_group_size": job["group_size"], "w_bit": 4, "version": "GEMM"}
    t0 = time.time()
    # calib_data must be given: the default fetches a dataset from the hub.
    model.quantize(tokenizer, quant_config=quant_config, calib_data=kept, max_calib_seq_len=job["max_seq_len"],
                   max_calib_samples=len(kept))
    seconds = time.time() - t0
    model.save_quantized(job["out_dir"])
    tokenizer.save_pretrained(job["out_dir"])
    del model
    reloaded = _load_awq_gemm(job["out_dir"], device)
    return {"seconds_quantize": seconds, "format": f"awq gemm (4 bit, group {job['group_size']}, "
            f"{'zero point' if job['zero_point'] else 'symmetric'})", "model_after": reloaded,
            "after_measured_on": "reloaded artifact", "calib_samples_used": len(kept),
            "calib_samples_dropped": n_all - len(kept)}


def _load_awq_gemm(out_dir: str, device: str):
    """Reload an autoawq GEMM checkpoint with its own WQLinear_GEMM modules.

    autoawq's from_quantized insists on intel-extension-for-pytorch on a CPU; the module's
    plain dequantize-and-matmul path needs nothing, so build the model and swap the layers.
    """
    import torch

    _awq_without_triton_on_cpu(device)
    from awq.modules.linear.gemm import WQLinear_GEMM
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(out_dir)
    q = config.quantization_config
    q = q if isinstance(q, dict) else q.to_dict()
    config.quantization_config = None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    skip = set(q.get("modules_to_not_convert") or [])
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head") or any(s in name for s in skip):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, WQLinear_GEMM(q["bits"], q["group_size"], module.in_features, module.out_features,
                                             module.bias is not None, "cpu"))
    state = {}
    for f in sorted(Path(out_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise JobError("failed", f"the saved AWQ checkpoint does not load: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}", "check the autoawq and transformers versions")
    if device == "cpu":
        # float32 around the quantized layers, like the original's evaluation; WQLinear_GEMM
        # computes in float16 itself and wants its scales (and bias) in float16.
        model = model.float()
        for m in model.modules():
            if isinstance(m, WQLinear_GEMM):
                m.scales = m.scales.half()
                if m.bias is not None:
                    m.bias = m.bias.half()
    return model.to(device)


def _set_awq_block(cfg: dict, group_size: int) -> None:
    """The spec's group size as ModelOpt's weight block size (list form in 0.4x, dict form before)."""
    quant_cfg = cfg["quant_cfg"]
    entries = quant_cfg if isinstance(quant_cfg, list) else [
        {"quantizer_name": k, "cfg": v} for k, v in quant_cfg.items() if isinstance(v, dict)]
    for e in entries:
        if e.get("quantizer_name") == "*weight_quantizer" and isinstance(e.get("cfg"), dict) and "block_sizes" in e["cfg"]:
            e["cfg"]["block_sizes"] = {**e["cfg"]["block_sizes"], -1: group_size}
            return
    raise JobError("failed", "ModelOpt's INT4_AWQ_CFG has no weight block size to set",
                   "check the nvidia-modelopt version")


def _modelopt(job: dict, tokenizer, device: str) -> dict:
    try:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint
    except ImportError as err:
        raise JobError("bad_input", f"NVIDIA ModelOpt is not installed in the quantization environment ({err})",
                       "install nvidia-modelopt[torch] in the GPU worker image (LLMSHIP_QUANT_PYTHON)") from None
    import torch

    import copy

    model = _load_plain(job["model_dir"], device)
    cfg = copy.deepcopy(mtq.INT4_AWQ_CFG if job["method"] == "awq" else mtq.FP8_DEFAULT_CFG)
    if job["method"] == "awq" and job["group_size"] > 0:
        _set_awq_block(cfg, job["group_size"])
    texts = job["calibration"]

    def forward_loop(m):
        with torch.no_grad():
            for t in texts:
                ids = tokenizer(t, return_tensors="pt", truncation=True, max_length=job["max_seq_len"]).input_ids
                m(ids.to(device))

    t0 = time.time()
    model = mtq.quantize(model, cfg, forward_loop)
    seconds = time.time() - t0
    # measured on the fake-quantized model, which is what the export encodes; the export packs
    # the weights in place, after which the module no longer runs
    ppl_after = perplexity(model, tokenizer, job["heldout"], job["max_seq_len"], device)
    export_hf_checkpoint(model, export_dir=job["out_dir"])
    tokenizer.save_pretrained(job["out_dir"])
    if not (Path(job["out_dir"]) / "hf_quant_config.json").is_file():
        raise JobError("failed", "ModelOpt's export wrote no hf_quant_config.json", "check the nvidia-modelopt version")
    return {"seconds_quantize": seconds, "ppl_after": ppl_after, "after_measured_on": "in-memory fake-quantized model",
            "format": f"modelopt hf checkpoint ({'int4_awq' if job['method'] == 'awq' else 'fp8'}, hf_quant_config.json)",
            "calib_samples_used": len(texts)}


BACKENDS = {"llm-compressor": _llm_compressor, "autoawq": _autoawq, "modelopt": _modelopt}


def run(job: dict) -> dict:
    from transformers import AutoTokenizer

    started = time.time()
    device = _device(job.get("device", "auto"))
    Path(job["out_dir"]).mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    original = _load_plain(job["model_dir"], device)
    ppl_before = perplexity(original, tokenizer, job["heldout"], job["max_seq_len"], device)
    del original
    out = BACKENDS[job["backend"]](job, tokenizer, device)
    if "ppl_after" in out:
        ppl_after = out.pop("ppl_after")
    else:
        ppl_after = perplexity(out.pop("model_after"), tokenizer, job["heldout"], job["max_seq_len"], device)
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for mod, dist in (("llmcompressor", "llmcompressor"), ("awq", "autoawq"), ("compressed_tensors", "compressed-tensors"),
                      ("modelopt", "nvidia-modelopt")):
        try:
            from importlib.metadata import version

            __import__(mod)
            versions[dist] = version(dist)
        except Exception:
            pass
    return {"ok": True, "device": device, "ppl_before": ppl_before, "ppl_after": ppl_after,
            "seconds_total": time.time() - started, "versions": versions, **out}


def main(argv: list[str]) -> int:
    job_path = Path(argv[1])
    job = json.loads(job_path.read_text())
    result_path = Path(job["result_path"])
    try:
        result = run(job)
    except JobError as err:
        result = {"ok": False, "kind": err.kind, "message": err.message, "hint": err.hint}
    except Exception as err:  # noqa: BLE001 - every failure becomes a result the caller can report
        result = {"ok": False, "kind": "failed", "message": f"{type(err).__name__}: {err}",
                  "hint": "see the detail below; the quantize log holds the backend's output",
                  "detail": traceback.format_exc()[-4000:]}
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, result_path)
    return 0 if result["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
