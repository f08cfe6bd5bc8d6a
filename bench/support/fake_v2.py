"""A minimal Open Inference Protocol (V2) responder in raw asyncio: fast enough that it is never the bottleneck.

It answers what a V2 load generator and the quality gate send to MLServer:
`GET /v2/health/live|ready`, `GET /v2/models/{name}` (metadata with one FP64 input of
`--features` columns), `GET /v2/models/{name}/ready`, and `POST /v2/models/{name}/infer`
with one output `predict` (INT64, one value a row: 1 when the row's first value is > 0,
else 0; or the row's first value as an int with --echo). It counts what it answered (`/stats`),
so a benchmark measures every generator from the server's side. Delay and faults for tests:
`delay_s` per inference, every Nth inference HTTP 500, or 200 without outputs; `fast` (the
benchmark) answers without reading the request body.

Run it alone (the benchmark pins it to its own core):
    python -m bench.support.fake_v2 --port 0 [--delay-ms 5]
It prints `LISTENING http://127.0.0.1:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterator

_now = time.perf_counter


@dataclass
class FakeV2Config:
    model: str = "fake-v2"
    features: int = 4
    delay_s: float = 0.0
    fail_every: int = 0  # every Nth inference answers HTTP 500
    empty_every: int = 0  # every Nth inference answers 200 with no outputs
    echo: bool = False  # predict = int(first value of the row) (the quality gate's tests set labels so)
    fast: bool = False  # benchmark: answer the prebuilt one-row response without reading the request body


def _response(status: int, body: bytes, reason: str = "OK") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            .encode() + body)


class _State:
    def __init__(self, cfg: FakeV2Config):
        self.cfg = cfg
        self.inferences = 0
        self.first = 0.0
        self.last = 0.0
        inp = [{"name": "input-0", "datatype": "FP64", "shape": [-1, cfg.features]}]
        self.meta = _response(200, json.dumps({"name": cfg.model, "versions": [], "platform": "fake",
                                               "inputs": inp, "outputs": []}).encode())
        self.ok = _response(200, b"{}")
        self.not_found = _response(404, b'{"error":"Model not found"}', "Not Found")
        self.fail = _response(500, b'{"error":"injected failure"}', "Internal Server Error")
        self.empty = _response(200, json.dumps({"model_name": cfg.model, "outputs": []}).encode())
        # rows=1 answers are the hot path: prebuilt
        self.one = {v: _response(200, json.dumps({"model_name": cfg.model, "outputs": [
            {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [v]}]}).encode()) for v in (0, 1)}
        self.prefix = f"/v2/models/{cfg.model}".encode()
        self.cpu0 = 0.0  # process CPU time at the last /reset: /stats reports the server's CPU use since

    def infer(self, body: bytes) -> bytes:
        cfg = self.cfg
        self.inferences += 1
        n = self.inferences
        now = _now()
        if n == 1:
            self.first = now
        self.last = now
        if cfg.fail_every and n % cfg.fail_every == 0:
            return self.fail
        if cfg.empty_every and n % cfg.empty_every == 0:
            return self.empty
        if cfg.fast:
            return self.one[1]
        try:
            req = json.loads(body)
            t = req["inputs"][0]
            rows = int(t["shape"][0])
            width = len(t["data"]) // max(1, rows)
            firsts = t["data"][::width] if width else []
        except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError):
            return _response(400, b'{"error":"bad request"}', "Bad Request")
        preds = [int(x) for x in firsts] if cfg.echo else [1 if x > 0 else 0 for x in firsts]
        if rows == 1 and not cfg.echo:
            return self.one[preds[0]]
        out = {"model_name": cfg.model, "outputs": [{"name": "predict", "shape": [rows, 1], "datatype": "INT64",
                                                     "data": preds}]}
        return _response(200, json.dumps(out).encode())

    def stats(self) -> bytes:
        return _response(200, json.dumps({"inferences": self.inferences, "first": self.first, "last": self.last,
                                          "cpu_s": time.process_time() - self.cpu0}).encode())


class _Conn(asyncio.Protocol):
    def __init__(self, st: _State):
        self.st = st
        self.buf = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"content-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            line = head.split(b"\r\n", 1)[0].split(b" ")
            self._handle(line[0], line[1] if len(line) > 1 else b"/", body)

    def _handle(self, method: bytes, path: bytes, body: bytes) -> None:
        st = self.st
        if method == b"POST" and path == st.prefix + b"/infer":
            out = st.infer(body)
            if st.cfg.delay_s > 0:
                asyncio.get_running_loop().call_later(st.cfg.delay_s, self._write, out)
                return
        elif method == b"POST" and path.startswith(b"/v2/models/"):
            out = st.not_found
        elif path in (b"/v2/health/live", b"/v2/health/ready", st.prefix + b"/ready"):
            out = st.ok
        elif path == st.prefix:
            out = st.meta
        elif path == b"/stats":
            out = st.stats()
        elif path == b"/reset":
            st.inferences = 0
            st.cpu0 = time.process_time()
            out = st.ok
        else:
            out = st.not_found
        self._write(out)

    def _write(self, out: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def connection_lost(self, exc):
        self.transport = None


class FakeV2Server:
    """The responder in the current event loop: `async with FakeV2Server(cfg) as s: s.url`."""

    def __init__(self, cfg: FakeV2Config | None = None, host: str = "127.0.0.1", port: int = 0):
        self.cfg = cfg or FakeV2Config()
        self.host, self.port = host, port
        self._server = None
        self.state: _State | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "FakeV2Server":
        self.state = _State(self.cfg)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Conn(self.state), self.host, self.port, backlog=4096, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(AttributeError):
                self._server.close_clients()
            self._server = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()


@contextlib.contextmanager
def fake_v2_process(cfg: FakeV2Config | None = None, cpu: int | None = None) -> Iterator[str]:
    """Run the responder in its own process (optionally pinned to one CPU); yields its URL."""
    cfg = cfg or FakeV2Config()
    cmd = [sys.executable, "-m", "bench.support.fake_v2", "--port", "0", "--model", cfg.model,
           "--features", str(cfg.features), "--delay-ms", str(cfg.delay_s * 1000),
           "--fail-every", str(cfg.fail_every), "--empty-every", str(cfg.empty_every)]
    for flag, on in (("--echo", cfg.echo), ("--fast", cfg.fast)):
        if on:
            cmd.append(flag)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=root, env=env,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)
    try:
        line = proc.stdout.readline()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"fake V2 server did not start: {line!r}")
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
    ap.add_argument("--model", default="fake-v2")
    ap.add_argument("--features", type=int, default=4)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--empty-every", type=int, default=0)
    ap.add_argument("--echo", action="store_true")
    ap.add_argument("--fast", action="store_true")
    a = ap.parse_args(argv)
    cfg = FakeV2Config(model=a.model, features=a.features, delay_s=a.delay_ms / 1000, fail_every=a.fail_every,
                       empty_every=a.empty_every, echo=a.echo, fast=a.fast)
    async def run():
        srv = await FakeV2Server(cfg, a.host, a.port).start()
        print(f"LISTENING {srv.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await srv.stop()

    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run())


if __name__ == "__main__":
    _main()
