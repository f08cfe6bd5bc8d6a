"""From raw bytes to the figures: SSE parsing after the run, and the statistics.

The definitions are those of `vllm bench serve` (vllm/benchmarks/serve.py):
- TTFT: time from sending the request to the first streamed chunk that carries a choice;
- ITL: every gap between such chunks, pooled over all requests;
- TPOT = (E2EL - TTFT) / (output tokens - 1), per request with more than one output token;
- E2EL: time from sending the request to its last token chunk;
- throughputs: completed requests and tokens over the benchmark duration;
- goodput: completed requests that meet every per-request SLO limit, per second.
Statistics are numpy's mean, std (population), median and linear-interpolated percentiles.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np

try:  # orjson is ~3x faster on these small objects; plain json works the same
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

PERCENTILES = (50, 90, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")
_EVENT_END = re.compile(rb"\r?\n\r?\n")


@dataclass(slots=True)
class RequestResult:
    """One request, in seconds relative to the run's start."""

    idx: int
    start: float  # when it was sent
    queued: float = 0.0  # client-side wait between its due time and sending (rate modes)
    ttft: float = 0.0
    itls: list[float] = field(default_factory=list)
    latency: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    detail: str = ""
    input_src: str = "estimate"  # usage | tokenizer | estimate
    output_src: str = "usage"  # usage | tokenizer | chunks
    server: str = ""  # which backend answered, when a front door says (x-llmship-slot)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot(self) -> float:
        """0 when there is one output token, as vllm counts it for goodput."""
        if self.output_tokens > 1:
            return (self.latency - self.ttft) / (self.output_tokens - 1)
        return 0.0


@dataclass(slots=True)
class Parsed:
    status: int = 0
    error: str | None = None
    detail: str = ""
    token_times: list[float] = field(default_factory=list)
    text: str = ""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None


def split_http(pieces: list[bytes], times: list[float]):
    """(status, headers, body, body_end_time) where body_end_time(offset) is when that body byte arrived."""
    raw = b"".join(pieces)
    ends = []
    total = 0
    for p in pieces:
        total += len(p)
        ends.append(total)
    head_end = raw.find(b"\r\n\r\n")
    while head_end >= 0 and raw[9:10] == b"1" and raw.startswith(b"HTTP/"):  # skip 1xx interim responses
        raw_rest = raw[head_end + 4 :]
        shift = head_end + 4
        nxt = raw_rest.find(b"\r\n\r\n")
        if nxt < 0:
            break
        raw = raw_rest
        ends = [e - shift for e in ends]
        head_end = nxt
    if head_end < 0:
        return 0, {}, b"", lambda off: times[-1] if times else 0.0
    head = raw[:head_end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    start = head_end + 4

    def raw_time(raw_off: int) -> float:
        i = bisect_left(ends, raw_off + 1)
        return times[min(i, len(times) - 1)]

    if "chunked" not in headers.get("transfer-encoding", "").lower():
        body = raw[start:]
        return status, headers, body, lambda off: raw_time(start + off)
    # De-chunk, remembering where each body segment sat in the raw stream.
    segs: list[tuple[int, int]] = []  # (body offset, raw offset)
    parts = []
    pos = start
    body_len = 0
    while True:
        nl = raw.find(b"\r\n", pos)
        if nl < 0:
            break
        try:
            size = int(raw[pos:nl].split(b";", 1)[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        seg = raw[nl + 2 : nl + 2 + size]
        segs.append((body_len, nl + 2))
        parts.append(seg)
        body_len += len(seg)
        pos = nl + 2 + size + 2
    body = b"".join(parts)
    seg_body = [s[0] for s in segs]

    def body_time(off: int) -> float:
        k = max(0, bisect_left(seg_body, off + 1) - 1)
        return raw_time(segs[k][1] + off - segs[k][0]) if segs else raw_time(start)

    return status, headers, body, body_time


def _error_message(body: bytes) -> str:
    try:
        obj = _loads(body)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:300]
        return str(err)[:300]
    except Exception:
        return body[:300].decode("utf-8", "replace")


def parse_response(pieces: list[bytes], times: list[float], chat: bool, keep_text: bool) -> Parsed:
    """Read one streamed response: token chunk arrival times, usage, text, or why it failed."""
    out = Parsed()
    status, headers, body, body_time = split_http(pieces, times)
    out.status = status
    if status != 200:
        out.error = f"HTTP {status}" if status else "not an HTTP response"
        out.detail = _error_message(body)
        return out
    token_times = out.token_times
    texts = []
    pos = 0
    for m in _EVENT_END.finditer(body):
        event = body[pos : m.start()]
        t_end = m.end() - 1
        pos = m.end()
        data = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].strip())
        if not data:
            continue  # a comment (ping) or an event without data
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if payload == b"[DONE]":
            continue
        try:
            obj = _loads(payload)
        except ValueError:
            out.error = "bad JSON in the stream"
            out.detail = payload[:200].decode("utf-8", "replace")
            return out
        if not isinstance(obj, dict):
            continue
        if obj.get("error"):
            out.error = "error in the stream"
            out.detail = _error_message(payload)
            return out
        choices = obj.get("choices")
        if choices:
            token_times.append(body_time(t_end))
            if keep_text:
                c = choices[0]
                piece = (c.get("delta") or {}).get("content") if chat else c.get("text")
                if piece:
                    texts.append(piece)
        usage = obj.get("usage")
        if usage:
            if usage.get("completion_tokens") is not None:
                out.completion_tokens = usage["completion_tokens"]
            if usage.get("prompt_tokens") is not None:
                out.prompt_tokens = usage["prompt_tokens"]
    out.text = "".join(texts)
    if not token_times:
        out.error = "no token in the stream"
    return out


