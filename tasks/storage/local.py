"""The local artifact store: a folder with the same layout as a PVC.

    <store>/artifacts/<name>/<digest[:16]>/   model files, then manifest.json
    <store>/state/<name>.json                 the stable pointer (tasks.local.state)
    <store>/servers/                          server logs
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tasks.errors import BadInput, StageFailed
from tasks.storage.manifest import Lineage, build_manifest, hash_tree, read_manifest, verify_folder, write_manifest_last
from tasks.values import PublishedArtifact


def store_root(uri: str) -> Path:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise BadInput("publish", uri, "not a local folder store", "use a folder path, or the pvc:// / s3:// publisher")
    return Path(uri).expanduser().resolve()


def artifact_dir(root: Path, name: str, digest: str) -> Path:
    return root / "artifacts" / name / digest[:16]


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same filesystem: no bytes copied; deploy re-verifies against the manifest
    except OSError:
        shutil.copy2(src, dst)


def publish_local(model_dir: str, store_uri: str, name: str, spec_digest: str, lineage: Lineage) -> PublishedArtifact:
    """Place a model folder into the store under its content digest; manifest.json last."""
    src = Path(model_dir)
    digest, files = hash_tree(src)  # refuses links that leave the folder: the store never holds them
    root = store_root(store_uri)
    dest = artifact_dir(root, name, digest)
    try:
        existing = read_manifest(dest)
    except BadInput:
        existing = None  # a damaged manifest in our own store: the artifact is rebuilt below
    if existing is not None and existing.artifact_digest == digest and not verify_folder(dest, existing):
        return PublishedArtifact(uri=str(dest), local_path=str(dest), digest=digest, manifest_uri=str(dest / "manifest.json"))
    if dest.exists():
        shutil.rmtree(dest)  # a half-written artifact from a crash: no manifest, so nobody uses it
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for entry in files:
        # the real file, not a link to it (link(2) would copy the link itself); hash_tree has
        # checked that every link stays inside src
        _link_or_copy(Path(os.path.realpath(src / entry.path)), staging / entry.path)
    manifest = build_manifest(name, spec_digest, files, lineage)
    problems = verify_folder(staging, manifest)
    if problems:
        raise StageFailed("publish", str(dest), "copied files do not match their source", "check the disk and re-run",
                          detail="\n".join(problems))
    write_manifest_last(staging, manifest)
    os.replace(staging, dest)
    return PublishedArtifact(uri=str(dest), local_path=str(dest), digest=digest, manifest_uri=str(dest / "manifest.json"))
