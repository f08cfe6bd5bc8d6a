"""promote_model: one flow from a registry to production serving.

    resolve -> download -> preflight -> checklist -> quantize -> build -> publish
            -> deploy -> warm_up -> load_test -> canary -> promoted | rolled back

Each stage is a Prefect task over a plain function in tasks/. A stage the spec does not
need is recorded as Skipped with the reason. Both targets take the same path: deploy puts
the candidate beside the stable model (or finds that this serving revision already
serves), and the canary machine (tasks.canary.machine) moves traffic step by step behind
the target's router. Whatever happens, the promotion ends in a known state: the candidate
serves and is recorded as stable, or the stable model serves and the candidate is gone. The
canary machine is the one owner of that rollback; the flow only asks it to abort.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks import targets
from tasks.canary.machine import Phase
from tasks.release import Release, canary_facts, now_iso, quantization_facts, write_release
from tasks.concurrency import promotion_slot, target_key
from tasks.errors import LlmshipError, RolledBack, StageFailed
from tasks.failpoints import crash_point
from tasks.prefect_tasks import (
    build_task, canary_task, checklist_task, deploy_task, quality_task, download_task, load_test_task, output_exists, preflight_task,
    publish_task, quantize_task, resolve_task, warm_up_task,
)
from tasks.predictive import skip_reason
from tasks.spec import PromotionSpec, is_predictive, load_spec, parse_spec
from tasks.trtllm import quantizes_in_build
from tasks.values import Deployment, LocalModel, PromotionResult, StageRecord

STAGES = ("resolve", "download", "preflight", "checklist", "quantize", "build", "publish", "deploy", "warm_up",
          "load_test", "quality", "canary")


class Stages:
    """Runs stages as Prefect tasks and keeps the record the summary is made of."""

    def __init__(self, spec: PromotionSpec) -> None:
        self.spec = spec
        self.records: list[StageRecord] = []
        self.log = get_run_logger()

    def run(self, stage: str, task: Callable, *args: Any) -> Any:
        started = time.monotonic()
        state = task(*args, return_state=True)
        if state.name == "Cached" and not output_exists(state.result(), self.spec):
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
def promote_model(spec_path: str | None = None, spec: dict | None = None, trigger: dict | None = None) -> PromotionResult:
    """Promote the model a spec describes. Give a spec file path, or the spec inline.

    `trigger` says what started it (the CLI, a schedule, a registry webhook delivery); a
    deployment run without one is recorded as such."""
    the_spec = load_spec(spec_path) if spec_path else parse_spec(spec, "inline spec")
    stages = Stages(the_spec)
    release = Release(name=the_spec.name, target=target_key(the_spec), trigger=trigger_facts(trigger),
                      spec_digest=the_spec.digest())
    result = PromotionResult(name=the_spec.name, outcome="failed")
    try:
        with promotion_slot(the_spec):  # one promotion per serving target; a second waits or is cancelled
            result = _promote(the_spec, stages, release)
        return result
    except LlmshipError as err:
        result.outcome = "rolled_back" if isinstance(err, RolledBack) else "failed"
        result.reason = err.render()
        release.decided_by = release.decided_by or err.stage
        stages.not_reached(f"stopped after {err.stage} failed")
        err.promotion = result  # the CLI reports the stages of a failed promotion too
        raise
    finally:
        result.stages = stages.records
        _summary_artifact(the_spec, result)
        _release_record(the_spec, release, result, stages)


def trigger_facts(trigger: dict | None) -> dict:
    """What started this run: the caller's word, plus the Prefect run and deployment it is."""
    from prefect.runtime import deployment, flow_run

    out = dict(trigger or {})
    out["flow_run_id"] = str(flow_run.id) if flow_run.id else None
    out["flow_run_name"] = flow_run.name
    if deployment.name:
        out.setdefault("kind", "deployment run")
        out["deployment"] = f"{flow_run.flow_name}/{deployment.name}"
    else:
        out.setdefault("kind", "flow call")
    return out


def build_chain(spec: PromotionSpec, stages: Stages, model: LocalModel) -> LocalModel:
    """quantize -> build: what the engine serves, from the downloaded checkpoint."""
    if is_predictive(spec):
        for stage in ("quantize", "build"):
            stages.skip(stage, skip_reason(spec, stage))
        return model
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
    return model


