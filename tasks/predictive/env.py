"""The MLServer environment: where it is, and running the predictive worker inside it.

MLServer 1.7 pins fastapi<0.116 and protobuf<7, which the project venv (prefect 3, protobuf 7)
cannot hold, so it lives in its own interpreter: LLMSHIP_MLSERVER_PYTHON, else ./.venv-mlserver
(`make setup-mlserver`). In production it is the kserve-mlserver image. The worker
(tasks/predictive/worker.py) trains and inspects models there, with the same scikit-learn and
xgboost that serve them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tasks.errors import BadInput, StageFailed

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
SETUP_HINT = "run `make setup-mlserver` (creates .venv-mlserver) or set LLMSHIP_MLSERVER_PYTHON to an interpreter with mlserver"


def mlserver_python() -> str | None:
    """The interpreter that has mlserver, mlserver-sklearn and mlserver-xgboost; None when there is none."""
    env = os.environ.get("LLMSHIP_MLSERVER_PYTHON")
    if env:
        return env
    local = REPO_ROOT / ".venv-mlserver" / "bin" / "python"
    return str(local) if local.exists() else None


def mlserver_command(python: str | None = None) -> list[str]:
    """`mlserver` of that environment (its console script beside the interpreter, else `python -m mlserver.cli.main`)."""
    py = python or mlserver_python()
    if py is None:
        raise BadInput("deploy", "MLServer", "no MLServer environment on this machine", SETUP_HINT)
    script = Path(py).parent / "mlserver"
    return [str(script)] if script.exists() else [py, "-m", "mlserver.cli.main"]


def worker_python() -> str:
    """Where the worker runs: the MLServer environment, else this interpreter (which may lack xgboost)."""
    return mlserver_python() or sys.executable


def run_worker(command: str, job: dict, stage: str, obj: str, timeout_s: float = 600) -> dict:
    """Run worker.py COMMAND JOB in the MLServer environment; its JSON result, or BadInput / StageFailed."""
    python = worker_python()
    with tempfile.TemporaryDirectory(prefix="llmship-predictive-") as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        try:
            proc = subprocess.run([python, str(WORKER), command, str(job_path)], capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise BadInput(stage, obj, f"the MLServer environment's interpreter {python} does not exist", SETUP_HINT) from None
        except subprocess.TimeoutExpired:
            raise StageFailed(stage, obj, f"the predictive worker ran past {timeout_s:.0f} s", "retry on a less busy host") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise StageFailed(stage, obj, f"the predictive worker exited {proc.returncode} without a result",
                          "read the output below", detail=(proc.stderr or proc.stdout)[-3000:])
    res = json.loads(lines[-1])
    if "error" in res:
        msg = res["error"]
        if res.get("kind") == "bad_input":
            hint = SETUP_HINT if "lacks the library" in msg else "check the model file and engine.kind"
            raise BadInput(stage, obj, msg, hint)
        raise StageFailed(stage, obj, msg, "read the traceback below", detail=res.get("traceback", ""))
    return res
