"""A fake OpenAI streaming server in raw asyncio: fast enough that it is never the bottleneck.

It speaks the same HTTP/1.1 + SSE protocol as vLLM's OpenAI server (`/v1/completions`,
`/v1/chat/completions`, chunked transfer encoding, `stream_options.include_usage`), so
every load generator drives it through its ordinary code path. It can inject a known time
to first token and a known per-token delay, and it records what it actually delivered, so
the benchmark can tell a generator's error from the server's.

Fault injection for tests: every Nth request can answer HTTP 500, cut the connection
mid-stream, or hang after the headers.

Run it alone (the benchmark pins it to its own core):
    python -m bench.support.fake_openai --port 0 --ttft-ms 50 --itl-ms 5 --precise
It prints `LISTENING http://127.0.0.1:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Iterator

_now = time.perf_counter


@dataclass
class FakeConfig:
    ttft_s: float = 0.0
    itl_s: float = 0.0
    # Busy-poll the timers instead of sleeping: sub-millisecond delivery, but it pegs a core.
    precise: bool = False
    # With no delay: write the whole stream at once instead of one chunk per loop turn.
    burst: bool = False
    model: str = "fake-model"
    fail_every: int = 0  # every Nth generation request answers HTTP 500
    drop_every: int = 0  # every Nth: the connection is closed after half the tokens
    stall_every: int = 0  # every Nth: headers, then nothing (a hung stream)
    record: bool = True  # keep delivered TTFT / ITL samples for /stats
    # Put the server's clock readings (request parsed, first token written) in the usage chunk, so a
    # diagnostic can split a client's TTFT into uplink, server and downlink (same host, same clock).
    stamp: bool = False


def _frame(event: bytes) -> bytes:
    """One SSE event as one HTTP chunk, as uvicorn sends each yielded piece."""
    return b"%x\r\n%s\r\n" % (len(event), event)


def _event(obj: dict | str) -> bytes:
    body = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {body}\n\n".encode()


_HEAD_SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
_DONE = _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _json_response(status: int, obj: dict, reason: str = "OK") -> bytes:
    body = json.dumps(obj).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )


class _Templates:
    """Pre-built chunks: per-request work on the server is one small JSON encode (usage)."""

    def __init__(self, model: str):
        base = {"id": "cmpl-fake", "created": 0, "model": model}
        self.tok = {}
        self.last = {}
        for kind in ("completions", "chat"):
            if kind == "completions":
                obj = dict(base, object="text_completion")
                choice = {"index": 0, "text": " tok", "logprobs": None, "finish_reason": None}
            else:
                obj = dict(base, object="chat.completion.chunk")
                choice = {"index": 0, "delta": {"content": " tok"}, "logprobs": None, "finish_reason": None}
            self.tok[kind] = _frame(_event(dict(obj, choices=[choice])))
            self.last[kind] = _frame(_event(dict(obj, choices=[dict(choice, finish_reason="length")])))
        self.usage_prefix = {
            "completions": '{"id":"cmpl-fake","object":"text_completion","created":0,"model":%s,"choices":[],'
            % json.dumps(model),
            "chat": '{"id":"cmpl-fake","object":"chat.completion.chunk","created":0,"model":%s,"choices":[],'
            % json.dumps(model),
        }

    def usage(self, kind: str, prompt: int, completion: int) -> bytes:
        body = self.usage_prefix[kind] + (
            '"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}'
            % (prompt, completion, prompt + completion)
        )
        return _frame(b"data: " + body.encode() + b"\n\n")


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0  # generation requests received
        self.completed = 0  # streams finished
        self.chunks = 0  # token chunks written
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.cpu0 = time.process_time()

    def summary(self) -> dict:
        def pct(xs: list[float], p: float) -> float | None:
            if not xs:
                return None
            s = sorted(xs)
            k = (len(s) - 1) * p / 100
            lo = int(k)
            hi = min(lo + 1, len(s) - 1)
            return (s[lo] + (s[hi] - s[lo]) * (k - lo)) * 1000

        span = (self.t_last - self.t_first) if self.t_first is not None and self.t_last is not None else 0.0
        return {
            "requests": self.requests,
            "completed": self.completed,
            "chunks": self.chunks,
            "span_s": span,
            # the server's own CPU over the span: near 1.0 means the server, not the client, was the limit
            "cpu_busy": (time.process_time() - self.cpu0) / span if span > 0 else 0.0,
            "req_per_s": self.completed / span if span > 0 else 0.0,
            "chunks_per_s": self.chunks / span if span > 0 else 0.0,
            "delivered_ttft_p50_ms": pct(self.ttft, 50),
            "delivered_ttft_p99_ms": pct(self.ttft, 99),
            "delivered_itl_p50_ms": pct(self.itl, 50),
            "delivered_itl_p99_ms": pct(self.itl, 99),
        }


class _Stream:
    __slots__ = ("conn", "kind", "n", "i", "t0", "t_prev", "prompt_tokens", "drop_at", "t_first")

    def __init__(self, conn, kind, n, t0, prompt_tokens, drop_at):
        self.conn = conn
        self.kind = kind
        self.n = n
        self.i = 0
        self.t0 = t0
        self.t_prev = t0
        self.prompt_tokens = prompt_tokens
        self.drop_at = drop_at
        self.t_first = 0.0


class _Server:
    def __init__(self, cfg: FakeConfig):
        self.cfg = cfg
        self.t = _Templates(cfg.model)
        self.stats = _Stats()
        self.loop = asyncio.get_running_loop()
        self.heap: list = []
        self.seq = 0
        self.spinning = False

    # ---- timers: plain loop timers, or a busy-polled heap for sub-ms precision ----
    def schedule(self, due: float, st: _Stream) -> None:
        if self.cfg.precise:
            self.seq += 1
            heapq.heappush(self.heap, (due, self.seq, st))
            if not self.spinning:
                self.spinning = True
                self.loop.call_soon(self._spin)
        else:
            delay = due - _now()
            if delay <= 0:
                self.loop.call_soon(self.emit, st)
            else:
                self.loop.call_later(delay, self.emit, st)

    def _spin(self) -> None:
        heap = self.heap
        now = _now()
        while heap and heap[0][0] <= now:
            self.emit(heapq.heappop(heap)[2])
        if heap:
            self.loop.call_soon(self._spin)  # next loop turn polls the sockets with timeout 0
        else:
            self.spinning = False

    def emit(self, st: _Stream) -> None:
        conn = st.conn
        tr = conn.transport
        if tr is None or tr.is_closing():
            conn.stream_done()
            return
        cfg = self.cfg
        stats = self.stats
        now = _now()
        if st.i == 0:
            st.t_first = now
        if cfg.record and (cfg.ttft_s or cfg.itl_s):
            if st.i == 0:
                stats.ttft.append(now - st.t0)
            else:
                stats.itl.append(now - st.t_prev)
        st.t_prev = now
        st.i += 1
        stats.chunks += 1
        if st.i == st.drop_at:
            tr.write(self.t.tok[st.kind])
            tr.close()
            conn.stream_done()
            return
        if st.i < st.n:
            tr.write(self.t.tok[st.kind])
            if cfg.ttft_s or cfg.itl_s:
                self.schedule(st.t0 + cfg.ttft_s + st.i * cfg.itl_s, st)
            else:
                self.loop.call_soon(self.emit, st)  # one chunk per loop turn, interleaving streams
            return
        usage = self.t.usage(st.kind, st.prompt_tokens, st.n)
        if cfg.stamp:
            usage = _frame(_event({"choices": [], "fake_server": {"t_recv": st.t0, "t_first": st.t_first}}))
            usage = self.t.usage(st.kind, st.prompt_tokens, st.n) + usage
        tr.write(self.t.last[st.kind] + usage + _DONE)
        stats.completed += 1
        stats.t_last = now
        conn.stream_done()


class _Conn(asyncio.Protocol):
    def __init__(self, server: _Server):
        self.server = server
        self.transport = None
        self.buf = b""
        self.busy = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        self.buf += data
        if not self.busy:
            self._process()

    def stream_done(self):
        self.busy = False
        if self.buf and self.transport is not None:
            self._process()

    def _process(self):
        while not self.busy and self.transport is not None:
            buf = self.buf
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = buf[:i].decode("latin-1")
            lines = head.split("\r\n")
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(buf) < i + 4 + length:
                return
            body = buf[i + 4 : i + 4 + length]
            self.buf = buf[i + 4 + length :]
            parts = lines[0].split(" ")
            self._handle(parts[0], parts[1] if len(parts) > 1 else "/", body)

    def _handle(self, method: str, path: str, body: bytes) -> None:
        srv = self.server
        cfg = srv.cfg
        tr = self.transport
        if method == "GET" and path.endswith("/models"):
            tr.write(_json_response(200, {"object": "list", "data": [{"id": cfg.model, "object": "model"}]}))
            return
        if method == "GET" and path in ("/health", "/ping"):
            tr.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            return
        if path == "/stats":
            if method == "POST":
                srv.stats.reset()
            tr.write(_json_response(200, srv.stats.summary()))
            return
        if method != "POST" or not (path.endswith("/completions")):
            tr.write(_json_response(404, {"error": {"message": f"no route {method} {path}"}}, "Not Found"))
            return
        t0 = _now()
        stats = srv.stats
        stats.requests += 1
        if stats.t_first is None:
            stats.t_first = t0
        nreq = stats.requests
        try:
            req = json.loads(body)
        except ValueError:
            tr.write(_json_response(400, {"error": {"message": "bad json"}}, "Bad Request"))
            return
        if cfg.fail_every and nreq % cfg.fail_every == 0:
            tr.write(_json_response(500, {"error": {"message": "injected failure"}}, "Internal Server Error"))
            return
        kind = "chat" if path.endswith("/chat/completions") else "completions"
        n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        if kind == "chat":
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", []))
        else:
            p = req.get("prompt", "")
            prompt_tokens = len(p) if isinstance(p, list) else len(p.split())
        tr.write(_HEAD_SSE)
        if cfg.stall_every and nreq % cfg.stall_every == 0:
            return  # headers only; the connection stays busy until the client gives up
        self.busy = True
        drop_at = max(1, n // 2) if cfg.drop_every and nreq % cfg.drop_every == 0 else -1
        st = _Stream(self, kind, n, t0, prompt_tokens, drop_at)
        if not (cfg.ttft_s or cfg.itl_s):
            if cfg.burst and drop_at < 0:
                t = srv.t
                tr.write(t.tok[kind] * (n - 1) + t.last[kind] + t.usage(kind, prompt_tokens, n) + _DONE)
                stats.chunks += n
                stats.completed += 1
                stats.t_last = _now()
                self.busy = False
                return
            srv.emit(st)
        else:
            srv.schedule(t0 + cfg.ttft_s, st)


class FakeOpenAIServer:
    """The fake server in the current event loop: `async with FakeOpenAIServer(cfg) as s: s.url`."""

    def __init__(self, cfg: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.cfg = cfg or FakeConfig()
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self._state: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stats(self) -> dict:
        return self._state.stats.summary() if self._state else {}

    async def start(self) -> "FakeOpenAIServer":
        self._state = _Server(self.cfg)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Conn(self._state), self.host, self.port, backlog=4096, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Close idle keep-alive connections too, or wait_closed() waits for them.
            with contextlib.suppress(AttributeError):
                self._server.close_clients()
            self._server = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()


@contextlib.contextmanager
def fake_server_process(cfg: FakeConfig | None = None, cpu: int | None = None) -> Iterator[str]:
    """Run the fake server in its own process (optionally pinned to one CPU); yields its URL."""
    cfg = cfg or FakeConfig()
    cmd = [sys.executable, "-m", "bench.support.fake_openai", "--port", "0", "--model", cfg.model]
    cmd += ["--ttft-ms", str(cfg.ttft_s * 1000), "--itl-ms", str(cfg.itl_s * 1000)]
    for flag, on in (("--precise", cfg.precise), ("--burst", cfg.burst), ("--stamp", cfg.stamp)):
        if on:
            cmd.append(flag)
    for name in ("fail_every", "drop_every", "stall_every"):
        if getattr(cfg, name):
            cmd += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=root, env=env)
    try:
        line = proc.stdout.readline()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield line.split()[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--itl-ms", type=float, default=0.0)
    ap.add_argument("--precise", action="store_true")
    ap.add_argument("--burst", action="store_true")
    ap.add_argument("--stamp", action="store_true")
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--drop-every", type=int, default=0)
    ap.add_argument("--stall-every", type=int, default=0)
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args(argv)
    cfg = FakeConfig(
        ttft_s=a.ttft_ms / 1000, itl_s=a.itl_ms / 1000, precise=a.precise, burst=a.burst, model=a.model, stamp=a.stamp,
        fail_every=a.fail_every, drop_every=a.drop_every, stall_every=a.stall_every,
    )

    async def serve():
        srv = await FakeOpenAIServer(cfg, a.host, a.port).start()
        print(f"LISTENING {srv.url} {json.dumps(asdict(cfg))}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await srv.stop()

    runner = asyncio.run
    if not a.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    runner(serve())


if __name__ == "__main__":
    _main()