def _promote(spec: PromotionSpec, stages: Stages, release: Release) -> PromotionResult:
    resolved = stages.run("resolve", resolve_task, spec)
    release.source = {"source": spec.model.source, "kind": resolved.kind, "location": resolved.location,
                      "revision": resolved.revision, "registry_version": resolved.registry_version,
                      "resolved_from": resolved.resolved_from}
    model = stages.run("download", download_task, resolved, spec)
    plan = stages.run("preflight", preflight_task, model.path, spec)
    checklist = stages.run("checklist", checklist_task, spec, plan)
    stages.note(checklist.summary())
    model = build_chain(spec, stages, model)
    release.quantization = quantization_facts(spec, model.path)
    artifact = stages.run("publish", publish_task, model, spec)
    release.artifact = artifact_facts(artifact)
    crash_point("after-publish")

    result = roll_out(spec, stages, artifact, resolved, release)
    if result.outcome == "promoted" and resolved.registry_version:
        _record_in_registry(spec, stages, resolved)
    return result


def artifact_facts(artifact) -> dict:
    from tasks.storage.manifest import read_manifest

    out = {"digest": artifact.digest, "uri": artifact.uri, "manifest_uri": artifact.manifest_uri}
    manifest = read_manifest(artifact.local_path) if artifact.local_path else None
    if manifest is not None:
        out["manifest"] = json.loads(manifest.dump())
    return out


def roll_out(spec: PromotionSpec, stages: Stages, artifact, resolved, release: Release) -> PromotionResult:
    """deploy -> warm_up -> load_test -> canary, the same on every target."""
    deployment: Deployment = stages.run("deploy", deploy_task, spec, artifact, resolved)
    crash_point("after-deploy")
    for note in deployment.notes:
        stages.note(note)
    release.serving_revision = {"digest": deployment.revision, "inputs": deployment.revision_inputs,
                                "stable_before": deployment.stable_revision}
    release.runtime = {k: deployment.revision_inputs.get(k) for k in ("runtime", "engine") if k in deployment.revision_inputs}
    base = dict(name=spec.name, artifact_digest=artifact.digest, endpoint=deployment.served_url,
                revision=deployment.revision, revision_inputs=deployment.revision_inputs)
    if deployment.unchanged:
        for stage in ("warm_up", "load_test", "quality", "canary"):
            stages.skip(stage, f"unchanged: serving revision {deployment.revision[:12]} already serves")
        release.decided_by = "deploy: this serving revision already serves"
        return PromotionResult(outcome="unchanged", reason=deployment.notes[-1] if deployment.notes else "", **base)
    try:
        warm_up_and_load_test(spec, stages, deployment, release)
        record = stages.run("canary", canary_task, spec, deployment)
    except BaseException as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        stage = getattr(err, "stage", "promote")
        record = targets.abort(spec, f"{stage} failed: {first}", decided_by=stage)
        release.canary = canary_facts(record or targets.current_record(spec))
        raise
    release.canary = canary_facts(record)
    release.decided_by = record.decided_by
    stages.note(f"{record.phase.value}: {record.reason} (decided by {record.decided_by})")
    obj = f"revision {deployment.revision[:12]}"
    if record.phase == Phase.ROLLED_BACK:
        raise RolledBack("canary", obj, record.reason,
                         f"the stable model serves 100%; each step's figures are in the {spec.name}-canary artifact")
    if record.phase == Phase.PAUSED:
        raise StageFailed("canary", obj, record.reason,
                          "re-run the promotion to resume the canary at this step, or `llmship stop` the candidate")
    return PromotionResult(outcome="promoted", reason=record.reason, **base)


