"""A plain V2 client for the benchmark: httpx.AsyncClient, CONCURRENCY tasks posting back to back for DURATION s.

    python -m bench.support.httpx_v2 URL MODEL CONCURRENCY DURATION OUT.json
Writes {"completed", "failed", "duration", "request_throughput", "p50_ms", "p99_ms"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import numpy as np

BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()


async def main(url: str, model: str, conc: int, duration: float, out: str) -> None:
    lat: list[float] = []
    failed = 0
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30,
                                 headers={"content-type": "application/json"}) as c:
        t0 = time.perf_counter()
        stop = t0 + duration

        async def worker():
            nonlocal failed
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    r = await c.post(f"/v2/models/{model}/infer", content=BODY)
                    if r.status_code != 200:
                        failed += 1
                        continue
                except httpx.HTTPError:
                    failed += 1
                    continue
                lat.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(conc)))
        dur = time.perf_counter() - t0
    arr = np.asarray(lat or [0.0]) * 1000
    json.dump({"completed": len(lat), "failed": failed, "duration": dur, "request_throughput": len(lat) / dur,
               "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}, open(out, "w"))


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], int(a[2]), float(a[3]), a[4]))
