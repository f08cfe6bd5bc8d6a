"""Resolve a model reference to an immutable revision, then bring its files onto this worker.

    hf://org/name@rev   huggingface_hub: the revision becomes a commit sha; snapshot_download
    file:///abs/path    a local folder; its revision is the digest of its content
    s3://bucket/prefix  boto3 (tasks.storage.s3)
    models:/name@alias  the MLflow registry (tasks.registry) names one of the above
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tasks.errors import BadInput, StageFailed
from tasks.registry.hf_hub import split_hf
from tasks.storage.manifest import hash_tree, relpath_problem, tree_files
from tasks.values import LocalModel, ResolvedModel

RESOLVE = "resolve"
DOWNLOAD = "download"
# What a servable model folder must hold; weights are checked separately (any of these).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf", "rank*.engine")


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLMSHIP_CACHE", Path.home() / ".cache" / "llmship"))


def hub_endpoint() -> str | None:
    # Read per call, not at import, so a worker can be pointed at a mirror without a restart.
    return os.environ.get("HF_ENDPOINT") or None


def resolve_source(source: str, s3_endpoint_url: str | None = None) -> ResolvedModel:
    """Pin a model reference. Cheap: no weights are moved here."""
    if source.startswith("models:/"):
        from tasks.registry import resolve as resolve_registry

        version = resolve_registry(source)
        inner = resolve_source(version.source_uri, s3_endpoint_url)
        return inner.model_copy(update={"registry_version": str(version.version), "resolved_from": source,
                                        "source": source})
    if source.startswith("hf://"):
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        repo, rev = split_hf(source)
        try:
            info = HfApi(endpoint=hub_endpoint()).model_info(repo, revision=rev)
        except RevisionNotFoundError:
            raise BadInput(RESOLVE, source, f"revision {rev!r} not found", "check the commit sha, tag or branch") from None
        except RepositoryNotFoundError:
            raise BadInput(RESOLVE, source, "repository not found (or private without a token)",
                           "check the repo id; set HF_TOKEN for a private repo") from None
        except HfHubHTTPError as err:
            raise StageFailed(RESOLVE, source, f"the hub answered {err}", "check HF_ENDPOINT and the network") from None
        except OSError as err:
            raise StageFailed(RESOLVE, source, f"cannot reach the hub: {err}", "check HF_ENDPOINT and the network") from None
        return ResolvedModel(source=source, kind="hf", location=repo, revision=info.sha)
    if source.startswith("file://"):
        path = Path(source[len("file://") :])
        _check_model_folder(path, source)
        digest, _ = hash_tree(path, stage=RESOLVE)  # refuses links that leave the folder
        return ResolvedModel(source=source, kind="file", location=str(path), revision=digest)
    if source.startswith("s3://"):
        return _resolve_s3(source, s3_endpoint_url)
    raise BadInput(RESOLVE, source, "unknown source scheme", "use hf://, file://, s3:// or models:/")


def _resolve_s3(source: str, endpoint_url: str | None) -> ResolvedModel:
    """Pin an S3 prefix by the (key, size, ETag) of every object under it."""
    from tasks.storage.s3 import s3_prefix_revision

    revision = s3_prefix_revision(source, endpoint_url=endpoint_url)
    if revision == hashlib.sha256().hexdigest():
        raise BadInput(RESOLVE, source, "no objects under this prefix", "check the bucket and prefix")
    return ResolvedModel(source=source, kind="s3", location=source, revision=revision)


def _check_model_folder(path: Path, obj: str, stage: str = RESOLVE, allow_within: Path | None = None) -> None:
    if not path.is_dir():
        raise BadInput(stage, obj, "model folder not found", "give an existing folder as file:///abs/path")
    tree_files(path, stage, allow_within)  # links leaving the folder are refused before any file is read
    cfg = path / "config.json"
    from tasks.spec import WELL_KNOWN_MODEL_FILES

    known = [f for files in WELL_KNOWN_MODEL_FILES.values() for f in files]
    if not cfg.is_file() and (any((path / f).is_file() for f in known) or (path / "MLmodel").is_file()):
        return  # a predictive model (scikit-learn, XGBoost, an MLflow model): its server checks the file at deploy
    if not cfg.is_file():
        raise BadInput(stage, obj, "no config.json in the model folder", "point at a Hugging Face model folder")
    try:
        parsed = json.loads(cfg.read_text())
    except ValueError as err:
        raise BadInput(stage, f"{obj}/config.json", f"corrupt config.json: {err}", "restore the file from the source model") from None
    if not isinstance(parsed, dict) or not (parsed.get("architectures") or parsed.get("model_type")):
        raise BadInput(stage, f"{obj}/config.json", "config.json names no architecture or model_type",
                       "restore the file from the source model")
    if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
        raise BadInput(stage, obj, "no weight files (*.safetensors, *.bin) in the model folder", "check the folder")


def download(resolved: ResolvedModel, cache_dir: str | None = None, s3_endpoint_url: str | None = None) -> LocalModel:
    """Bring the pinned files onto this worker and digest them."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    links_within = None  # where the folder's links may point: inside it, unless said otherwise
    if resolved.kind == "file":
        path = Path(resolved.location)  # used in place: publish copies, so the source is never modified
    elif resolved.kind == "hf":
        path = _download_hf(resolved, cache)
        links_within = path.parent.parent  # a cache snapshot links into its repo folder's blobs/
    elif resolved.kind == "s3":
        from tasks.storage.s3 import download_s3_prefix

        dest = cache / "s3" / resolved.revision[:16]
        path = Path(download_s3_prefix(resolved.location, str(dest), endpoint_url=s3_endpoint_url))
    else:
        raise BadInput(DOWNLOAD, resolved.source, f"cannot download a {resolved.kind} reference", "resolve it first")
    _check_model_folder(path, resolved.source, DOWNLOAD, links_within)
    digest, _ = hash_tree(path, stage=DOWNLOAD, allow_within=links_within)
    if resolved.kind == "file" and digest != resolved.revision:
        raise StageFailed(DOWNLOAD, resolved.source, "the folder changed between resolve and download",
                          "stop whatever writes into it and re-run")
    return LocalModel(path=str(path), digest=digest, resolved=resolved)


