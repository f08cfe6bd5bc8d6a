"""Content digests of model folders and the manifest.json that describes an artifact.

Two rules hold wherever a folder is hashed, published or downloaded:

- every relative path (a manifest entry, an S3 key below its prefix, a Hub file name) names a
  file inside its folder: no absolute path, no empty, `.` or `..` segment (`relpath_problem`);
- a link in a model folder may point at another file or folder inside it (it is read as that
  file), but never outside it: such a link, or a dangling one, is bad input naming it, so an
  artifact never carries the content of a file that is not part of the model (`tree_files`).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

from tasks.errors import BadInput

MANIFEST = "manifest.json"
_CHUNK = 1 << 20
# Hashing a multi-GB model on every re-run would dominate a no-op promotion; file hashes are
# remembered by (size, mtime, inode) in a sidecar beside the folder's parent.
_STAT_CACHE_NAME = ".llmship-hashes.json"


MAX_FILES = 100_000  # files in one model folder; far above any real checkpoint


def relpath_problem(rel: str) -> str | None:
    """Why rel cannot name a file inside a folder (None when it can). POSIX separators only."""
    if not rel:
        return "is empty"
    if "\0" in rel:
        return "holds a NUL character"
    if rel.startswith("/"):
        return "is an absolute path"
    parts = rel.split("/")
    if any(p == ".." for p in parts):
        return "climbs out of its folder ('..')"
    if any(p in ("", ".") for p in parts):
        return "has an empty or '.' path segment"
    return None


def inside(folder: str | Path, rel: str, stage: str, obj: str) -> Path:
    """folder/rel, refused (BadInput naming obj) unless it stays inside folder."""
    problem = relpath_problem(rel)
    target = Path(folder) / rel
    if problem is None and not _within(os.path.realpath(target), os.path.realpath(folder)):
        problem = "resolves outside its folder through a link"
    if problem:
        raise BadInput(stage, obj, f"the path {rel!r} {problem}", "remove or rename it: every file must sit inside the folder")
    return target


def _within(real: str, bound: str) -> bool:
    return real == bound or real.startswith(bound.rstrip(os.sep) + os.sep)


class FileEntry(BaseModel):
    path: str
    size: int
    sha256: str

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        problem = relpath_problem(v)
        if problem:
            raise ValueError(f"the entry {v!r} {problem}")
        return v


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


def tree_files(root: str | Path, stage: str = "publish", allow_within: str | Path | None = None) -> list[tuple[str, Path]]:
    """(relative path, real file) for every file under root, sorted, links resolved.

    A link may point anywhere inside allow_within (default: root itself; a Hugging Face cache
    snapshot links into its repo's blobs/ folder, so download passes that repo folder). A link
    leaving it, or a dangling link, is BadInput naming each one. A link to a folder is followed
    unless it points back at a folder above it (a cycle). Sockets, pipes and devices are skipped.
    """
    root = Path(root)
    bound = os.path.realpath(allow_within if allow_within is not None else root)
    files: list[tuple[str, Path]] = []
    leaving: list[str] = []

    def walk(folder: Path, prefix: str, above: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise BadInput(stage, str(folder), f"cannot list the folder: {err.strerror or err}",
                           "check that it exists and is readable") from None
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if not os.path.exists(real):
                    leaving.append(f"{rel} (a dangling link)")
                elif not _within(real, bound):
                    leaving.append(f"{rel} -> {os.readlink(entry.path)}")
                elif os.path.isdir(real):
                    if real not in above:  # a link back up would never end
                        walk(Path(entry.path), rel + "/", above | {real})
                elif os.path.isfile(real):
                    files.append((rel, Path(real)))
            elif entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), rel + "/", above | {os.path.realpath(entry.path)})
            elif entry.is_file(follow_symlinks=False):
                files.append((rel, Path(entry.path)))
            if len(files) > MAX_FILES:
                raise BadInput(stage, str(root), f"more than {MAX_FILES} files (links may repeat folders)",
                               "point at the model folder itself")

    walk(root, "", frozenset({os.path.realpath(root)}))
    if leaving:
        raise BadInput(stage, str(root), f"{len(leaving)} link(s) point outside the model folder: " + ", ".join(leaving[:20]),
                       "replace each link by the file itself (or remove it): an artifact only carries the model's own files")
    return files


def hash_tree(root: str | Path, exclude: tuple[str, ...] = (MANIFEST,), stage: str = "publish",
              allow_within: str | Path | None = None) -> tuple[str, list[FileEntry]]:
    """Digest a folder by content: sha256 over every (relative path, file sha256), sorted.

    Links are checked and resolved as tree_files says: a link leaving the folder is BadInput."""
    root = Path(root)
    cache_path = root / _STAT_CACHE_NAME
    cache: dict = {}
    if not cache_path.is_symlink():  # never read or write the sidecar through a link
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
        cache = cache if isinstance(cache, dict) else {}
    entries: list[FileEntry] = []
    fresh: dict[str, list] = {}
    for rel, path in tree_files(root, stage, allow_within):
        if rel in exclude or rel == _STAT_CACHE_NAME or rel.startswith(".cache/"):
            continue
        st = path.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = cache.get(rel)
        digest = hit[1] if isinstance(hit, list) and len(hit) == 2 and hit[0] == key else _sha256_file(path)
        fresh[rel] = [key, digest]
        entries.append(FileEntry(path=rel, size=st.st_size, sha256=digest))
    if fresh != cache and not cache_path.is_symlink():
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


def parse_manifest(text: str | bytes, where: str, stage: str = "publish") -> Manifest:
    """A manifest's JSON, validated: every entry names a file inside the artifact (BadInput if not)."""
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as err:
        problems = [e["msg"].removeprefix("Value error, ") for e in err.errors()][:5]
        raise BadInput(stage, where, "not a valid llmship manifest: " + "; ".join(problems),
                       "re-publish the artifact; never hand-edit manifest.json") from None


def read_manifest(folder: str | Path, stage: str = "publish") -> Manifest | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return parse_manifest(path.read_bytes(), str(path), stage)


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
