"""The metrics maths on synthetic timings, and SSE parsing of awkwardly split streams."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.loadtest import SLO, LoadReport, evaluate_slo
from tasks.loadtest.metrics import RequestResult, aggregate, parse_response, stats


def _req(idx, start, ttft, itls, out_tokens, error=None, input_tokens=10):
    lat = ttft + sum(itls)
    return RequestResult(idx=idx, start=start, ttft=ttft, itls=list(itls), latency=lat,
                         input_tokens=input_tokens, output_tokens=out_tokens, error=error)


def test_definitions_match_vllm_bench_serve():
    rs = [
        _req(0, 0.0, 0.050, [0.010, 0.010, 0.010], 4),  # tpot = 30 ms / 3 = 10 ms
        _req(1, 0.1, 0.100, [0.020, 0.040], 3),  # tpot = 60 ms / 2 = 30 ms
        _req(2, 0.2, 0.070, [], 1),  # one token: no TPOT, no ITL
        _req(3, 0.3, 0.0, [], 0, error="HTTP 500"),
    ]
    agg = aggregate(rs, duration=2.0)
    assert agg["completed"] == 3 and agg["failed"] == 1
    assert agg["total_input_tokens"] == 30 and agg["total_output_tokens"] == 8
    assert agg["request_throughput"] == pytest.approx(1.5)
    assert agg["output_throughput"] == pytest.approx(4.0)
    assert agg["total_token_throughput"] == pytest.approx(19.0)
    ttfts = np.array([0.05, 0.10, 0.07])
    assert agg["mean_ttft_ms"] == pytest.approx(ttfts.mean() * 1000)
    assert agg["median_ttft_ms"] == pytest.approx(70.0)
    assert agg["std_ttft_ms"] == pytest.approx(ttfts.std() * 1000)  # population std, as numpy/vllm
    assert agg["p99_ttft_ms"] == pytest.approx(np.percentile(ttfts, 99) * 1000)
    assert agg["mean_tpot_ms"] == pytest.approx(20.0)
    assert agg["median_tpot_ms"] == pytest.approx(20.0)
    itls = np.array([0.010, 0.010, 0.010, 0.020, 0.040])  # pooled across requests
    assert agg["mean_itl_ms"] == pytest.approx(itls.mean() * 1000)
    assert agg["p90_itl_ms"] == pytest.approx(np.percentile(itls, 90) * 1000)
    assert agg["median_e2el_ms"] == pytest.approx(80.0)
    assert agg["max_concurrent_requests"] >= 1


def test_goodput_counts_requests_meeting_every_limit():
    rs = [_req(i, 0.0, 0.010 * (i + 1), [0.005] * 3, 4) for i in range(10)]  # ttft 10..100 ms
    agg = aggregate(rs, duration=1.0, goodput_limits=(50.0, None, None))
    assert agg["good_requests"] == 5
    assert agg["request_goodput"] == pytest.approx(5.0)
    agg = aggregate(rs, duration=1.0, goodput_limits=(50.0, 4.0, None))  # tpot 5 ms > 4 ms: none
    assert agg["good_requests"] == 0


def test_empty_figures_are_zero_like_vllm():
    s = stats([])
    assert s["mean"] == 0 and s["p99"] == 0
    agg = aggregate([_req(0, 0, 0, [], 0, error="timeout after 1 s")], duration=1.0)
    assert agg["completed"] == 0 and agg["failed"] == 1 and agg["mean_ttft_ms"] == 0


def _chunk(event: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(event), event)


def test_sse_parsing_with_chunks_split_anywhere():
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    ev = [
        b'data: {"choices":[{"index":0,"text":"a"}]}\n\n',
        b": ping\n\n",
        b'data: {"choices":[{"index":0,"text":"b"}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n',
        b"data: [DONE]\n\n",
    ]
    raw = head + b"".join(_chunk(e) for e in ev) + b"0\r\n\r\n"
    # split the bytes at awkward places: inside the header, a size line, a JSON body
    cuts = [20, len(head) + 1, len(head) + 30, len(head) + 60, len(raw) - 3]
    pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
    times = [float(i) for i in range(len(pieces))]
    p = parse_response(pieces, times, chat=False, keep_text=True)
    assert p.error is None
    assert p.text == "ab"
    assert p.completion_tokens == 2 and p.prompt_tokens == 7
    # the first event ends inside piece 3 (offset < len(head)+60), the second later
    first_end = len(head) + len(b"%x\r\n" % len(ev[0])) + len(ev[0])
    expect_first = next(i for i, c in enumerate(cuts + [len(raw)]) if first_end <= c)
    assert p.token_times[0] == times[expect_first]
    assert p.token_times[1] >= p.token_times[0]


def test_http_error_and_stream_error_are_reasons():
    body = b'{"error":{"message":"model not found"}}'
    raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    p = parse_response([raw], [1.0], chat=True, keep_text=False)
    assert p.error == "HTTP 404" and "model not found" in p.detail
    raw = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
           + _chunk(b'data: {"error":{"message":"engine died"}}\n\n') + b"0\r\n\r\n")
    p = parse_response([raw], [1.0], chat=True, keep_text=False)
    assert p.error == "error in the stream" and "engine died" in p.detail


def test_chat_role_chunk_counts_as_first_token_like_vllm():
    raw = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
           + _chunk(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')
           + _chunk(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n') + b"0\r\n\r\n")
    p = parse_response([raw[:60], raw[60:]], [1.0, 2.0], chat=True, keep_text=True)
    assert len(p.token_times) == 2 and p.text == "hi"


def test_slo_verdict_lines():
    rep = LoadReport(completed=98, failed=2, p99_ttft_ms=812.3, p99_tpot_ms=20, output_throughput=50,
                     error_rate=0.02, errors={"HTTP 500": 2})
    v = evaluate_slo(rep, SLO(ttft_p99_ms=500, tpot_p99_ms=25, max_error_rate=0.01, min_output_tokens_per_s=100))
    assert "p99 TTFT 812.3 ms > limit 500 ms" in v
    assert any(line.startswith("error rate 2.0% > limit 1.0%") and "HTTP 500 x2" in line for line in v)
    assert "output throughput 50.0 tok/s < limit 100 tok/s" in v
    assert not any("TPOT" in line for line in v)
    assert evaluate_slo(LoadReport(completed=0, failed=3), None) == ["no request completed (3 sent)"]
