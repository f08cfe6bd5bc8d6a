"""Deploy on the local target: a candidate vLLM server beside the stable one, behind the name's
front door (tasks.local.frontdoor), with a canary record saying where the promotion stands.

    <store>/state/<name>.json            the stable pointer (tasks.local.state)
    <store>/state/<name>.candidate.json  the candidate being tried
    <store>/state/<name>.canary.json     the canary's record (tasks.canary.machine), saved at every transition
    <store>/frontdoor/<name>/            HAProxy: one fixed address per name

Only an identical serving revision is `unchanged`. A re-run after a crash resumes the same
candidate from the canary record, or rolls back another one first.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from datetime import datetime, timezone

from tasks.canary.machine import CanaryRecord, Phase
from tasks.errors import StageFailed
from tasks.local import frontdoor as fd
from tasks.local import server
from tasks.local.state import (
    ServerRecord, append_history, clear_record, list_records, now_iso, read_record, state_file, write_record,
)
from tasks.revision import ServingRevision, changed_inputs, local_revision
from tasks.spec import PromotionSpec, is_predictive
from tasks.storage.local import store_root
from tasks.storage.manifest import read_manifest, verify_folder
from tasks.values import Deployment, PublishedArtifact, ResolvedModel

STAGE = "deploy"
log = logging.getLogger("llmship.deploy")


def target_key(spec: PromotionSpec) -> str:
    return f"local:{spec.name}"


def revision_for(spec: PromotionSpec, artifact: PublishedArtifact) -> ServingRevision:
    return local_revision(spec, artifact.digest)


# -- the canary record ---------------------------------------------------------------------


def load_record(spec: PromotionSpec) -> CanaryRecord | None:
    path = state_file(spec.storage.uri, spec.name, "canary")
    if not path.is_file():
        return None
    return CanaryRecord.model_validate_json(path.read_text())


def save_record(spec: PromotionSpec, record: CanaryRecord) -> None:
    from tasks.local.state import write_text_atomic

    write_text_atomic(state_file(spec.storage.uri, spec.name, "canary"), record.model_dump_json(indent=2) + "\n")


# -- what serves now -----------------------------------------------------------------------


def front_door(spec: PromotionSpec) -> fd.FrontDoor:
    # MLServer answers /health with 404: its health is the model's own V2 readiness
    check = f"/v2/models/{spec.served_name}/ready" if is_predictive(spec) else "/health"
    return fd.ensure_frontdoor(spec.storage.uri, spec.name, spec.target.host, spec.target.port,
                               settings=fd.FrontDoorSettings(check_path=check))


def serves(rec: ServerRecord | None) -> str | None:
    """None when the recorded server answers a real completion (or inference); else what is wrong."""
    if rec is None:
        return "no record"
    if not server.is_alive(rec.pid):
        return f"pid {rec.pid} is not running"
    if rec.server == "mlserver":
        from tasks.local.mlserver import check_ready_v2

        return check_ready_v2(rec.base_url, rec.served_name, timeout_s=10)
    return server.check_ready(rec.base_url, rec.served_name, timeout_s=10)


def live_stable(spec: PromotionSpec) -> ServerRecord | None:
    """The stable record, if its server answers; a dead one is reported, not trusted."""
    rec = read_record(spec.storage.uri, spec.name, "stable")
    why = serves(rec) if rec else None
    if rec and why:
        log.warning("stable record for %s points at %s, which does not serve (%s)", spec.name, rec.base_url, why)
        return None
    return rec


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _host_ip(rec: ServerRecord) -> str:
    return rec.base_url.split("//", 1)[1].rsplit(":", 1)[0]


def route_stable(spec: PromotionSpec, stable: ServerRecord) -> tuple[fd.FrontDoor, str]:
    """Make sure the front door sends everything to stable (after a restart, or a crash mid-switch)."""
    door = front_door(spec)
    slot = door.slot_of(_host_ip(stable), _port(stable.base_url))
    if slot is None:
        slot = fd.put_server(door, _host_ip(stable), _port(stable.base_url), weight=100).name
    door = fd.load_frontdoor(spec.storage.uri, spec.name) or door
    others = {s.name: 0 for s in door.slots if s.name != slot and s.server is not None and s.state == "ready"}
    fd.set_weights(door, {slot: 100, **others})
    if stable.slot != slot:
        write_record(spec.storage.uri, stable.model_copy(update={"slot": slot}), "stable")
    return door, slot


# -- CPU binding ---------------------------------------------------------------------------


def cpu_bind_for(spec: PromotionSpec, stable: ServerRecord | None) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for a new server: split gives stable and candidate their own cores."""
    mode = spec.target.cpu_bind
    if mode == "none":
        return "nobind"
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "auto" or len(cpus) < 2:
        return None
    half = len(cpus) // 2
    first, second = (",".join(map(str, part)) for part in (cpus[:half], cpus[half:]))
    return second if stable is not None and stable.cpus == first else first


