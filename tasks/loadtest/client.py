"""A lean HTTP/1.1 streaming client on raw asyncio protocols.

The load generator's own cost must never become the bottleneck, so the hot path does as
little as possible: `data_received` takes a timestamp, keeps the bytes, and follows only
the HTTP framing to learn where the response ends. Headers of the SSE events, JSON, token
counting and every statistic wait until after the run (see `metrics.parse_response`).

One `Conn` carries one request at a time over a keep-alive connection; the engine hands it
the next request from the completion callback, with no task switch in between.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from tasks.errors import BadInput, StageFailed

_now = time.perf_counter

# response states
_IDLE, _HEAD, _CHUNKED, _LENGTH, _UNTIL_CLOSE, _TRAILER = range(6)
_MAX_HEAD = 65536
SERVER_HEADER = "x-llmship-slot"  # set by the local front door (tasks.local.frontdoor) on every response


class Req:
    """One request: what was sent, and the raw bytes that came back with their arrival times."""

    __slots__ = (
        "idx", "prompt", "t_sched", "t_start", "t_done", "times", "pieces", "status", "error",
        "error_detail", "retried", "server",
    )

    def __init__(self, idx: int, prompt: int, t_sched: float):
        self.idx = idx  # position in the run
        self.prompt = prompt  # index into the prepared prompts
        self.t_sched = t_sched  # when it was due (rate modes); == t_start otherwise
        self.t_start = 0.0
        self.t_done = 0.0
        self.times: list[float] = []
        self.pieces: list[bytes] = []
        self.status = 0
        self.error: str | None = None  # short reason, counted in the report
        self.error_detail = ""
        self.retried = False
        self.server = ""  # the front door's x-llmship-slot: which backend answered


@dataclass(frozen=True)
class Target:
    """Where requests go, parsed once from the base URL."""

    scheme: str
    host: str
    port: int
    prefix: str  # path before /v1/...

    @property
    def hostport(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    def path(self, endpoint: str) -> str:
        """endpoint: 'completions', 'chat/completions', 'models'."""
        if self.prefix.endswith("/v1"):
            return f"{self.prefix}/{endpoint}"
        return f"{self.prefix}/v1/{endpoint}"

    def ssl_context(self) -> _ssl.SSLContext | None:
        return _ssl.create_default_context() if self.scheme == "https" else None


def parse_target(base_url: str) -> Target:
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(
            "load_test", base_url, "not an http(s) URL of an OpenAI-compatible server",
            hint="pass the server's base URL, e.g. http://127.0.0.1:8000",
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise BadInput("load_test", base_url, f"bad port: {e}", hint="use a port between 1 and 65535") from None
    return Target(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def build_request(target: Target, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
    """The whole HTTP request as one bytes object, built before the clock starts."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {target.hostport}",
        "User-Agent: llmship-loadtest",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
    ]
    for k, v in (headers or {}).items():
        if k.lower() == "host":
            lines[1] = f"Host: {v}"
        else:
            lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Conn(asyncio.Protocol):
    """One keep-alive connection. `send` writes a prepared request; `on_done(conn, req)` fires once per request."""

    __slots__ = (
        "on_done", "transport", "req", "state", "hbuf", "skip", "partial", "remaining", "close_after",
        "alive", "used", "lost",
    )

    def __init__(self, on_done: Callable[["Conn", Req], None]):
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.req: Req | None = None
        self.state = _IDLE
        self.hbuf = b""
        self.skip = 0
        self.partial = b""
        self.remaining = 0
        self.close_after = False
        self.alive = False
        self.used = False  # carried a request before (a stale keep-alive may be closed under us)
        self.lost: asyncio.Future | None = None

    # ---- asyncio protocol ----
    def connection_made(self, transport):
        self.transport = transport
        self.alive = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def send(self, req: Req, payload: bytes) -> None:
        self.req = req
        self.state = _HEAD
        self.hbuf = b""
        req.t_start = _now()
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        t = _now()
        req = self.req
        if req is None:
            return  # bytes after a finished response; the next request resets state
        req.times.append(t)
        req.pieces.append(data)
        st = self.state
        if st == _CHUNKED:
            self._chunked(data)
        elif st == _HEAD:
            self._head(data)
        elif st == _LENGTH:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self._finish()
        elif st == _TRAILER:
            self._trailer(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.alive = False
        self.transport = None
        req = self.req
        if req is not None:
            if self.state == _UNTIL_CLOSE:
                self._finish()
            else:
                self.req = None
                if not req.pieces:
                    req.error = "connection closed before the response"
                elif self.state == _HEAD:
                    req.error = "connection closed in the response headers"
                else:
                    req.error = "connection closed mid-stream"
                if exc is not None:
                    req.error_detail = repr(exc)
                req.t_done = _now()
                self.on_done(self, req)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    # ---- HTTP framing ----
    def _head(self, data: bytes) -> None:
        buf = self.hbuf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._fail("response headers too large")
            else:
                self.hbuf = buf
            return
        self.hbuf = b""
        head = buf[:end].decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._fail("not an HTTP response", head[0][:200])
            return
        chunked = False
        length = -1
        close = head[0].startswith("HTTP/1.0")
        for line in head[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "transfer-encoding":
                chunked = "chunked" in v.lower()
            elif k == "content-length":
                length = int(v.strip())
            elif k == "connection":
                close = "close" in v.lower()
            elif k == SERVER_HEADER:
                self.req.server = v.strip()
        if 100 <= status < 200:  # interim response; the real one follows
            self._head(buf[end + 4 :])
            return
        self.req.status = status
        self.close_after = close
        body = buf[end + 4 :]
        if chunked:
            self.state = _CHUNKED
            self.skip = 0
            self.partial = b""
            if body:
                self._chunked(body)
        elif length >= 0:
            self.state = _LENGTH
            self.remaining = length - len(body)
            if self.remaining <= 0:
                self._finish()
        else:
            self.state = _UNTIL_CLOSE
            self.close_after = True

    def _chunked(self, data: bytes) -> None:
        # Only the size lines are read here; skip jumps over the chunk bodies.
        n = len(data)
        pos = self.skip
        if pos >= n:
            self.skip = pos - n
            return
        if self.partial:
            data = self.partial + data
            n = len(data)
            self.partial = b""
        while True:
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                self.partial = data[pos:]
                self.skip = 0
                if len(self.partial) > 1024:
                    self._fail("bad chunked encoding")
                return
            try:
                size = int(data[pos:nl].split(b";", 1)[0], 16)
            except ValueError:
                self._fail("bad chunked encoding", data[pos:nl][:100].decode("latin-1"))
                return
            if size == 0:
                self.state = _TRAILER
                self.hbuf = b""
                self._trailer(data[nl + 2 :])
                return
            pos = nl + 2 + size + 2
            if pos >= n:
                self.skip = pos - n
                return

    def _trailer(self, data: bytes) -> None:
        buf = self.hbuf + data
        if buf.startswith(b"\r\n") or b"\r\n\r\n" in buf:
            self.hbuf = b""
            self._finish()
        else:
            self.hbuf = buf

    def _finish(self) -> None:
        req = self.req
        self.req = None
        self.state = _IDLE
        self.used = True
        req.t_done = req.times[-1] if req.times else _now()
        if self.close_after and self.transport is not None:
            self.alive = False
            self.transport.close()
        self.on_done(self, req)

    def _fail(self, reason: str, detail: str = "") -> None:
        req = self.abort_request(reason)
        req.error_detail = detail
        self.on_done(self, req)

    def abort_request(self, reason: str) -> Req | None:
        """Give up on the request in flight (a timeout): it fails now, the connection is dropped."""
        req = self.req
        if req is None:
            return None
        self.req = None
        self.state = _IDLE
        self.alive = False
        req.error = reason
        req.t_done = _now()
        if self.transport is not None:
            self.transport.abort()
        return req

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()


async def open_conn(target: Target, on_done, timeout: float) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: Conn(on_done), target.host, target.port, ssl=target.ssl_context(),
            server_hostname=target.host if target.scheme == "https" else None,
        ),
        timeout,
    )
    return conn


