"""Stand-ins for TensorRT-LLM's tools, for exercising llmship's subprocess and outcome handling
on a machine without TensorRT-LLM. Each one accepts exactly the options listed in
tests/build/data for the real tool (anything else is rejected the way argparse does) and writes
the files the real tool writes, or fails the way FAKE_TRTLLM_FAIL says."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
LISTS = {"trtllm-build": "trtllm-build-1.2.txt", "convert_checkpoint.py": "convert-checkpoint-llama-1.2.txt",
         "quantize.py": "quantize-modelopt-1.2.txt"}
FLAGS_WITHOUT_VALUE = {"--use_weight_only", "--load_model_on_cpu", "--quantize_lm_head", "--strip_plan",
                       "--fast_build", "--dry_run"}


def known(tool: str) -> set[str]:
    lines = (DATA / LISTS[tool]).read_text().splitlines()
    return {l.strip() for l in lines if l.strip() and not l.startswith("#")}


def parse(tool: str, argv: list[str]) -> dict[str, str]:
    allowed = known(tool)
    opts, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a not in allowed:
            print(f"usage: {tool} [options]\n{tool}: error: unrecognized arguments: {a}", file=sys.stderr)
            sys.exit(2)
        if a in FLAGS_WITHOUT_VALUE:
            opts[a] = "true"
            i += 1
        else:
            opts[a] = argv[i + 1]
            i += 2
    return opts


def main(tool: str, argv: list[str]) -> int:
    opts = parse(tool, argv)
    fail = os.environ.get("FAKE_TRTLLM_FAIL", "")
    print(f"[TensorRT-LLM] fake {tool} with {json.dumps(opts, sort_keys=True)}")
    if tool in ("convert_checkpoint.py", "quantize.py"):
        out = Path(opts["--output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        tp = int(opts.get("--tp_size", 1))
        cfg = {"architecture": "LlamaForCausalLM", "dtype": opts.get("--dtype", "auto"),
               "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
               "quantization": {"quant_algo": {"int4_awq": "W4A16_AWQ", "fp8": "FP8"}.get(opts.get("--qformat"))}}
        if fail != "checkpoint-no-config":
            (out / "config.json").write_text(json.dumps(cfg))
        for r in range(tp):
            (out / f"rank{r}.safetensors").write_bytes(b"\0" * 64)
        return 0
    # trtllm-build
    if fail == "oom":
        print("[TensorRT-LLM][ERROR] [TRT] [E] 2: [virtualMemoryBuffer.cpp::resizePhysical] CUDA out of memory "
              "while allocating 17179869184 bytes", flush=True)
        print("Traceback (most recent call last):\nRuntimeError: Engine building failed", file=sys.stderr)
        return 1
    if fail == "crash":
        print("[TensorRT-LLM][INFO] building rank 0", flush=True)
        print("Traceback (most recent call last):\nAssertionError: Engine building failed, please check error log.",
              file=sys.stderr)
        return 1
    ckpt, out = Path(opts["--checkpoint_dir"]), Path(opts["--output_dir"])
    cfg = json.loads((ckpt / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    world = cfg["mapping"]["world_size"]
    build = {k.lstrip("-"): v for k, v in opts.items() if k not in ("--checkpoint_dir", "--output_dir")}
    (out / "config.json").write_text(json.dumps({"version": "1.2.0", "pretrained_config": cfg, "build_config": build}))
    for r in range(world):
        if fail == "missing-rank" and r == world - 1:
            continue
        (out / f"rank{r}.engine").write_bytes(b"fake-serialized-engine" * 8)
    return 0


def install(bin_dir: Path, examples_dir: Path) -> tuple[Path, Path]:
    """Write executable stand-ins: bin_dir/trtllm-build and the two example scripts."""
    here = Path(__file__).resolve().parent

    def wrapper(path: Path, tool: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(here)!r})\nimport fake_tool\n"
                        f"sys.exit(fake_tool.main({tool!r}, sys.argv[1:]))\n")
        path.chmod(0o755)

    wrapper(bin_dir / "trtllm-build", "trtllm-build")
    wrapper(examples_dir / "models/core/llama/convert_checkpoint.py", "convert_checkpoint.py")
    wrapper(examples_dir / "quantization/quantize.py", "quantize.py")
    return bin_dir / "trtllm-build", examples_dir


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
