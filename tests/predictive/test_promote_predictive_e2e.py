"""The whole promotion of scikit-learn models through `llmship promote` on the local target (real MLServer):
promote a good model; a less accurate one fails its quality gate and is rolled back while stable answers;
a slower one fails the latency SLO and is rolled back too.

These need flows/promote.py to serve predictive kinds (deploy with tasks.local.mlserver, warm-up / load test
over V2, the quality gate): they skip until it does (LLMSHIP_RUN_PREDICTIVE_FLOW=1 runs them anyway).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tasks.local.server import is_alive
from tasks.local.state import read_record, read_stable

from .conftest import needs_mlserver

ROOT = Path(__file__).resolve().parents[2]


def _flow_serves_predictive() -> bool:
    """Whether the flow calls the MLServer launcher and the quality gate (outside their own modules)."""
    if os.environ.get("LLMSHIP_RUN_PREDICTIVE_FLOW") == "1":
        return True
    files = [*ROOT.glob("flows/*.py"), *ROOT.glob("tasks/**/*.py")]
    text = "".join(p.read_text() for p in files
                   if "predictive" not in p.relative_to(ROOT).parts[:2] and p.name != "mlserver.py")
    return "start_mlserver" in text and "evaluate_quality" in text


wired = pytest.mark.skipif(not _flow_serves_predictive(), reason="flows/promote.py does not serve sklearn / xgboost yet")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()  # the front door of every promotion in this module


def spec_for(folder: Path, store: Path, **overrides) -> dict:
    spec = yaml.safe_load((ROOT / "examples" / "sklearn-local.yaml").read_text())
    spec["target"]["port"] = PORT
    spec["model"]["source"] = f"file://{folder / 'model'}"
    spec["engine"]["predictive"]["quality"]["labelled_data"] = str(folder / "heldout.jsonl")
    spec["storage"]["uri"] = str(store)
    for section, values in overrides.items():
        spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    return spec


def promote(tmp: Path, spec: dict, label: str) -> tuple[int, dict | None, str]:
    path = tmp / f"{label}.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp / f"{label}.json"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "promote", str(path), "--json-out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    result = json.loads(out.read_text()) if out.exists() else None
    return proc.returncode, result, proc.stdout + proc.stderr


def states(result: dict) -> dict[str, str]:
    return {s["stage"]: s["state"] for s in result["stages"]}


def infers(base_url: str, name: str, folder: Path) -> bool:
    body = json.loads((folder / "v2-request.json").read_text())
    r = httpx.post(f"{base_url}/v2/models/{name}/infer", json=body, timeout=30)
    return r.status_code == 200 and bool(r.json().get("outputs"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("predictive-store")
    yield path
    subprocess.run([sys.executable, "-m", "flows.cli", "stop", "--store", str(path)], cwd=ROOT, timeout=120)


@pytest.mark.e2e
@pytest.mark.predictive_flow
@needs_mlserver
@wired
def test_promote_then_roll_back_a_worse_and_a_slower_model(example_model, store, tmp_path):
    good, worse, slow = example_model("good"), example_model("worse"), example_model("slow")

    # 1. A good model: quantize and build are Skipped, the rest runs, and it serves as stable.
    rc, result, log = promote(tmp_path, spec_for(good, store), "good")
    assert rc == 0, log
    assert result["outcome"] == "promoted"
    got = states(result)
    assert got["quantize"] == "Skipped" and got["build"] == "Skipped"
    assert got["deploy"] == "Completed" and got["load_test"] == "Completed"
    stable = read_stable(str(store), "iris-sklearn")
    assert stable is not None and infers(stable.base_url, "iris-sklearn", good)
    door = f"http://127.0.0.1:{PORT}"
    assert result["endpoint"] == door and infers(door, "iris-sklearn", good)  # clients call the front door

    # 2. A less accurate model fails the quality gate: rolled back, stable untouched and answering.
    rc, result, log = promote(tmp_path, spec_for(worse, store), "worse")
    assert rc == 1, log
    assert result["outcome"] == "rolled_back"
    assert "accuracy" in result["reason"] and "< limit 0.9" in result["reason"], result["reason"]
    assert read_stable(str(store), "iris-sklearn") == stable
    assert read_record(str(store), "iris-sklearn", "candidate") is None
    assert infers(stable.base_url, "iris-sklearn", good)
    history = [json.loads(line) for line in (store / "state" / "iris-sklearn.history.jsonl").read_text().splitlines()]
    assert history[-1]["event"] == "rolled_back" and not is_alive(history[-1].get("pid"))

    # 3. A model as accurate but far slower fails the latency SLO: rolled back as well.
    rc, result, log = promote(tmp_path, spec_for(slow, store, slo={"latency_p99_ms": 60, "min_requests_per_s": 5,
                                                                  "max_error_rate": 0.0}), "slow")
    assert rc == 1, log
    assert result["outcome"] == "rolled_back"
    assert "p99 latency" in result["reason"], result["reason"]
    assert read_stable(str(store), "iris-sklearn") == stable
    assert infers(door, "iris-sklearn", good)


def test_bad_predictive_spec_exits_2_before_anything_runs(tmp_path):
    spec = spec_for(tmp_path, tmp_path / "store")
    spec["quantization"] = {"method": "awq"}
    rc, _, log = promote(tmp_path, spec, "bad")
    assert rc == 2 and "quantization is for LLM weights" in log and "Traceback" not in log
