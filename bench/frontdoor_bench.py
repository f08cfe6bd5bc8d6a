"""Front door added latency: TTFT and ITL through HAProxy against the same server direct.

    .venv/bin/python bench/frontdoor_bench.py                  # 64 streams, 50 ms TTFT, 5 ms ITL, 8 rounds
    .venv/bin/python bench/frontdoor_bench.py --threads 0,1     # llmship's default against one thread
    .venv/bin/python bench/frontdoor_bench.py --no-delay off     # what HAProxy does to SSE without it

One fake OpenAI streaming server (bench/support/fake_openai.py, raw asyncio) injects a known
time to first token and a known gap between tokens and records what it delivered. llmship's
front door (tasks/local/frontdoor.py: a real HAProxy started the way a promotion starts it)
holds that server in slot a. llmship's own load-test engine (tasks.loadtest) drives it
directly and through the front door in alternating rounds (each path goes first in turn),
so every path sees the same machine within a minute of the others. Per round: p50/p99 TTFT
and p50/p99 ITL for each path, the server's own delivered p50 TTFT for the round (how much
the server itself drifted), and the difference. The verdict
is the median over rounds of the per-round difference in p50 TTFT (target: within 1 ms).

The generator is pinned to CPU 0 and the fake server to CPU 1 when the machine has two; HAProxy
runs where the scheduler puts it (`--haproxy-cpu N` pins it). The machine's load average is
printed at the start and the end: on a shared machine the figures carry that noise.
Results: printed, and written to bench/results/frontdoor_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support.fake_openai import FakeConfig, fake_server_process  # noqa: E402
from tasks.loadtest import LoadProfile, run_load_test  # noqa: E402
from tasks.local import frontdoor as F  # noqa: E402
from tasks.local.server import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GEN_CPU, SERVER_CPU = 0, 1


def server_stats(url: str, reset: bool = False) -> dict:
    req = urllib.request.Request(url + "/stats", method="POST" if reset else "GET")
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def one_round(url: str, server_url: str, a, seed: int) -> dict:
    server_stats(server_url, reset=True)
    rep = run_load_test(url, "fake-model", LoadProfile(
        concurrency=a.concurrency, num_requests=a.requests, input_tokens=32, output_tokens=a.output_tokens,
        seed=seed, request_timeout_s=60))
    st = server_stats(server_url)
    return {"ttft_p50_ms": rep.median_ttft_ms, "ttft_p99_ms": rep.p99_ttft_ms, "itl_p50_ms": rep.median_itl_ms,
            "itl_p99_ms": rep.p99_itl_ms, "req_s": rep.request_throughput, "completed": rep.completed,
            "failed": rep.failed, "server_ttft_p50_ms": st["delivered_ttft_p50_ms"],
            "server_itl_p50_ms": st["delivered_itl_p50_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2000, help="per round and path")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=5.0)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--threads", default="0",
                    help="HAProxy nbthread per front door, comma-separated: one front door each, all in the same "
                         "rounds (0: HAProxy's default, one per CPU, as llmship runs it); e.g. 0,1")
    ap.add_argument("--haproxy-cpu", type=int, default=None, help="pin every HAProxy to this CPU")
    ap.add_argument("--no-delay", choices=("on", "off"), default="on", help="option http-no-delay")
    ap.add_argument("--nice", type=int, default=None,
                    help="renice every HAProxy thread (negative needs root): does priority buy latency under load?")
    ap.add_argument("--out", default=str(RESULTS / "frontdoor_bench.json"))
    a = ap.parse_args()

    ncpu = os.cpu_count() or 1
    pin = ncpu >= 2 and hasattr(os, "sched_setaffinity")
    load0 = os.getloadavg()
    print(f"front door bench: {a.concurrency} streams, {a.requests} requests per round and path, {a.rounds} rounds; "
          f"server injects TTFT {a.ttft_ms} ms, ITL {a.itl_ms} ms, {a.output_tokens} tokens; "
          f"{ncpu} CPUs, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    store = tempfile.mkdtemp(prefix="llmship-fd-bench-")
    variants = [int(t) for t in a.threads.split(",") if t.strip()]
    doors = {}
    out: dict = {"args": vars(a), "host": {"cpus": ncpu, "load_avg": load0}, "started": time.strftime("%F %T"),
                 "haproxy": {}, "rounds": []}
    try:
        with fake_server_process(FakeConfig(ttft_s=a.ttft_ms / 1000, itl_s=a.itl_ms / 1000),
                                 cpu=SERVER_CPU if pin else None) as server_url:
            port = int(server_url.rsplit(":", 1)[1])
            paths = {"direct": server_url}
            for t in variants:
                name = "frontdoor" if len(variants) == 1 else f"frontdoor-threads-{t or 'default'}"
                settings = F.FrontDoorSettings(threads=t or None, no_delay=a.no_delay == "on")
                fd = F.ensure_frontdoor(store, f"bench{t}", "127.0.0.1", free_port(), settings=settings)
                doors[name] = fd
                F.put_server(fd, "127.0.0.1", port, weight=100)
                if a.haproxy_cpu is not None and shutil.which("taskset"):
                    subprocess.run(["taskset", "-apc", str(a.haproxy_cpu), str(fd.pid)], check=True,
                                   capture_output=True)
                if a.nice is not None:
                    for tid in os.listdir(f"/proc/{fd.pid}/task"):
                        os.setpriority(os.PRIO_PROCESS, int(tid), a.nice)
                paths[name] = fd.url
                out["haproxy"][name] = {"version": fd.version, "threads": settings.threads,
                                        "no_delay": settings.no_delay, "cpu": a.haproxy_cpu, "nice": a.nice}
                print(f"{name}: HAProxy {fd.version} pid {fd.pid} at {fd.url} (threads {t or 'default'}, "
                      f"http-no-delay {a.no_delay}) -> server {server_url}", flush=True)
            if pin:
                os.sched_setaffinity(0, {GEN_CPU})
            for url in paths.values():  # warm every path (connections, caches)
                run_load_test(url, "fake-model", LoadProfile(concurrency=a.concurrency, num_requests=200,
                                                             output_tokens=a.output_tokens))
            names = list(paths)
            for rnd in range(a.rounds):
                k = rnd % len(names)
                order = names[k:] + names[:k]  # each path goes first in turn
                r: dict = {"order": order}
                for name in order:
                    r[name] = one_round(paths[name], server_url, a, seed=rnd)
                d = r["direct"]
                parts = []
                for name in names[1:]:
                    f = r[name]
                    for key in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "server_ttft_p50_ms"):
                        r.setdefault("diff", {}).setdefault(name, {})[key] = f[key] - d[key]
                    parts.append(f"{name} {f['ttft_p50_ms']:.2f} ({f['ttft_p50_ms'] - d['ttft_p50_ms']:+.2f}), p99 "
                                 f"{f['ttft_p99_ms']:.2f}, ITL {f['itl_p50_ms']:.2f}, failed {f['failed']}")
                out["rounds"].append(r)
                print(f"  round {rnd} ({order[0]} first): p50 TTFT direct {d['ttft_p50_ms']:.2f}, p99 "
                      f"{d['ttft_p99_ms']:.2f}, ITL {d['itl_p50_ms']:.2f} | " + " | ".join(parts)
                      + f" | server delivered p50 TTFT {d['server_ttft_p50_ms']:.2f}", flush=True)
            for name, fd in doors.items():
                out["haproxy"][name]["slot_a"] = F.read_figures(fd).slots["a"].model_dump(mode="json")
    finally:
        if pin:
            os.sched_setaffinity(0, set(range(ncpu)))
        for fd in doors.values():
            F.stop_frontdoor(store, fd.name)
        shutil.rmtree(store, ignore_errors=True)
    rounds = out["rounds"]
    names = list(paths)

    def med(path: str, key: str) -> float:
        return statistics.median(r[path][key] for r in rounds)

    summary: dict = {"direct": {k: med("direct", k) for k in
                                ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "req_s", "failed")}}
    print("\n== median over rounds")
    print(f"  {'path':28s} {'p50 TTFT':>9s} {'p99 TTFT':>9s} {'p50 ITL':>8s} {'p99 ITL':>8s} {'req/s':>7s}   "
          "added p50 TTFT (median of per-round differences), ratio")
    for name in names:
        s = {k: med(name, k) for k in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "req_s")}
        s["failed"] = sum(r[name]["failed"] for r in rounds)
        line = (f"  {name:28s} {s['ttft_p50_ms']:9.2f} {s['ttft_p99_ms']:9.2f} {s['itl_p50_ms']:8.2f} "
                f"{s['itl_p99_ms']:8.2f} {s['req_s']:7.0f}")
        if name != "direct":
            for key in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "server_ttft_p50_ms"):
                s["diff_" + key] = statistics.median(r["diff"][name][key] for r in rounds)
            s["ratio_ttft_p50"] = s["ttft_p50_ms"] / summary["direct"]["ttft_p50_ms"]
            s["target_met"] = abs(s["diff_ttft_p50_ms"]) <= 1.0
            line += (f"   {s['diff_ttft_p50_ms']:+.2f} ms, x{s['ratio_ttft_p50']:.4f} "
                     f"(p99 {s['diff_ttft_p99_ms']:+.2f}, ITL {s['diff_itl_p50_ms']:+.2f}; "
                     f"server moved {s['diff_server_ttft_p50_ms']:+.2f}); "
                     f"target <= 1 ms: {'met' if s['target_met'] else 'NOT met'}; failed {s['failed']}")
        summary[name] = s
        print(line)
    out["summary"] = summary
    out["host"]["load_avg_end"] = os.getloadavg()
    load1 = out["host"]["load_avg_end"]
    print(f"  load average {load0[0]:.2f} -> {load1[0]:.2f} on {ncpu} CPUs (a shared machine: other jobs' load is in "
          "these figures)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
