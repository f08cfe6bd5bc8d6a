"""Run the TensorRT-LLM build on a GPU worker and judge its outcome.

Engine path: checkpoint (convert_checkpoint.py / quantize.py) -> trtllm-build -> verify that
config.json and one rank<N>.engine per rank exist. PyTorch path: the HF checkpoint (ModelOpt-
quantized by the quantize stage when the spec asks) -> verify hf_quant_config.json. Both end
with the trtllm-serve command line and options file the serving runtime uses. Logs are kept
beside the outputs; failures name the step and the first error line the tool printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from tasks.errors import BadInput, StageFailed
from tasks.preflight import read_shape
from tasks.quantize.stage import calibration_texts
from tasks.spec import PromotionSpec
from tasks.trtllm.commands import (
    TrtPath,
    build_cmd,
    checkpoint_cmd,
    choose_path,
    qformat,
    serve_cmd,
    serve_options,
)

SERVE_OPTIONS = "trtllm-serve-options.yaml"
SERVE_COMMAND = "trtllm-serve-command.json"


class TrtllmArtifact(BaseModel):
    """What the build produced and how to serve it."""

    model_config = ConfigDict(frozen=True)

    path: TrtPath
    trtllm_version: str
    serve_dir: str  # the folder to publish: engine folder (engine path) or HF checkpoint (pytorch path)
    checkpoint_dir: str | None = None
    engine_files: list[str] = []
    quant_format: str | None = None
    serve_command: list[str]  # with the model path as placed in serve_dir; the runtime substitutes its mount
    logs: list[str] = []
    seconds: float = 0.0


# (pattern, what to say, what to do): the first match in a failed log explains it
FAILURES = [
    (re.compile(r"(CUDA out of memory|OutOfMemoryError|out of memory|cudaErrorMemoryAllocation)", re.I),
     "the GPU ran out of memory", "lower engine.args.max_num_seqs / max_model_len, quantize, or raise tensor_parallel_size"),
    (re.compile(r"(No CUDA GPUs are available|no CUDA-capable device|CUDA driver version is insufficient)", re.I),
     "no usable CUDA GPU on this worker", "run the build on the GPU work pool (infra/workpools/gpu-build-job-template.json)"),
    (re.compile(r"Unsupported model architecture|is not supported|NotImplementedError", re.I),
     "TensorRT-LLM does not support this model or option", "check the architecture against the TensorRT-LLM support matrix"),
    (re.compile(r"error: unrecognized arguments|no such option|invalid choice", re.I),
     "the tool rejected a flag", "the builder image's TensorRT-LLM differs from engine.trtllm_version; align them"),
]
_ERROR_LINE = re.compile(r"(\[E\]|ERROR|Error:|Traceback|AssertionError|RuntimeError|Exception)")


def explain_failure(log_text: str) -> tuple[str, str]:
    """(message, hint) for a failed tool run, from its log."""
    for pat, what, hint in FAILURES:
        m = pat.search(log_text)
        if m:
            return f"{what} ({m.group(0)})", hint
    for line in log_text.splitlines():
        if _ERROR_LINE.search(line):
            return f"failed: {line.strip()[:300]}", "read the build log"
    return "failed without an error line", "read the build log"


def run_step(step: str, cmd: list[str], log_path: Path, env: dict | None = None, timeout_s: float | None = None,
             cwd: str | None = None) -> None:
    """Run one tool, log to log_path, raise StageFailed with the reason when it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_path.open("w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                  timeout=timeout_s, cwd=cwd)
    except FileNotFoundError:
        raise BadInput("build", cmd[0], f"{step}: command not found",
                       "run the build on a TensorRT-LLM builder image (the GPU work pool), or set its path") from None
    except subprocess.TimeoutExpired:
        raise StageFailed("build", step, f"did not finish within {timeout_s:.0f} s", "raise the build timeout",
                          detail=_tail(log_path)) from None
    if proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        message, hint = explain_failure(text)
        raise StageFailed("build", step, f"exited {proc.returncode}: {message}", hint,
                          detail=f"log: {log_path}\n" + _tail(log_path))


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def verify_engine_dir(engine_dir: Path, world_size: int) -> list[str]:
    """config.json and rank0..rank{N-1}.engine, with the world size the config records."""
    problems = []
    cfg_path = engine_dir / "config.json"
    if not cfg_path.is_file():
        return [f"{cfg_path} is missing"]
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as err:
        return [f"{cfg_path} is not JSON: {err}"]
    mapping = (cfg.get("pretrained_config") or {}).get("mapping") or {}
    recorded = mapping.get("world_size")
    if recorded is not None and int(recorded) != world_size:
        problems.append(f"config.json records world_size {recorded}, expected {world_size}")
    for rank in range(world_size):
        f = engine_dir / f"rank{rank}.engine"
        if not f.is_file() or f.stat().st_size == 0:
            problems.append(f"{f.name} is missing or empty")
    extra = sorted(p.name for p in engine_dir.glob("rank*.engine") if int(p.stem[4:]) >= world_size)
    if extra:
        problems.append(f"unexpected engines for world size {world_size}: {', '.join(extra)}")
    return problems


def write_calib_dataset(spec: PromotionSpec, folder: Path) -> Path:
    """The spec's calibration text as a local JSON-lines dataset folder (no hub)."""
    calib, _, _ = calibration_texts(spec.quantization)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.jsonl").open("w") as f:
        for t in calib:
            f.write(json.dumps({"text": t}) + "\n")
    return folder


def _link_tree(src: Path, dst: Path) -> None:
    for f in src.rglob("*"):
        if f.is_dir() or f.name.startswith(".llmship"):
            continue
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def quantizes_in_build(spec: PromotionSpec) -> bool:
    """True when the engine path quantizes inside its checkpoint step (ModelOpt's quantize.py),
    so the flow's own quantize stage must be skipped and the original model passed to build."""
    return (spec.engine.kind == "tensorrt-llm" and spec.quantization.method != "none"
            and choose_path(spec.engine.trtllm_version) == "engine")


def build_for_spec(model_dir: str, spec: PromotionSpec, out_dir: str) -> Path:
    """The folder to publish for a tensorrt-llm spec (what the promote flow's build stage calls)."""
    if (Path(model_dir) / "hf_quant_config.json").is_file() and choose_path(spec.engine.trtllm_version) == "engine":
        raise BadInput("build", model_dir, "the engine path takes the original model and quantizes in its "
                       "checkpoint step, not a ModelOpt HF export",
                       "skip the quantize stage when tasks.trtllm.quantizes_in_build(spec) is true")
    quantized = model_dir if (Path(model_dir) / "hf_quant_config.json").is_file() else None
    return Path(build_engine(model_dir, spec, out_dir, quantized_dir=quantized).serve_dir)


def build_engine(model_dir: str, spec: PromotionSpec, work_dir: str, *, prefer: TrtPath | None = None,
                 trtllm_build: str = "trtllm-build", python: str = sys.executable, quantized_dir: str | None = None,
                 timeout_s: float | None = None) -> TrtllmArtifact:
    """Build what TensorRT-LLM serves for this spec, in work_dir.

    model_dir is the downloaded HF model. quantized_dir is the ModelOpt-exported checkpoint from
    the quantize stage (pytorch path only; the engine path quantizes inside quantize.py).
    """
    if spec.engine.kind != "tensorrt-llm":
        raise BadInput("build", spec.name, "engine.kind is not tensorrt-llm", "skip the build stage for vLLM")
    started = time.time()
    path = choose_path(spec.engine.trtllm_version, prefer)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    fmt = qformat(spec)
    tp = spec.engine.args.tensor_parallel_size
    if path == "engine":
        shape = read_shape(model_dir)
        ckpt, engine = work / "checkpoint", work / "engine"
        for d in (ckpt, engine):
            shutil.rmtree(d, ignore_errors=True)
        calib = write_calib_dataset(spec, work / "calib") if fmt else None
        logs = [work / "checkpoint.log", work / "build.log"]
        run_step("checkpoint", checkpoint_cmd(model_dir, str(ckpt), spec, shape.architecture,
                                              str(calib) if calib else None, python=python), logs[0],
                 timeout_s=timeout_s)
        if not (ckpt / "config.json").is_file():
            raise StageFailed("build", str(ckpt), "the checkpoint step wrote no config.json",
                              "read the checkpoint log", detail=_tail(logs[0]))
        run_step("trtllm-build", build_cmd(str(ckpt), str(engine), spec, trtllm_build), logs[1], timeout_s=timeout_s)
        problems = verify_engine_dir(engine, tp)
        if problems:
            raise StageFailed("build", str(engine), "trtllm-build finished but the engine folder is incomplete",
                              "read the build log", detail="\n".join(problems) + "\n" + _tail(logs[1]))
        # the engine is served with the HF tokenizer; keep it beside the engines
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                     "generation_config.json", "chat_template.jinja"):
            if (Path(model_dir) / name).is_file():
                (engine / "tokenizer").mkdir(exist_ok=True)
                shutil.copy2(Path(model_dir) / name, engine / "tokenizer" / name)
        serve_dir, engines = engine, sorted(p.name for p in engine.glob("rank*.engine"))
        tokenizer = "{model}/tokenizer"
    else:
        source = Path(quantized_dir or model_dir)
        if fmt and not (source / "hf_quant_config.json").is_file():
            raise BadInput("build", str(source), f"spec asks for {fmt} but the checkpoint has no hf_quant_config.json",
                           "quantize with backend modelopt first (the quantize stage), and pass its output")
        # a linked copy: the serving options go beside the checkpoint without touching the
        # (cached, digested) quantize output
        serve_dir = work / "hf"
        shutil.rmtree(serve_dir, ignore_errors=True)
        _link_tree(source, serve_dir)
        logs, engines, ckpt, tokenizer = [], [], None, None
    options = serve_options(spec)
    (serve_dir / SERVE_OPTIONS).write_text(yaml.safe_dump(options, sort_keys=True))
    cmd = serve_cmd("{model}", spec, path, tokenizer=tokenizer, options_file="{model}/" + SERVE_OPTIONS)
    (serve_dir / SERVE_COMMAND).write_text(json.dumps(cmd, indent=2) + "\n")
    return TrtllmArtifact(path=path, trtllm_version=spec.engine.trtllm_version, serve_dir=str(serve_dir),
                          checkpoint_dir=str(ckpt) if ckpt else None, engine_files=engines, quant_format=fmt,
                          serve_command=cmd, logs=[str(p) for p in logs], seconds=time.time() - started)
