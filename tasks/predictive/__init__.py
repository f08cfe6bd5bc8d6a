"""Predictive models (scikit-learn, XGBoost, Triton) through the same promotion as LLMs.

What the flow calls, stage by stage (each a plain function; no Prefect here):

| stage | call |
| --- | --- |
| quantize, build | `skip_reason(spec, "quantize" | "build")` -> the StageSkipped reason |
| preflight | `tasks.preflight.predictive.plan_resources(model_dir, spec)` -> ResourcePlan |
| deploy (local) | `tasks.local.mlserver.start_mlserver(model_dir, served_name, spec.engine.predictive, host, port, log_path, kind=spec.engine.kind)` |
| deploy (kserve) | `tasks.kserve.render_predictive.render_predictive(spec, storage_uri, digest, plan=plan)` |
| ready check | `tasks.local.mlserver.check_ready_v2(base_url, served_name)` -> None or why not |
| warm-up | `tasks.predictive.warmup.warm_up_v2(base_url, served_name, spec.warmup)` |
| load test | `tasks.loadtest.v2.run_v2_load_test(base_url, served_name, spec.load, spec.slo)` (or run_load_test with load.endpoint v2) |
| quality gate | `tasks.predictive.quality.evaluate_quality(base_url, served_name, q.labelled_data, q.min_accuracy, ...)` |

The example models: `tasks.predictive.example.write_example_predictive` (`llmship example-model --kind sklearn`).
"""

from __future__ import annotations

from tasks.spec import PREDICTIVE_KINDS, PromotionSpec, is_predictive


def skip_reason(spec: PromotionSpec, stage: str) -> str | None:
    """Why a stage is Skipped for this spec (None when it runs): quantize and build for predictive kinds."""
    if not is_predictive(spec):
        return None
    kind = spec.engine.kind
    if stage == "quantize":
        return f"engine.kind {kind}: predictive models are served as published (quantization is for LLM weights)"
    if stage == "build":
        what = "a Triton model repository is loaded as it is" if kind == "triton" else \
            f"MLServer loads the {kind} model file as published"
        return f"engine.kind {kind}: no engine build ({what})"
    return None


__all__ = ["PREDICTIVE_KINDS", "is_predictive", "skip_reason"]
