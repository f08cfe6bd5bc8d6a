"""Diagnostic: split llmship's measured TTFT into uplink, server and downlink at 128 streams.

The fake server (in its own process, pinned to CPU 1) stamps its clock readings into each
stream; on one host perf_counter is the same CLOCK_MONOTONIC in every process, so
  uplink   = server parsed the request - client sent it   (client write, kernel, server read lag)
  server   = server wrote the first token - it parsed     (the injected TTFT plus timer lateness)
  downlink = client timestamped the first token - server wrote it  (kernel, client read lag)
python -m bench.support.ttft_split [streams] [requests]
"""

from __future__ import annotations

import json
import sys

import numpy as np

from bench.support.fake_openai import FakeConfig, fake_server_process
from tasks.loadtest import LoadProfile, engine
from tasks.loadtest.metrics import split_http


def split(streams: int = 128, n: int = 4000, cpu: int | None = 1) -> dict:
    captured = {}
    orig = engine._analyse

    async def keep(run):
        captured["run"] = run
        return await orig(run)

    engine._analyse = keep
    cfg = FakeConfig(ttft_s=0.05, itl_s=0.005, stamp=True)
    try:
        with fake_server_process(cfg, cpu=cpu) as url:
            engine.run_load_test(url, "fake-model", LoadProfile(concurrency=streams, num_requests=n, output_tokens=16))
    finally:
        engine._analyse = orig
    run = captured["run"]
    up, srv, down, ttft = [], [], [], []
    for req in run.done:
        _, _, body, body_time = split_http(req.pieces, req.times)
        i = body.find(b'"fake_server"')
        if i < 0:
            continue
        stamp = json.loads(body[body.rfind(b"data: ", 0, i) + 6 : body.find(b"\n\n", i)])["fake_server"]
        first = body.find(b"\n\n")
        t_first_client = body_time(first + 1)
        up.append(stamp["t_recv"] - req.t_start)
        srv.append(stamp["t_first"] - stamp["t_recv"])
        down.append(t_first_client - stamp["t_first"])
        ttft.append(t_first_client - req.t_start)
    out = {}
    for name, xs in (("ttft_measured", ttft), ("uplink", up), ("server", srv), ("downlink", down)):
        a = np.array(xs) * 1000
        out[name] = {"p50_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
                     "p99_ms": float(np.percentile(a, 99))}
        print(f"  {name:14s} p50 {out[name]['p50_ms']:8.3f} ms  p90 {out[name]['p90_ms']:8.3f}  "
              f"p99 {out[name]['p99_ms']:8.3f}", flush=True)
    return out


if __name__ == "__main__":
    split(*(int(x) for x in sys.argv[1:3]))
