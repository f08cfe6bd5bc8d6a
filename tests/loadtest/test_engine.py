"""The engine against the fake OpenAI server (real HTTP on loopback): accuracy, failures, modes."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest

from bench.support.fake_openai import FakeConfig, FakeOpenAIServer, fake_server_process
from tasks.errors import BadInput, StageFailed
from tasks.loadtest import SLO, LoadProfile, arun_load_test, run_load_test


def test_accuracy_with_injected_delays():
    """The server sits in its own process; loose bounds here, the tight ones are the benchmark's."""
    with fake_server_process(FakeConfig(ttft_s=0.040, itl_s=0.004)) as url:
        rep = run_load_test(url, "fake-model", LoadProfile(concurrency=32, num_requests=320, output_tokens=12),
                            keep_records=True)
    assert rep.completed == 320 and rep.failed == 0
    assert rep.median_ttft_ms == pytest.approx(40, abs=6)
    assert rep.median_itl_ms == pytest.approx(4, abs=1.5)
    assert rep.median_tpot_ms == pytest.approx(4, abs=1.5)
    assert rep.median_e2el_ms == pytest.approx(40 + 11 * 4, abs=10)
    assert rep.total_output_tokens == 320 * 12
    assert rep.output_tokens_source == "usage"
    assert len(rep.records) == 320 and all(len(r.itl_ms) == 11 for r in rep.records)
    # vllm bench's keys, written as JSON
    d = rep.vllm_dict()
    for k in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "request_throughput",
              "output_throughput", "total_token_throughput", "completed", "failed", "ttfts", "itls", "goodput"):
        assert k in d


async def test_failures_are_counted_with_reasons_and_never_crash():
    cfg = FakeConfig(ttft_s=0.002, itl_s=0.001, fail_every=5, drop_every=7, stall_every=11)
    async with FakeOpenAIServer(cfg) as srv:
        prof = LoadProfile(concurrency=4, num_requests=77, output_tokens=6, request_timeout_s=0.5)
        rep = await arun_load_test(srv.url, "fake-model", prof, SLO(max_error_rate=0.1))
    # of 77 requests: every 5th answers 500; of the rest every 11th hangs and every 7th is cut
    assert rep.completed + rep.failed == 77
    n500 = 77 // 5
    n_stall = len([i for i in range(1, 78) if i % 11 == 0 and i % 5 != 0])
    n_drop = len([i for i in range(1, 78) if i % 7 == 0 and i % 5 != 0 and i % 11 != 0])
    assert rep.errors == {
        "HTTP 500": n500,
        "connection closed mid-stream": n_drop,
        "timeout after 0.5 s": n_stall,
    }
    assert "injected failure" in rep.error_examples["HTTP 500"]
    assert rep.failed == n500 + n_drop + n_stall
    assert not rep.passed
    assert any(v.startswith("error rate") for v in rep.violations)


async def test_unreachable_server_raises_stage_failed_before_any_load():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(StageFailed) as e:
        await arun_load_test(f"http://127.0.0.1:{port}", "m", LoadProfile(num_requests=1))
    assert e.value.stage == "load_test" and str(port) in e.value.obj
    with pytest.raises(BadInput):
        await arun_load_test("127.0.0.1:8000", "m", LoadProfile(num_requests=1))


async def test_concurrent_runs_share_one_event_loop():
    async with FakeOpenAIServer(FakeConfig(ttft_s=0.01, itl_s=0.002)) as a, \
            FakeOpenAIServer(FakeConfig(ttft_s=0.03, itl_s=0.002)) as b:
        prof = LoadProfile(concurrency=4, duration_s=1.0, output_tokens=8)
        ra, rb = await asyncio.gather(arun_load_test(a.url, "fake-model", prof, progress=True),
                                      arun_load_test(b.url, "fake-model", prof, progress=True))
    assert ra.failed == rb.failed == 0 and ra.completed > 20 and rb.completed > 10
    assert ra.median_ttft_ms == pytest.approx(10, abs=5)
    assert rb.median_ttft_ms == pytest.approx(30, abs=5)


async def test_rate_mode_paces_requests_and_windows_exclude_warmup_cooldown():
    async with FakeOpenAIServer(FakeConfig(ttft_s=0.005, itl_s=0.001)) as srv:
        prof = LoadProfile(mode="rate", rate=100, concurrency=20, duration_s=1.5, warmup_s=0.3, cooldown_s=0.3,
                           output_tokens=4)
        rep = await arun_load_test(srv.url, "fake-model", prof, keep_records=True)
    sent = rep.completed + rep.failed + rep.excluded_requests
    assert 140 <= sent <= 152  # 100/s for 1.5 s
    assert 80 <= rep.completed <= 95  # ~0.9 s of the 1.5 s window
    assert all(0.29 <= r.start_s <= 1.21 for r in rep.records)
    assert rep.request_throughput == pytest.approx(100, rel=0.15)


