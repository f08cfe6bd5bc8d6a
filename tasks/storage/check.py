"""Is a published artifact still whole? A cheap check against its manifest, for cached results.

A cached publish result says where an artifact is; before it is trusted, every file its manifest
lists must still be there with its size: stat calls in a folder (local store, PVC), one listing
of the prefix on S3 plus a read of the small manifest.json. Contents are not hashed here (deploy
and publish do that when they run); a file replaced by one of the same size is their catch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.errors import LlmshipError
from tasks.storage.manifest import MANIFEST, Manifest, read_manifest
from tasks.values import PublishedArtifact

log = logging.getLogger("llmship.storage")


def artifact_is_whole(artifact: PublishedArtifact, s3_endpoint_url: str | None = None) -> bool:
    if artifact.local_path:  # the local store and a mounted PVC share one layout
        return folder_is_whole(Path(artifact.local_path), artifact.digest)
    if artifact.uri.startswith("s3://"):
        return s3_is_whole(artifact.uri, artifact.digest, s3_endpoint_url)
    return True


def _matches(manifest: Manifest | None, digest: str, sizes: dict[str, int], where: str) -> bool:
    if manifest is None:
        log.info("%s: no manifest.json", where)
        return False
    if manifest.artifact_digest != digest:
        log.info("%s: the manifest describes another artifact", where)
        return False
    for f in manifest.files:
        if sizes.get(f.path) != f.size:
            log.info("%s: %s is %s (manifest: %d bytes)", where, f.path,
                     "missing" if f.path not in sizes else f"{sizes[f.path]} bytes", f.size)
            return False
    return True


def folder_is_whole(folder: Path, digest: str) -> bool:
    try:
        manifest = read_manifest(folder)
    except LlmshipError:
        return False
    if manifest is None:
        return _matches(None, digest, {}, str(folder))
    sizes = {}
    for f in manifest.files:
        path = folder / f.path
        if path.is_file():
            sizes[f.path] = path.stat().st_size
    return _matches(manifest, digest, sizes, str(folder))


def s3_is_whole(uri: str, digest: str, endpoint_url: str | None = None) -> bool:
    from tasks.storage.s3 import _join, client, parse_s3_url, read_manifest_s3

    try:
        bucket, prefix = parse_s3_url(uri)
        s3 = client(endpoint_url)
        sizes: dict[str, int] = {}
        start = len(_join(prefix)) + 1
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=_join(prefix) + "/"):
            sizes.update({o["Key"][start:]: o["Size"] for o in page.get("Contents", [])})
        if MANIFEST not in sizes:
            return _matches(None, digest, sizes, uri)
        return _matches(read_manifest_s3(s3, bucket, prefix), digest, sizes, uri)
    except Exception as err:  # unreachable, denied, a damaged manifest: not trusted; publish will say why
        log.info("%s: cannot check the artifact (%s)", uri, type(err).__name__)
        return False
