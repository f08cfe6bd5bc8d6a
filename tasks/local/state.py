"""The stable pointer: a state file in the store saying which artifact serves, where, since when.

A candidate being tried is recorded too, so `llmship stop` and a re-run after a crash can
find and remove it: a promotion always ends with one known server per name.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from tasks.storage.local import store_root


class ServerRecord(BaseModel):
    name: str
    served_name: str = ""  # state files written before this field existed serve under `name`
    artifact_digest: str
    artifact_path: str
    source: str
    revision: str  # the source's pinned revision (commit sha, folder digest, registry version's source)
    registry_version: str | None = None
    spec_digest: str
    base_url: str
    pid: int | None
    log_path: str | None
    since: str
    serving_revision: str | None = None  # digest of everything that shapes the server (tasks.revision); None before it
    serving_inputs: dict = {}
    slot: str | None = None  # the front door slot it sits in
    cpus: str | None = None  # VLLM_CPU_OMP_THREADS_BIND it was started with
    startup_s: float | None = None  # from start until it answered a real completion
    server: str = "vllm"  # vllm | mlserver
    metrics_url: str | None = None  # where its Prometheus metrics are (MLServer serves them on their own port)


    def model_post_init(self, __context) -> None:
        if not self.served_name:
            self.served_name = self.name


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _state_dir(store_uri: str) -> Path:
    return store_root(store_uri) / "state"


ROLES = ("stable", "candidate")  # server records; "canary" is the canary's record (tasks.canary.machine)


def state_file(store_uri: str, name: str, role: str) -> Path:
    suffix = "" if role == "stable" else f".{role}"
    return _state_dir(store_uri) / f"{name}{suffix}.json"



def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)



def read_record(store_uri: str, name: str, role: str = "stable") -> ServerRecord | None:
    path = state_file(store_uri, name, role)
    if not path.is_file():
        return None
    return ServerRecord.model_validate_json(path.read_text())


def read_stable(store_uri: str, name: str) -> ServerRecord | None:
    return read_record(store_uri, name, "stable")


def write_record(store_uri: str, record: ServerRecord, role: str = "stable") -> None:
    write_text_atomic(state_file(store_uri, record.name, role), record.model_dump_json(indent=2) + "\n")


def clear_record(store_uri: str, name: str, role: str) -> None:
    state_file(store_uri, name, role).unlink(missing_ok=True)


def append_history(store_uri: str, name: str, event: dict) -> None:
    path = _state_dir(store_uri) / f"{name}.history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"at": now_iso(), **event}, sort_keys=True) + "\n")


def list_records(store_uri: str) -> list[tuple[str, ServerRecord]]:
    """(role, record) for every server the store knows of."""
    out = []
    folder = _state_dir(store_uri)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        parts = path.name[: -len(".json")].rsplit(".", 1)
        role = parts[1] if len(parts) == 2 and parts[1] in ROLES + ("canary",) else "stable"
        if role in ROLES:
            out.append((role, ServerRecord.model_validate_json(path.read_text())))
    return out