def _hub_file_names(resolved: ResolvedModel) -> list[str]:
    """The file names of the pinned commit, as the hub lists them."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=hub_endpoint()).model_info(resolved.location, revision=resolved.revision)
    except (HfHubHTTPError, OSError) as err:
        raise StageFailed(DOWNLOAD, resolved.source, f"could not list the repo's files: {err}",
                          "check HF_ENDPOINT, HF_TOKEN and the network") from None
    return [s.rfilename for s in info.siblings or []]


def _download_hf(resolved: ResolvedModel, cache: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    # Every name must be a relative path inside the snapshot before anything is fetched: a hub
    # (or a mirror at HF_ENDPOINT) could list "../x" or "/abs/x". huggingface_hub refuses names
    # that leave its snapshots/ folder, but "../<other sha>/x" stays inside that and is not refused.
    bad = [(n, p) for n in _hub_file_names(resolved) if (p := relpath_problem(n))]
    if bad:
        raise BadInput(DOWNLOAD, f"{resolved.source}", "the repo lists file names outside the model folder: "
                       + ", ".join(f"{n!r} ({p})" for n, p in bad[:10]),
                       "refuse this repo, or ask its owner to rename those files")
    try:
        # Pinned to the commit sha, so a branch moving mid-run cannot mix two revisions.
        # huggingface_hub checks each file's size and sha256 (LFS) or etag as it downloads.
        path = snapshot_download(repo_id=resolved.location, revision=resolved.revision, cache_dir=str(cache / "hf"),
                                 endpoint=hub_endpoint())
    except ValueError as err:  # huggingface_hub's own refusal of a hostile file name
        raise BadInput(DOWNLOAD, resolved.source, f"the hub sent a file name outside the model folder: {err}",
                       "refuse this repo, or ask its owner to rename those files") from None
    except HfHubHTTPError as err:
        raise StageFailed(DOWNLOAD, resolved.source, f"download failed: {err}", "check HF_ENDPOINT, HF_TOKEN and disk space") from None
    except OSError as err:
        raise StageFailed(DOWNLOAD, resolved.source, f"download failed: {err}", "check the network and disk space") from None
    return Path(path)