async def check_reachable(target: Target, base_url: str, timeout: float = 10.0) -> None:
    """Open (and close) one connection, so a wrong URL fails before any load is sent."""
    try:
        conn = await open_conn(target, lambda c, r: None, timeout)
    except asyncio.TimeoutError:
        raise StageFailed(
            "load_test", base_url, f"no connection within {timeout:.0f} s",
            hint="check the host and port, and that a firewall or ingress lets the connection through",
        ) from None
    except (OSError, _ssl.SSLError) as e:
        raise StageFailed(
            "load_test", base_url, f"cannot connect: {e.strerror or e}",
            hint="start the server (or wait until it is up) and check the URL's host and port",
        ) from None
    conn.close()


async def get_json(target: Target, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0):
    """A small GET (used to find the served model); returns (status, parsed JSON or None)."""
    import json

    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def on_done(conn, req):
        if not done.done():
            done.set_result(req)

    conn = await open_conn(target, on_done, timeout)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items() if k.lower() != "host")
    host = next((v for k, v in (headers or {}).items() if k.lower() == "host"), target.hostport)
    payload = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n{extra}\r\n".encode("latin-1")
    req = Req(0, 0, 0.0)
    conn.send(req, payload)
    try:
        req = await asyncio.wait_for(done, timeout)
    finally:
        conn.close()
    if req.error:
        return 0, None
    raw = b"".join(req.pieces)
    body = raw[raw.find(b"\r\n\r\n") + 4 :]
    try:
        return req.status, json.loads(_dechunk(body) if b"\r\n" in body[:10] else body)
    except ValueError:
        return req.status, None


def _dechunk(body: bytes) -> bytes:
    out = []
    pos = 0
    while True:
        nl = body.find(b"\r\n", pos)
        if nl < 0:
            break
        size = int(body[pos:nl].split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        out.append(body[nl + 2 : nl + 2 + size])
        pos = nl + 2 + size + 2
    return b"".join(out)
