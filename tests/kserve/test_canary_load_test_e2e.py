"""The canary's optional load test, against a real vLLM-CPU server standing in for the
candidate revision's URL (the tag URL KServe reports in status.components.predictor.traffic)."""

from __future__ import annotations

import pytest

from tasks.kserve import deploy_candidate, run_canary
from tasks.local.server import start_vllm, stop_server
from tasks.spec import EngineArgs, LocalTarget
from tests.kserve.metrics_fixture import MetricsFixture
from tests.kserve.test_rollout_e2e import V2, first_deploy, make_spec, stable_has_history

pytestmark = [pytest.mark.e2e, pytest.mark.servers]


def test_canary_runs_the_load_test_against_the_candidate_url(make_env, prometheus, tiny_model, tmp_path):
    ep = start_vllm(str(tiny_model), "tiny-llama", EngineArgs(max_model_len=256, max_num_seqs=4),
                    LocalTarget(startup_timeout_s=600), tmp_path / "vllm.log")
    try:
        env = make_env(mode="Knative")
        env.reconciler.serving_urls[V2] = ep.base_url
        m = MetricsFixture(model_name="tiny-llama").start(env.reconciler.pod_traffic, prometheus.sd_file)
        first_deploy(env)
        stable_has_history(prometheus)
        spec = make_spec(env, prometheus, steps=[50, 100])
        spec.target.canary_load_test = True
        spec.load.num_requests, spec.load.concurrency, spec.load.output_tokens = 6, 2, 4
        spec.slo.ttft_p99_ms = 60_000  # CPU vLLM: the point is that the load test runs and is judged
        r = deploy_candidate(spec, V2, "sha256:v2")
        assert r.candidate_url == ep.base_url
        out = run_canary(spec, r)
        assert out.outcome == "promoted" and len(out.load_tests) == 2
        assert all(lt["passed"] and lt["completed"] == 6 for lt in out.load_tests)
        assert [c.ok for c in out.checks if c.name == "load-test"] == [True, True]
        m.stop()
    finally:
        stop_server(ep.pid)
