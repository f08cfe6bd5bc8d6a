"""Promotion timings beside a running Prefect server: cold, no-op re-run, and a canary.

    .venv/bin/python bench/promotion_bench.py

- cold: empty cache and store, every stage runs, vLLM start-up included (target <= 150 s).
- no-op: the same spec again; download and publish come back Cached and the serving
  revision already serves, so nothing rolls out (target <= 2.5 s, the figure before the
  promotion engine was rewritten).
- canary: a config-only change (max_num_seqs 16 -> 8) is a new serving revision: a
  candidate starts, is warmed up, load-tested and taken through the canary's steps behind
  the front door. The machine's own overhead is the wall time minus what is not the
  machine's: the candidate's vLLM start-up, warm-up, the load test and each step's
  analysis window. The machine's own overhead (canary stage less its windows: weights,
  drain, the old server's stop, health checks, records) has the target < 2 s; the rest of
  the wall time (Python and Prefect start-up, cached stages, deploy) is printed beside it.

Times are wall-clock for `llmship promote` as a user runs it, Python start-up included.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import prefect_server  # noqa: E402

TARGETS = {"cold": 150.0, "no-op": 2.5, "canary overhead": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def promote(spec: Path, out: Path, env: dict) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "promote", str(spec), "--json-out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"promotion failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, json.loads(out.read_text())


def canary_overhead(seconds: float, result: dict, store: Path, name: str) -> dict[str, float]:
    """The machine's own time (the canary stage less its analysis windows), and the whole run's
    wall time less what is not llmship's: vLLM start-up, warm-up, the load test, the windows."""
    stable = json.loads((store / "state" / f"{name}.json").read_text())
    record = json.loads((store / "state" / f"{name}.canary.json").read_text())
    by_stage = {s["stage"]: s["seconds"] for s in result["stages"]}
    steps = record["steps"]
    windows = sum(s["candidate"].get("seconds", 0.0) for s in steps)
    if any("sequential analysis" in (s.get("note") or "") for s in steps):
        windows += sum(s["stable"].get("seconds", 0.0) for s in steps)  # stable's half of each step, loaded alone
    startup = stable["startup_s"] or 0.0
    return {"vLLM start-up": startup, "warm_up": by_stage.get("warm_up", 0.0), "load_test": by_stage.get("load_test", 0.0),
            "analysis windows": windows, "deploy less start-up": by_stage["deploy"] - startup,
            "machine": by_stage["canary"] - windows,
            "wall less the above": seconds - startup - by_stage.get("warm_up", 0.0) - by_stage.get("load_test", 0.0) - windows}


def main() -> None:
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="llmship-bench-"))
    from tasks.example_model import write_example_model

    model = write_example_model(work / "tiny-llama")
    spec = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    spec["model"]["source"] = f"file://{model}"
    spec["storage"]["uri"] = str(work / "store")
    spec["target"]["port"] = free_port()
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    spec["engine"]["args"]["max_num_seqs"] = 8
    changed_path = work / "changed.yaml"
    changed_path.write_text(yaml.safe_dump(spec))
    # Cold means cold: vLLM's compile cache (~/.cache/vllm) starts empty too.
    env = {**os.environ, "LLMSHIP_CACHE": str(work / "cache"), "PREFECT_HOME": str(work / "prefect-client"),
           "PREFECT_LOGGING_LEVEL": "WARNING", "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
    with prefect_server(work / "prefect-server") as api_url:
        env["PREFECT_API_URL"] = api_url
        try:
            runs = {"cold": promote(spec_path, work / "cold.json", env),
                    "no-op": promote(spec_path, work / "noop.json", env),
                    "canary": promote(changed_path, work / "canary.json", env)}
            canary_s, canary_result = runs["canary"]
            parts = canary_overhead(canary_s, canary_result, work / "store", spec["name"])  # before stop clears the state
        finally:
            subprocess.run([sys.executable, "-m", "flows.cli", "stop", "--spec", str(spec_path)], cwd=ROOT, env=env,
                           capture_output=True)
    stages = [s["stage"] for s in runs["cold"][1]["stages"]]
    print(f"{'stage':<10} {'cold s':>8} {'state':<10} {'no-op s':>8} {'state':<10} {'canary s':>9} {'state':<10}")
    for i, stage in enumerate(stages):
        c, n, k = (runs[r][1]["stages"][i] for r in ("cold", "no-op", "canary"))
        print(f"{stage:<10} {c['seconds']:>8.2f} {c['state']:<10} {n['seconds']:>8.2f} {n['state']:<10}"
              f" {k['seconds']:>9.2f} {k['state']:<10}")
    print(f"load average before: {load_before}, after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for label in ("cold", "no-op"):
        seconds, result = runs[label]
        verdict = "meets" if seconds <= TARGETS[label] else "MISSES"
        print(f"{label:<6} total {seconds:6.1f} s  outcome {result['outcome']:<9}  target <= {TARGETS[label]:g} s: {verdict}"
              f" (ratio {seconds / TARGETS[label]:.2f} of target)")
    print(f"canary total {canary_s:6.1f} s  outcome {canary_result['outcome']}: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
    verdict = "meets" if parts["machine"] < TARGETS["canary overhead"] else "MISSES"
    print(f"canary machine overhead {parts['machine']:.2f} s over {len(spec['canary']['steps'])} step(s)"
          f"  target < 2 s: {verdict} (ratio {parts['machine'] / TARGETS['canary overhead']:.2f} of target)")


if __name__ == "__main__":
    main()
