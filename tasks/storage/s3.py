"""The S3 artifact store: s3://bucket/prefix, the same layout as the local store.

    s3://bucket/prefix/artifacts/<name>/<digest[:16]>/   model files, then manifest.json

Files go up with boto3's managed transfer (multipart above the threshold), each carrying its
sha256 as object metadata; manifest.json is put last, after every object it lists has been
checked, so a reader that finds the manifest finds every file. Credentials come from boto3's
usual chain (env, profile, IRSA) and are never logged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

from tasks.errors import BadInput, StageFailed
from tasks.storage.manifest import (
    MANIFEST,
    Lineage,
    Manifest,
    build_manifest,
    hash_tree,
    inside,
    parse_manifest,
    verify_folder,
)
from tasks.values import PublishedArtifact

MIB = 1024 * 1024
SHA_META = "sha256"  # x-amz-meta-sha256


def transfer_config(threshold_mib: int = 16, chunk_mib: int = 16, concurrency: int = 8):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=threshold_mib * MIB, multipart_chunksize=chunk_mib * MIB,
                          max_concurrency=concurrency, use_threads=True)


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix") with no leading or trailing slash."""
    p = urlparse(url)
    if p.scheme != "s3" or not p.netloc:
        raise BadInput("publish", url, "not an s3:// URL", "use s3://bucket/prefix")
    return p.netloc, p.path.strip("/")


def client(endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url,
                        config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _client_error(err: Exception, stage: str, obj: str) -> StageFailed | BadInput:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return BadInput(stage, obj, "no AWS credentials found",
                        "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or a pod role")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            return BadInput(stage, obj, "bucket not found", "create the bucket or fix storage.uri")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return BadInput(stage, obj, f"access denied ({code})", "check the credentials' S3 permissions")
        return StageFailed(stage, obj, f"S3 error {code}", "retry; check the endpoint", detail=str(err))
    return StageFailed(stage, obj, f"S3 request failed: {type(err).__name__}", "check storage.s3_endpoint_url",
                       detail=str(err))


def read_manifest_s3(s3, bucket: str, prefix: str, stage: str = "publish") -> Manifest | None:
    """The manifest under prefix, None when there is none; BadInput when it is not a valid one."""
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=_join(prefix, MANIFEST))["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return parse_manifest(body, f"s3://{bucket}/{_join(prefix, MANIFEST)}", stage)


def verify_s3(s3, bucket: str, prefix: str, manifest: Manifest) -> list[str]:
    """Problems comparing the objects under prefix with the manifest (sizes and recorded sha256)."""
    problems = []
    have: dict[str, dict] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=_join(prefix) + "/"):
        for obj in page.get("Contents", []):
            have[obj["Key"]] = obj
    for f in manifest.files:
        key = _join(prefix, f.path)
        obj = have.get(key)
        if obj is None:
            problems.append(f"{f.path}: missing")
            continue
        if obj["Size"] != f.size:
            problems.append(f"{f.path}: {obj['Size']} bytes, manifest says {f.size}")
            continue
        meta = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
        if meta.get(SHA_META) != f.sha256:
            problems.append(f"{f.path}: sha256 metadata differs from the manifest")
    return problems


