"""Content digests of model folders and the manifest.json that describes an artifact."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
_CHUNK = 1 << 20
# Hashing a multi-GB model on every re-run would dominate a no-op promotion; file hashes are
# remembered by (size, mtime, inode) in a sidecar beside the folder's parent.
_STAT_CACHE_NAME = ".llmship-hashes.json"


class FileEntry(BaseModel):
    path: str
    size: int
    sha256: str


class Lineage(BaseModel):
    source: str
    revision: str
    registry_version: str | None = None
    model_digest: str  # the downloaded model this artifact came from
    quantization: str = "none"
    engine: str = "vllm"
    llmship_version: str = ""


class Manifest(BaseModel):
    schema_: str = Field("llmship.manifest/v1", alias="schema")
    name: str
    artifact_digest: str
    spec_digest: str
    created_at: str
    files: list[FileEntry]
    lineage: Lineage

    model_config = {"populate_by_name": True}

    def dump(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: str | Path, exclude: tuple[str, ...] = (MANIFEST,)) -> tuple[str, list[FileEntry]]:
    """Digest a folder by content: sha256 over every (relative path, file sha256), sorted."""
    root = Path(root)
    cache_path = root / _STAT_CACHE_NAME
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    entries: list[FileEntry] = []
    fresh: dict[str, list] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude or rel == _STAT_CACHE_NAME or rel.startswith(".cache/"):
            continue
        st = path.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = cache.get(rel)
        digest = hit[1] if hit and hit[0] == key else _sha256_file(path)
        fresh[rel] = [key, digest]
        entries.append(FileEntry(path=rel, size=st.st_size, sha256=digest))
    if fresh != cache:
        try:
            cache_path.write_text(json.dumps(fresh))
        except OSError:
            pass  # a read-only source folder just means hashing again next time
    return digest_of(entries), entries


def digest_of(entries: list[FileEntry]) -> str:
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.sha256}\n".encode())
    return h.hexdigest()


def build_manifest(name: str, spec_digest: str, files: list[FileEntry], lineage: Lineage) -> Manifest:
    return Manifest(
        name=name,
        artifact_digest=digest_of(files),
        spec_digest=spec_digest,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        files=files,
        lineage=lineage,
    )


def write_manifest_last(folder: str | Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically, after every file it lists is in place."""
    folder = Path(folder)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(manifest.dump())
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def read_manifest(folder: str | Path) -> Manifest | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return Manifest.model_validate_json(path.read_text())


def verify_folder(folder: str | Path, manifest: Manifest) -> list[str]:
    """Problems found comparing a folder with its manifest; empty when they agree."""
    _, entries = hash_tree(folder)
    have = {e.path: e for e in entries}
    problems = []
    for want in manifest.files:
        got = have.get(want.path)
        if got is None:
            problems.append(f"{want.path}: missing")
        elif (got.size, got.sha256) != (want.size, want.sha256):
            problems.append(f"{want.path}: content differs from the manifest")
    return problems
