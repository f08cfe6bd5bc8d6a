"""Stage timings of a cold promotion and of a no-op re-run, beside a running Prefect server.

    .venv/bin/python bench/promotion_bench.py

Cold: empty cache and store, so every stage runs, vLLM start-up included (target <= 150 s
on 2 cores). No-op re-run: the same spec again; download and publish come back Cached and
the model already serves, so nothing is rolled out (target <= 10 s). Times are wall-clock
for the `llmship promote` command as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import prefect_server  # noqa: E402

TARGETS = {"cold": 150.0, "no-op": 10.0}


def promote(spec: Path, out: Path, env: dict) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "promote", str(spec), "--json-out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"promotion failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, json.loads(out.read_text())


def main() -> None:
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="llmship-bench-"))
    from tasks.example_model import write_example_model

    model = write_example_model(work / "tiny-llama")
    spec = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    spec["model"]["source"] = f"file://{model}"
    spec["storage"]["uri"] = str(work / "store")
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    # Cold means cold: vLLM's compile cache (~/.cache/vllm) starts empty too.
    env = {**os.environ, "LLMSHIP_CACHE": str(work / "cache"), "PREFECT_HOME": str(work / "prefect-client"),
           "PREFECT_LOGGING_LEVEL": "WARNING", "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
    with prefect_server(work / "prefect-server") as api_url:
        env["PREFECT_API_URL"] = api_url
        try:
            runs = {"cold": promote(spec_path, work / "cold.json", env),
                    "no-op": promote(spec_path, work / "noop.json", env)}
        finally:
            subprocess.run([sys.executable, "-m", "flows.cli", "stop", "--spec", str(spec_path)], cwd=ROOT, env=env,
                           capture_output=True)
    stages = [s["stage"] for s in runs["cold"][1]["stages"]]
    print(f"{'stage':<10} {'cold s':>8} {'state':<10} {'no-op s':>8} {'state':<10}")
    for i, stage in enumerate(stages):
        c, n = runs["cold"][1]["stages"][i], runs["no-op"][1]["stages"][i]
        print(f"{stage:<10} {c['seconds']:>8.2f} {c['state']:<10} {n['seconds']:>8.2f} {n['state']:<10}")
    print(f"load average before: {load_before}")
    for label, (seconds, result) in runs.items():
        verdict = "meets" if seconds <= TARGETS[label] else "MISSES"
        print(f"{label:<6} total {seconds:6.1f} s  outcome {result['outcome']:<9}  target <= {TARGETS[label]:.0f} s: {verdict}"
              f" (ratio {seconds / TARGETS[label]:.2f} of target)")


if __name__ == "__main__":
    main()
