"""Time llmship's quantize stage with both AWQ backends, side by side, on one machine.

    .venv/bin/python bench/build_quantize.py --size tiny            # CPU, seconds
    .venv/bin/python bench/build_quantize.py --size 1b --device cuda  # the GPU check (issue 5)

It makes a randomly initialised Llama of a real architecture (tokenizer trained locally,
nothing from a hub), a calibration file of --samples samples of about --seq-len tokens from
the built-in text, runs tasks.quantize.quantize for each backend through the quantization
interpreter, and prints time, output format and size, and the autoawq / llm-compressor ratio.
Results go to bench/results/build_quantize-<size>-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {
    # hidden 128 / 2 heads: vLLM's CPU attention needs head_dim 64
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=512),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=2048),
    # the shape GPU-NOTES.md timed on an H100: 1.0B parameters with a 32k vocabulary
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
}


def calibration_file(path: Path, tokenizer_dir: Path, samples: int, seq_len: int, seed: int = 0) -> Path:
    """samples texts of just under seq_len tokens, each a shuffled run of built-in paragraphs."""
    from transformers import AutoTokenizer

    from tasks.quantize.stage import builtin_text

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    paras = [p.strip() for p in builtin_text("calibration.txt").split("\n\n") if p.strip()]
    rng = random.Random(seed)
    rows = []
    while len(rows) < samples:
        rng.shuffle(paras)
        text = ""
        for p in paras:
            cand = (text + "\n\n" + p).strip()
            if len(tok.encode(cand)) > seq_len - 8:
                break
            text = cand
        rows.append(text or paras[0][: seq_len])
    path.write_text("\n".join(json.dumps({"text": t}) for t in rows) + "\n")
    return path


def folder_mb(p: Path) -> float:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--samples", type=int, default=None, help="calibration samples (default 8 tiny, 64 otherwise)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--backends", default="llm-compressor,autoawq")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    import torch  # noqa: F401  (the main venv's, only to write the model)

    from tasks.example_model import write_example_model
    from tasks.preflight.plan import count_params_safetensors
    from tasks.quantize import quant_python, quantize
    from tasks.spec import Quantization

    work = Path(args.work or tempfile.mkdtemp(prefix="llmship-bench-quant-"))
    samples = args.samples or (8 if args.size == "tiny" else 64)
    t0 = time.time()
    model = write_example_model(work / f"llama-{args.size}", **SIZES[args.size])
    made = time.time() - t0
    params = count_params_safetensors(model)[0]
    calib = calibration_file(work / "calibration.jsonl", model, samples, args.seq_len)
    print(f"model: random Llama {args.size}, {params / 1e6:,.1f} M params, written in {made:.1f} s; "
          f"{samples} calibration samples of <= {args.seq_len} tokens; quantization python {quant_python()}")

    results = []
    for backend in args.backends.split(","):
        q = Quantization(method="awq", backend=backend, max_perplexity_increase=10.0,
                         calibration={"file": str(calib), "num_samples": samples, "max_seq_len": args.seq_len})
        out = work / f"out-{backend}"
        r = quantize(str(model), q, str(out), device=args.device)
        row = {"backend": backend, "device": r.device, "seconds_quantize": round(r.seconds_quantize, 1),
               "seconds_stage": round(r.seconds_total, 1), "format": r.format, "output_mb": round(folder_mb(out), 1),
               "ppl_before": round(r.ppl_before, 3), "ppl_after": round(r.ppl_after, 3),
               "calib_samples_used": r.calib_samples_used, "versions": r.versions}
        results.append(row)
        print(f"{backend:15s} {r.device:5s} quantize {r.seconds_quantize:8.1f} s  stage {r.seconds_total:8.1f} s  "
              f"{row['output_mb']:9.1f} MB  ppl {r.ppl_before:.3f} -> {r.ppl_after:.3f}  {r.format}")
    by = {r["backend"]: r for r in results}
    if {"llm-compressor", "autoawq"} <= by.keys():
        ratio = by["autoawq"]["seconds_quantize"] / max(by["llm-compressor"]["seconds_quantize"], 1e-9)
        print(f"ratio autoawq / llm-compressor (quantize time): {ratio:.2f}")
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    dev = results[0]["device"] if results else args.device
    (out_dir / f"build_quantize-{args.size}-{dev}.json").write_text(
        json.dumps({"size": args.size, "params": params, "samples": samples, "seq_len": args.seq_len,
                    "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
