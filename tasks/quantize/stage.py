"""The quantize stage: AWQ (llm-compressor | autoawq) or ModelOpt, with a perplexity gate.

The backends run in their own interpreter (LLMSHIP_QUANT_PYTHON, or ./.venv-quant) because
they pin compressed-tensors / transformers versions that conflict with vLLM's; in production
that interpreter is the GPU worker image. This module only prepares the job, runs
tasks/quantize/worker.py there, and judges the result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tasks.errors import BadInput, StageFailed
from tasks.spec import Quantization

WORKER = Path(__file__).with_name("worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
RECORD = "llmship_quantize.json"  # written into the quantized folder: the gate's figures travel with it


class QuantizedModel(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    backend: str
    method: str
    format: str
    w_bit: int
    group_size: int
    ppl_before: float
    ppl_after: float
    ppl_increase: float  # fraction: 0.03 = +3%
    max_perplexity_increase: float
    calibration_source: str
    calib_samples_used: int
    calib_samples_dropped: int = 0
    after_measured_on: str
    device: str
    seconds_quantize: float
    seconds_total: float
    versions: dict[str, str]
    log_path: str


def quant_python() -> str:
    """The interpreter that has the quantization backends."""
    env = os.environ.get("LLMSHIP_QUANT_PYTHON")
    if env:
        return env
    local = REPO_ROOT / ".venv-quant" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def _split_text(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _read_samples(path: Path) -> list[str]:
    if not path.is_file():
        raise BadInput("quantize", str(path), "calibration file not found",
                       "set quantization.calibration.file to a .txt (blank-line separated) or .jsonl file")
    if path.suffix == ".jsonl":
        samples = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                samples.append(str(row["text"]))
            except (ValueError, KeyError, TypeError):
                raise BadInput("quantize", f"{path}:{n}", 'each JSONL line must be an object with a "text" field',
                               'write lines like {"text": "..."}') from None
        return samples
    return _split_text(path.read_text())


def builtin_text(name: str) -> str:
    return resources.files("tasks.quantize").joinpath("data", name).read_text()


def calibration_texts(q: Quantization) -> tuple[list[str], list[str], str]:
    """(calibration samples, held-out samples, where they came from).

    A user file gives both: its last tenth is held out for the perplexity gate, so the gate
    measures text the calibration never saw. Without a file, the built-in samples are used.
    Nothing comes from a hub.
    """
    cal = q.calibration
    if cal.file:
        samples = _read_samples(Path(cal.file).expanduser())
        if len(samples) < 2:
            raise BadInput("quantize", cal.file, f"needs at least 2 samples, found {len(samples)}",
                           "separate samples by blank lines (.txt) or one JSON object per line (.jsonl)")
        n_hold = max(1, len(samples) // 10)
        calib, held = samples[:-n_hold], samples[-n_hold:]
        source = f"file {cal.file}"
    else:
        calib, held = _split_text(builtin_text("calibration.txt")), _split_text(builtin_text("heldout.txt"))
        source = "built-in sample"
    return calib[: cal.num_samples], held, source


def run_worker(job: dict, python: str, log_path: Path, timeout_s: float | None) -> dict:
    job_path = log_path.with_suffix(".job.json")
    job_path.write_text(json.dumps(job))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if job.get("allow_hub"):
        env.pop("HF_HUB_OFFLINE"), env.pop("TRANSFORMERS_OFFLINE")
    try:
        with log_path.open("w") as log:
            proc = subprocess.run([python, str(WORKER), str(job_path)], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, timeout=timeout_s, cwd=str(Path(job["out_dir"]).parent))
    except FileNotFoundError:
        raise BadInput("quantize", python, "the quantization interpreter does not exist",
                       "create .venv-quant (see docs/build.md) or set LLMSHIP_QUANT_PYTHON") from None
    except subprocess.TimeoutExpired:
        raise StageFailed("quantize", job["model_dir"], f"quantization did not finish within {timeout_s:.0f} s",
                          "raise the timeout or use a GPU worker", detail=_tail(log_path)) from None
    result_path = Path(job["result_path"])
    if not result_path.is_file():
        raise StageFailed("quantize", job["model_dir"], f"the quantization worker exited {proc.returncode} "
                          "without a result", "read the log below; is the interpreter's torch/backend installed?",
                          detail=_tail(log_path))
    return json.loads(result_path.read_text())


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def quantize(model_dir: str, q: Quantization, out_dir: str, *, backend: str | None = None,
             python: str | None = None, device: str = "auto", timeout_s: float | None = None) -> QuantizedModel:
    """Quantize model_dir into out_dir with q's method and backend; enforce the perplexity gate.

    backend overrides q.backend (the promote flow passes spec.quant_backend, which knows the
    engine); without either, llm-compressor. out_dir appears only when the gate passed.
    """
    if q.method == "none":
        raise BadInput("quantize", model_dir, "quantization.method is none", "skip the quantize stage for this spec")
    backend = backend or q.backend or "llm-compressor"
    src = Path(model_dir)
    if not (src / "config.json").is_file():
        raise BadInput("quantize", model_dir, "not a model folder (no config.json)", "download the model first")
    if q.method == "fp8" and backend == "autoawq":
        raise BadInput("quantize", model_dir, "autoawq only does AWQ int4", "use backend llm-compressor or modelopt")
    calib, held, source = calibration_texts(q)
    if not calib:
        raise BadInput("quantize", source, "no calibration samples", "give calibration text")

    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        raise BadInput("quantize", str(out), "output folder is not empty", "give a new or empty folder")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_name(out.name + ".quantize.log")
    job = {
        "backend": backend, "method": q.method, "w_bit": q.w_bit, "group_size": q.group_size,
        "zero_point": q.zero_point, "model_dir": str(src.resolve()), "out_dir": str(staging),
        "calibration": calib, "heldout": held, "max_seq_len": q.calibration.max_seq_len, "device": device,
        "result_path": str(out.with_name(out.name + ".result.json")),
        "allow_hub": q.calibration.allow_hub_datasets,
    }
    Path(job["result_path"]).unlink(missing_ok=True)
    started = time.time()
    res = run_worker(job, python or quant_python(), log_path, timeout_s)
    if not res["ok"]:
        cls = BadInput if res.get("kind") == "bad_input" else StageFailed
        raise cls("quantize", f"{model_dir} ({backend})", res["message"], res.get("hint", ""),
                  detail=res.get("detail", "") or _tail(log_path, 10))

    before, after = res["ppl_before"], res["ppl_after"]
    increase = after / before - 1.0
    record = QuantizedModel(
        path=str(out), backend=backend, method=q.method, format=res["format"], w_bit=q.w_bit,
        group_size=q.group_size, ppl_before=before, ppl_after=after, ppl_increase=increase,
        max_perplexity_increase=q.max_perplexity_increase, calibration_source=source,
        calib_samples_used=res["calib_samples_used"], calib_samples_dropped=res.get("calib_samples_dropped", 0),
        after_measured_on=res["after_measured_on"], device=res["device"],
        seconds_quantize=res["seconds_quantize"], seconds_total=time.time() - started,
        versions=res.get("versions", {}), log_path=str(log_path),
    )
    check_gate(record, obj=str(staging))
    (staging / RECORD).write_text(record.model_dump_json(indent=2))
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(staging, out)
    return record


def check_gate(record: QuantizedModel, obj: str | None = None) -> QuantizedModel:
    """Fail the quantize stage when perplexity grew by more than the spec allows."""
    if record.ppl_increase > record.max_perplexity_increase:
        raise StageFailed(
            "quantize", obj or record.path,
            f"quality gate failed: held-out perplexity {record.ppl_before:.4f} -> {record.ppl_after:.4f} "
            f"({record.ppl_increase:+.2%}), above the bound of {record.max_perplexity_increase:+.2%} "
            f"({record.backend}, {record.format})",
            "calibrate on text like your traffic (quantization.calibration.file), try the other AWQ backend or "
            "fp8, or raise quantization.max_perplexity_increase if this loss is acceptable",
        )
    return record
