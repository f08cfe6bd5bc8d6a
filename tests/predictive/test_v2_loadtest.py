"""The V2 load test against a raw-asyncio V2 responder (real HTTP on loopback): figures, failures, SLO, report."""

from __future__ import annotations

import json
import socket

import pytest

from bench.support.fake_v2 import FakeV2Config, FakeV2Server, fake_v2_process
from tasks.errors import BadInput, StageFailed
from tasks.loadtest import SLO, LoadProfile, arun_load_test, run_load_test
from tasks.loadtest.v2 import V2Report, arun_v2_load_test, evaluate_v2_slo, run_v2_load_test

V2 = dict(endpoint="v2")


def test_latency_and_throughput_with_an_injected_delay(tmp_path):
    with fake_v2_process(FakeV2Config(model="iris", delay_s=0.020)) as url:
        rep = run_v2_load_test(url, "iris", LoadProfile(**V2, concurrency=4, num_requests=120),
                               SLO(latency_p99_ms=500, min_requests_per_s=20), keep_records=True)
    assert isinstance(rep, V2Report) and rep.completed == 120 and rep.failed == 0 and rep.passed
    assert rep.median_e2el_ms == pytest.approx(20, abs=8)
    assert rep.p50_e2el_ms <= rep.p90_e2el_ms <= rep.p99_e2el_ms
    # 4 in flight, 20 ms each: about 200 req/s
    assert 100 < rep.request_throughput < 210
    assert rep.input_source == "metadata" and rep.rows_per_request == 1 and rep.total_rows == 120
    assert rep.row_throughput == pytest.approx(rep.request_throughput, rel=0.01)
    assert rep.mean_ttft_ms == 0 and rep.total_output_tokens == 0 and rep.backend == "openinference-v2"
    d = rep.vllm_dict()
    for k in ("duration", "completed", "failed", "request_throughput", "request_goodput", "mean_e2el_ms",
              "median_e2el_ms", "p90_e2el_ms", "p99_e2el_ms", "latencies", "start_times", "max_concurrency",
              "row_throughput", "total_rows", "passed", "violations", "errors"):
        assert k in d
    out = rep.write_all(str(tmp_path))
    assert json.loads(open(out["json"]).read())["completed"] == 120
    csv = open(out["csv"]).read()
    assert csv.startswith("metric,mean_ms") and "latency" in csv and "row_throughput" in csv and "TTFT" not in csv
    assert open(out["png"], "rb").read(4) == b"\x89PNG"
    assert len(open(out["records_csv"]).read().splitlines()) == 121
    assert "V2 load test PASSED" in rep.markdown()


async def test_failures_are_counted_with_reasons():
    async with FakeV2Server(FakeV2Config(model="m", fail_every=5, empty_every=7)) as srv:
        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, concurrency=3, num_requests=70),
                                      SLO(max_error_rate=0.1))
    n500 = 70 // 5
    nempty = len([i for i in range(1, 71) if i % 7 == 0 and i % 5 != 0])
    assert rep.errors == {"HTTP 500": n500, "no outputs in the response": nempty}
    assert "injected failure" in rep.error_examples["HTTP 500"]
    assert rep.completed == 70 - n500 - nempty and not rep.passed
    assert any(v.startswith("error rate") for v in rep.violations)


async def test_slo_limits():
    async with FakeV2Server(FakeV2Config(model="m", delay_s=0.01)) as srv:
        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, concurrency=1, num_requests=30),
                                      SLO(latency_p99_ms=2, min_requests_per_s=1000))
    assert not rep.passed
    assert any(v.startswith("p99 latency") and "> limit 2 ms" in v for v in rep.violations)
    assert any(v.startswith("request throughput") and "< limit 1000 req/s" in v for v in rep.violations)
    assert rep.good_requests == 0  # none met the 2 ms latency limit
    # an unset SLO checks nothing but completion
    assert evaluate_v2_slo(rep, None) == []


async def test_inputs_from_payload_file_signature_and_rows(tmp_path):
    async with FakeV2Server(FakeV2Config(model="m", features=3)) as srv:
        payloads = tmp_path / "p.jsonl"
        body = {"inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, -1, -2, -3]}]}
        payloads.write_text(json.dumps(body) + "\n")
        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, concurrency=2, num_requests=10,
                                                                dataset=str(payloads)))
        assert rep.completed == 10 and rep.input_source == f"dataset:{payloads}" and rep.total_rows == 20
        assert rep.rows_per_request is None
        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, concurrency=2, num_requests=10, rows_per_request=8))
        assert rep.completed == 10 and rep.total_rows == 80
        from tasks.predictive.signature import TensorSpec

        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, num_requests=4),
                                      inputs=[TensorSpec(name="input-0", datatype="FP32", shape=[-1, 3])])
        assert rep.input_source == "signature" and rep.completed == 4
        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, num_requests=3), payloads=[body])
        assert rep.input_source == "payloads" and rep.completed == 3
        with pytest.raises(BadInput, match="not a V2 request"):
            await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, num_requests=3), payloads=[{"x": 1}])


async def test_modes_sweep_and_the_engine_hook():
    async with FakeV2Server(FakeV2Config(model="m", delay_s=0.002)) as srv:
        # the LLM engine's entry point hands endpoint v2 to the V2 load test
        rep = await arun_load_test(srv.url, "m", LoadProfile(**V2, concurrency=2, num_requests=20))
        assert isinstance(rep, V2Report) and rep.completed == 20
        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, mode="poisson", rate=200, num_requests=40))
        assert rep.completed == 40 and rep.request_rate == 200
        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, mode="rate", rate=100, duration_s=0.3,
                                                                warmup_s=0.05, cooldown_s=0.05))
        assert rep.excluded_requests > 0 and rep.completed > 10
        rep = await arun_v2_load_test(srv.url, "m", LoadProfile(**V2, mode="sweep", concurrency=4, num_requests=40,
                                                                sweep_steps=3, sweep_refine=0), SLO(latency_p99_ms=1000))
        assert isinstance(rep, V2Report) and rep.mode == "sweep" and len(rep.sweep) == 3
        assert rep.passed and rep.max_rate_meeting_slo == rep.request_throughput


async def test_bad_model_and_unreachable_server():
    async with FakeV2Server(FakeV2Config(model="m")) as srv:
        with pytest.raises(BadInput, match="answered HTTP 404"):
            await arun_v2_load_test(srv.url, "other", LoadProfile(**V2, num_requests=2))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(StageFailed, match="cannot connect"):
        run_load_test(f"http://127.0.0.1:{port}", "m", LoadProfile(**V2, num_requests=2))
