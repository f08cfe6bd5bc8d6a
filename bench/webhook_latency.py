"""How fast the webhook receiver answers: the target is 202 within 100 ms.

Starts a real Prefect server (SQLite) and `llmship webhook serve` on loopback, then sends
signed MLflow deliveries that each request one promotion, side by side with two peers on the
same receiver: GET /healthz (a SQLite read, no verification) and replays of one delivery
(verification + dedup lookup, no outbox write). Prints p50/p95/p99/max and ratios to the peers.

    .venv/bin/python bench/webhook_latency.py [--n 300] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deployments.webhook import mlflow_signature  # noqa: E402
from tests.servers import free_port, prefect_server, stop, wait_http  # noqa: E402

SECRET = "bench-secret"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def signed(body: bytes, did: str) -> dict:
    ts = str(int(time.time()))
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": did, "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": mlflow_signature(SECRET, did, ts, body)}


async def timed(client: httpx.AsyncClient, sem: asyncio.Semaphore, method: str, url: str, expect: int, **kw) -> float:
    async with sem:
        t0 = time.perf_counter()
        r = await client.request(method, url, **kw)
        dt = time.perf_counter() - t0
    assert r.status_code == expect, (r.status_code, r.text)
    return dt * 1000


async def run(base: str, n: int, conc: int) -> dict[str, list[float]]:
    body_of = lambda v: json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "x",
                                    "data": {"name": "bench", "alias": "champion", "version": str(v)}}).encode()
    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(timeout=10) as c:
        for i in range(20):  # warm up connections and the spec index
            await c.get(base + "/healthz")
        replay_body, replay_id = body_of(0), str(uuid.uuid4())
        await c.post(base + "/webhooks/mlflow", content=replay_body, headers=signed(replay_body, replay_id))
        out: dict[str, list[float]] = {"accepted (202)": [], "replayed (200)": [], "healthz": []}
        for i in range(n):  # interleave the three kinds so they see the same load
            b = body_of(i + 1)
            out["accepted (202)"].append(await timed(c, sem, "POST", base + "/webhooks/mlflow", 202, content=b,
                                                     headers=signed(b, str(uuid.uuid4()))))
            out["replayed (200)"].append(await timed(c, sem, "POST", base + "/webhooks/mlflow", 200, content=replay_body,
                                                     headers=signed(replay_body, replay_id)))
            out["healthz"].append(await timed(c, sem, "GET", base + "/healthz", 200))
        if conc > 1:
            bodies = [(body_of(10_000 + i), str(uuid.uuid4())) for i in range(n)]
            out[f"accepted x{conc} concurrent"] = list(await asyncio.gather(*(
                timed(c, sem, "POST", base + "/webhooks/mlflow", 202, content=b, headers=signed(b, d)) for b, d in bodies)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmship-bench-webhook-"))
    specs = work / "specs"
    specs.mkdir()
    (specs / "bench.yaml").write_text("name: bench\nmodel:\n  source: models:/bench@champion\n")
    with prefect_server(work / "prefect") as api:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": api, "LLMSHIP_MLFLOW_WEBHOOK_SECRET": SECRET}
        log = (work / "receiver.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "webhook", "serve", "--port", str(port),
                                 "--specs", str(specs), "--db", str(work / "d.sqlite"), "--log-level", "warning"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(base + "/healthz", 60, proc)
            res = asyncio.run(run(base, args.n, args.concurrency))
            deadline = time.monotonic() + 60
            while httpx.get(base + "/healthz").json()["pending_events"] and time.monotonic() < deadline:
                time.sleep(0.2)
            drained = httpx.get(base + "/healthz").json()["pending_events"]
        finally:
            stop(proc)
    peer = statistics.median(res["healthz"])
    print(f"webhook receiver latency, {args.n} requests each, loopback, {os.cpu_count()} CPUs")
    print(f"{'kind':28} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50 / healthz':>14}")
    for k, xs in res.items():
        print(f"{k:28} {pct(xs, 50):8.2f} {pct(xs, 95):8.2f} {pct(xs, 99):8.2f} {max(xs):8.2f} {pct(xs, 50) / peer:14.2f}")
    worst = max(max(v) for k, v in res.items() if k.startswith("accepted"))
    print(f"target: every 202 within 100 ms -> worst {worst:.1f} ms: {'PASS' if worst < 100 else 'FAIL'}")
    print(f"events still pending after the run: {drained} (all deliveries' events were posted to Prefect)" if not drained
          else f"events still pending after 60 s: {drained}")


if __name__ == "__main__":
    main()
