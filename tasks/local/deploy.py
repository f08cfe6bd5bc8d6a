"""Deploy on the local target: start the candidate beside the stable server, then either move
the stable pointer to it or remove it. Either way one known server serves the name."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from pydantic import BaseModel

from tasks.errors import StageFailed
from tasks.local import server
from tasks.local.state import (
    ServerRecord, append_history, clear_record, list_records, now_iso, read_record, write_record,
)
from tasks.spec import PromotionSpec
from tasks.storage.local import store_root
from tasks.storage.manifest import read_manifest, verify_folder
from tasks.values import Endpoint, PublishedArtifact, ResolvedModel

STAGE = "deploy"
log = logging.getLogger("llmship.deploy")


class DeployDecision(BaseModel):
    unchanged: bool  # the same artifact already serves as stable: nothing to roll out
    candidate: Endpoint | None = None
    stable: Endpoint | None = None
    note: str = ""


def _endpoint(rec: ServerRecord) -> Endpoint:
    return Endpoint(name=rec.served_name, base_url=rec.base_url, artifact_digest=rec.artifact_digest,
                    pid=rec.pid, log_path=rec.log_path)


def live_stable(spec: PromotionSpec) -> ServerRecord | None:
    """The stable record, if its server is alive and answers; a dead one is reported, not trusted."""
    rec = read_record(spec.storage.uri, spec.name, "stable")
    if rec is None:
        return None
    if not server.is_alive(rec.pid) or server.check_ready(rec.base_url, rec.served_name, timeout_s=10):
        log.warning("stable record for %s points at %s (pid %s), which does not serve; treating as no stable",
                    spec.name, rec.base_url, rec.pid)
        return None
    return rec


def remove_leftover_candidate(spec: PromotionSpec) -> str:
    """A crash mid-promotion can leave a candidate running; a re-run removes it first."""
    rec = read_record(spec.storage.uri, spec.name, "candidate")
    if rec is None:
        return ""
    server.stop_server(rec.pid)
    clear_record(spec.storage.uri, spec.name, "candidate")
    append_history(spec.storage.uri, spec.name, {"event": "leftover_candidate_removed", "digest": rec.artifact_digest})
    return f"removed a leftover candidate ({rec.artifact_digest[:12]}) from an interrupted run"


def deploy_local(spec: PromotionSpec, artifact: PublishedArtifact, resolved: ResolvedModel) -> DeployDecision:
    notes = [n for n in [remove_leftover_candidate(spec)] if n]
    stable = live_stable(spec)
    if stable and stable.artifact_digest == artifact.digest:
        return DeployDecision(unchanged=True, stable=_endpoint(stable),
                              note=f"{artifact.digest[:12]} already serves at {stable.base_url} since {stable.since}")
    if not artifact.local_path:
        raise StageFailed(STAGE, artifact.uri, "the local target serves from a local folder, and this artifact has none",
                          "use a local folder or pvc:// store with target local")
    manifest = read_manifest(artifact.local_path)
    problems = verify_folder(artifact.local_path, manifest) if manifest else ["manifest.json missing"]
    if problems:
        raise StageFailed(STAGE, artifact.local_path, "the artifact does not match its manifest",
                          "re-publish: delete the folder and re-run", detail="\n".join(problems))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    log_path = store_root(spec.storage.uri) / "servers" / f"{spec.name}-{artifact.digest[:12]}-{stamp}.log"
    candidate = server.start_vllm(artifact.local_path, spec.served_name, spec.engine.args, spec.target,
                                  log_path, port=None if stable is None else _candidate_port(spec))
    candidate = candidate.model_copy(update={"artifact_digest": artifact.digest})
    write_record(spec.storage.uri, _record(spec, candidate, artifact, resolved), "candidate")
    return DeployDecision(unchanged=False, candidate=candidate, stable=_endpoint(stable) if stable else None,
                          note="; ".join(notes))


def _candidate_port(spec: PromotionSpec) -> int:
    # A fixed target.port belongs to whichever server is stable; the candidate beside it takes a free one.
    return server.free_port(spec.target.host)


def _record(spec: PromotionSpec, ep: Endpoint, artifact: PublishedArtifact, resolved: ResolvedModel) -> ServerRecord:
    return ServerRecord(
        name=spec.name, served_name=spec.served_name, artifact_digest=artifact.digest,
        artifact_path=artifact.local_path or artifact.uri, source=resolved.source, revision=resolved.revision,
        registry_version=resolved.registry_version, spec_digest=spec.digest(), base_url=ep.base_url, pid=ep.pid,
        log_path=ep.log_path, since=now_iso(),
    )


def promote_candidate(spec: PromotionSpec, decision: DeployDecision) -> None:
    """Move the stable pointer to the candidate, then stop the old stable server."""
    cand = read_record(spec.storage.uri, spec.name, "candidate")
    if cand is None:
        raise StageFailed("canary", spec.name, "no candidate record to promote", "re-run the promotion")
    old = read_record(spec.storage.uri, spec.name, "stable")
    write_record(spec.storage.uri, cand.model_copy(update={"since": now_iso()}), "stable")
    clear_record(spec.storage.uri, spec.name, "candidate")
    if old and old.pid != cand.pid:
        server.stop_server(old.pid)
    append_history(spec.storage.uri, spec.name, {
        "event": "promoted", "digest": cand.artifact_digest, "previous": old.artifact_digest if old else None,
        "source": cand.source, "registry_version": cand.registry_version,
    })


def roll_back(spec: PromotionSpec, reason: str) -> None:
    """Stop the candidate; the stable pointer and server are untouched."""
    cand = read_record(spec.storage.uri, spec.name, "candidate")
    if cand is not None:
        server.stop_server(cand.pid)
        clear_record(spec.storage.uri, spec.name, "candidate")
        append_history(spec.storage.uri, spec.name, {"event": "rolled_back", "digest": cand.artifact_digest,
                                                     "pid": cand.pid, "reason": reason})


def stop_all(store_uri: str, name: str | None = None) -> list[str]:
    """Stop every local server the store knows of (or those of one name); what was stopped."""
    stopped = []
    for role, rec in list_records(store_uri):
        if name and rec.name != name:
            continue
        if server.stop_server(rec.pid):
            stopped.append(f"{rec.name} ({role}) pid {rec.pid} at {rec.base_url}")
        clear_record(store_uri, rec.name, role)
        append_history(store_uri, rec.name, {"event": "stopped", "role": role, "digest": rec.artifact_digest})
    return stopped
