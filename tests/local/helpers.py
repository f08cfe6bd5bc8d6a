"""Real tiny streaming backends and a streaming client for the front door tests.

The backends are bench/support/fake_openai.py (raw-asyncio OpenAI streaming server), each in
its own process and session, so a test can kill one the way a crashed vLLM dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


class FakeBackend:
    """`python -m bench.support.fake_openai` on a free loopback port; `model` tells backends apart."""

    def __init__(self, model: str, ttft_ms: float = 0.0, itl_ms: float = 0.0):
        self.model = model
        cmd = [sys.executable, "-m", "bench.support.fake_openai", "--port", "0", "--model", model,
               "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            self.kill()
            raise RuntimeError(f"fake backend did not start: {line!r}")
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict:
        return httpx.get(self.url + "/stats", timeout=5).json()

    def requests(self) -> int:
        return self.stats()["requests"]

    def kill(self) -> None:
        """SIGKILL, as a crashed server dies."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Answer:
    status: int
    slot: str | None
    model: str | None
    tokens: int
    done: bool
    t_first: float | None  # seconds from sending to the first token chunk
    t_end: float
    times: list = field(default_factory=list)  # arrival of every token chunk, seconds from sending

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.tokens > 0


def stream(client: httpx.Client, url: str, max_tokens: int = 4) -> Answer:
    """One streaming completion; reads the SSE stream to its [DONE]."""
    t0 = time.perf_counter()
    body = {"model": "any", "prompt": "hello there", "max_tokens": max_tokens, "stream": True}
    tokens, done, model, t_first, times = 0, False, None, None, []
    with client.stream("POST", url + "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            obj = json.loads(data)
            model = obj.get("model", model)
            if obj.get("choices"):
                tokens += 1
                times.append(time.perf_counter() - t0)
                if t_first is None:
                    t_first = times[0]
        return Answer(r.status_code, r.headers.get("x-llmship-slot"), model, tokens, done, t_first,
                      time.perf_counter() - t0, times)


@dataclass
class LoadClient:
    """Threads sending streaming requests without pause; every outcome is kept."""

    url: str
    threads: int = 2
    max_tokens: int = 4
    answers: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]

    def _run(self, i: int) -> None:
        # thread 0 keeps its connection alive, the others open one per request
        keep = i == 0
        client = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=1 if keep else 0))
        try:
            while not self._stop.is_set():
                try:
                    a = stream(client, self.url, self.max_tokens)
                except httpx.HTTPError as err:
                    with self._lock:
                        self.failures.append(f"{type(err).__name__}: {err}")
                    continue
                with self._lock:
                    self.answers.append(a)
                    if not a.ok:
                        self.failures.append(f"HTTP {a.status}, {a.tokens} tokens, done={a.done}")
        finally:
            client.close()

    def __enter__(self) -> "LoadClient":
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(20)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_for(self, n: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        start = self.count()
        while self.count() < start + n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the load client got only {self.count() - start} of {n} answers")
            time.sleep(0.01)
