"""promote_model: one flow from a registry to production serving.

    resolve -> download -> preflight -> quantize -> build -> publish
            -> deploy -> warm_up -> load_test -> canary -> promoted | rolled back

Each stage is a Prefect task over a plain function in tasks/. A stage the spec does not
need is recorded as Skipped with the reason. Whatever happens, the promotion ends in a
known state: the candidate serves and is recorded as stable, or the stable model still
serves and the candidate is gone.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.concurrency import promotion_slot, target_key
from tasks.errors import LlmshipError, RolledBack, StageFailed
from tasks.prefect_tasks import (
    build_task, deploy_task, download_task, load_test_task, local_canary_task, output_exists, preflight_task,
    publish_task, quantize_task, resolve_task, warm_up_task,
)
from tasks.spec import PromotionSpec, load_spec, parse_spec
from tasks.trtllm import quantizes_in_build
from tasks.values import PromotionResult, StageRecord


STAGES = ("resolve", "download", "preflight", "quantize", "build", "publish", "deploy", "warm_up", "load_test", "canary")


class Stages:
    """Runs stages as Prefect tasks and keeps the record the summary is made of."""

    def __init__(self) -> None:
        self.records: list[StageRecord] = []
        self.log = get_run_logger()

    def run(self, stage: str, task: Callable, *args: Any) -> Any:
        started = time.monotonic()
        state = task(*args, return_state=True)
        if state.name == "Cached" and not output_exists(state.result()):
            self.log.warning("%s: cached result points at files that are gone; running it again", stage)
            state = task.with_options(refresh_cache=True)(*args, return_state=True)
        seconds = time.monotonic() - started
        self.records.append(StageRecord(stage=stage, state=state.name, seconds=round(seconds, 2)))
        self.log.info("%-10s %-9s %6.1f s", stage, state.name, seconds)
        return state.result()  # raises the stage's own error when it failed

    def skip(self, stage: str, reason: str) -> None:
        self.records.append(StageRecord(stage=stage, state="Skipped", seconds=0.0, note=reason))
        self.log.info("%-10s Skipped   (%s)", stage, reason)

    def not_reached(self, why: str) -> None:
        done = {r.stage for r in self.records}
        for stage in STAGES:
            if stage not in done:
                self.records.append(StageRecord(stage=stage, state="NotRun", seconds=0.0, note=why))

    def note(self, text: str) -> None:
        if self.records:
            last = self.records[-1]
            last.note = f"{last.note}; {text}" if last.note else text


@flow(name="promote_model")
def promote_model(spec_path: str | None = None, spec: dict | None = None) -> PromotionResult:
    """Promote the model a spec describes. Give a spec file path, or the spec inline."""
    the_spec = load_spec(spec_path) if spec_path else parse_spec(spec, "inline spec")
    stages = Stages()
    result = PromotionResult(name=the_spec.name, outcome="failed")
    try:
        with promotion_slot(the_spec):  # one promotion per serving target; a second waits or is cancelled
            result = _promote(the_spec, stages)
        return result
    except LlmshipError as err:
        result.outcome = "rolled_back" if isinstance(err, RolledBack) else "failed"
        result.reason = err.render()
        stages.not_reached(f"stopped after {err.stage} failed")
        err.promotion = result  # the CLI reports the stages of a failed promotion too
        raise
    finally:
        result.stages = stages.records
        _summary_artifact(the_spec, result)


def _promote(spec: PromotionSpec, stages: Stages) -> PromotionResult:
    resolved = stages.run("resolve", resolve_task, spec)
    model = stages.run("download", download_task, resolved, spec)
    stages.run("preflight", preflight_task, model.path, spec)

    if spec.quantization.method == "none":
        stages.skip("quantize", "quantization.method is none")
    elif quantizes_in_build(spec):
        stages.skip("quantize", "the TensorRT-LLM engine path quantizes inside its checkpoint step (build)")
    else:
        model = stages.run("quantize", quantize_task, model, spec)

    if spec.engine.kind == "vllm":
        stages.skip("build", "the vllm engine serves the checkpoint as it is")
    else:
        model = stages.run("build", build_task, model, spec)

    artifact = stages.run("publish", publish_task, model, spec)

    if spec.target.kind == "kserve":
        from flows.kserve_rollout import promote_on_kserve

        result = promote_on_kserve(spec, stages, resolved, artifact)
    else:
        result = _promote_locally(spec, stages, resolved, artifact)
    if result.outcome == "promoted" and resolved.registry_version:
        _record_in_registry(spec, stages, resolved)
    return result


def _record_in_registry(spec: PromotionSpec, stages: Stages, resolved) -> None:
    """Tell the registry which version now serves (alias `serving`); the model serves either way."""
    from tasks.registry import record_promotion

    try:
        record_promotion(resolved.resolved_from or resolved.source, resolved.registry_version, target_key(spec))
        stages.note(f"registry: version {resolved.registry_version} marked serving")
    except StageFailed as err:
        stages.note(f"registry not updated: {err.message} ({err.hint})")


def warm_up_and_load_test(spec: PromotionSpec, stages: Stages, base_url: str, model_name: str,
                          tokenizer: str | None, obj: str) -> None:
    """Warm the candidate up, then load-test it against the SLOs; RolledBack if it misses them."""
    if spec.warmup.enabled:
        stages.run("warm_up", warm_up_task, base_url, model_name, spec, tokenizer)
    else:
        stages.skip("warm_up", "warmup.enabled is false")
    report = stages.run("load_test", load_test_task, base_url, model_name, spec, tokenizer)
    if not report.passed:
        raise RolledBack("load_test", obj, "missed its SLO: " + "; ".join(report.violations),
                         "the stable model still serves; fix the model or the SLO and re-run")


def _promote_locally(spec, stages: Stages, resolved, artifact) -> PromotionResult:
    from tasks.local.deploy import promote_candidate, roll_back

    decision = stages.run("deploy", deploy_task, spec, artifact, resolved)
    if decision.note:
        stages.note(decision.note)
    if decision.unchanged:
        for stage in ("warm_up", "load_test", "canary"):
            stages.skip(stage, "unchanged: this artifact already serves as stable")
        return PromotionResult(name=spec.name, outcome="unchanged", reason=decision.note,
                               artifact_digest=artifact.digest, endpoint=decision.stable.base_url)

    candidate = decision.candidate
    tokenizer = artifact.local_path
    try:
        warm_up_and_load_test(spec, stages, candidate.base_url, candidate.name, tokenizer,
                              f"candidate {artifact.digest[:12]}")

        if decision.stable is None:
            stages.skip("canary", "no stable model serves yet: the candidate becomes stable after its load test")
        else:
            outcome = stages.run("canary", local_canary_task, spec, decision.stable, candidate, tokenizer)
            stages.note(outcome.reason)
            if not outcome.promoted:
                raise RolledBack("canary", f"candidate {artifact.digest[:12]}", f"failed analysis at {outcome.reason}",
                                 f"the stable model still serves at 100%; each step's figures are in the {spec.name}-canary artifact")
        promote_candidate(spec, decision)
    except BaseException as err:
        roll_back(spec, reason=str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise
    return PromotionResult(name=spec.name, outcome="promoted", reason="candidate is stable",
                           artifact_digest=artifact.digest, endpoint=candidate.base_url)


def _summary_artifact(spec: PromotionSpec, result: PromotionResult) -> None:
    rows = "\n".join(f"| {r.stage} | {r.state} | {r.seconds:.1f} | {r.note.replace('|', '/')} |" for r in result.stages)
    reason = result.reason.replace("\n", "<br>")
    md = (
        f"# Promotion of `{spec.name}`: **{result.outcome}**\n\n"
        f"- source: `{spec.model.source}`\n- artifact: `{result.artifact_digest or '-'}`\n"
        f"- endpoint: {result.endpoint or '-'}\n- reason: {reason or '-'}\n\n"
        f"| stage | state | seconds | decision |\n|---|---|---|---|\n{rows}\n"
    )
    create_markdown_artifact(markdown=md, key=f"{spec.name}-promotion", description=f"promotion of {spec.name}")