def warm_up_and_load_test(spec: PromotionSpec, stages: Stages, deployment: Deployment, release: Release) -> None:
    """Warm the candidate up, then load-test it against the SLOs; RolledBack if it misses them."""
    if deployment.candidate_url is None:
        why = deployment.candidate_unreachable or "the candidate has no URL this worker reaches"
        stages.skip("warm_up", why)
        stages.skip("load_test", why + "; the canary's gates judge it on the target")
        stages.skip("quality", why)
        return
    url, tok = deployment.candidate_url, deployment.tokenizer
    if "warm_up" in deployment.passed:
        stages.skip("warm_up", "passed before the interrupted run stopped")
    elif spec.warmup.enabled:
        stages.run("warm_up", warm_up_task, url, deployment.served_name, spec, tok)
        targets.mark_passed(spec, "warm_up")
    else:
        stages.skip("warm_up", "warmup.enabled is false")
    obj = f"revision {deployment.revision[:12]}"
    if "load_test" in deployment.passed:
        stages.skip("load_test", "passed before the interrupted run stopped")
    else:
        report = stages.run("load_test", load_test_task, url, deployment.served_name, spec, tok)
        release.load_test = report.vllm_dict(detailed=False)  # vllm bench's --save-result keys, no per-request lists
        if not report.passed:
            release.decided_by = "load test"
            raise RolledBack("load_test", obj, "missed its SLO: " + "; ".join(report.violations),
                             "the stable model still serves; fix the model or the SLO and re-run")
        targets.mark_passed(spec, "load_test")
    quality = spec.engine.predictive.quality if is_predictive(spec) else None
    if quality is None:
        stages.skip("quality", "engine.predictive.quality is not set" if is_predictive(spec)
                    else "an LLM's quality gate is the perplexity check of its quantize stage")
    elif "quality" in deployment.passed:
        stages.skip("quality", "passed before the interrupted run stopped")
    else:
        stable_url = deployment.served_url if deployment.stable_revision else None  # the front door: still all stable
        q = stages.run("quality", quality_task, url, spec, stable_url)
        release.quality = q.model_dump(mode="json")
        if not q.passed:
            release.decided_by = "quality gate"
            raise RolledBack("quality", obj, "the quality gate failed: " + "; ".join(q.violations),
                             "the stable model still serves; retrain the model, or lower "
                             "engine.predictive.quality.min_accuracy if the limit is wrong", detail=q.markdown())
        targets.mark_passed(spec, "quality")


def _record_in_registry(spec: PromotionSpec, stages: Stages, resolved) -> None:
    """Tell the registry which version now serves (alias `serving`); the model serves either way."""
    from tasks.registry import record_promotion

    try:
        record_promotion(resolved.resolved_from or resolved.source, resolved.registry_version, target_key(spec))
        stages.note(f"registry: version {resolved.registry_version} marked serving")
    except StageFailed as err:
        stages.note(f"registry not updated: {err.message} ({err.hint})")


def _release_record(spec: PromotionSpec, release: Release, result: PromotionResult, stages: Stages) -> None:
    """release.json in the store, and the same as a Prefect artifact; a failure to write it is logged."""
    release.finished_at = now_iso()
    release.outcome, release.reason = result.outcome, result.reason
    release.stages = [r.model_dump() for r in stages.records]
    try:
        where = write_release(spec, release)
    except Exception as err:  # the promotion's outcome stands; say where the record could not go
        stages.log.warning("release record not written to %s: %s", spec.storage.uri, err)
        where = "(not written: see the flow log)"
    md = (f"# Release of `{spec.name}`: **{release.outcome}**\n\n"
          f"- decided by: {release.decided_by or '-'}\n- serving revision: `{release.serving_revision.get('digest', '-')}`\n"
          f"- artifact: `{release.artifact.get('digest', '-')}`\n- source: `{release.source.get('source', spec.model.source)}`"
          f" (revision `{release.source.get('revision', '-')}`, registry version {release.source.get('registry_version') or '-'})\n"
          f"- trigger: {release.trigger.get('kind', '-')}\n- record: `{where}`\n\n"
          f"```json\n{release.model_dump_json(indent=2)}\n```\n")
    create_markdown_artifact(markdown=md, key=f"{spec.name}-release", description=f"release record of {spec.name}")


def _summary_artifact(spec: PromotionSpec, result: PromotionResult) -> None:
    rows = "\n".join(f"| {r.stage} | {r.state} | {r.seconds:.1f} | {r.note.replace('|', '/')} |" for r in result.stages)
    reason = result.reason.replace("\n", "<br>")
    inputs = ", ".join(f"{k}" for k in sorted(result.revision_inputs)) if result.revision_inputs else "-"
    md = (
        f"# Promotion of `{spec.name}`: **{result.outcome}**\n\n"
        f"- source: `{spec.model.source}`\n- artifact: `{result.artifact_digest or '-'}`\n"
        f"- serving revision: `{result.revision or '-'}` (over {inputs})\n"
        f"- endpoint: {result.endpoint or '-'}\n- reason: {reason or '-'}\n\n"
        f"| stage | state | seconds | decision |\n|---|---|---|---|\n{rows}\n"
    )
    create_markdown_artifact(markdown=md, key=f"{spec.name}-promotion", description=f"promotion of {spec.name}")
