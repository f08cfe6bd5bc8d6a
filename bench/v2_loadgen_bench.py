"""V2 (Open Inference Protocol) load-generator benchmark: llmship against vegeta, locust and a plain httpx loop.

    .venv/bin/python bench/v2_loadgen_bench.py                   # concurrency 1, 16, 64; 8 s a run; ~3 minutes
    .venv/bin/python bench/v2_loadgen_bench.py --quick           # 64 only, 4 s a run
    .venv/bin/python bench/v2_loadgen_bench.py --tools llmship,vegeta --concurrency 64,256

Every tool drives the same zero-delay V2 responder (bench/support/fake_v2.py, raw asyncio + uvloop,
one prebuilt answer: `--fast`) pinned to CPU 1, and runs pinned to CPU 0 (os.sched_setaffinity; vegeta
with GOMAXPROCS=1), one after the other in one run. The responder counts the inferences it answered and
its own CPU time over each tool's load window, so every tool is measured the same way, from the server's
side, whatever it reports itself; a server CPU share well below 100% says the generator, not the server,
was the limit. On a host other jobs load, a pinned generator does not get its whole core, so each tool's
CPU time (user + system of its process, start-up included, from getrusage) is taken too: inferences per
CPU second of the generator is the rate one core would drive for it alone, the ceiling this benchmark reports
(for llmship, the CPU of its load phase, from its report: it parses responses after the run; vegeta's attack
only sends too, its report being a separate command; locust and httpx keep their figures during the run).

Tools (each speaks V2 the same way: POST /v2/models/{name}/infer, one JSON body, keep-alive):
- llmship: tasks.loadtest (endpoint v2), concurrency mode, as the load-test stage runs it;
- vegeta (Go, from the module proxy: `go install github.com/tsenart/vegeta/v12@v12.13.0` into
  bench/results/bin), `-rate=0 -max-workers=N`: as fast as N workers go;
- locust 2.47 (FastHttpUser, no wait), in .venv-peers-locust (created here when missing);
- httpx: httpx.AsyncClient with N tasks posting back to back (bench/support/httpx_v2.py).
Results: printed, and written to bench/results/v2_loadgen_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support.fake_v2 import FakeV2Config, fake_v2_process  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GEN_CPU, SERVER_CPU = 0, 1
MODEL = "fake-v2"
BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}]}
LOCUST_VENV = ROOT / ".venv-peers-locust"
LOCUST_REQ = "locust==2.47.0"
VEGETA_MOD = "github.com/tsenart/vegeta/v12@v12.13.0"


# ------------------------------------------------------------------ set-up
def ensure_locust() -> Path | None:
    exe = LOCUST_VENV / "bin" / "locust"
    if not exe.exists():
        print(f"[setup] creating {LOCUST_VENV.name} with {LOCUST_REQ} (one-off, a minute or two)", flush=True)
        base = Path(sys.base_prefix) / "bin" / "python3"
        subprocess.run([str(base), "-m", "venv", str(LOCUST_VENV)], check=True)
        subprocess.run([str(LOCUST_VENV / "bin" / "pip"), "install", "-q", LOCUST_REQ], check=True)
    return exe if exe.exists() else None


def ensure_vegeta() -> Path | None:
    exe = RESULTS / "bin" / "vegeta"
    if exe.exists():
        return exe
    go = shutil.which("go")
    if go is None:
        print("[setup] no Go toolchain: vegeta skipped", flush=True)
        return None
    print(f"[setup] go install {VEGETA_MOD} (one-off, a minute or two)", flush=True)
    env = dict(os.environ, GOBIN=str(RESULTS / "bin"), GOFLAGS="-mod=mod")
    subprocess.run([go, "install", VEGETA_MOD], check=True, env=env, cwd="/tmp")
    return exe if exe.exists() else None


def _pin(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def server_stats(url: str, reset: bool = False) -> dict:
    with urllib.request.urlopen(url + ("/reset" if reset else "/stats"), timeout=10) as r:
        return json.loads(r.read() or b"{}")


_CPU = {"s": 0.0}  # CPU seconds of the last load-generating child (user + system)


def run(cmd: list[str], log: Path, timeout: float, extra_env: dict | None = None) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                              env={**env(), **(extra_env or {})}, preexec_fn=_pin(GEN_CPU))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _CPU["s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {log.read_text()[-1500:]}")


# ------------------------------------------------------------------ tools
def tool_llmship(url: str, conc: int, dur: float, work: Path) -> dict:
    out = work / f"llmship-{conc}.json"
    prof = {"endpoint": "v2", "concurrency": conc, "duration_s": dur, "request_timeout_s": 30}
    run([sys.executable, "-m", "bench.support.llmship_run", url, MODEL, str(out), json.dumps(prof)],
        work / f"llmship-{conc}.log", dur + 120)
    r = json.loads(out.read_text())
    return {"self_rps": r["request_throughput"], "self_p50_ms": r["p50_e2el_ms"], "self_p99_ms": r["p99_e2el_ms"],
            "failed": r["failed"], "generator_cpu_s": r.get("generator_cpu_s")}


def tool_vegeta(url: str, conc: int, dur: float, work: Path, exe: Path) -> dict:
    body = work / "body.json"
    body.write_text(json.dumps(BODY))
    targets = work / "targets.txt"
    targets.write_text(f"POST {url}/v2/models/{MODEL}/infer\nContent-Type: application/json\n@{body}\n")
    res = work / f"vegeta-{conc}.bin"
    run([str(exe), "attack", f"-targets={targets}", "-rate=0", f"-workers={conc}", f"-max-workers={conc}",
         f"-duration={dur}s", "-keepalive=true", "-timeout=30s", f"-output={res}"], work / f"vegeta-{conc}.log",
        dur + 60, {"GOMAXPROCS": "1"})
    rep = subprocess.run([str(exe), "report", "-type=json", str(res)], capture_output=True, text=True, check=True)
    r = json.loads(rep.stdout)
    lat = r.get("latencies", {})
    ok = int(r["requests"] * r.get("success", 1.0))
    return {"self_rps": r.get("throughput", 0.0), "self_p50_ms": lat.get("50th", 0) / 1e6,
            "self_p99_ms": lat.get("99th", 0) / 1e6, "failed": r["requests"] - ok}


def tool_locust(url: str, conc: int, dur: float, work: Path, exe: Path) -> dict:
    csv = work / f"locust-{conc}"
    run([str(exe), "-f", str(ROOT / "bench" / "support" / "locust_v2.py"), "--headless", "-u", str(conc), "-r",
         str(conc), "-t", f"{int(dur)}s", "--host", url, "--only-summary", "--csv", str(csv), "--loglevel", "WARNING"],
        work / f"locust-{conc}.log", dur + 90, {"LLMSHIP_V2_MODEL": MODEL, "LLMSHIP_V2_BODY": json.dumps(BODY)})
    import csv as _csv

    rows = list(_csv.DictReader((work / f"locust-{conc}_stats.csv").open()))
    agg = next(r for r in rows if r["Name"] == "Aggregated")
    return {"self_rps": float(agg["Requests/s"]), "self_p50_ms": float(agg["50%"] or 0),
            "self_p99_ms": float(agg["99%"] or 0), "failed": int(agg["Failure Count"])}


def tool_httpx(url: str, conc: int, dur: float, work: Path) -> dict:
    out = work / f"httpx-{conc}.json"
    run([sys.executable, "-m", "bench.support.httpx_v2", url, MODEL, str(conc), str(dur), str(out)],
        work / f"httpx-{conc}.log", dur + 60)
    r = json.loads(out.read_text())
    return {"self_rps": r["request_throughput"], "self_p50_ms": r["p50_ms"], "self_p99_ms": r["p99_ms"],
            "failed": r["failed"]}


# ------------------------------------------------------------------ main
def measure(name: str, fn, url: str, conc: int, dur: float, work: Path) -> dict:
    server_stats(url, reset=True)
    t0 = time.perf_counter()
    got = fn(url, conc, dur, work)
    wall = time.perf_counter() - t0
    st = server_stats(url)
    cpu = _CPU["s"]  # the whole tool process: start-up and its own report included
    window = st["last"] - st["first"] if st["inferences"] > 1 else 0.0
    got.update({
        "tool": name, "concurrency": conc, "server_inferences": st["inferences"], "wall_s": wall,
        "server_rps": (st["inferences"] - 1) / window if window > 0 else 0.0,
        # the responder's own CPU over the tool's whole run (set-up included): an upper bound of its load share
        "server_cpu_share": st["cpu_s"] / window if window > 0 else 0.0,
        "generator_cpu_total_s": cpu,
        # what one core would drive if the tool had it to itself: inferences per CPU second of the tool
        "req_per_cpu_s": st["inferences"] / cpu if cpu > 0 else 0.0,
        "generator_cpu_share": cpu / wall if wall > 0 else 0.0,
    })
    # llmship parses responses and builds its report after the load phase; its report's generator_cpu_s is the
    # load phase alone (vegeta's attack likewise only sends, its report is a separate command)
    got["req_per_load_cpu_s"] = (st["inferences"] / got["generator_cpu_s"] if got.get("generator_cpu_s")
                                 else got["req_per_cpu_s"])
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default="llmship,vegeta,locust,httpx")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--quick", action="store_true", help="concurrency 64 only, 4 s a run")
    a = ap.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: the generator on CPU 0, the responder on CPU 1")
    concs = [64] if a.quick else [int(x) for x in a.concurrency.split(",")]
    dur = 4.0 if a.quick else a.duration
    tools = a.tools.split(",")
    runners = {"llmship": tool_llmship, "httpx": tool_httpx}
    if "vegeta" in tools and (exe := ensure_vegeta()):
        runners["vegeta"] = lambda u, c, d, w, e=exe: tool_vegeta(u, c, d, w, e)
    if "locust" in tools and (exe := ensure_locust()):
        runners["locust"] = lambda u, c, d, w, e=exe: tool_locust(u, c, d, w, e)
    work = RESULTS / "v2_loadgen"
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores; other jobs show in the numbers)", flush=True)
    rows = []
    with fake_v2_process(FakeV2Config(model=MODEL, fast=True), cpu=SERVER_CPU) as url:
        for conc in concs:
            for name in tools:
                if name not in runners:
                    continue
                r = measure(name, runners[name], url, conc, dur, work)
                rows.append(r)
                print(f"  {name:8s} c={conc:<4d} server-side {r['server_rps']:9.0f} req/s (self {r['self_rps']:9.0f}), "
                      f"p50 {r['self_p50_ms']:7.3f} ms, p99 {r['self_p99_ms']:7.3f} ms, failed {r['failed']}; "
                      f"{r['req_per_cpu_s']:8.0f} req per generator CPU-s ({r['generator_cpu_total_s']:.2f} CPU-s, "
                      f"{r['generator_cpu_share']:.0%} of its wall time); responder CPU {r['server_cpu_share']:.0%}",
                      flush=True)
    for key, what in (("server_rps", "server-side req/s as driven in this run"),
                      ("req_per_cpu_s", "req per CPU-second of the whole tool process"),
                      ("req_per_load_cpu_s", "req per CPU-second of the load phase: the one-core ceiling")):
        print(f"\nratios (llmship / peer, {what}):")
        for conc in concs:
            ours = next((r for r in rows if r["tool"] == "llmship" and r["concurrency"] == conc), None)
            if not ours:
                continue
            parts = [f"{r['tool']} {ours[key] / r[key]:.1f}x" for r in rows
                     if r["concurrency"] == conc and r["tool"] != "llmship" and r[key] > 0]
            print(f"  c={conc}: " + ", ".join(parts))
    top = max(concs)
    best = {r["tool"]: r for r in rows if r["concurrency"] == top}
    print(f"\nat c={top}, where the generator and not the responder is the limit (responder CPU well below 100%): "
          + "; ".join(f"{t} {r['server_rps']:.0f} req/s driven, {r['req_per_load_cpu_s']:.0f} req per load-phase CPU-s "
                      f"(responder {r['server_cpu_share']:.0%})" for t, r in best.items()))
    out = RESULTS / "v2_loadgen_bench.json"
    out.write_text(json.dumps({"load_avg_start": os.getloadavg(), "duration_s": dur, "rows": rows}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