def stats(values: list[float] | np.ndarray) -> dict[str, float]:
    """mean, median, std and the percentiles, in milliseconds (0 when empty, as vllm does)."""
    arr = np.asarray(values, dtype=float) if len(values) else np.zeros(1)
    out = {
        "mean": float(np.mean(arr)) * 1000,
        "median": float(np.median(arr)) * 1000,
        "std": float(np.std(arr)) * 1000,
    }
    pct = np.percentile(arr, PERCENTILES) * 1000
    for p, v in zip(PERCENTILES, pct):
        out[f"p{p}"] = float(v)
    return out


def meets(r: RequestResult, ttft_ms: float | None, tpot_ms: float | None, e2el_ms: float | None) -> bool:
    """Whether one completed request meets every per-request limit (vllm's goodput rule)."""
    if ttft_ms is not None and r.ttft * 1000 > ttft_ms:
        return False
    if tpot_ms is not None and r.tpot * 1000 > tpot_ms:
        return False
    if e2el_ms is not None and r.latency * 1000 > e2el_ms:
        return False
    return True


def aggregate(
    results: list[RequestResult],
    duration: float,
    goodput_limits: tuple[float | None, float | None, float | None] = (None, None, None),
) -> dict:
    """The `vllm bench serve` result keys for these requests over this duration."""
    ok = [r for r in results if r.ok]
    failed = len(results) - len(ok)
    total_in = sum(r.input_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft for r in ok]
    tpots = [r.tpot for r in ok if r.output_tokens > 1]
    itls: list[float] = []
    for r in ok:
        itls.extend(r.itls)
    e2els = [r.latency for r in ok]
    dur = duration if duration > 0 else float("nan")
    out: dict = {
        "duration": duration,
        "completed": len(ok),
        "failed": failed,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur if duration > 0 else 0.0,
        "output_throughput": total_out / dur if duration > 0 else 0.0,
        "total_token_throughput": (total_in + total_out) / dur if duration > 0 else 0.0,
    }
    if any(x is not None for x in goodput_limits):
        good = sum(1 for r in ok if meets(r, *goodput_limits))
    else:
        good = len(ok)
    out["good_requests"] = good
    out["request_goodput"] = good / dur if duration > 0 else 0.0
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        for k, v in stats(vals).items():
            out[f"{k}_{name}_ms"] = v
    out.update(_peaks(ok))
    return out


def _peaks(ok: list[RequestResult]) -> dict:
    """vllm's max_output_tokens_per_s and max_concurrent_requests, over one-second buckets."""
    if not ok:
        return {"max_output_tokens_per_s": 0.0, "max_concurrent_requests": 0}
    t0 = min(r.start for r in ok)
    t1 = max(r.start + r.latency for r in ok)
    n = int(np.ceil(t1 - t0)) + 1
    tokens = np.zeros(n)
    conc = np.zeros(n)
    for r in ok:
        first = r.start + r.ttft
        ts = np.concatenate(([first], first + np.cumsum(r.itls))) if r.itls else np.array([first])
        idx = (ts - t0).astype(int)
        idx = idx[(idx >= 0) & (idx < n)]
        np.add.at(tokens, idx, 1)
        a = int(r.start - t0)
        b = int(r.start + r.latency - t0)
        conc[a : b + 1] += 1
    return {"max_output_tokens_per_s": float(tokens.max()), "max_concurrent_requests": int(conc.max())}