# -- deploy --------------------------------------------------------------------------------


def _record(spec, ep, artifact, resolved, revision: ServingRevision, slot: str | None, cpus: str | None) -> ServerRecord:
    return ServerRecord(
        name=spec.name, served_name=spec.served_name, artifact_digest=artifact.digest,
        artifact_path=artifact.local_path or artifact.uri, source=resolved.source, revision=resolved.revision,
        serving_revision=revision.digest, serving_inputs=revision.inputs, registry_version=resolved.registry_version,
        spec_digest=spec.digest(),
        base_url=ep.base_url, pid=ep.pid, log_path=ep.log_path, since=now_iso(), slot=slot, cpus=cpus,
    )


def _deployment(spec, revision: ServingRevision, door: fd.FrontDoor, stable: ServerRecord | None, **kw) -> Deployment:
    return Deployment(target="local", name=spec.name, served_name=spec.served_name, revision=revision.digest,
                      revision_inputs=revision.inputs, stable_revision=stable.serving_revision if stable else None,
                      served_url=door.url, **kw)


def start_server(spec: PromotionSpec, artifact_path: str, digest: str, cpus: str | None):
    """Start vLLM (or MLServer) for an artifact on a free loopback port, vLLM pinned to `cpus`;
    its log goes to the store."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    log_path = store_root(spec.storage.uri) / "servers" / f"{spec.name}-{digest[:12]}-{stamp}.log"
    if is_predictive(spec):
        from tasks.local.mlserver import start_mlserver

        t = spec.target
        return start_mlserver(artifact_path, spec.served_name, spec.engine.predictive, t.host, server.free_port(t.host),
                              log_path, kind=spec.engine.kind, startup_timeout_s=t.startup_timeout_s)
    return server.start_vllm(artifact_path, spec.served_name, spec.engine.args, spec.target, log_path,
                             port=server.free_port(spec.target.host),
                             env_extra={"VLLM_CPU_OMP_THREADS_BIND": cpus} if cpus else None)


def _verified(artifact: PublishedArtifact) -> str:
    if not artifact.local_path:
        raise StageFailed(STAGE, artifact.uri, "the local target serves from a local folder, and this artifact has none",
                          "use a local folder or pvc:// store with target local")
    manifest = read_manifest(artifact.local_path)
    problems = verify_folder(artifact.local_path, manifest) if manifest else ["manifest.json missing"]
    if problems:
        raise StageFailed(STAGE, artifact.local_path, "the artifact does not match its manifest",
                          "re-publish: delete the folder and re-run", detail="\n".join(problems))
    return artifact.local_path


def _stop_unrecorded(spec: PromotionSpec) -> list[str]:
    """Servers of this name that an interrupted run started but never recorded (killed while the
    candidate was still starting): found by the log path each server carries in its environment."""
    known = {r.log_path for _, r in list_records(spec.storage.uri) if r.log_path}
    notes = []
    for log_path, procs in server.unrecorded_servers(store_root(spec.storage.uri), known).items():
        if re.fullmatch(rf"{re.escape(spec.name)}-[0-9a-f]{{12}}-\d{{8}}T\d{{6}}\.log", Path(log_path).name):
            server.stop_processes(procs)
            notes.append(f"stopped a server an interrupted run had started and not recorded ({Path(log_path).name})")
    return notes


def deploy_local(spec: PromotionSpec, artifact: PublishedArtifact, resolved: ResolvedModel,
                 revision: ServingRevision) -> Deployment:
    from tasks.local.router import abort_record

    notes: list[str] = []
    record = load_record(spec)
    if record is not None and not record.done:
        cand = read_record(spec.storage.uri, spec.name, "candidate")
        if record.candidate_revision == revision.digest and cand is not None and not serves(cand):
            door = front_door(spec)
            notes.append(f"resumed the promotion of {revision.short} in phase {record.phase.value}"
                         f" at step {record.step_index + 1} of {len(record.plan) or 1}")
            stable = read_record(spec.storage.uri, spec.name, "stable")
            return _deployment(spec, revision, door, stable, candidate_url=cand.base_url,
                               tokenizer=cand.artifact_path, resumed=True, passed=tuple(record.pre_rollout),
                               notes=tuple(notes))
        why = ("another revision" if record.candidate_revision != revision.digest
               else "its candidate no longer serves")
        abort_record(spec, record, f"a new promotion found an unfinished canary ({why}); rolled back first",
                     decided_by="next run")
        notes.append(f"rolled back an unfinished promotion of {record.candidate_revision[:12]} ({why})")
    else:
        notes += _stop_unrecorded(spec)
        leftover = read_record(spec.storage.uri, spec.name, "candidate")
        if leftover is not None:  # a crash before the canary record existed
            server.stop_server(leftover.pid)
            clear_record(spec.storage.uri, spec.name, "candidate")
            append_history(spec.storage.uri, spec.name, {"event": "leftover_candidate_removed",
                                                         "revision": leftover.serving_revision})
            notes.append(f"removed a leftover candidate ({leftover.artifact_digest[:12]}) from an interrupted run")

    stable = live_stable(spec)
    if stable and stable.serving_revision == revision.digest:
        door, _ = route_stable(spec, stable)
        return _deployment(spec, revision, door, stable, unchanged=True, notes=tuple(notes + [
            f"revision {revision.short} already serves at {door.url} since {stable.since}"]))
    if stable:
        what = changed_inputs(stable.serving_inputs, revision.inputs)
        notes.append(f"serving revision {(stable.serving_revision or '(unrecorded)')[:12]} -> "
                     f"{revision.short}: {', '.join(what)} changed")
        door, _ = route_stable(spec, stable)
    else:
        door = front_door(spec)

    path = _verified(artifact)
    cpus = None if is_predictive(spec) else cpu_bind_for(spec, stable)
    started = time.monotonic()
    ep = start_server(spec, path, artifact.digest, cpus)
    cand = _record(spec, ep.model_copy(update={"artifact_digest": artifact.digest}), artifact, resolved, revision,
                   None, cpus).model_copy(update={"startup_s": round(time.monotonic() - started, 2),
                                                  "server": "mlserver" if is_predictive(spec) else "vllm",
                                                  "metrics_url": getattr(ep, "metrics_url", None)})
    write_record(spec.storage.uri, cand, "candidate")
    try:
        slot = fd.put_server(door, _host_ip(cand), _port(cand.base_url), weight=0).name
    except BaseException:
        server.stop_server(cand.pid)
        clear_record(spec.storage.uri, spec.name, "candidate")
        raise
    write_record(spec.storage.uri, cand.model_copy(update={"slot": slot}), "candidate")
    plan = list(spec.canary.steps) if stable else []
    save_record(spec, CanaryRecord(target=target_key(spec), candidate_revision=revision.digest,
                                   stable_revision=stable.serving_revision if stable else None, plan=plan,
                                   failure_limit=spec.canary.failure_limit,
                                   handle={"candidate_slot": slot, "stable_slot": stable.slot if stable else None}))
    return _deployment(spec, revision, door, stable, candidate_url=cand.base_url, tokenizer=path, notes=tuple(notes))


def stop_all(store_uri: str, name: str | None = None) -> list[str]:
    """Stop every local server and front door the store knows of (or those of one name)."""
    stopped = []
    names = set()
    for role, rec in list_records(store_uri):
        if name and rec.name != name:
            continue
        names.add(rec.name)
        if server.stop_server(rec.pid):
            stopped.append(f"{rec.name} ({role}) pid {rec.pid} at {rec.base_url}")
        clear_record(store_uri, rec.name, role)
        append_history(store_uri, rec.name, {"event": "stopped", "role": role, "revision": rec.serving_revision})
    for door_name in fd.list_frontdoors(store_uri):
        if name and door_name != name:
            continue
        status = fd.describe(store_uri, door_name)
        if fd.stop_frontdoor(store_uri, door_name):
            stopped.append(f"{door_name} front door at {status.url if status else '?'}")
    return stopped