async def test_poisson_arrivals_are_seeded():
    async with FakeOpenAIServer(FakeConfig()) as srv:
        prof = LoadProfile(mode="poisson", rate=200, burstiness=0.5, concurrency=50, num_requests=60, output_tokens=2)
        r1 = await arun_load_test(srv.url, "fake-model", prof, keep_records=True)
        r2 = await arun_load_test(srv.url, "fake-model", prof, keep_records=True)
    due1 = sorted(r.start_s - r.queued_ms / 1000 for r in r1.records)  # records come in completion order
    due2 = sorted(r.start_s - r.queued_ms / 1000 for r in r2.records)
    assert r1.completed == r2.completed == 60
    assert due1 == pytest.approx(due2, abs=1e-3)  # same seed, same schedule (sent up to 0.5 ms early)
    gaps = np.diff(due1)
    assert gaps.min() >= 0 and gaps.std() > 0.5 * gaps.mean()  # bursty: gamma shape 0.5 has cv ~1.4
    assert due1[-1] == pytest.approx(60 / 200, rel=0.1)  # count-bound runs span n / rate, as vllm's


async def test_exact_prompt_tokens_from_tokenizer_and_chat(tokenizer_dir):
    from tasks.loadtest.data import Tokenizer, prepare_prompts

    prof = LoadProfile(num_requests=50, input_tokens=24, endpoint="chat", output_tokens=3)
    prompts, tok = prepare_prompts(prof, str(tokenizer_dir), 50)
    assert all(p.exact and p.input_tokens == 24 for p in prompts)
    assert all(len(Tokenizer(str(tokenizer_dir)).encode(p.content)) == 24 for p in prompts)
    assert len({p.content for p in prompts}) == 50
    async with FakeOpenAIServer(FakeConfig()) as srv:
        rep = await arun_load_test(srv.url, "fake-model", prof, tokenizer=str(tokenizer_dir))
    assert rep.completed == 50 and rep.backend == "openai-chat"


async def test_jsonl_dataset(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"hello number {i}", "output_tokens": 3}) for i in range(5)))
    async with FakeOpenAIServer(FakeConfig()) as srv:
        rep = await arun_load_test(srv.url, "fake-model", LoadProfile(num_requests=10, dataset=str(f)))
    assert rep.completed == 10 and rep.total_output_tokens == 30
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    with pytest.raises(BadInput):
        async with FakeOpenAIServer(FakeConfig()) as srv:
            await arun_load_test(srv.url, "fake-model", LoadProfile(num_requests=1, dataset=str(bad)))


async def test_sweep_finds_highest_rate_meeting_slo():
    async with FakeOpenAIServer(FakeConfig(ttft_s=0.005, itl_s=0.001)) as srv:
        prof = LoadProfile(mode="sweep", concurrency=8, num_requests=40, output_tokens=4, sweep_steps=4,
                           sweep_refine=1)
        rep = await arun_load_test(srv.url, "fake-model", prof, SLO(ttft_p99_ms=1000))
    assert rep.mode == "sweep" and rep.passed
    labels = [p.label for p in rep.sweep]
    assert labels[:2] == ["synchronous", "throughput"] and len(labels) >= 4
    assert rep.max_rate_meeting_slo == pytest.approx(max(p.request_throughput for p in rep.sweep if p.passed))


def test_sweep_edge_is_conservative():
    from tasks.loadtest import LoadReport, SweepPoint
    from tasks.loadtest.engine import _edge

    def level(rate, passed):
        pt = SweepPoint(label="x", target_rate=rate, concurrency=8, completed=1, failed=0, request_throughput=rate,
                        output_throughput=0, median_ttft_ms=0, p99_ttft_ms=0, median_tpot_ms=0, p99_tpot_ms=0,
                        median_itl_ms=0, p99_e2el_ms=0, passed=passed)
        return pt, LoadReport(passed=passed, request_throughput=rate)

    # a pass above a failure does not count: the model is not safe at 30 req/s if it failed at 20
    assert _edge([level(10, True), level(30, True), level(20, False)]) == (10, 20)
    assert _edge([level(10, True), level(20, True)]) == (20, None)
    assert _edge([level(10, False), level(20, True)]) == (None, 10)


def test_report_files(tmp_path):
    with fake_server_process(FakeConfig(ttft_s=0.003, itl_s=0.001)) as url:
        rep = run_load_test(url, "fake-model", LoadProfile(concurrency=4, num_requests=40, output_tokens=5),
                            keep_records=True)
    paths = rep.write_all(str(tmp_path / "out"))
    d = json.loads(open(paths["json"]).read())
    assert d["completed"] == 40 and len(d["ttfts"]) == 40 and d["passed"] is True
    assert open(paths["csv"]).readline().startswith("metric,mean_ms,median_ms")
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(open(paths["records_csv"]).read().splitlines()) == 41