def publish_s3(model_dir: str, store_uri: str, name: str, spec_digest: str, lineage: Lineage,
               endpoint_url: str | None = None, config=None) -> PublishedArtifact:
    """Upload a model folder to s3://bucket/prefix/artifacts/<name>/<digest16>/, manifest last.

    Idempotent: an artifact whose manifest is already there with the same digest, and whose
    objects still match it, is not uploaded again.
    """
    bucket, root = parse_s3_url(store_uri)
    src = Path(model_dir)
    if not src.is_dir():
        raise BadInput("publish", model_dir, "model folder not found", "quantize/build first, or fix the path")
    digest, files = hash_tree(src)
    prefix = _join(root, "artifacts", name, digest[:16])
    uri = f"s3://{bucket}/{prefix}"
    s3 = client(endpoint_url)
    config = config or transfer_config()
    try:
        try:
            existing, damaged = read_manifest_s3(s3, bucket, prefix), False
        except BadInput:  # a damaged manifest in our own store: taken away, the artifact re-uploaded
            existing, damaged = None, True
        if existing is not None and existing.artifact_digest == digest and not verify_s3(s3, bucket, prefix, existing):
            return PublishedArtifact(uri=uri, local_path=None, digest=digest, manifest_uri=f"{uri}/{MANIFEST}")
        if existing is not None or damaged:
            # a manifest that no longer matches its objects: take it away first, so no reader trusts
            # the prefix while the files are replaced
            s3.delete_object(Bucket=bucket, Key=_join(prefix, MANIFEST))
        for f in files:
            s3.upload_file(str(src / f.path), bucket, _join(prefix, f.path),
                           ExtraArgs={"Metadata": {SHA_META: f.sha256}}, Config=config)
        manifest = build_manifest(name, spec_digest, files, lineage)
        problems = verify_s3(s3, bucket, prefix, manifest)
        if problems:
            raise StageFailed("publish", uri, "uploaded objects do not match their source", "re-run publish",
                              detail="\n".join(problems))
        s3.put_object(Bucket=bucket, Key=_join(prefix, MANIFEST), Body=manifest.dump().encode(),
                      ContentType="application/json")
    except (StageFailed, BadInput):
        raise
    except Exception as err:  # botocore errors: name the stage, the object and what to do
        raise _client_error(err, "publish", uri) from None
    return PublishedArtifact(uri=uri, local_path=None, digest=digest, manifest_uri=f"{uri}/{MANIFEST}")


def download_s3_prefix(url: str, dest: str | Path, endpoint_url: str | None = None, config=None,
                       stage: str = "download") -> Path:
    """Download every object under s3://bucket/prefix into dest, keeping relative paths.

    Every key below the prefix must be a relative path inside dest (no absolute key, no '..',
    '.' or empty segment); one that is not is BadInput naming it, and then nothing is written.
    Where the prefix holds a manifest.json (an llmship artifact), it is checked the same way and
    every file against it; a plain model prefix is taken as it is.
    """
    bucket, prefix = parse_s3_url(url)
    dest = Path(dest)
    s3 = client(endpoint_url)
    config = config or transfer_config()
    try:
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=_join(prefix) + "/" if prefix else ""):
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        if not keys:
            raise BadInput(stage, url, "no objects under this prefix", "check the bucket and prefix")
        # Every target first, so one hostile key means nothing at all is written.
        start = len(_join(prefix)) + 1 if prefix else 0
        targets = [(key, inside(dest, key[start:], stage, f"s3://{bucket}/{key}")) for key in keys]
        manifest_key = _join(prefix, MANIFEST)
        if manifest_key in keys:  # an llmship artifact: its manifest must be sound before any download
            read_manifest_s3(s3, bucket, prefix, stage)
        for key, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target), Config=config)
    except (StageFailed, BadInput):
        raise
    except Exception as err:
        raise _client_error(err, stage, url) from None
    manifest_path = dest / MANIFEST
    if manifest_path.is_file():
        manifest = parse_manifest(manifest_path.read_bytes(), f"s3://{bucket}/{_join(prefix, MANIFEST)}", stage)
        problems = verify_folder(dest, manifest)
        if problems:
            raise StageFailed(stage, url, "downloaded files do not match the manifest", "re-publish the artifact",
                              detail="\n".join(problems))
    return dest


def s3_prefix_revision(url: str, endpoint_url: str | None = None) -> str:
    """An immutable-enough revision for an s3:// model source: sha256 over (key, size, ETag)."""
    bucket, prefix = parse_s3_url(url)
    s3 = client(endpoint_url)
    h = hashlib.sha256()
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=_join(prefix) + "/" if prefix else ""):
            for o in sorted(page.get("Contents", []), key=lambda o: o["Key"]):
                h.update(f"{o['Key']}\0{o['Size']}\0{o['ETag']}\n".encode())
    except Exception as err:
        raise _client_error(err, "resolve", url) from None
    return h.hexdigest()
