"""The MLflow model registry: resolve `models:/` references and record what was promoted.

Plain functions over the MLflow client; nothing here knows Prefect. The client reads
MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI, MLFLOW_TRACKING_TOKEN, ...) from the environment.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from tasks.errors import BadInput, StageFailed

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

STAGE = "resolve"
# models:/name@alias, models:/name/3, models:/name/latest. A name may not hold '/' or '@'.
MODELS_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))$")
# Sources a download stage fetches itself; anything else is an MLflow artifact location.
PASSTHROUGH = ("s3://", "hf://", "file://")
SERVING_ALIAS = "serving"


class ModelRef(BaseModel):
    """A parsed `models:/` reference: exactly one of alias and version is set."""

    model_config = ConfigDict(frozen=True)
    name: str
    alias: str | None = None
    version: str | None = None  # a number or "latest"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


class RegistryVersion(BaseModel):
    """A registry reference pinned to one model version, with a location a downloader can read."""

    model_config = ConfigDict(frozen=True)
    name: str
    version: str
    alias: str | None = None  # the alias it was reached through, if any
    source_uri: str  # s3://, hf:// or file:// (runs:/ and other artifact URIs are downloaded)
    registered_source: str  # the version's source as the registry holds it
    run_id: str | None = None

    @property
    def pinned_uri(self) -> str:
        """The same model, by version: what a trigger hands to the promote flow."""
        return f"models:/{self.name}/{self.version}"


def parse_models_uri(source: str) -> ModelRef:
    m = MODELS_RE.match(source)
    if not m:
        raise BadInput(
            STAGE, source, "not a model registry reference",
            "write models:/<name>@<alias> (e.g. models:/tiny@champion) or models:/<name>/<version>",
        )
    version = m["version"]
    if version is not None and version != "latest" and not version.isdigit():
        raise BadInput(STAGE, source, f"version {version!r} is not a number", "use models:/<name>/<number>, /latest or @<alias>")
    return ModelRef(name=m["name"], alias=m["alias"], version=version)


def client() -> "MlflowClient":
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise BadInput(
            STAGE, "MLFLOW_TRACKING_URI", "not set, so the model registry cannot be reached",
            "export MLFLOW_TRACKING_URI=http://<mlflow-host>:5000 (the server that holds the registry)",
        )
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _registry_error(ref: str, err: Exception) -> Exception:
    from mlflow.exceptions import RestException

    code = getattr(err, "error_code", "")
    message = getattr(err, "message", None) or str(err)
    if code == "RESOURCE_DOES_NOT_EXIST" or (isinstance(err, RestException) and "not found" in message.lower()):
        return StageFailed(
            STAGE, ref, f"the registry has no such model version: {message}",
            "check the model name, and that the alias is set: MlflowClient().set_registered_model_alias(name, alias, version)",
        )
    if isinstance(err, RestException):
        return StageFailed(STAGE, ref, f"the registry refused the request: {message}", "check the model reference")
    return StageFailed(
        STAGE, ref, f"the model registry did not answer: {type(err).__name__}: {message}",
        "check MLFLOW_TRACKING_URI and that the MLflow server is up",
    )


def lookup(source: str, mlflow_client: "MlflowClient | None" = None) -> "ModelVersion":
    """The model version a `models:/` reference names now, without downloading anything."""
    ref = parse_models_uri(source)
    c = mlflow_client or client()
    try:
        if ref.alias:
            return c.get_model_version_by_alias(ref.name, ref.alias)
        if ref.version == "latest":
            found = c.search_model_versions(f"name = '{ref.name}'", max_results=1, order_by=["version_number DESC"])
            if not found:
                raise StageFailed(STAGE, source, "the registered model has no versions", "register a version first")
            return found[0]
        return c.get_model_version(ref.name, ref.version)
    except StageFailed:
        raise
    except Exception as err:  # MlflowException, requests errors
        raise _registry_error(source, err) from None


def default_download_dir() -> Path:
    root = os.environ.get("LLMSHIP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llmship")
    return Path(root) / "mlflow"


def _local_source(uri: str) -> str | None:
    if uri.startswith(PASSTHROUGH):
        return uri
    if uri.startswith("/"):
        return "file://" + uri
    return None


def _download(mv: "ModelVersion", tracking_uri: str, download_dir: Path) -> str:
    """Fetch a runs:/ (or other MLflow artifact) source once into download_dir/<name>/<version>."""
    from mlflow.artifacts import download_artifacts

    dest = download_dir / mv.name / str(mv.version)
    if dest.is_dir():  # versions are immutable: a finished download is reused
        return "file://" + str(dest.resolve())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=dest.parent))
    try:
        got = Path(download_artifacts(artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=tracking_uri))
        # a folder artifact lands as tmp/<basename>; make dest the model folder itself
        os.replace(got if got.is_dir() else tmp, dest)
    except Exception as err:
        raise StageFailed(
            STAGE, f"models:/{mv.name}/{mv.version}", f"could not download {mv.source}: {type(err).__name__}: {err}",
            "check the run's artifacts exist and the artifact store is reachable from this worker",
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return "file://" + str(dest.resolve())


def resolve(source: str, download_dir: str | Path | None = None) -> RegistryVersion:
    """Pin `models:/name@alias` (or /version, /latest) to a version and a readable location.

    s3://, hf:// and file:// sources pass through; runs:/ and other MLflow artifact URIs are
    downloaded into download_dir (default $LLMSHIP_CACHE/mlflow) and returned as file://.
    """
    ref = parse_models_uri(source)
    c = client()
    mv = lookup(source, c)
    location = _local_source(mv.source or "")
    if location is None:
        if not mv.source:
            raise StageFailed(STAGE, source, f"version {mv.version} has no source", "register the version with a source URI")
        location = _download(mv, c.tracking_uri, Path(download_dir) if download_dir else default_download_dir())
    return RegistryVersion(
        name=mv.name, version=str(mv.version), alias=ref.alias, source_uri=location,
        registered_source=mv.source, run_id=mv.run_id or None,
    )


def record_serving(resolved: RegistryVersion, target: str, alias: str = SERVING_ALIAS) -> None:
    """Record on the registry that this version now serves: move `alias` to it and tag it.

    `target` says where it serves (e.g. kserve:default:tiny); it is kept in the version's tags.
    """
    c = client()
    ref = resolved.pinned_uri
    try:
        c.set_registered_model_alias(resolved.name, alias, resolved.version)
        c.set_model_version_tag(resolved.name, resolved.version, "llmship.serving_target", target)
        c.set_model_version_tag(
            resolved.name, resolved.version, "llmship.promoted_at",
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
    except Exception as err:
        raise StageFailed(
            "record", ref, f"could not record the promotion on the registry: {type(err).__name__}: {err}",
            f"the model serves; set the alias by hand: client.set_registered_model_alias('{resolved.name}', '{alias}', '{resolved.version}')",
        ) from None


def record_promotion(source: str, version: str, target: str, alias: str = SERVING_ALIAS) -> None:
    """record_serving for a promote flow that kept only the source and version (ResolvedModel)."""
    ref = parse_models_uri(source)
    record_serving(
        RegistryVersion(name=ref.name, version=str(version), alias=ref.alias, source_uri="", registered_source=""),
        target, alias,
    )
